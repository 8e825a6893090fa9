// Tests of ihn::eval (no LibTorch): pycocoevalcap fixtures, METEOR by hand, the clinical
// labeller on hand-labelled IU X-Ray reports, retrieval, bootstrap, evaluate() and bad input.
#include "eval_test_common.hpp"

#include <nlohmann/json.hpp>

#include <fstream>

using namespace ihn::eval;

namespace {

nlohmann::json load_json(const std::filesystem::path& path) {
  std::ifstream in(path);
  REQUIRE(in.good());
  return nlohmann::json::parse(in);
}

}  // namespace

TEST_CASE("eval: Python's split() and split(\" \")", "[eval]") {
  using ihn::eval::detail::split_on_space;
  using ihn::eval::detail::split_python_whitespace;
  CHECK(split_python_whitespace("  a\tb \n c  ").size() == 3);
  CHECK(split_python_whitespace("").empty());
  CHECK(split_python_whitespace("a\xc2\xa0"
                                "b")
            .size() == 2);  // U+00A0 is whitespace to Python
  CHECK(split_on_space("").size() == 1);
  CHECK(split_on_space("a  b").size() == 3);
  CHECK(split_on_space("a\tb").size() == 1);
}

// The fixture holds pycocoevalcap's own numbers (R2Gen's call) for 10 hypothesis sets against
// the 590 IU X-Ray test references. 1e-9 is the project's agreement threshold; the arithmetic
// follows the Python order, so the differences seen are a few ulps (log/pow of another libm).
TEST_CASE("eval: BLEU, ROUGE-L, CIDEr equal pycocoevalcap on every fixture set and example",
          "[eval][shared]") {
  const auto fixture = load_json(ihn_eval_test::fixtures_dir() / "metrics" / "metrics.json");
  const auto refs = fixture.at("references").get<std::vector<std::string>>();
  REQUIRE(refs.size() == 590);
  REQUIRE(fixture.at("sets").size() >= 10);
  double worst = 0;
  for (const auto& [name, set] : fixture.at("sets").items()) {
    INFO("set " << name);
    const auto hyps = set.at("hypotheses").get<std::vector<std::string>>();
    const auto scores = coco_scores(hyps, refs);
    const auto& corpus = set.at("corpus");
    const auto& per = set.at("per_example");
    auto check = [&](double ours, double theirs) {
      worst = std::max(worst, std::abs(ours - theirs));
      CHECK(ours == Approx(theirs).margin(1e-9).epsilon(0));
    };
    for (int k = 0; k < 4; ++k) {
      const std::string key = "BLEU_" + std::to_string(k + 1);
      check(scores.bleu[k], corpus.at(key).get<double>());
      const auto theirs = per.at(key).get<std::vector<double>>();
      REQUIRE(theirs.size() == hyps.size());
      for (std::size_t i = 0; i < hyps.size(); ++i) check(scores.bleu_per_example[k][i], theirs[i]);
    }
    check(scores.rouge_l, corpus.at("ROUGE_L").get<double>());
    check(scores.cider, corpus.at("CIDEr").get<double>());
    const auto rouge = per.at("ROUGE_L").get<std::vector<double>>();
    const auto cider = per.at("CIDEr").get<std::vector<double>>();
    for (std::size_t i = 0; i < hyps.size(); ++i) {
      check(scores.rouge_l_per_example[i], rouge[i]);
      check(scores.cider_per_example[i], cider[i]);
    }
    CHECK(scores.testlen == set.at("bleu_lengths").at("testlen").get<long long>());
    CHECK(scores.reflen == set.at("bleu_lengths").at("reflen").get<long long>());
  }
  WARN("largest |ours - pycocoevalcap| over all sets and examples: " << worst);
}
