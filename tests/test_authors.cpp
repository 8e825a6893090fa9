// Authors' checkpoints (toolkit/train/authors_checkpoint.hpp): architecture detection
// and configuration inference on official key sets, the file sniffing, and — with Python's
// torch — `.pth` files written in the official layout, generated from by the library and by
// `ihn generate` / `ihn evaluate`, compared with our model holding the same weights.
#include "test_common.hpp"

#include <ihn/io/pth.hpp>

#include "cmn.hpp"
#include "data/annotation.hpp"
#include "data/image.hpp"
#include "data/tokenizer.hpp"
#include "r2gen.hpp"
#include "train/authors_checkpoint.hpp"
#include "train/models.hpp"
#include "train/train.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <sstream>

namespace {

namespace fs = std::filesystem;
namespace authors = ihn_toolkit::train::authors;
using authors::Architecture;
using authors::ShapeMap;
using ihn_examples::r2gen::R2GenModel;
using ihn_examples::r2gen::R2GenOptions;
using ihn_toolkit::train::TrainError;

/// The state-dict names and shapes of our R2Gen port, which equal the official ones.
ShapeMap r2gen_shapes(const R2GenOptions& options) {
  R2GenModel model(options);
  ShapeMap out;
  for (const auto& p : model->named_parameters())
    out.emplace_back(p.key(), p.value().sizes().vec());
  for (const auto& b : model->named_buffers()) out.emplace_back(b.key(), b.value().sizes().vec());
  return out;
}

/// R2GenCMN's BaseCMNModel state dict (modules/base_cmn.py): the shared ResNet extractor,
/// att_embed, a standard Transformer (LayerNorm a_2/b_2), the memory attention registered twice
/// (`cmn` and `model.cmn`), both positional tables and the memory matrix. ITHN adds its contrastive
/// heads.
ShapeMap cmn_shapes(int depth, int d_model, int d_ff, int layers, int vocab, int cmm_size,
                    int cmm_dim, int positions, bool ithn) {
  ShapeMap out;
  for (const auto& e : r2gen_shapes(R2GenOptions(4).visual_depth(depth)))
    if (e.first.rfind("visual_extractor.", 0) == 0) out.push_back(e);
  const int64_t d = d_model, vf = ihn_toolkit::nn::resnet_out_channels(depth);
  auto linear = [&out](const std::string& name, int64_t o, int64_t i) {
    out.push_back({name + ".weight", {o, i}});
    out.push_back({name + ".bias", {o}});
  };
  auto norm = [&out, d](const std::string& name) {
    out.push_back({name + ".a_2", {d}});
    out.push_back({name + ".b_2", {d}});
  };
  auto attention = [&](const std::string& name) {
    for (int k = 0; k < 4; ++k) linear(name + ".linears." + std::to_string(k), d, d);
  };
  const std::string ed = "encoder_decoder.";
  linear(ed + "att_embed.0", d, vf);
  attention(ed + "cmn");
  for (int l = 0; l < layers; ++l) {
    const std::string e = ed + "model.encoder.layers." + std::to_string(l);
    attention(e + ".self_attn");
    linear(e + ".feed_forward.w_1", d_ff, d);
    linear(e + ".feed_forward.w_2", d, d_ff);
    for (int s = 0; s < 2; ++s) norm(e + ".sublayer." + std::to_string(s) + ".norm");
  }
  norm(ed + "model.encoder.norm");
  for (int l = 0; l < layers; ++l) {
    const std::string x = ed + "model.decoder.layers." + std::to_string(l);
    attention(x + ".self_attn");
    attention(x + ".src_attn");
    linear(x + ".feed_forward.w_1", d_ff, d);
    linear(x + ".feed_forward.w_2", d, d_ff);
    for (int s = 0; s < 3; ++s) norm(x + ".sublayer." + std::to_string(s) + ".norm");
  }
  norm(ed + "model.decoder.norm");
  out.push_back({ed + "model.src_embed.0.pe", {1, positions, d}});
  out.push_back({ed + "model.tgt_embed.0.lut.weight", {vocab + 1, d}});
  out.push_back({ed + "model.tgt_embed.1.pe", {1, positions, d}});
  attention(ed + "model.cmn");
  linear(ed + "logit", vocab + 1, d);
  out.push_back({ed + "memory_matrix", {cmm_size, cmm_dim}});
  if (ithn) {
    out.push_back({"img_projection.linear1.weight", {512, vf}});
    out.push_back({"text_projection.linear1.weight", {512, d}});
    out.push_back({"temp_1", {}});
    out.push_back({"temp_3", {}});
  }
  return out;
}

ShapeMap without(ShapeMap shapes, const std::string& key) {
  shapes.erase(
      std::remove_if(shapes.begin(), shapes.end(), [&](const auto& e) { return e.first == key; }),
      shapes.end());
  return shapes;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const TrainError& e) {
    return e.what();
  }
  return "(no TrainError)";
}

}  // namespace

