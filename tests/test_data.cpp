// Report data (ihn_toolkit::data): R2Gen's tokenizer against the golden outputs of the official
// code, annotation loading and validation, the image pipeline, the synthetic data set and the
// LibTorch data loader.
#include "test_common.hpp"

#include <ihn/eval.hpp>

#include <data/annotation.hpp>
#include <data/image.hpp>
#include <data/loader.hpp>
#include <data/negatives.hpp>
#include <data/synthetic.hpp>
#include <data/tokenizer.hpp>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <map>
#include <set>

using namespace ihn_toolkit::data;

namespace {

nlohmann::json read_json(const std::filesystem::path& path) {
  std::ifstream in(path);
  REQUIRE(in.good());
  return nlohmann::json::parse(in);
}

std::vector<int64_t> ints(const nlohmann::json& j) {
  return j.get<std::vector<int64_t>>();
}

std::filesystem::path tokenizer_fixtures() {
  return ihn_test::fixtures_dir() / "tokenizer";
}
std::filesystem::path iu_annotation() {
  return ihn_test::shared_dir() / "data" / "iu_xray" / "annotation.json";
}

}  // namespace

// ---------------------------------------------------------------- tokenizer

TEST_CASE("tokenizer: both cleaners equal R2Gen on every adversarial case", "[data][shared]") {
  // Exact string equality: the fixture was produced by the official tokenizers.py.
  const auto cases = read_json(tokenizer_fixtures() / "clean_cases.json");
  const auto vocab = Tokenizer::load((tokenizer_fixtures() / "vocab.json").string());
  REQUIRE(cases.size() ==
          read_json(tokenizer_fixtures() / "config.json").at("n_clean_cases").get<size_t>());
  for (const auto& c : cases) {
    const auto input = c["input"].get<std::string>();
    INFO("case " << c["n"] << " input " << c["input"].dump());
    CHECK(clean_report_iu_xray(input) == c["clean_iu_xray"].get<std::string>());
    CHECK(clean_report_mimic_cxr(input) == c["clean_mimic_cxr"].get<std::string>());
    CHECK(split_whitespace(clean_report_iu_xray(input)) ==
          c["clean_iu_xray_tokens"].get<std::vector<std::string>>());
    CHECK(split_whitespace(clean_report_mimic_cxr(input)) ==
          c["clean_mimic_cxr_tokens"].get<std::vector<std::string>>());
    const auto ids = vocab.encode(input);
    CHECK(ids == ints(c["ids_iu_xray_tokenizer"]));
    CHECK(vocab.decode({ids.begin() + 1, ids.end()}) == c["decoded"].get<std::string>());
  }
}

TEST_CASE("tokenizer: IU X-Ray vocabulary, ids, truncation and decoding equal R2Gen",
          "[data][shared]") {
  if (!std::filesystem::exists(iu_annotation())) {
    WARN("skipped: " << iu_annotation() << " is absent (real IU X-Ray annotation)");
    return;
  }
  // The vocabulary, truncation length and counts are the fixture's (config.json), so another
  // threshold or length of the same format runs unchanged.
  const auto config = read_json(tokenizer_fixtures() / "config.json");
  const auto annotation = read_json(iu_annotation());
  std::vector<std::string> train_reports;
  for (const auto& entry : annotation["train"]) train_reports.push_back(entry["report"]);
  const auto tokenizer =
      Tokenizer::build(train_reports, parse_dataset(config.at("dataset_name").get<std::string>()),
                       config.at("threshold").get<int>());
  const auto golden_vocab = read_json(tokenizer_fixtures() / "vocab.json");
  REQUIRE(tokenizer.vocab_size() == golden_vocab["vocab_size"].get<int64_t>());
  for (int64_t id = 1; id <= tokenizer.vocab_size(); ++id)
    REQUIRE(tokenizer.token_of(id) == golden_vocab["id_to_token"][id].get<std::string>());

  const auto reports = read_json(tokenizer_fixtures() / "reports.json");
  REQUIRE(reports.size() == config.at("n_reports").get<size_t>());
  const auto max_seq_length = config.at("max_seq_length").get<size_t>();
  int truncated = 0;
  for (const auto& r : reports) {
    const auto report = r["report"].get<std::string>();
    INFO(r["split"] << " " << r["index"] << " " << r["id"]);
    CHECK(tokenizer.clean(report) == r["cleaned"].get<std::string>());
    CHECK(split_whitespace(tokenizer.clean(report)) == r["tokens"].get<std::vector<std::string>>());
    const auto full = tokenizer.encode(report);
    CHECK(full == ints(r["ids_full"]));
    const auto trunc = tokenizer.encode(report, max_seq_length);
    CHECK(trunc == ints(r["ids_trunc"]));
    truncated += trunc.back() != 0;
    CHECK(tokenizer.decode({trunc.begin() + 1, trunc.end()}) == r["decoded_gt"].get<std::string>());
    CHECK(tokenizer.decode({full.begin() + 1, full.end()}) == r["decoded_full"].get<std::string>());
    CHECK(tokenizer.round_trip(report, max_seq_length) == r["decoded_gt"].get<std::string>());
  }
  CHECK(truncated == config.at("n_reports_truncated").get<int>());  // reports that lose their EOS
}

TEST_CASE("tokenizer: vocabulary rules, JSON round trip and errors", "[data]") {
  const std::vector<std::string> train = {"The heart is normal. Lungs clear.",
                                          "The heart is enlarged. Lungs clear.",
                                          "The heart is normal. Rare word."};
  const auto tokenizer = Tokenizer::build(train, Dataset::iu_xray, 2);
  // count >= 2: the heart is normal lungs clear . ; plus <unk>; sorted by code point.
  const std::vector<std::string> expected = {".",  "<unk>", "clear",  "heart",
                                             "is", "lungs", "normal", "the"};
  CHECK(tokenizer.tokens() == expected);
  CHECK(tokenizer.id_of("enlarged") == tokenizer.id_of("<unk>"));
  CHECK(tokenizer.encode("The heart is enlarged.") == std::vector<int64_t>{0, 8, 4, 5, 2, 1, 0});
  CHECK(tokenizer.encode("The heart is enlarged.", 3) == std::vector<int64_t>{0, 8, 4});
  CHECK(tokenizer.decode({8, 4, 0, 5}) == "the heart");  // stops at the first 0
  CHECK_THROWS_AS(tokenizer.decode({99}), std::out_of_range);

  const auto restored = Tokenizer::from_json(tokenizer.to_json());
  CHECK(restored.tokens() == tokenizer.tokens());
  CHECK(restored.threshold() == 2);
  const auto dir = ihn_test::scratch_dir("tokenizer_json");
  tokenizer.save((dir / "vocab.json").string());
  CHECK(Tokenizer::load((dir / "vocab.json").string()).tokens() == tokenizer.tokens());

  CHECK_THROWS_WITH(Tokenizer::load((dir / "absent.json").string()),
                    Catch::Contains("absent.json"));
  CHECK_THROWS_WITH(Tokenizer::from_json("{"), Catch::Contains("malformed JSON"));
  CHECK_THROWS_WITH(Tokenizer::from_json(R"({"id_to_token": ["a"]})"), Catch::Contains("null"));
  CHECK_THROWS_WITH(Tokenizer::from_json(R"({"id_to_token": [null, "a"]})"),
                    Catch::Contains("<unk>"));
  CHECK_THROWS_WITH(Tokenizer::from_json(R"({"id_to_token": [null, "a", "a", "<unk>"]})"),
                    Catch::Contains("twice"));
  CHECK_THROWS_WITH(Tokenizer::from_json(R"({"id_to_token": [null, "<unk>"], "vocab_size": 5})"),
                    Catch::Contains("disagrees"));
  CHECK_THROWS_WITH(parse_dataset("chexpert"), Catch::Contains("iu_xray or mimic_cxr"));
}

