// Report data (ihn::data): R2Gen's tokenizer against the golden outputs of the official code,
// annotation loading and validation, the image pipeline, the synthetic data set and the
// LibTorch data loader.
#include "test_common.hpp"

#include <data/tokenizer.hpp>

#include <nlohmann/json.hpp>

#include <fstream>
#include <set>

using namespace ihn::data;

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
  REQUIRE(cases.size() == 60);
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
  const auto annotation = read_json(iu_annotation());
  std::vector<std::string> train_reports;
  for (const auto& entry : annotation["train"]) train_reports.push_back(entry["report"]);
  const auto tokenizer = Tokenizer::build(train_reports, Dataset::iu_xray, 3);
  const auto golden_vocab = read_json(tokenizer_fixtures() / "vocab.json");
  CHECK(tokenizer.vocab_size() == 760);
  REQUIRE(tokenizer.vocab_size() == golden_vocab["vocab_size"].get<int64_t>());
  for (int64_t id = 1; id <= tokenizer.vocab_size(); ++id)
    REQUIRE(tokenizer.token_of(id) == golden_vocab["id_to_token"][id].get<std::string>());

  const auto reports = read_json(tokenizer_fixtures() / "reports.json");
  REQUIRE(reports.size() == 790);
  int truncated = 0;
  for (const auto& r : reports) {
    const auto report = r["report"].get<std::string>();
    INFO(r["split"] << " " << r["index"] << " " << r["id"]);
    CHECK(tokenizer.clean(report) == r["cleaned"].get<std::string>());
    CHECK(split_whitespace(tokenizer.clean(report)) == r["tokens"].get<std::vector<std::string>>());
    const auto full = tokenizer.encode(report);
    CHECK(full == ints(r["ids_full"]));
    const auto trunc = tokenizer.encode(report, 60);
    CHECK(trunc == ints(r["ids_trunc"]));
    truncated += trunc.back() != 0;
    CHECK(tokenizer.decode({trunc.begin() + 1, trunc.end()}) == r["decoded_gt"].get<std::string>());
    CHECK(tokenizer.decode({full.begin() + 1, full.end()}) == r["decoded_full"].get<std::string>());
    CHECK(tokenizer.round_trip(report, 60) == r["decoded_gt"].get<std::string>());
  }
  CHECK(truncated == 54);  // the README's count of reports that lose their EOS
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