TEST_CASE("authors: R2Gen keys are recognised and every size inferred", "[authors]") {
  const auto options = R2GenOptions(37)
                           .visual_depth(34)
                           .d_model(48)
                           .d_ff(80)
                           .num_layers(2)
                           .rm_num_slots(2)
                           .rm_d_model(48)  // R2Gen's memory takes the d_model-sized embeddings
                           .max_positions(300);
  const auto shapes = r2gen_shapes(options);
  CHECK(authors::detect_architecture(shapes, "r.pth") == Architecture::r2gen);
  const auto c = authors::infer_config(shapes, "r.pth");
  CHECK(c.architecture == Architecture::r2gen);
  CHECK_FALSE(c.data_parallel);
  CHECK(c.visual_depth == 34);
  CHECK(c.d_vf == 512);
  CHECK(c.d_model == 48);
  CHECK(c.d_ff == 80);
  CHECK(c.num_layers == 2);
  CHECK(c.vocab_size == 37);
  CHECK(c.max_positions == 300);
  CHECK(c.rm_num_slots == 2);
  CHECK(c.rm_d_model == 48);
  CHECK(c.num_heads == 8);  // not in the shapes: the official default
  CHECK(c.num_heads_from_default);
  CHECK(c.rm_num_heads == 8);
  CHECK(c.rm_num_heads_from_default);
  CHECK(c.training_only_keys.empty());

  ihn_toolkit::train::AuthorsCheckpointOptions o;
  o.num_heads = 4;
  o.rm_num_heads = 3;
  const auto given = authors::infer_config(shapes, "r.pth", o);
  CHECK(given.num_heads == 4);
  CHECK_FALSE(given.num_heads_from_default);
  CHECK(given.rm_num_heads == 3);
  CHECK_FALSE(given.rm_num_heads_from_default);

  // Every depth torchvision offers, told apart by blocks per stage and the block type.
  for (int depth : {18, 50, 101, 152}) {
    INFO(depth);
    const auto c2 = authors::infer_config(r2gen_shapes(R2GenOptions(5).visual_depth(depth)), "x");
    CHECK(c2.visual_depth == depth);
    CHECK(c2.d_vf == (depth >= 50 ? 2048 : 512));
  }

  // nn.DataParallel's prefix.
  ShapeMap prefixed;
  for (const auto& e : shapes) prefixed.emplace_back("module." + e.first, e.second);
  const auto p = authors::infer_config(prefixed, "dp.pth");
  CHECK(p.data_parallel);
  CHECK(p.d_model == 48);
  CHECK(p.rm_num_slots == 2);
}

TEST_CASE("authors: R2GenCMN and ITHN keys are recognised and sized", "[authors]") {
  const auto cmn = cmn_shapes(101, 64, 96, 3, 760, 256, 64, 5000, false);
  CHECK(authors::detect_architecture(cmn, "c.pth") == Architecture::r2gencmn);
  const auto c = authors::infer_config(cmn, "c.pth");
  CHECK(c.architecture == Architecture::r2gencmn);
  CHECK(c.visual_depth == 101);
  CHECK(c.d_vf == 2048);
  CHECK(c.d_model == 64);
  CHECK(c.d_ff == 96);
  CHECK(c.num_layers == 3);
  CHECK(c.vocab_size == 760);
  CHECK(c.max_positions == 5000);
  CHECK(c.cmm_size == 256);
  CHECK(c.cmm_dim == 64);
  CHECK(c.topk == 32);
  CHECK(c.topk_from_default);
  CHECK(c.rm_num_slots == 0);
  CHECK(c.training_only_keys.empty());
  CHECK_THAT(c.describe(), Catch::Contains("R2GenCMN") && Catch::Contains("topk 32 (official"));

  ihn_toolkit::train::AuthorsCheckpointOptions o;
  o.topk = 8;
  o.num_heads = 4;
  const auto ithn_shapes = cmn_shapes(50, 32, 64, 1, 100, 128, 32, 700, true);
  CHECK(authors::detect_architecture(ithn_shapes, "i.pth") == Architecture::ithn);
  const auto i = authors::infer_config(ithn_shapes, "i.pth", o);
  CHECK(i.architecture == Architecture::ithn);
  CHECK(i.visual_depth == 50);
  CHECK(i.d_model == 32);
  CHECK(i.d_ff == 64);
  CHECK(i.num_layers == 1);
  CHECK(i.vocab_size == 100);
  CHECK(i.max_positions == 700);
  CHECK(i.cmm_size == 128);
  CHECK(i.cmm_dim == 32);
  CHECK(i.topk == 8);
  CHECK_FALSE(i.topk_from_default);
  CHECK(i.num_heads == 4);
  CHECK(i.ithn_projection_dim == 512);
  CHECK(i.ithn_image_projection_in == 2048);
  CHECK(i.training_only_keys.size() == 4);
}