// ---------------------------------------------------------------- annotation

namespace {

std::string write_text(const std::filesystem::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  return path.string();
}

// A small gray placeholder PNG (images are not distributed with the IU X-Ray annotation).
void write_placeholder_png(const std::filesystem::path& path, int size = 8, uint8_t value = 128) {
  std::filesystem::create_directories(path.parent_path());
  write_png(Image::blank(size, size, 1, value), path.string());
}

nlohmann::json entry(const std::string& id, const std::string& report,
                     std::vector<std::string> images, const std::string& split) {
  return {{"id", id}, {"report", report}, {"image_path", images}, {"split", split}};
}

nlohmann::json small_annotation() {
  return {{"train",
           {entry("a", "The heart is normal.", {"a/0.png", "a/1.png"}, "train"),
            entry("b", "Lungs are clear.", {"b/0.png", "b/1.png"}, "train")}},
          {"val", {entry("c", "No effusion.", {"c/0.png", "c/1.png"}, "val")}},
          {"test", nlohmann::json::array()}};
}

}  // namespace

TEST_CASE("annotation: the real IU X-Ray split loads with placeholder images", "[data][shared]") {
  if (!std::filesystem::exists(iu_annotation())) {
    WARN("skipped: " << iu_annotation() << " is absent (real IU X-Ray annotation)");
    return;
  }
  AnnotationOptions options;
  const auto annotation = load_annotation(iu_annotation().string(), options);
  CHECK(annotation.train.size() == 2069);
  CHECK(annotation.val.size() == 296);
  CHECK(annotation.test.size() == 590);
  CHECK(annotation.problems.empty());
  CHECK_THAT(annotation.summary(), Catch::Contains("train 2069, val 296, test 590"));
  std::set<std::string> ids;
  for (const auto* split : {&annotation.train, &annotation.val, &annotation.test})
    for (const auto& study : *split) {
      ids.insert(study.id);
      REQUIRE(study.image_paths.size() == 2);
    }
  CHECK(ids.size() == 2069 + 296 + 590);  // ids are unique across splits

  // Placeholder PNGs for every view, then break three studies in three ways.
  const auto root = ihn_test::scratch_dir("iu_placeholder_images");
  for (const auto* split : {&annotation.train, &annotation.val, &annotation.test})
    for (const auto& study : *split)
      for (const auto& image : study.image_paths) write_placeholder_png(root / image);
  options.image_root = root.string();
  CHECK(load_annotation(iu_annotation().string(), options).train.size() == 2069);

  std::filesystem::remove(root / annotation.train[0].image_paths[1]);
  write_text(root / annotation.val[5].image_paths[0], "not a png");
  write_text(root / annotation.test[7].image_paths[0], "");
  CHECK_THROWS_WITH(load_annotation(iu_annotation().string(), options),
                    Catch::Contains("3 bad entries") && Catch::Contains("train[0]") &&
                        Catch::Contains(annotation.train[0].id) && Catch::Contains("missing") &&
                        Catch::Contains("val[5]") && Catch::Contains("corrupt"));
  options.on_bad_entry = OnBadEntry::skip;
  const auto skipped = load_annotation(iu_annotation().string(), options);
  CHECK(skipped.train.size() == 2068);
  CHECK(skipped.val.size() == 295);
  CHECK(skipped.test.size() == 589);
  REQUIRE(skipped.problems.size() == 3);
  CHECK(skipped.problems[0].id == annotation.train[0].id);
  CHECK_THAT(skipped.summary(), Catch::Contains("skipped 3 bad entries"));
}

TEST_CASE("annotation: every documented problem is reported with file, entry and fix", "[data]") {
  const auto dir = ihn_test::scratch_dir("annotation_errors");
  const auto file = (dir / "annotation.json").string();
  auto load_text = [&](const std::string& text, AnnotationOptions options = {}) {
    write_text(file, text);
    return load_annotation(file, options);
  };
  // File-level problems always throw.
  CHECK_THROWS_WITH(load_annotation((dir / "absent.json").string()),
                    Catch::Contains("absent.json") && Catch::Contains("cannot open"));
  CHECK_THROWS_WITH(load_text("{\"train\": ["),
                    Catch::Contains(file) && Catch::Contains("malformed JSON"));
  CHECK_THROWS_WITH(load_text("[]"), Catch::Contains("top level is a JSON array"));
  CHECK_THROWS_WITH(load_text(R"({"train": [], "val": []})"),
                    Catch::Contains("missing split 'test'"));
  CHECK_THROWS_WITH(load_text(R"({"train": [], "val": [], "test": {}})"),
                    Catch::Contains("split 'test' is a JSON object"));

  // Entry-level problems: each one alone, in fail mode (throws) and skip mode (listed).
  struct Case {
    std::function<void(nlohmann::json&)> corrupt;
    std::string message;
    Dataset dataset = Dataset::iu_xray;
  };
  const std::vector<Case> cases = {
      {[](auto& j) { j["train"][1].erase("report"); }, "missing key(s): report"},
      {[](auto& j) { j["train"][1].erase("image_path"); }, "missing key(s): image_path"},
      {[](auto& j) { j["train"][1] = 5; }, "entry is a JSON number"},
      {[](auto& j) { j["train"][1]["id"] = 7; }, "'id' must be a non-empty string"},
      {[](auto& j) { j["train"][1]["report"] = nullptr; }, "'report' is a JSON null"},
      {[](auto& j) { j["train"][1]["report"] = ""; }, "empty or whitespace-only report"},
      {[](auto& j) { j["train"][1]["report"] = " \n\t\u00a0"; }, "empty or whitespace-only"},
      {[](auto& j) { j["train"][1]["image_path"] = "b/0.png"; }, "'image_path' is a JSON string"},
      {[](auto& j) { j["train"][1]["image_path"] = {"b/0.png"}; }, "has 1 image(s)"},
      {[](auto& j) {
         j["train"][1]["image_path"] = {"b/0.png", "b/1.png", "x"};
       },
       "has 3 image(s)"},
      {[](auto& j) { j["train"][1]["image_path"] = nlohmann::json::array(); }, "has 0 image(s)",
       Dataset::mimic_cxr},
      {[](auto& j) { j["train"][1]["image_path"] = {""}; }, "non-empty strings"},
      {[](auto& j) { j["train"][1]["split"] = "test"; }, "sits in 'train'"},
      // Issue 13, item 10: one study twice, and images outside the image root.
      {[](auto& j) { j["train"][1]["id"] = "a"; }, "duplicate id: also train[0]"},
      {[](auto& j) {
         j["train"][1]["image_path"] = {"b/0.png", "b/../../../secret.png"};
       },
       "leaves the image folder"},
      {[](auto& j) {
         j["train"][1]["image_path"] = {"/etc/passwd", "b/1.png"};
       },
       "leaves the image folder"},
  };
  for (const auto& c : cases) {
    INFO(c.message);
    auto json = small_annotation();
    c.corrupt(json);
    AnnotationOptions options;
    options.dataset = c.dataset;
    CHECK_THROWS_WITH(load_text(json.dump(), options),
                      Catch::Contains(file) && Catch::Contains("train[1]") &&
                          Catch::Contains(c.message) && Catch::Contains("--skip-bad"));
    options.on_bad_entry = OnBadEntry::skip;
    const auto annotation = load_text(json.dump(), options);
    CHECK(annotation.train.size() == 1);
    REQUIRE(annotation.problems.size() == 1);
    CHECK_THAT(annotation.problems[0].problem, Catch::Contains(c.message));
  }

  // Images: missing, corrupt, empty, a directory; MIMIC-CXR reads image_path[0] only.
  AnnotationOptions options;
  options.image_root = (dir / "images").string();
  for (const auto& id : {"a", "b", "c"})
    for (int v = 0; v < 2; ++v)
      write_placeholder_png(dir / "images" / id / (std::to_string(v) + ".png"));
  CHECK(load_text(small_annotation().dump(), options).train.size() == 2);
  std::filesystem::remove(dir / "images" / "b" / "1.png");
  CHECK_THROWS_WITH(load_text(small_annotation().dump(), options),
                    Catch::Contains("train[1] (id b)") && Catch::Contains("1.png missing"));
  options.dataset = Dataset::mimic_cxr;
  CHECK(load_text(small_annotation().dump(), options).train.size() == 2);
  options.dataset = Dataset::iu_xray;
  write_text(dir / "images" / "b" / "1.png", "\x89PNG garbage");
  CHECK_THROWS_WITH(load_text(small_annotation().dump(), options),
                    Catch::Contains("corrupt or not an image"));
  write_text(dir / "images" / "b" / "1.png", "");
  CHECK_THROWS_WITH(load_text(small_annotation().dump(), options), Catch::Contains("corrupt"));
  std::filesystem::remove(dir / "images" / "b" / "1.png");
  std::filesystem::create_directories(dir / "images" / "b" / "1.png");
  CHECK_THROWS_WITH(load_text(small_annotation().dump(), options), Catch::Contains("a directory"));
  // A truncated PNG passes the header check; decode_images finds it.
  std::filesystem::remove_all(dir / "images" / "b" / "1.png");
  write_placeholder_png(dir / "images" / "b" / "1.png", 64, 77);
  std::string png;
  {
    std::ifstream in(dir / "images" / "b" / "1.png", std::ios::binary);
    png.assign(std::istreambuf_iterator<char>(in), {});
  }
  write_text(dir / "images" / "b" / "1.png", png.substr(0, png.size() / 2));
  CHECK(load_text(small_annotation().dump(), options).train.size() == 2);
  options.decode_images = true;
  CHECK_THROWS_WITH(load_text(small_annotation().dump(), options), Catch::Contains("corrupt"));

  CHECK_THROWS_WITH(load_annotation(file, {Dataset::iu_xray, "", OnBadEntry::skip}).split("dev"),
                    Catch::Contains("unknown split 'dev'"));
  CHECK_THROWS_WITH(
      save_annotation({Study{"z", "report", {"a", "b"}, "dev"}}, (dir / "bad_split.json").string()),
      Catch::Contains("split 'dev'"));
  CHECK_THROWS_WITH(save_annotation({}, (dir / "no" / "such" / "dir.json").string()),
                    Catch::Contains("dir.json"));
  // Round trip through save_annotation.
  const auto loaded = load_annotation(file, {Dataset::iu_xray, "", OnBadEntry::skip});
  std::vector<Study> studies = loaded.train;
  studies.insert(studies.end(), loaded.val.begin(), loaded.val.end());
  save_annotation(studies, (dir / "saved.json").string());
  const auto again = load_annotation((dir / "saved.json").string());
  CHECK(again.train.size() == 2);
  CHECK(again.val.size() == 1);
  CHECK(again.train[1].report == loaded.train[1].report);
}