TEST_CASE("authors: unknown or broken key sets fail naming the file and key", "[authors]") {
  ShapeMap foreign = {{"backbone.fc.weight", {10, 4}}, {"backbone.fc.bias", {10}}};
  CHECK_THAT(error_of([&] { authors::detect_architecture(foreign, "other.pth"); }),
             Catch::Contains("other.pth") && Catch::Contains("none of R2Gen") &&
                 Catch::Contains("backbone.fc.weight"));
  const auto shapes = r2gen_shapes(R2GenOptions(20).visual_depth(18).d_model(32).rm_d_model(32));
  CHECK_THAT(error_of([&] {
               authors::infer_config(without(shapes, "encoder_decoder.att_embed.0.weight"),
                                     "a.pth");
             }),
             Catch::Contains("a.pth") && Catch::Contains("encoder_decoder.att_embed.0.weight"));
  CHECK_THAT(error_of([&] {
               authors::infer_config(without(shapes, "encoder_decoder.logit.weight"), "a.pth");
             }),
             Catch::Contains("encoder_decoder.logit.weight"));
  ihn_toolkit::train::AuthorsCheckpointOptions o;
  o.num_heads = 5;  // 32 is not divisible by 5
  CHECK_THAT(error_of([&] { authors::infer_config(shapes, "a.pth", o); }),
             Catch::Contains("--num-heads"));
  // A visual extractor with a stage cut short is no torchvision ResNet.
  ShapeMap truncated;
  for (const auto& e : shapes)
    if (e.first.rfind("visual_extractor.model.7.1.", 0) != 0) truncated.push_back(e);
  CHECK_THAT(error_of([&] { authors::infer_config(truncated, "a.pth"); }),
             Catch::Contains("2, 2, 2, 1 basic blocks"));
}

TEST_CASE("authors: the official fixtures' key sets infer their run configuration",
          "[authors][shared]") {
  for (const char* name : {"r2gen_tiny", "cmn_tiny"}) {
    INFO(name);
    const auto dir = ihn_test::fixtures_dir() / name;
    std::ifstream in(dir / "weights_fill.json");
    REQUIRE(in);
    const auto fill = nlohmann::json::parse(in);
    ShapeMap shapes;
    for (const auto& k : fill["keys"]) {
      shapes.emplace_back(k["key"].get<std::string>(), k["shape"].get<std::vector<int64_t>>());
      if (k.contains("aliases"))
        for (const auto& a : k["aliases"])
          shapes.emplace_back(a.get<std::string>(), k["shape"].get<std::vector<int64_t>>());
    }
    for (const auto& k : fill["skipped_integer_keys"])
      shapes.emplace_back(k.get<std::string>(), std::vector<int64_t>{});
    std::ifstream cin(dir / "config.json");
    REQUIRE(cin);
    const auto cfg = nlohmann::json::parse(cin);
    const auto& args = cfg.contains("args") ? cfg["args"] : cfg;
    // The run's vocabulary is the tokenizer's, not an argument: the logit width of its
    // teacher-forced outputs (V + 1) says it.
    std::ifstream pt(dir / "outputs.pt", std::ios::binary);
    REQUIRE(pt);
    const std::vector<char> bytes((std::istreambuf_iterator<char>(pt)), {});
    const auto vocab_size =
        torch::pickle_load(bytes).toGenericDict().at("tf_logprobs").toTensor().size(-1) - 1;
    const auto c = authors::infer_config(shapes, name);
    CHECK(c.architecture == (cfg.at("arch").get<std::string>() == "cmn" ? Architecture::r2gencmn
                                                                        : Architecture::r2gen));
    CHECK("resnet" + std::to_string(c.visual_depth) == args["visual_extractor"].get<std::string>());
    CHECK(c.d_model == args["d_model"].get<int>());
    CHECK(c.d_ff == args["d_ff"].get<int>());
    CHECK(c.num_layers == args["num_layers"].get<int>());
    CHECK(c.d_vf == args["d_vf"].get<int>());
    CHECK(c.vocab_size == vocab_size);
    if (c.architecture == Architecture::r2gencmn) {
      CHECK(c.cmm_size == args["cmm_size"].get<int>());
      CHECK(c.cmm_dim == args["cmm_dim"].get<int>());
    } else {
      CHECK(c.rm_num_slots == args["rm_num_slots"].get<int>());
      CHECK(c.rm_d_model == args["rm_d_model"].get<int>());
      // The model built from the inferred config has exactly the official entries and shapes,
      // so the official weights load with nothing missing, unexpected or mis-shaped.
      const auto built = r2gen_shapes(R2GenOptions(c.vocab_size)
                                          .visual_depth(c.visual_depth)
                                          .d_model(c.d_model)
                                          .d_ff(c.d_ff)
                                          .num_heads(args["num_heads"].get<int>())
                                          .num_layers(c.num_layers)
                                          .rm_num_slots(c.rm_num_slots)
                                          .rm_num_heads(args["rm_num_heads"].get<int>())
                                          .rm_d_model(c.rm_d_model)
                                          .max_positions(c.max_positions));
      CHECK(std::map<std::string, std::vector<int64_t>>(built.begin(), built.end()) ==
            std::map<std::string, std::vector<int64_t>>(shapes.begin(), shapes.end()));
    }
  }
}

TEST_CASE("authors: checkpoints are told apart by content", "[authors]") {
  const auto dir = ihn_test::scratch_dir("authors_sniff");
  ihn::StateDict ours;
  ours["config.json"] = torch::zeros({3}, torch::kUInt8);
  ours["vocab.json"] = torch::zeros({3}, torch::kUInt8);
  ours["model.w"] = torch::ones({2});
  ihn::save_state(ours, dir / "best.pth");  // the extension does not matter
  CHECK(authors::sniff_checkpoint((dir / "best.pth").string()) == authors::CheckpointFormat::ihn);
  ihn::StateDict theirs;
  theirs["state_dict.w"] = torch::ones({2});
  ihn::save_state(theirs, dir / "model_best.pt");
  CHECK(authors::sniff_checkpoint((dir / "model_best.pt").string()) ==
        authors::CheckpointFormat::pytorch);
  { std::ofstream(dir / "legacy.pth", std::ios::binary) << "\x80\x02}q\x00."; }
  CHECK(authors::sniff_checkpoint((dir / "legacy.pth").string()) ==
        authors::CheckpointFormat::pytorch);
  { std::ofstream(dir / "notes.pth") << "not a checkpoint at all\n"; }
  const auto garbage = (dir / "notes.pth").string();
  CHECK_THAT(error_of([&] { authors::sniff_checkpoint(garbage); }),
             Catch::Contains(garbage) && Catch::Contains("neither"));
  { std::ofstream(dir / "fake.zip", std::ios::binary) << "PK\x03\x04garbage"; }
  CHECK_THAT(error_of([&] { authors::sniff_checkpoint((dir / "fake.zip").string()); }),
             Catch::Contains("fake.zip"));
  // One of ours cut short (issue 13, item 12): truncated, not "neither ... nor".
  std::filesystem::copy_file(dir / "best.pth", dir / "cut.pth",
                             std::filesystem::copy_options::overwrite_existing);
  std::filesystem::resize_file(dir / "cut.pth", std::filesystem::file_size(dir / "cut.pth") / 2);
  const auto cut_error = error_of([&] { authors::sniff_checkpoint((dir / "cut.pth").string()); });
  CHECK_THAT(cut_error, Catch::Contains("cut.pth") && Catch::Contains("truncated or corrupt"));
  CHECK_THAT(cut_error, !Catch::Contains("neither"));
  // The whole path: generate on garbage names the file.
  ihn_toolkit::train::GenerateOptions g;
  g.checkpoint = garbage;
  g.images = {garbage};
  CHECK_THAT(error_of([&] { ihn_toolkit::train::generate_report(g); }),
             Catch::Contains(garbage) && Catch::Contains("neither"));
}

TEST_CASE("authors: the evaluation images get R2Gen's test transform", "[authors]") {
  ihn_toolkit::train::AuthorsCheckpointOptions o;
  const auto c = authors::to_train_config(authors::AuthorsConfig{}, o, "a.json", "imgs");
  CHECK(c.data.crop == 224);
  CHECK(c.data.resize == 224);
  CHECK(c.data.threshold == 3);
  CHECK(c.data.max_seq_length == 60);
  CHECK(c.eval.beam_size == 3);
  o.dataset = "mimic_cxr";
  const auto m = authors::to_train_config(authors::AuthorsConfig{}, o, "a.json", "imgs");
  CHECK(m.data.threshold == 10);
  CHECK(m.data.max_seq_length == 100);
  // What our evaluation transform does with the config (train.cpp: resize = crop = c.crop)
  // equals Resize((224, 224)) + ToTensor + Normalize(ImageNet) written out.
  auto image = ihn_toolkit::data::Image::blank(300, 180, 3);
  for (size_t i = 0; i < image.pixels.size(); ++i) image.pixels[i] = (i * 37 + i / 5) % 256;
  auto t = ihn_toolkit::data::TransformOptions::r2gen_eval();
  t.resize = c.data.crop;
  t.crop = c.data.crop;
  std::mt19937_64 rng(0);
  const auto got = ihn_toolkit::data::ImageTransform(t)(image, rng);
  auto resized = ihn_toolkit::data::resize_bilinear(image, 224, 224);
  auto expected = torch::from_blob(resized.pixels.data(), {224, 224, 3}, torch::kUInt8)
                      .permute({2, 0, 1})
                      .to(torch::kFloat32)
                      .div(255.0);
  expected = (expected - torch::tensor({0.485f, 0.456f, 0.406f}).view({3, 1, 1})) /
             torch::tensor({0.229f, 0.224f, 0.225f}).view({3, 1, 1});
  REQUIRE(got.sizes() == expected.sizes());
  // float32 rounding of (x / 255 - mean) / std only.
  CHECK(torch::allclose(got, expected, 0, 1e-5));
}