// ---------------------------------------------------------------- images

TEST_CASE("image: stb load, gray to RGB, resize sizes and transforms", "[data]") {
  const auto dir = ihn_test::scratch_dir("image_pipeline");
  Image gray = Image::blank(300, 400, 1);
  for (int y = 0; y < gray.height; ++y)
    for (int x = 0; x < gray.width; ++x)
      gray.at(x, y) = static_cast<uint8_t>((x * 7 + y * 3) % 256);
  write_png(gray, (dir / "gray.png").string());
  const auto rgb = load_image_rgb((dir / "gray.png").string());
  REQUIRE(rgb.channels == 3);
  REQUIRE(rgb.width == 300);
  for (size_t i = 0; i < gray.pixels.size(); ++i) {
    REQUIRE(rgb.pixels[i * 3] == gray.pixels[i]);
    REQUIRE(rgb.pixels[i * 3 + 2] == gray.pixels[i]);
  }
  CHECK_THROWS_WITH(load_image_rgb((dir / "absent.png").string()),
                    Catch::Contains("absent.png") && Catch::Contains("missing"));
  CHECK_THROWS_WITH(write_png(gray, (dir / "no" / "such" / "dir.png").string()),
                    Catch::Contains("dir.png"));

  SECTION("a header declaring 20000x20000 is refused before decoding (issue 13, item 9)") {
    // PNG signature, IHDR (20000 x 20000, 8-bit gray; stb checks no CRC), IEND: 45 bytes that
    // used to cost 400 MB (3.9 GB in `ihn generate`); as RGB, stb said "unknown image type".
    const std::string png(
        "\x89PNG\r\n\x1a\n"
        "\x00\x00\x00\x0dIHDR\x00\x00\x4e\x20\x00\x00\x4e\x20\x08\x00\x00\x00\x00"
        "\x00\x00\x00\x00"
        "\x00\x00\x00\x00IEND\xae\x42\x60\x82",
        45);
    std::ofstream(dir / "huge.png", std::ios::binary) << png;
    const auto huge = (dir / "huge.png").string();
    for (const bool keep_gray : {false, true})  // (Catch v2 matchers cannot be stored)
      CHECK_THROWS_WITH(keep_gray ? load_image(huge) : load_image_rgb(huge),
                        Catch::Contains("huge.png") && Catch::Contains("20000\u00d720000") &&
                            Catch::Contains("larger than the limit"));
    CHECK_THAT(probe_image(huge), Catch::Contains("larger than the limit"));
    auto rgb_header = png;
    rgb_header[25] = 2;  // colour type RGB
    CHECK_THROWS_WITH(decode_image(reinterpret_cast<const unsigned char*>(rgb_header.data()),
                                   rgb_header.size(), "rgb.png", 3),
                      Catch::Contains("rgb.png") && Catch::Contains("20000\u00d720000"));
    CHECK_THAT(probe_image(huge, true), Catch::Contains("larger than the limit"));
    CHECK_THROWS_WITH(decode_image(reinterpret_cast<const unsigned char*>(png.data()), png.size(),
                                   "memory.png", 3),
                      Catch::Contains("memory.png") && Catch::Contains("larger than the limit"));
  }

  // torchvision Resize(256): shorter side 256, longer int(256 * 400 / 300) = 341.
  const auto resized = resize_shorter_side(rgb, 256);
  CHECK(resized.width == 256);
  CHECK(resized.height == 341);
  // A constant image stays constant (weights sum to one in fixed point).
  const auto flat = resize_bilinear(Image::blank(97, 61, 3, 200), 224, 224);
  CHECK(*std::min_element(flat.pixels.begin(), flat.pixels.end()) == 200);
  CHECK(*std::max_element(flat.pixels.begin(), flat.pixels.end()) == 200);

  std::mt19937_64 rng(1);
  const auto eval = ImageTransform(TransformOptions::r2gen_eval())(gray, rng);
  CHECK(eval.sizes() == at::IntArrayRef({3, 224, 224}));
  // Normalisation: a constant image v gives (v / 255 - mean) / std per channel.
  const auto constant =
      ImageTransform(TransformOptions::r2gen_eval())(Image::blank(50, 40, 1, 51), rng);
  const float expected[3] = {(0.2f - 0.485f) / 0.229f, (0.2f - 0.456f) / 0.224f,
                             (0.2f - 0.406f) / 0.225f};
  for (int c = 0; c < 3; ++c)
    CHECK(constant[c].max().item<float>() == Approx(expected[c]).epsilon(1e-6));

  // Train: same engine seed -> same crop and flip; across seeds the crops differ.
  const ImageTransform train(TransformOptions::r2gen_train());
  std::mt19937_64 a(sample_seed(3, 1, 5)), b(sample_seed(3, 1, 5));
  const auto first = train(gray, a);
  CHECK(first.sizes() == at::IntArrayRef({3, 224, 224}));
  CHECK(at::equal(first, train(gray, b)));
  int distinct = 0;
  for (uint64_t index = 0; index < 8; ++index) {
    std::mt19937_64 other(sample_seed(3, 1, 100 + index));
    distinct += !at::equal(first, train(gray, other));
  }
  CHECK(distinct >= 7);  // 33 x 118 crop offsets x 2 flips: a repeat is unlikely (< 1e-3)
  // Flip: with probability 1 the output is the mirror of the probability-0 output.
  TransformOptions no_flip = TransformOptions::r2gen_train(), always_flip = no_flip;
  no_flip.flip_probability = 0.0;
  always_flip.flip_probability = 1.0;
  std::mt19937_64 c1(9), c2(9);
  CHECK(at::equal(ImageTransform(no_flip)(gray, c1).flip({2}),
                  ImageTransform(always_flip)(gray, c2)));
  // Gray kept gray (load_image) gives exactly what PIL's convert('RGB') first gives.
  write_png(gray, (dir / "gray_again.png").string());
  const auto native = load_image((dir / "gray_again.png").string());
  CHECK(native.channels == 1);
  for (const auto& options : {TransformOptions::r2gen_train(), TransformOptions::r2gen_eval()}) {
    std::mt19937_64 g1(21), g2(21);
    CHECK(at::equal(ImageTransform(options)(native, g1),
                    ImageTransform(options)(to_rgb(native), g2)));
  }
  TransformOptions too_big = TransformOptions::r2gen_train();
  too_big.crop = 300;
  CHECK_THROWS_WITH(ImageTransform(too_big)(gray, rng), Catch::Contains("RandomCrop 300"));
  CHECK_THROWS_AS(resize_bilinear(gray, 0, 5), std::invalid_argument);
}

TEST_CASE("image: resize equals Pillow's bilinear as torchvision uses it", "[data][python]") {
  // Measured against the real Pillow (Debian python3-pil) when it is installed; the naive
  // bilinear without antialiasing (at::upsample_bilinear2d) is measured alongside to show why
  // Pillow's filter support matters for downscaling.
  const std::string python = ihn_test::python();
  if (!ihn_test::python_available("PIL")) return;
  const auto dir = ihn_test::scratch_dir("pil_resize");
  std::mt19937 rng(7);
  Image source = Image::blank(517, 433, 1);
  for (int y = 0; y < source.height; ++y)
    for (int x = 0; x < source.width; ++x) {
      // A chest-like mix of smooth shading, edges and noise.
      const double shade = 128 + 80 * std::sin(x * 0.03) * std::cos(y * 0.02);
      const double edge = ((x / 37 + y / 29) % 2) * 40;
      source.at(x, y) = static_cast<uint8_t>(
          std::clamp(shade + edge + std::uniform_int_distribution<int>(-20, 20)(rng), 0.0, 255.0));
    }
  write_png(source, (dir / "source.png").string());
  const std::string script =
      "from PIL import Image; im = Image.open('" + (dir / "source.png").string() +
      "').convert('RGB'); im.resize((224, 224), Image.BILINEAR).save('" +
      (dir / "pil_224.png").string() + "'); w, h = im.size; s = 256; " +
      "size = (s, int(s * h / w)) if w <= h else (int(s * w / h), s); " +
      "im.resize(size, Image.BILINEAR).save('" + (dir / "pil_256.png").string() +
      "'); im.resize((900, 700), Image.BILINEAR).save('" + (dir / "pil_up.png").string() + "')";
  write_text(dir / "resize.py", script);
  REQUIRE(std::system((std::string(python) + " " + (dir / "resize.py").string()).c_str()) == 0);

  const auto rgb = to_rgb(source);
  struct Pair {
    Image ours;
    std::string pil_file;
  };
  const std::vector<Pair> pairs = {{resize_bilinear(rgb, 224, 224), "pil_224.png"},
                                   {resize_shorter_side(rgb, 256), "pil_256.png"},
                                   {resize_bilinear(rgb, 900, 700), "pil_up.png"}};
  for (const auto& pair : pairs) {
    const auto pil = load_image_rgb((dir / pair.pil_file).string());
    REQUIRE(pil.width == pair.ours.width);
    REQUIRE(pil.height == pair.ours.height);
    int max_difference = 0;
    for (size_t i = 0; i < pil.pixels.size(); ++i)
      max_difference = std::max(max_difference, std::abs(int(pil.pixels[i]) - pair.ours.pixels[i]));
    // Same algorithm, same fixed-point arithmetic: identical bytes expected.
    CHECK(max_difference == 0);
    // The naive bilinear for comparison (docs/data.md reports these numbers).
    auto input = at::from_blob(const_cast<uint8_t*>(rgb.pixels.data()),
                               {1, rgb.height, rgb.width, 3}, at::kByte)
                     .permute({0, 3, 1, 2})
                     .to(at::kFloat);
    auto naive = at::upsample_bilinear2d(input, {pil.height, pil.width}, false)
                     .round()
                     .clamp(0, 255)
                     .permute({0, 2, 3, 1})
                     .contiguous();
    auto reference = at::from_blob(const_cast<uint8_t*>(pil.pixels.data()),
                                   {1, pil.height, pil.width, 3}, at::kByte)
                         .to(at::kFloat);
    const auto naive_error = (naive - reference).abs();
    WARN(pair.pil_file << ": ours vs Pillow max |diff| " << max_difference
                       << " levels; naive bilinear vs Pillow mean |diff| "
                       << naive_error.mean().item<float>() << ", max "
                       << naive_error.max().item<float>() << " levels");
  }
}

// ---------------------------------------------------------------- loader