// ------------------------------------------------------------------------------------------
// Python-written checkpoints in the official layout

namespace {

/// Fills the names/shapes/dtypes the C++ side exports with seeded values, then saves them as
/// the official trainer does (zip and legacy), plus a DataParallel copy and one missing a key.
const char* kMakeAuthorsCheckpoints = R"PY(
import collections, json, math, sys, torch
out = sys.argv[1]
spec = json.load(open(out + '/keys.json'))
g = torch.Generator().manual_seed(20240607)
sd = collections.OrderedDict()
for e in spec:
    name, shape, dtype = e['name'], e['shape'], e['dtype']
    if dtype == 'int64':
        sd[name] = torch.tensor(7, dtype=torch.int64)
        continue
    if name.endswith('running_var'):
        t = 0.5 + torch.rand(shape, generator=g)
    elif len(shape) >= 2:
        fan_in = math.prod(shape[1:])
        t = torch.randn(shape, generator=g) / math.sqrt(fan_in)
    else:
        t = 0.1 * torch.randn(shape, generator=g)
        if name.endswith(('.gamma', '.a_2')) or (name.startswith('visual_extractor') and name.endswith('.weight')):
            t = t + 1.0   # layer and batch norm scales near 1
    sd[name] = t.to(torch.float32)
# Keep EOS (id 0) unlikely so the report has content worth comparing.
sd['encoder_decoder.logit.bias'][0] = -30.0
params = [v for k, v in sd.items() if v.dtype == torch.float32 and not k.endswith(('running_mean', 'running_var', '.pe'))]
opt = torch.optim.Adam([torch.nn.Parameter(p.clone()) for p in params[:3]], lr=1e-4, amsgrad=True)
ckpt = {'epoch': 12, 'state_dict': sd, 'optimizer': opt.state_dict(), 'monitor_best': 0.171}
torch.save(ckpt, out + '/model_best.pth')
torch.save(ckpt, out + '/model_legacy.pth', _use_new_zipfile_serialization=False)
torch.save({'epoch': 1, 'state_dict': collections.OrderedDict(('module.' + k, v) for k, v in sd.items()),
            'optimizer': {}, 'monitor_best': 0.0}, out + '/model_dataparallel.pth')
missing = collections.OrderedDict((k, v) for k, v in sd.items() if k != 'encoder_decoder.model.rm.W.bias')
torch.save({'epoch': 1, 'state_dict': missing, 'optimizer': {}, 'monitor_best': 0.0}, out + '/model_missing.pth')
)PY";

using ihn_test::python;

/// Reports that repeat enough words for the IU X-Ray threshold 3.
const char* const kReports[] = {
    "The heart is normal in size. The lungs are clear. No pleural effusion.",
    "Heart size is normal. Lungs are clear without focal consolidation.",
    "The heart is enlarged. Small left pleural effusion. No pneumothorax.",
    "Normal heart size. The lungs are clear. No pneumothorax or effusion.",
    "Stable cardiomegaly. Lungs are clear. No focal consolidation."};

void write_study_images(const fs::path& dir, int seed) {
  fs::create_directories(dir);
  for (int view = 0; view < 2; ++view) {
    auto img = ihn_toolkit::data::Image::blank(96 + 8 * view, 80, 1);
    for (int y = 0; y < img.height; ++y)
      for (int x = 0; x < img.width; ++x)
        img.at(x, y) = static_cast<uint8_t>((x * (3 + seed) + y * (5 + view) + seed * 17) % 256);
    ihn_toolkit::data::write_png(img, (dir / (std::to_string(view) + ".png")).string());
  }
}

/// annotation.json with 10 train, 1 val and 2 test studies, images under `dir`/images.
void write_annotation(const fs::path& dir) {
  nlohmann::json ann = {{"train", nlohmann::json::array()},
                        {"val", nlohmann::json::array()},
                        {"test", nlohmann::json::array()}};
  auto add = [&](const std::string& split, int i) {
    const std::string id = split + "_" + std::to_string(i);
    write_study_images(dir / "images" / id, i + (split == "test" ? 50 : 0));
    ann[split].push_back({{"id", id},
                          {"report", kReports[i % 5]},
                          {"image_path", {id + "/0.png", id + "/1.png"}},
                          {"split", split}});
  };
  for (int i = 0; i < 10; ++i) add("train", i);
  add("val", 0);
  add("test", 0);
  add("test", 1);
  std::ofstream(dir / "annotation.json") << ann.dump(1);
}