TEST_CASE("loader: collate pads like R2Gen and workers do not change batches", "[data]") {
  std::vector<ReportExample> examples = {
      {"x", at::zeros({2, 3, 4, 4}), {0, 5, 6, 0}},
      {"y", at::ones({2, 3, 4, 4}), {0, 7, 0}},
  };
  const auto batch = collate_reports(examples);
  CHECK(batch.ids == std::vector<std::string>{"x", "y"});
  CHECK(batch.images.sizes() == at::IntArrayRef({2, 2, 3, 4, 4}));
  CHECK(at::equal(batch.reports_ids, at::tensor({0, 5, 6, 0, 0, 7, 0, 0}, at::kLong).view({2, 4})));
  CHECK(at::equal(batch.reports_masks,
                  at::tensor({1, 1, 1, 1, 1, 1, 1, 0}, at::kFloat).view({2, 4})));
  CHECK(batch.reports_masks.scalar_type() == at::kFloat);
  CHECK_THROWS_AS(collate_reports({}), std::invalid_argument);

  // Ten studies on disk; train transform with a small crop to stay fast.
  const auto dir = ihn_test::scratch_dir("loader");
  std::vector<Study> studies;
  std::mt19937 rng(3);
  for (int i = 0; i < 10; ++i) {
    Study study{"s" + std::to_string(i),
                i % 2 ? "The heart is normal. Lungs clear." : "No acute disease.",
                {},
                "train"};
    for (int v = 0; v < 2; ++v) {
      Image image = Image::blank(40 + i, 48, 1);
      for (auto& p : image.pixels) p = static_cast<uint8_t>(rng() % 256);
      const auto name = study.id + "_" + std::to_string(v) + ".png";
      write_png(image, (dir / name).string());
      study.image_paths.push_back(name);
    }
    studies.push_back(study);
  }
  const auto tokenizer = Tokenizer::build(
      {"The heart is normal. Lungs clear.", "No acute disease."}, Dataset::iu_xray, 1);
  ReportDatasetOptions options;
  options.image_root = dir.string();
  options.transform = TransformOptions::r2gen_train();
  options.transform.resize = 36;
  options.transform.crop = 32;
  options.seed = 11;
  options.max_seq_length = 5;  // truncates the longer report
  const ReportDataset dataset(studies, tokenizer, options);
  CHECK(dataset.ids(1).size() == 5);
  CHECK(dataset.ids(1).back() != 0);

  auto collect = [](const ReportDataset& data, size_t workers, bool shuffle) {
    std::vector<ReportBatch> batches;
    auto loader = make_report_loader(data, {3, workers, shuffle, false});
    for (auto& batch : *loader) batches.push_back(batch);
    return batches;
  };
  const auto serial = collect(dataset, 0, true);
  REQUIRE(serial.size() == 4);  // 10 studies in batches of 3, last one partial
  std::set<std::string> seen;
  for (const auto& batch : serial) seen.insert(batch.ids.begin(), batch.ids.end());
  CHECK(seen.size() == 10);  // a permutation: every study exactly once
  CHECK(serial[0].images.sizes() == at::IntArrayRef({3, 2, 3, 32, 32}));
  for (size_t workers : {1, 2}) {
    const auto parallel = collect(dataset, workers, true);
    REQUIRE(parallel.size() == serial.size());
    for (size_t b = 0; b < serial.size(); ++b) {
      CHECK(parallel[b].ids == serial[b].ids);
      CHECK(at::equal(parallel[b].images, serial[b].images));
      CHECK(at::equal(parallel[b].reports_ids, serial[b].reports_ids));
    }
  }
  // Another epoch: another order and other crops of the same study.
  const auto next_epoch = collect(dataset.with_epoch(1), 0, true);
  std::vector<std::string> order0, order1;
  for (const auto& b : serial) order0.insert(order0.end(), b.ids.begin(), b.ids.end());
  for (const auto& b : next_epoch) order1.insert(order1.end(), b.ids.begin(), b.ids.end());
  CHECK(order0 != order1);
  auto epoch0 = dataset;
  auto epoch1 = dataset.with_epoch(1);
  CHECK(!at::equal(epoch0.get(0).images, epoch1.get(0).images));
  CHECK(at::equal(epoch0.get(0).images, epoch0.get(0).images));
  // Unshuffled: the annotation order.
  const auto sequential = collect(dataset, 2, false);
  CHECK(sequential[0].ids == std::vector<std::string>{"s0", "s1", "s2"});

  // Data-parallel shards. Decoding (unshuffled): each rank its contiguous block, whole, on
  // every pass over the loader (LibTorch resets the sampler each time). Training (shuffled):
  // each global batch of 4 split between the ranks, together the one-process order.
  auto ids_of = [](const ReportDataset& data, bool shuffle, Shard shard, size_t batch) {
    ReportLoaderOptions lo;
    lo.batch_size = batch;
    lo.shuffle = shuffle;
    lo.shard = shard;
    auto loader = make_report_loader(data, lo);
    std::vector<std::vector<std::string>> passes;
    for (int pass = 0; pass < 2; ++pass) {
      passes.emplace_back();
      for (auto& b : *loader) passes.back().insert(passes.back().end(), b.ids.begin(), b.ids.end());
    }
    CHECK(passes[0] == passes[1]);
    return passes[0];
  };
  CHECK(ids_of(dataset, false, {0, 3}, 64) == std::vector<std::string>{"s0", "s1", "s2"});
  CHECK(ids_of(dataset, false, {1, 3}, 64) == std::vector<std::string>{"s3", "s4", "s5"});
  CHECK(ids_of(dataset, false, {2, 3}, 2) == std::vector<std::string>{"s6", "s7", "s8", "s9"});
  const auto one_process = ids_of(dataset, true, {0, 1}, 4);
  const auto rank0 = ids_of(dataset, true, {0, 2}, 4), rank1 = ids_of(dataset, true, {1, 2}, 4);
  REQUIRE(rank0.size() == 5);  // batches of 4, 4 and 2 studies: 2 + 2 + 1 each
  REQUIRE(rank1.size() == 5);
  std::vector<std::string> merged;
  for (size_t b = 0, r0 = 0, r1 = 0; b < 3; ++b) {
    const size_t half = b < 2 ? 2 : 1;
    merged.insert(merged.end(), rank0.begin() + r0, rank0.begin() + r0 + half);
    merged.insert(merged.end(), rank1.begin() + r1, rank1.begin() + r1 + half);
    r0 += half;
    r1 += half;
  }
  CHECK(merged == one_process);
  CHECK(sharded_batches(10, 4, 2) == 3);
  CHECK(sharded_batches(9, 4, 2) == 2);  // a final batch of 1 cannot feed 2 ranks

  // MIMIC-CXR: one view, image_path[0] only.
  auto mimic_options = options;
  mimic_options.dataset = Dataset::mimic_cxr;
  const ReportDataset mimic(studies, tokenizer, mimic_options);
  CHECK(mimic.example(2).images.sizes() == at::IntArrayRef({1, 3, 32, 32}));
  CHECK(at::equal(mimic.example(2).images[0], dataset.example(2).images[0]));
  std::vector<Study> one_view = {studies[0]};
  one_view[0].image_paths.resize(1);
  CHECK_THROWS_WITH(ReportDataset(one_view, tokenizer, options), Catch::Contains("needs 2"));
  std::filesystem::remove(dir / "s0_0.png");
  CHECK_THROWS_WITH(epoch0.get(0), Catch::Contains("s0_0.png"));
}

// ---------------------------------------------------------------- synthetic data set

namespace {
// The words a report must contain for a finding (the labeller relies on plain phrasing).
std::vector<std::string> finding_keywords(const Finding& f) {
  switch (f.type) {
    case FindingType::cardiomegaly:
      return {"enlarged|cardiomegaly"};
    case FindingType::widened_mediastinum:
      return {"widen"};
    case FindingType::pleural_effusion:
      return {"pleural effusion", f.side == Side::bilateral ? "bilateral" : side_name(f.side),
              size_name(f.size)};
    case FindingType::pneumothorax:
      return {"pneumothorax", side_name(f.side), size_name(f.size)};
    case FindingType::lobar_opacity:
      return {"opacity", side_name(f.side), std::string(location_name(f.location)) + " lobe"};
    case FindingType::consolidation:
      return {"consolidation", side_name(f.side), std::string(location_name(f.location)) + " lobe"};
    case FindingType::nodule:
      return {"nodule", side_name(f.side), size_name(f.size)};
    case FindingType::atelectasis:
      return {"atelectasis", side_name(f.side), severity_name(f.severity)};
    case FindingType::pulmonary_edema:
      return {"pulmonary edema", severity_name(f.severity)};
    case FindingType::pleural_thickening:
      return {"pleural thickening", side_name(f.side)};
    case FindingType::rib_fracture:
      return {"rib fracture", side_name(f.side), f.severity == Severity::mild ? "healed" : "acute"};
    case FindingType::central_line:
      return {"central", side_name(f.side)};
    case FindingType::pacemaker:
      return {"pacemaker"};
    case FindingType::hyperinflation:
      return {"hyperinflat|hyperexpanded"};
    case FindingType::hiatal_hernia:
      return {"hiatal hernia", size_name(f.size)};
  }
  return {};
}

bool contains_any(const std::string& text, const std::string& alternatives) {
  size_t start = 0;
  while (true) {
    const size_t bar = alternatives.find('|', start);
    if (text.find(alternatives.substr(start, bar - start)) != std::string::npos) return true;
    if (bar == std::string::npos) return false;
    start = bar + 1;
  }
}
}  // namespace

TEST_CASE("synthetic: reports, findings and CheXpert labels agree", "[data]") {
  SyntheticOptions options;
  options.studies = 3000;
  options.seed = 17;
  const auto studies = generate_synthetic(options, /*render_images=*/false);
  REQUIRE(studies.size() == 3000);

  // Normal fraction 2/3: binomial sd sqrt(3000 * 2/9) = 25.8 studies, 4 sd = 0.035.
  size_t normal = 0;
  std::map<FindingType, int> type_counts;
  std::map<std::string, int> normal_reports;
  std::map<std::string, int> split_counts;
  for (const auto& s : studies) {
    normal += s.findings.empty();
    for (const auto& f : s.findings) ++type_counts[f.type];
    if (s.findings.empty()) ++normal_reports[s.study.report];
    ++split_counts[s.study.split];
  }
  CHECK(std::abs(static_cast<double>(normal) / 3000 - 2.0 / 3.0) < 0.035);
  CHECK(type_counts.size() == kFindingTypes);  // every finding type occurs
  CHECK(split_counts["train"] == 2100);
  CHECK(split_counts["val"] == 300);
  CHECK(split_counts["test"] == 600);
  // Many normal reports coincide: the most frequent one covers a sizeable share of normals.
  int most_common = 0;
  for (const auto& [report, count] : normal_reports) most_common = std::max(most_common, count);
  CHECK(most_common > static_cast<int>(normal) / 20);
  CHECK(normal_reports.size() < normal / 4);

  const auto& observations = kChexpertObservations;
  CHECK(std::string(observations[0]) == "No Finding");
  CHECK(std::string(observations[13]) == "Support Devices");
  std::vector<std::string> train_reports;
  for (const auto& s : studies) {
    INFO(s.study.id << ": " << s.study.report);
    // Labels: recomputed independently from the findings.
    std::array<int, 14> expected{};
    bool pathology = false;
    for (const auto& f : s.findings) {
      std::string label;
      switch (f.type) {
        case FindingType::cardiomegaly:
          label = "Cardiomegaly";
          break;
        case FindingType::widened_mediastinum:
          label = "Enlarged Cardiomediastinum";
          break;
        case FindingType::pleural_effusion:
          label = "Pleural Effusion";
          break;
        case FindingType::pneumothorax:
          label = "Pneumothorax";
          break;
        case FindingType::lobar_opacity:
          label = "Lung Opacity";
          break;
        case FindingType::consolidation:
          label = "Consolidation";
          break;
        case FindingType::nodule:
          label = "Lung Lesion";
          break;
        case FindingType::atelectasis:
          label = "Atelectasis";
          break;
        case FindingType::pulmonary_edema:
          label = "Edema";
          break;
        case FindingType::pleural_thickening:
          label = "Pleural Other";
          break;
        case FindingType::rib_fracture:
          label = "Fracture";
          break;
        case FindingType::central_line:
        case FindingType::pacemaker:
          label = "Support Devices";
          break;
        default:
          break;
      }
      for (size_t i = 0; i < observations.size(); ++i)
        if (label == observations[i]) expected[i] = 1;
      pathology = pathology || (!label.empty() && label != "Support Devices");
    }
    expected[0] = pathology ? 0 : 1;
    CHECK(s.chexpert == expected);
    CHECK(s.chexpert[7] == 0);  // Pneumonia is never asserted (documented)

    // Text: each finding is stated with its attributes; normals use the standard negations.
    const auto cleaned = clean_report_iu_xray(s.study.report);
    for (const auto& f : s.findings)
      for (const auto& keyword : finding_keywords(f)) {
        INFO(describe(f) << " keyword " << keyword);
        CHECK(contains_any(cleaned, keyword));
      }
    const bool has_pleural = std::any_of(s.findings.begin(), s.findings.end(), [](auto& f) {
      return f.type == FindingType::pleural_effusion || f.type == FindingType::pneumothorax;
    });
    if (!has_pleural)
      CHECK((cleaned.find("pneumothorax or pleural effusion") != std::string::npos ||
             cleaned.find("pleural effusion or pneumothorax") != std::string::npos));
    if (s.findings.empty()) CHECK(cleaned.find("enlarged") == std::string::npos);
    if (s.study.split == "train") train_reports.push_back(s.study.report);
  }
  // IU cleaning keeps every word: a vocabulary from the reports themselves has no <unk> use,
  // and de-identified tokens survive as "xxxx".
  const auto tokenizer = Tokenizer::build(train_reports, Dataset::iu_xray, 1);
  size_t xxxx = 0;
  for (const auto& report : train_reports) {
    for (auto id : tokenizer.encode(report)) REQUIRE(id != tokenizer.id_of("<unk>"));
    xxxx += clean_report_iu_xray(report).find("xxxx") != std::string::npos;
  }
  CHECK(xxxx > train_reports.size() / 10);
  CHECK(tokenizer.vocab_size() < 200);  // a small, closed vocabulary
}

TEST_CASE("synthetic: deterministic images that look like two chest views", "[data]") {
  SyntheticOptions options;
  options.studies = 24;
  options.seed = 3;
  options.image_size = 96;
  const auto a = generate_synthetic(options);
  const auto b = generate_synthetic(options);
  for (size_t i = 0; i < a.size(); ++i) {
    REQUIRE(a[i].study.report == b[i].study.report);
    REQUIRE(a[i].frontal.pixels == b[i].frontal.pixels);
    REQUIRE(a[i].lateral.pixels == b[i].lateral.pixels);
  }
  // Any study alone equals its place in the whole set; rendering does not change the content.
  const auto alone = generate_study(options, 17);
  CHECK(alone.frontal.pixels == a[17].frontal.pixels);
  CHECK(generate_study(options, 17, false).study.report == a[17].study.report);
  options.seed = 4;
  const auto other = generate_synthetic(options);
  int different = 0;
  for (size_t i = 0; i < a.size(); ++i) different += other[i].frontal.pixels != a[i].frontal.pixels;
  CHECK(different == static_cast<int>(a.size()));

  for (const auto& s : a) {
    REQUIRE(s.frontal.width == 96);
    REQUIRE(s.frontal.channels == 1);
    REQUIRE(s.lateral.height == 96);
    CHECK(s.frontal.pixels != s.lateral.pixels);
    // Anatomy: the lung fields (mid-height, a third in from each side) are darker than the
    // spine/mediastinum column at the same height.
    auto mean_box = [&](int x0, int y0) {
      double sum = 0;
      for (int y = y0; y < y0 + 6; ++y)
        for (int x = x0; x < x0 + 6; ++x) sum += s.frontal.at(x, y);
      return sum / 36;
    };
    const double right_lung = mean_box(96 * 33 / 100 - 3, 96 * 40 / 100);
    const double left_lung = mean_box(96 * 67 / 100 - 3, 96 * 40 / 100);
    const double mediastinum = mean_box(96 / 2 - 3, 96 * 40 / 100);
    CHECK(right_lung + 20 < mediastinum);
    CHECK(left_lung + 20 < mediastinum);
  }

  CHECK_THROWS_WITH(generate_study(options, 24), Catch::Contains("outside 0..23"));
  SyntheticOptions bad;
  bad.studies = 0;
  CHECK_THROWS_WITH(bad.validate(), Catch::Contains("studies must be at least 1"));
  bad = {};
  bad.image_size = 8;
  CHECK_THROWS_WITH(bad.validate(), Catch::Contains("image_size"));
  bad = {};
  bad.val_fraction = 0.6;
  bad.test_fraction = 0.5;
  CHECK_THROWS_WITH(bad.validate(), Catch::Contains("val_fraction"));
  bad = {};
  bad.normal_fraction = 1.5;
  CHECK_THROWS_WITH(bad.validate(), Catch::Contains("normal_fraction"));
  bad = {};
  bad.max_findings = 0;
  CHECK_THROWS_WITH(bad.validate(), Catch::Contains("max_findings"));
}