/// What generation must give: the file loaded straight into our port (ihn::io), R2Gen's test
/// transform, beam search 3, length 60, decoded with the vocabulary built from the annotation.
/// Every state_dict key of `model` with its shape and dtype: what the Python side fills.
void write_key_spec(const torch::nn::Module& model, const fs::path& file) {
  nlohmann::json keys = nlohmann::json::array();
  auto add = [&](const std::string& name, const at::Tensor& t) {
    keys.push_back({{"name", name},
                    {"shape", t.sizes().vec()},
                    {"dtype", t.scalar_type() == torch::kLong ? "int64" : "float32"}});
  };
  for (const auto& p : model.named_parameters()) add(p.key(), p.value());
  for (const auto& b : model.named_buffers()) add(b.key(), b.value());
  std::ofstream(file) << keys.dump();
}

/// Our model built from `options`, loaded from `pth` directly (ihn::io), decoding the images.
template <class Model, class Options>
std::string direct_report(const Options& options, const std::string& pth,
                          const ihn_toolkit::data::Tokenizer& tok,
                          const std::vector<std::string>& images,
                          const ihn::io::LoadOptions& load = {}) {
  Model model(options);
  const auto report = ihn::io::load_pth(*model, pth, load);
  REQUIRE(report.ok());
  model->eval();
  torch::NoGradGuard no_grad;
  auto t = ihn_toolkit::data::TransformOptions::r2gen_eval();
  t.resize = 224;
  t.crop = 224;
  std::mt19937_64 rng(0);
  std::vector<at::Tensor> views;
  for (const auto& path : images)
    views.push_back(
        ihn_toolkit::data::ImageTransform(t)(ihn_toolkit::data::load_image_rgb(path), rng));
  auto res =
      model->beam_search(torch::stack(views).unsqueeze(0),
                         ihn_examples::r2gen::BeamSearchOptions().beam_size(3).max_length(60));
  auto seq = res.seq[0].contiguous();
  const int64_t* ids = seq.template data_ptr<int64_t>();
  return tok.decode(std::vector<int64_t>(ids, ids + seq.numel()));
}

std::string run_capture(const std::string& command, int* status) {
  std::string out;
  FILE* pipe = popen(command.c_str(), "r");
  REQUIRE(pipe != nullptr);
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, pipe)) out.append(buf, n);
  *status = pclose(pipe);
  return out;
}

}  // namespace