TEST_CASE("synthetic: written to disk it loads through the real loaders", "[data]") {
  SyntheticOptions options;
  options.studies = 30;
  options.seed = 9;
  options.image_size = 64;
  const auto studies = generate_synthetic(options);
  const auto dir = ihn_test::scratch_dir("synthetic_disk");
  write_synthetic(studies, dir.string());

  AnnotationOptions load;
  load.image_root = (dir / "images").string();
  load.decode_images = true;
  const auto annotation = load_annotation((dir / "annotation.json").string(), load);
  CHECK(annotation.train.size() == 21);
  CHECK(annotation.val.size() == 3);
  CHECK(annotation.test.size() == 6);
  CHECK(annotation.train[4].report == studies[4].study.report);
  const auto loaded = load_image_rgb((dir / "images" / studies[4].study.image_paths[1]).string());
  CHECK(loaded.width == 64);
  CHECK(to_rgb(studies[4].lateral).pixels == loaded.pixels);  // PNG is lossless

  const auto labels = read_json(dir / "labels.json");
  REQUIRE(labels["chexpert_observations"].size() == 14);
  REQUIRE(labels["studies"].size() == 30);
  for (size_t i = 0; i < 30; ++i) {
    const auto& entry = labels["studies"][i];
    CHECK(entry["id"] == studies[i].study.id);
    CHECK(entry["findings"].size() == studies[i].findings.size());
    for (size_t k = 0; k < 14; ++k)
      CHECK(entry["chexpert"][kChexpertObservations[k]].get<int>() == studies[i].chexpert[k]);
  }
  std::ifstream csv(dir / "labels.csv");
  std::string header;
  std::getline(csv, header);
  CHECK_THAT(header, Catch::StartsWith("id,split,No Finding,Enlarged Cardiomediastinum,"));

  // In memory, through ReportDataset and the loader.
  const auto tokenizer = Tokenizer::build(annotation.train_reports(), Dataset::iu_xray, 1);
  ReportDatasetOptions dataset_options;
  dataset_options.transform = TransformOptions::r2gen_train();
  dataset_options.transform.resize = 64;
  dataset_options.transform.crop = 56;
  const ReportDataset dataset(studies_of_split(studies, "train"), images_of_split(studies, "train"),
                              tokenizer, dataset_options);
  auto loader = make_report_loader(dataset, {8, 0, true, false});
  size_t seen = 0;
  for (auto& batch : *loader) {
    CHECK(batch.images.size(1) == 2);
    CHECK(batch.images.size(3) == 56);
    seen += batch.ids.size();
  }
  CHECK(seen == 21);
  // The one-call set-up the ports use: tokenizer + train/val/test datasets.
  const auto data =
      make_r2gen_data(to_annotation(studies), images_by_split(studies),
                      {1, 60, 5, dataset_options.transform, dataset_options.transform});
  CHECK(*data.train.size() == 21);
  CHECK(*data.val.size() == 3);
  CHECK(*data.test.size() == 6);
  CHECK(data.tokenizer.vocab_size() == tokenizer.vocab_size());
  CHECK(data.test.example(0).images.sizes() == at::IntArrayRef({2, 3, 56, 56}));
  const auto from_disk =
      make_r2gen_data(annotation, (dir / "images").string(),
                      {1, 60, 5, dataset_options.transform, dataset_options.transform});
  CHECK(at::equal(from_disk.train.example(3).images,
                  data.train.example(3).images));  // PNG is lossless
  CHECK_THROWS_WITH(
      make_r2gen_data(to_annotation(studies), std::map<std::string, InMemoryImages>{}),
      Catch::Contains("no in-memory images"));
  CHECK_THROWS_WITH(images_of_split(generate_synthetic(options, false), "train"),
                    Catch::Contains("without images"));

  CHECK_THROWS_WITH(contact_sheet({}, 2), Catch::Contains("no studies"));
  CHECK_THROWS_WITH(write_synthetic(generate_synthetic(options, false), (dir / "x").string()),
                    Catch::Contains("has no images"));
  CHECK_THROWS_WITH(to_normalized_tensor(Image::blank(4, 4, 2), {0, 0, 0}, {1, 1, 1}),
                    Catch::Contains("2 channels"));
  const auto sheet = contact_sheet({studies.begin(), studies.begin() + 4}, 2);
  CHECK(sheet.width > 2 * 2 * 64);
  CHECK(sheet.height > 2 * 64);
  Image canvas = Image::blank(20, 10, 1, 0);
  draw_text(canvas, 1, 1, "a?");
  CHECK(std::count(canvas.pixels.begin(), canvas.pixels.end(), 255) > 10);
}

// The synthetic set's ground truth is what the clinical-efficacy labeller must read back from
// the report text: exact, or clinical F1 on the synthetic set measures the labeller, not the
// generator. Both the raw report and the R2Gen-cleaned reference (what models are scored
// against) are checked.
TEST_CASE("the CheXpert-style labeller reproduces the synthetic labels exactly",
          "[synthetic][clinical]") {
  for (size_t o = 0; o < ihn_toolkit::data::kChexpertObservations.size(); ++o)
    REQUIRE(std::string(ihn_toolkit::data::kChexpertObservations[o]) ==
            ihn::eval::kObservations[o]);
  ihn_toolkit::data::SyntheticOptions options;
  options.studies = 3000;
  options.seed = 11;
  const auto studies = ihn_toolkit::data::generate_synthetic(options, /*render_images=*/false);
  int mismatched_reports = 0;
  for (const auto& s : studies) {
    for (const std::string& text :
         {s.study.report, ihn_toolkit::data::clean_report_iu_xray(s.study.report)}) {
      const auto labels = ihn::eval::label_report(text);
      bool same = true;
      for (int o = 0; o < ihn::eval::kNumObservations; ++o) {
        const int predicted = labels[static_cast<size_t>(o)] == ihn::eval::Label::positive;
        same = same && predicted == s.chexpert[static_cast<size_t>(o)];
      }
      if (!same && ++mismatched_reports <= 5) {
        std::string truth, got;
        for (int o = 0; o < ihn::eval::kNumObservations; ++o) {
          truth += std::to_string(s.chexpert[static_cast<size_t>(o)]);
          got += ihn::eval::label_name(labels[static_cast<size_t>(o)])[0];
        }
        UNSCOPED_INFO(s.study.id << ": \"" << text << "\" truth " << truth << " labelled " << got);
      }
    }
  }
  CHECK(mismatched_reports == 0);
}

// ------------------------------------------------------------------------------------------
// Offline negatives (ihn data negatives, --ihn official)

namespace {

// The documented method written out densely: every pair, no index, no pruning.
std::pair<std::vector<int64_t>, std::vector<double>> brute_force_negatives(
    const std::vector<std::string>& texts) {
  const size_t n = texts.size();
  std::map<std::string, size_t> vocabulary;
  std::vector<std::map<size_t, double>> tf(n);
  for (size_t i = 0; i < n; ++i)
    for (const auto& token : split_whitespace(texts[i]))
      tf[i][vocabulary.emplace(token, vocabulary.size()).first->second] += 1;
  std::vector<double> df(vocabulary.size(), 0);
  for (const auto& row : tf)
    for (const auto& [t, c] : row) df[t] += 1;
  std::vector<std::vector<double>> dense(n, std::vector<double>(vocabulary.size(), 0));
  for (size_t i = 0; i < n; ++i) {
    double norm = 0;
    for (const auto& [t, c] : tf[i]) {
      dense[i][t] = c * (std::log((1.0 + n) / (1.0 + df[t])) + 1);
      norm += dense[i][t] * dense[i][t];
    }
    for (auto& v : dense[i]) v /= std::sqrt(norm);
  }
  std::vector<int64_t> best(n, -1);
  std::vector<double> score(n, -1);
  for (size_t i = 0; i < n; ++i)
    for (size_t j = 0; j < n; ++j) {
      if (texts[j] == texts[i]) continue;
      double s = 0;
      for (size_t t = 0; t < vocabulary.size(); ++t) s += dense[i][t] * dense[j][t];
      if (s > score[i] + 1e-12) {  // ascending j: ties keep the lowest index
        score[i] = s;
        best[i] = static_cast<int64_t>(j);
      }
    }
  return {best, score};
}

}  // namespace