TEST_CASE("authors: official-layout R2Gen .pth generates as our model with the same weights",
          "[authors][python]") {
  if (!ihn_test::python_available("torch")) return;
  const auto dir = ihn_test::scratch_dir("authors_pth");
  write_annotation(dir);
  const auto ann = (dir / "annotation.json").string();
  const auto annotation = ihn_toolkit::data::load_annotation(ann);
  const auto tok = ihn_toolkit::data::Tokenizer::build(annotation.train_reports(),
                                                       ihn_toolkit::data::Dataset::iu_xray, 3);
  REQUIRE(tok.vocab_size() > 5);
  // A small config whose heads are the official defaults (8, 8), so nothing needs overriding.
  const auto options = R2GenOptions(tok.vocab_size())
                           .visual_depth(18)
                           .d_model(32)
                           .d_ff(48)
                           .num_layers(2)
                           .rm_num_slots(2)
                           .rm_d_model(32)
                           .max_positions(120);
  {
    R2GenModel model(options);
    write_key_spec(*model, dir / "keys.json");
  }
  { std::ofstream(dir / "make.py") << kMakeAuthorsCheckpoints; }
  const auto cmd = python() + " " + (dir / "make.py").string() + " " + dir.string();
  REQUIRE(std::system(cmd.c_str()) == 0);

  const auto zip = (dir / "model_best.pth").string();
  const auto study = dir / "images" / "test_0";
  const std::vector<std::string> images = {(study / "0.png").string(), (study / "1.png").string()};
  const auto expected = direct_report<R2GenModel>(options, zip, tok, images);
  CHECK(expected.size() > 20);

  SECTION("inference from the file") {
    auto loaded = authors::read_authors_checkpoint(zip, ann, "", {});
    const auto& c = loaded.config;
    CHECK(c.architecture == Architecture::r2gen);
    CHECK(c.visual_depth == 18);
    CHECK(c.d_vf == 512);
    CHECK(c.d_model == 32);
    CHECK(c.d_ff == 48);
    CHECK(c.num_layers == 2);
    CHECK(c.rm_num_slots == 2);
    CHECK(c.rm_d_model == 32);
    CHECK(c.num_heads == 8);
    CHECK(c.rm_num_heads == 8);
    CHECK(c.vocab_size == tok.vocab_size());
    CHECK(c.max_positions == 120);
    CHECK(loaded.tokenizer.tokens() == tok.tokens());
    CHECK(loaded.train_config.model.architecture == "r2gen");
    R2GenModel model(ihn_toolkit::train::R2GenTraits::options(
        loaded.train_config.model, loaded.train_config.data.max_seq_length,
        loaded.tokenizer.vocab_size()));
    const auto report = authors::load_authors_weights(*model, loaded.state, c, zip);
    CHECK(report.ok());
    CHECK(report.loaded == r2gen_shapes(options).size());
  }

  SECTION("generate: library, every file layout, and the CLI") {
    for (const char* file : {"model_best.pth", "model_legacy.pth", "model_dataparallel.pth"}) {
      INFO(file);
      ihn_toolkit::train::GenerateOptions g;
      g.checkpoint = (dir / file).string();
      g.images = images;
      g.ann = ann;
      CHECK(ihn_toolkit::train::generate_report(g) == expected);
    }
    int status = 0;
    const auto out =
        run_capture(std::string(IHN_TOOL) + " generate --checkpoint " + zip + " --ann " + ann +
                        " --dataset iu_xray --image " + images[0] + " --image " + images[1],
                    &status);
    CHECK(status == 0);
    CHECK(out == expected + "\n");
  }

  SECTION("evaluate on the test split through the CLI") {
    const auto reports = (dir / "reports.jsonl").string();
    int status = 0;
    const auto out = run_capture(std::string(IHN_TOOL) + " evaluate --checkpoint " + zip +
                                     " --ann " + ann + " --images " + (dir / "images").string() +
                                     " --dataset iu_xray --bootstrap 0 --json --reports " + reports,
                                 &status);
    REQUIRE(status == 0);
    const auto j = nlohmann::json::parse(out);
    CHECK(j["n_examples"].get<int>() == 2);
    CHECK(j["beam_size"].get<int>() == 3);
    std::ifstream in(reports);
    std::string line;
    REQUIRE(std::getline(in, line));
    const auto first = nlohmann::json::parse(line);
    CHECK(first["id"] == "test_0");
    CHECK(first["report"].get<std::string>() == expected);
  }

  SECTION("bad inputs name the file and the problem") {
    ihn_toolkit::train::GenerateOptions g;
    g.checkpoint = zip;
    g.images = images;
    CHECK_THAT(error_of([&] { ihn_toolkit::train::generate_report(g); }),
               Catch::Contains(zip) && Catch::Contains("--ann"));
    g.ann = ann;
    g.authors.threshold = 1;  // more words survive: a different vocabulary
    const auto bigger = ihn_toolkit::data::Tokenizer::build(annotation.train_reports(),
                                                            ihn_toolkit::data::Dataset::iu_xray, 1);
    REQUIRE(bigger.vocab_size() != tok.vocab_size());
    CHECK_THAT(error_of([&] { ihn_toolkit::train::generate_report(g); }),
               Catch::Contains(ann) && Catch::Contains(std::to_string(bigger.vocab_size())) &&
                   Catch::Contains(std::to_string(tok.vocab_size())) &&
                   Catch::Contains("--threshold"));
    g.authors.threshold = 0;
    g.checkpoint = (dir / "model_missing.pth").string();
    CHECK_THAT(
        error_of([&] { ihn_toolkit::train::generate_report(g); }),
        Catch::Contains("model_missing.pth") && Catch::Contains("encoder_decoder.model.rm.W.bias"));
    int status = 0;
    run_capture(std::string(IHN_TOOL) + " generate --checkpoint " + zip + " --image " + images[0] +
                    " 2>/dev/null",
                &status);
    CHECK(status != 0);  // no --ann
  }
}

namespace {

/// Fills the keys our CMN port exports the way a trained upstream state_dict looks: the memory
/// attention's two names hold one tensor; the ITHN file adds the paper's training heads.
const char* kMakeCmnCheckpoints = R"PY(
import collections, json, math, sys, torch
out = sys.argv[1]
spec = json.load(open(out + '/keys.json'))
g = torch.Generator().manual_seed(77)
sd = collections.OrderedDict()
for e in spec:
    name, shape = e['name'], e['shape']
    if e['dtype'] == 'int64':
        sd[name] = torch.tensor(3, dtype=torch.int64)
    elif name.endswith('running_var'):
        sd[name] = 0.5 + torch.rand(shape, generator=g)
    elif len(shape) >= 2:
        sd[name] = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
    else:
        t = 0.1 * torch.randn(shape, generator=g)
        if name.endswith('.a_2') or (name.startswith('visual_extractor') and name.endswith('.weight')):
            t = t + 1.0
        sd[name] = t
alias = 'encoder_decoder.model.cmn.'
for k in list(sd):
    if k.startswith(alias):
        sd[k] = sd['encoder_decoder.cmn.' + k[len(alias):]]
# Logits driven by the decoder state rather than the bias, so that reports depend on the image
# and on every weight (a random bias alone decodes one word over and over); EOS kept unlikely.
sd['encoder_decoder.logit.weight'] *= 12.0
sd['encoder_decoder.logit.bias'].zero_()
sd['encoder_decoder.logit.bias'][0] = -30.0
torch.save({'epoch': 5, 'state_dict': sd, 'optimizer': {}, 'monitor_best': 0.1}, out + '/cmn.pth')
ithn = collections.OrderedDict(sd)
d = sd['encoder_decoder.logit.weight'].shape[1]
d_vf = sd['encoder_decoder.att_embed.0.weight'].shape[1]
ithn['img_projection.linear1.weight'] = torch.randn(d, d_vf, generator=g)
ithn['text_projection.linear1.weight'] = torch.randn(d, d, generator=g)
ithn['temp_1'] = torch.tensor(math.log(1 / 0.07))
ithn['temp_3'] = torch.tensor(math.log(1 / 0.07))
torch.save({'epoch': 5, 'state_dict': ithn, 'optimizer': {}, 'monitor_best': 0.1}, out + '/ithn.pth')
)PY";

}  // namespace

TEST_CASE("authors: official-layout R2GenCMN and ITHN .pth generate as our CMN port",
          "[authors][python]") {
  if (!ihn_test::python_available("torch")) return;
  using ihn_examples::cmn::CMNModel;
  using ihn_examples::cmn::CMNOptions;
  const auto dir = ihn_test::scratch_dir("authors_cmn_pth");
  write_annotation(dir);
  const auto ann = (dir / "annotation.json").string();
  const auto tok =
      ihn_toolkit::data::Tokenizer::build(ihn_toolkit::data::load_annotation(ann).train_reports(),
                                          ihn_toolkit::data::Dataset::iu_xray, 3);
  // Heads and top-k are the official defaults (8, 32): nothing to override.
  const auto options = CMNOptions(tok.vocab_size())
                           .visual_depth(18)
                           .d_model(32)
                           .d_ff(48)
                           .num_layers(2)
                           .topk(32)
                           .cmm_size(40)
                           .cmm_dim(32)
                           .max_positions(120);
  {
    CMNModel model(options);
    write_key_spec(*model, dir / "keys.json");
  }
  { std::ofstream(dir / "make.py") << kMakeCmnCheckpoints; }
  REQUIRE(std::system((python() + " " + (dir / "make.py").string() + " " + dir.string()).c_str()) ==
          0);
  const auto study = dir / "images" / "test_0";
  const std::vector<std::string> images = {(study / "0.png").string(), (study / "1.png").string()};
  const auto cmn_file = (dir / "cmn.pth").string();
  const auto expected = direct_report<CMNModel>(options, cmn_file, tok, images);
  CHECK(expected.size() > 20);

  for (const auto& [file, architecture] :
       {std::pair{cmn_file, Architecture::r2gencmn},
        std::pair{(dir / "ithn.pth").string(), Architecture::ithn}}) {
    INFO(file);
    const auto loaded = authors::read_authors_checkpoint(file, ann, "", {});
    CHECK(loaded.config.architecture == architecture);
    CHECK(loaded.train_config.model.architecture == "cmn");
    CHECK(loaded.config.topk == 32);
    CHECK(loaded.config.cmm_size == 40);
    CHECK(loaded.config.cmm_dim == 32);
    CHECK(std::none_of(loaded.state.begin(), loaded.state.end(), [](const auto& entry) {
      return entry.first.find("projection.") != std::string::npos;  // training-only heads
    }));
    // The model the authors' path builds holds exactly the file's weights (a random-weight CMN
    // decodes one word over and over, so equal reports alone would prove little).
    CMNModel built(ihn_toolkit::train::CMNTraits::options(
        loaded.train_config.model, loaded.train_config.data.max_seq_length, tok.vocab_size()));
    authors::load_authors_weights(*built, loaded.state, loaded.config, file);
    CMNModel direct(options);
    REQUIRE(ihn::io::load_pth(*direct, cmn_file).ok());
    const auto direct_params = direct->named_parameters();
    size_t compared = 0;
    for (const auto& p : built->named_parameters()) {
      INFO(p.key());
      CHECK(torch::equal(p.value(), direct_params[p.key()]));
      ++compared;
    }
    CHECK(compared == direct_params.size());
    CHECK(built->encoder_decoder->memory_matrix.abs().sum().item<double>() > 0);
    ihn_toolkit::train::GenerateOptions g;
    g.checkpoint = file;
    g.images = images;
    g.ann = ann;
    CHECK(ihn_toolkit::train::generate_report(g) == expected);
  }
  // The CLI, on the ITHN file.
  int status = 0;
  const auto out = run_capture(
      std::string(IHN_TOOL) + " generate --checkpoint " + (dir / "ithn.pth").string() + " --ann " +
          ann + " --dataset iu_xray --image " + images[0] + " --image " + images[1],
      &status);
  CHECK(status == 0);
  CHECK(out == expected + "\n");
  // What the shapes cannot tell comes from the official defaults or the user's override.
  authors::Overrides overrides;
  overrides.topk = 4;
  overrides.num_heads = 4;
  const auto overridden = authors::read_authors_checkpoint(cmn_file, ann, "", overrides);
  CHECK(overridden.train_config.model.cross_modal_memory.topk == 4);
  CHECK(overridden.train_config.model.num_heads == 4);
  CHECK(ihn_toolkit::train::CMNTraits::options(overridden.train_config.model,
                                               overridden.train_config.data.max_seq_length,
                                               tok.vocab_size())
            .topk() == 4);
}