TEST_CASE("negatives: sparse TF-IDF retrieval equals brute force, never the same text", "[data]") {
  SyntheticOptions so;
  so.studies = 160;
  so.seed = 5;
  const auto studies = to_annotation(generate_synthetic(so, false)).train;
  std::vector<std::string> texts;
  for (const auto& s : studies) texts.push_back(clean_report_iu_xray(s.report));
  // Synthetic normals repeat a handful of templates: identical texts must be skipped.
  std::set<std::string> distinct(texts.begin(), texts.end());
  REQUIRE(distinct.size() < texts.size());
  const auto got = closest_different(texts);
  const auto [want_index, want_score] = brute_force_negatives(texts);
  REQUIRE(got.index.size() == texts.size());
  for (size_t i = 0; i < texts.size(); ++i) {
    INFO("study " << i << ": " << texts[i]);
    CHECK(got.index[i] == want_index[i]);
    CHECK(got.similarity[i] == Approx(want_score[i]).margin(1e-12));
    CHECK(texts[static_cast<size_t>(got.index[i])] != texts[i]);
  }
  // Deterministic: a second run gives the same pairs bit for bit.
  const auto again = closest_different(texts);
  CHECK(again.index == got.index);
  CHECK(again.similarity == got.similarity);
}

TEST_CASE("negatives: exclusion, ties, no shared term, and a hand-checked cosine", "[data]") {
  // 0 and 2 are identical; 1 and 3 tie for 0 (same text "a b c" twice): the lowest index, 1.
  const std::vector<std::string> texts = {"a b", "a b c", "a b", "a b c", "z"};
  const auto r = closest_different(texts);
  CHECK(r.index[0] == 1);
  CHECK(r.index[2] == 1);
  CHECK(r.index[1] == 0);
  CHECK(r.index[3] == 0);
  CHECK(r.index[4] == 0);  // shares no term: lowest-index different text, similarity 0
  CHECK(r.similarity[4] == 0.0);
  // By hand: N = 5, df(a) = df(b) = 4, df(c) = 2: idf = ln(6/5)+1, ln(6/3)+1.
  const double ia = std::log(6.0 / 5.0) + 1, ic = std::log(2.0) + 1;
  const double cosine = 2 * ia * ia / (std::sqrt(2 * ia * ia) * std::sqrt(2 * ia * ia + ic * ic));
  CHECK(r.similarity[0] == Approx(cosine).epsilon(1e-12));
  // Nothing different to pick: -1 from the retrieval, a clear error from the miner.
  CHECK(closest_different({"same", "same"}).index == std::vector<int64_t>{-1, -1});
  std::vector<Study> same(3, Study{"x", "Same report.", {"0.png", "1.png"}, "train"});
  for (size_t i = 0; i < same.size(); ++i) same[i].id = "s" + std::to_string(i);
  CHECK_THROWS_WITH(mine_negatives(same, Dataset::iu_xray, "mine.json"),
                    Catch::Contains("mine.json") && Catch::Contains("fewer than two distinct"));
}

TEST_CASE("negatives: the file round-trips and bad files are named", "[data]") {
  const auto dir = ihn_test::scratch_dir("negatives");
  SyntheticOptions so;
  so.studies = 40;
  so.seed = 3;
  const auto train = to_annotation(generate_synthetic(so, false)).train;
  const auto mined = mine_negatives(train, Dataset::iu_xray, "synth");
  const auto path = (dir / "negatives.json").string();
  save_negatives(mined, path);
  const auto loaded = load_negatives(path);
  CHECK(loaded.method == "tfidf-cosine");
  CHECK(loaded.version == 1);
  const auto map = loaded.by_id();
  REQUIRE(map.size() == train.size());
  for (size_t i = 0; i < mined.ids.size(); ++i)
    CHECK(map.at(mined.ids[i]) == mined.negative_ids[i]);
  auto write = [&](const std::string& name, const std::string& text) {
    const auto p = (dir / name).string();
    std::ofstream(p) << text;
    return p;
  };
  const auto broken = write("broken.json", "{\"method\": ");
  CHECK_THROWS_WITH(load_negatives(broken),
                    Catch::Contains("broken.json") && Catch::Contains("not valid JSON"));
  const auto entry = write(
      "entry.json", R"({"method":"tfidf-cosine","version":1,"negatives":{"a":{"negative":3}}})");
  CHECK_THROWS_WITH(load_negatives(entry),
                    Catch::Contains("entry.json") && Catch::Contains("entry 'a'"));
  const auto newer = write("newer.json", R"({"method":"x","version":2,"negatives":{}})");
  CHECK_THROWS_WITH(load_negatives(newer),
                    Catch::Contains("newer.json") && Catch::Contains("newer"));
  CHECK_THROWS_WITH(load_negatives((dir / "absent.json").string()),
                    Catch::Contains("absent.json") && Catch::Contains("not found"));
}

TEST_CASE("negatives: the real IU X-Ray training split, one negative per study", "[data][shared]") {
  // Functional only: how long mining takes is a benchmark's question, not a unit test's.
  const auto ann = ihn_test::shared_dir() / "data" / "iu_xray" / "annotation.json";
  const auto train = load_annotation(ann.string()).train;
  const auto mined = mine_negatives(train, Dataset::iu_xray, ann.string());
  CHECK(mined.ids.size() == train.size());
  // Spot-check against brute force on the first 300 studies (a different N changes the idf,
  // so the subset is mined on its own).
  std::vector<std::string> texts;
  for (size_t i = 0; i < 300; ++i) texts.push_back(clean_report_iu_xray(train[i].report));
  const auto got = closest_different(texts);
  const auto want = brute_force_negatives(texts);
  CHECK(got.index == want.first);
}

// ---------------------------------------------------------------- fuzzing finds (issue 13)

namespace {
std::filesystem::path fuzz_regressions(const std::string& target) {
  return std::filesystem::path(__FILE__).parent_path().parent_path() / "fuzz" / "regressions" /
         target;
}
std::string read_all(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}
}  // namespace

TEST_CASE("fuzz finds: JPEG Huffman tables and PNG chunks stb mishandles are refused first",
          "[data]") {
  // fuzz/fuzz_image found them (UBSan: stb_image.h:1990, index 257 of stbi_uc[257]): a DHT
  // segment declaring more than 256 codes, in the headers, cut short by the file's end, or
  // after fill bytes before SOI. Each file starts with the fuzz target's components byte.
  size_t checked = 0;
  for (const auto& entry : std::filesystem::directory_iterator(fuzz_regressions("image"))) {
    if (entry.path().extension() != ".jpg") continue;
    const auto bytes = read_all(entry.path());
    REQUIRE(bytes.size() > 1);
    CHECK_THROWS_WITH(decode_image(reinterpret_cast<const unsigned char*>(bytes.data()) + 1,
                                   bytes.size() - 1, entry.path().filename().string(), 3),
                      Catch::Contains(entry.path().filename().string()) &&
                          Catch::Contains("Huffman table declares"));
    ++checked;
  }
  CHECK(checked >= 3);
  // fuzz/fuzz_image: a PNG chunk declaring 2 GB made stb allocate 2 GB before reading it.
  const auto png = read_all(fuzz_regressions("image") / "png_chunk_declares_2GB.png");
  REQUIRE(png.size() > 1);
  CHECK_THROWS_WITH(decode_image(reinterpret_cast<const unsigned char*>(png.data()) + 1,
                                 png.size() - 1, "chunk.png", 3),
                    Catch::Contains("chunk.png") && Catch::Contains("past the file's end"));
}

TEST_CASE("fuzz finds: an annotation whose number overflows is an AnnotationError", "[data]") {
  // fuzz/fuzz_annotation: nlohmann's out_of_range (not a parse_error) escaped parse_annotation.
  CHECK_THROWS_AS(parse_annotation("11111111e11111", "overflow.json"), AnnotationError);
  CHECK_THROWS_WITH(parse_annotation("{\"train\": [1e999]}", "overflow.json"),
                    Catch::Contains("overflow.json") && Catch::Contains("malformed JSON"));
}
