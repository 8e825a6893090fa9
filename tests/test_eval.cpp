// Tests of ihn::eval (no LibTorch): pycocoevalcap fixtures, METEOR by hand, the clinical
// labeller on hand-labelled IU X-Ray reports, retrieval, bootstrap, evaluate() and bad input.
#include "eval_test_common.hpp"

#include <nlohmann/json.hpp>

#include <fstream>
#include <map>

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

TEST_CASE("eval: Porter stemmer on the algorithm's published examples", "[eval]") {
  ihn::eval::detail::PorterStemmer stem;
  // Pairs from Porter (1980) and the reference implementation's vocabulary/output lists.
  const std::vector<std::pair<std::string, std::string>> cases = {{"caresses", "caress"},
                                                                  {"ponies", "poni"},
                                                                  {"ties", "ti"},
                                                                  {"cats", "cat"},
                                                                  {"feed", "feed"},
                                                                  {"agreed", "agre"},
                                                                  {"plastered", "plaster"},
                                                                  {"motoring", "motor"},
                                                                  {"sing", "sing"},
                                                                  {"conflated", "conflat"},
                                                                  {"troubled", "troubl"},
                                                                  {"sized", "size"},
                                                                  {"hopping", "hop"},
                                                                  {"falling", "fall"},
                                                                  {"filing", "file"},
                                                                  {"happy", "happi"},
                                                                  {"relational", "relat"},
                                                                  {"conditional", "condit"},
                                                                  {"generalization", "gener"},
                                                                  {"effusions", "effus"},
                                                                  {"opacities", "opac"},
                                                                  {"hopeful", "hope"},
                                                                  {"goodness", "good"},
                                                                  {"adjustment", "adjust"},
                                                                  {"controll", "control"},
                                                                  {"rate", "rate"},
                                                                  {"is", "is"}};
  for (const auto& [word, expected] : cases) {
    INFO(word);
    CHECK(stem(word) == expected);
  }
}

namespace {
MeteorOptions no_wordnet() {
  MeteorOptions o;
  o.synonyms = false;
  return o;
}
}  // namespace

TEST_CASE("eval: METEOR statistics and score by hand", "[eval]") {
  MeteorOptions options = no_wordnet();
  options.function_words = false;  // every word a content word: the by-hand formulas stay short
  const MeteorScorer scorer(options);
  const double alpha = 0.85, beta = 0.20, gamma = 0.60;
  auto fmean = [&](double p, double r) { return p * r / (alpha * p + (1 - alpha) * r); };

  SECTION("identical sentences: one chunk, no penalty, score 1") {
    const auto s = scorer.align("the heart is enlarged", "the heart is enlarged");
    CHECK(s.chunks == 1);
    CHECK(s.matches() == 4);
    CHECK(scorer.score(s) == Approx(1.0).epsilon(1e-12));
  }
  SECTION("two chunks after a swap") {
    // hyp "is enlarged the heart" vs ref "the heart is enlarged": chunks {is enlarged}, {the
    // heart}; P = R = 1, frag = 2 / 4.
    const auto s = scorer.align("is enlarged the heart", "the heart is enlarged");
    CHECK(s.chunks == 2);
    CHECK(s.matches() == 4);
    const double expected = 1.0 * (1 - gamma * std::pow(2.0 / 4.0, beta));
    CHECK(scorer.score(s) == Approx(expected).epsilon(1e-12));
  }
  SECTION("partial match with a stem match") {
    // hyp "small effusions present" vs ref "small left effusion": exact "small", stem
    // "effusions"~"effusion" (weight 0.6); 2 chunks? "small"(0->0), "effusions"(1->2): hyp
    // adjacent but ref not -> 2 chunks.
    const auto s = scorer.align("small effusions present", "small left effusion");
    CHECK(s.test_content_matches[0] == 1);
    CHECK(s.test_content_matches[1] == 1);
    CHECK(s.chunks == 2);
    const double delta = 0.75;
    const double p = (1.0 * delta + 0.6 * delta) / (delta * 3);
    const double r = p;  // both sides have 3 words and the same weighted matches
    const double expected = fmean(p, r) * (1 - gamma * std::pow(2.0 / 2.0, beta));
    CHECK(scorer.score(s) == Approx(expected).epsilon(1e-12));
  }
  SECTION("no match, empty hypothesis: 0") {
    CHECK(scorer.score(scorer.align("pacemaker", "the lungs are clear")) == 0.0);
    CHECK(scorer.score(scorer.align("", "the lungs are clear")) == 0.0);
  }
}

TEST_CASE("eval: METEOR function-word weighting", "[eval]") {
  const MeteorScorer scorer(no_wordnet());
  // hyp "the effusion" vs ref "the small effusion": "the" is a function word on both sides.
  const auto s = scorer.align("the effusion", "the small effusion");
  CHECK(s.test_function_words == 1);
  CHECK(s.reference_function_words == 1);
  CHECK(s.test_function_matches[0] == 1);
  CHECK(s.test_content_matches[0] == 1);
  const double delta = 0.75, alpha = 0.85;
  const double p = (delta * 1 + (1 - delta) * 1) / (delta * 1 + (1 - delta) * 1);
  const double r = (delta * 1 + (1 - delta) * 1) / (delta * 2 + (1 - delta) * 1);
  const double f = 1.0 / ((1 - alpha) / p + alpha / r);
  const double expected = f * (1 - 0.6 * std::pow(2.0 / 2.0, 0.2));
  CHECK(scorer.score(s) == Approx(expected).epsilon(1e-12));
}

TEST_CASE("eval: METEOR WordNet synonym stage", "[eval]") {
  if (!std::filesystem::exists("/usr/share/wordnet/data.noun")) {
    WARN("wordnet-base not installed: synonym stage not tested");
    return;
  }
  MeteorOptions options;
  options.function_words = false;
  const MeteorScorer scorer(options);
  // "big" and "large" share a WordNet adjective synset; "enlarged" and "large" do not stem alike.
  const auto s = scorer.align("big heart", "large heart");
  CHECK(s.test_content_matches[2] == 1);
  CHECK(s.test_content_matches[0] == 1);
  const auto none = scorer.align("pacemaker", "effusion");
  CHECK(none.matches() == 0);
  // Plural forms reach their synsets through WordNet's morphology.
  CHECK(scorer.align("cars", "automobile").test_content_matches[2] == 1);
  CHECK(meteor_variant_key(options) == "METEOR_esw");
  CHECK(meteor_variant_key(no_wordnet()) == "METEOR_es");
}

TEST_CASE("eval: a missing WordNet folder fails clearly", "[eval]") {
  MeteorOptions options;
  options.wordnet_dir = "/nonexistent/wordnet";
  try {
    MeteorScorer scorer(options);
    FAIL("no exception");
  } catch (const EvalError& e) {
    CHECK(std::string(e.what()).find("/nonexistent/wordnet/data.noun") != std::string::npos);
    CHECK(std::string(e.what()).find("synonym") != std::string::npos);
  }
}

namespace {
// Compact expectations: observation name -> label; every other observation must be blank.
using Expect = std::map<std::string, Label>;
constexpr Label P = Label::positive, N = Label::negative, U = Label::uncertain;

void check_labels(const std::string& report, const Expect& expected) {
  const auto labels = label_report(report);
  for (int o = 0; o < kNumObservations; ++o) {
    const auto it = expected.find(kObservations[o]);
    const Label want = it == expected.end() ? Label::blank : it->second;
    INFO(report << "\n  observation: " << kObservations[o]);
    CHECK(std::string(label_name(labels[o])) == label_name(want));
  }
}
}  // namespace

TEST_CASE("eval: clinical labeller on IU X-Ray style phrasing", "[eval]") {
  check_labels("the heart is enlarged .", {{"Cardiomegaly", P}});
  check_labels("there is a small left pleural effusion .", {{"Pleural Effusion", P}});
  check_labels("no pneumothorax .", {{"Pneumothorax", N}, {"No Finding", P}});
  check_labels("the lungs are clear .", {{"Lung Opacity", N}, {"No Finding", P}});
  check_labels("right upper lobe opacity .", {{"Lung Opacity", P}});
  check_labels("a pacemaker is present .", {{"Support Devices", P}, {"No Finding", P}});
  check_labels("healed rib fracture .", {{"Fracture", P}});
  check_labels(
      "the heart is normal in size . the mediastinum is unremarkable . the lungs are clear .",
      {{"Cardiomegaly", N},
       {"Enlarged Cardiomediastinum", N},
       {"Lung Opacity", N},
       {"No Finding", P}});
  check_labels("the heart is not enlarged .", {{"Cardiomegaly", N}, {"No Finding", P}});
  check_labels(
      "mild cardiomegaly . no focal consolidation pneumothorax or large pleural effusion .",
      {{"Cardiomegaly", P}, {"Consolidation", N}, {"Pneumothorax", N}, {"Pleural Effusion", N}});
  check_labels("there is a nodule in the right upper lobe . mild pulmonary edema .",
               {{"Lung Lesion", P}, {"Edema", P}});
  check_labels("left lower lobe opacity may represent atelectasis or pneumonia .",
               {{"Lung Opacity", P}, {"Atelectasis", U}, {"Pneumonia", U}});
  check_labels("possible small right pleural effusion .", {{"Pleural Effusion", U}});
  check_labels("a small effusion cannot be excluded .", {{"Pleural Effusion", U}});
  check_labels("pneumothorax is not seen .", {{"Pneumothorax", N}, {"No Finding", P}});
  check_labels("the previously seen effusion has resolved .",
               {{"Pleural Effusion", N}, {"No Finding", P}});
  check_labels("no pleural effusion but there is a small right pneumothorax .",
               {{"Pleural Effusion", N}, {"Pneumothorax", P}});
  check_labels("no effusion , possible atelectasis .",
               {{"Pleural Effusion", N}, {"Atelectasis", U}});
  check_labels("the lungs are clear without evidence of infiltrate .",
               {{"Lung Opacity", N}, {"No Finding", P}});
  check_labels("no pericardial effusion .", {{"No Finding", P}});
  check_labels("no interval change in cardiomegaly .", {{"Cardiomegaly", P}});
  check_labels("the cardiomediastinal silhouette is enlarged .",
               {{"Enlarged Cardiomediastinum", P}});
  check_labels("widened mediastinum .", {{"Enlarged Cardiomediastinum", P}});
  check_labels("sternotomy wires and a right chest tube are present .",
               {{"Support Devices", P}, {"No Finding", P}});
  check_labels("free of focal airspace disease .", {{"Lung Opacity", N}, {"No Finding", P}});
  check_labels("negative for pneumonia .", {{"Pneumonia", N}, {"No Finding", P}});
  check_labels("apical pleural thickening .", {{"Pleural Other", P}});
  check_labels("", {{"No Finding", P}});
}

// Real IU X-Ray test reports labelled by hand (by the author of the rules, reading each
// sentence as a radiologist would; the id is the IU study). A disagreement here is a rule gap.
TEST_CASE("eval: clinical labeller on hand-labelled IU X-Ray reports", "[eval][shared]") {
  const auto annotation =
      load_json(ihn_eval_test::shared_dir() / "data" / "iu_xray" / "annotation.json");
  std::map<std::string, std::string> reports;
  for (const auto& e : annotation.at("test")) reports[e.at("id")] = e.at("report");
  const std::vector<std::pair<std::string, Expect>> cases = {
      {"CXR1373_IM-0240",
       {{"Lung Opacity", N},
        {"Pleural Effusion", N},
        {"Pneumothorax", N},
        {"Cardiomegaly", N},
        {"No Finding", P}}},
      {"CXR1742_IM-0489",
       {{"Cardiomegaly", P},
        {"Consolidation", N},
        {"Pleural Effusion", N},
        {"Edema", N},
        {"Pneumothorax", N}}},
      {"CXR2088_IM-0719",
       {{"Support Devices", N},
        {"Cardiomegaly", P},
        {"Lung Opacity", P},
        {"Consolidation", N},
        {"Pneumothorax", N},
        {"Pleural Effusion", N}}},
      {"CXR605_IM-2194",
       {{"Cardiomegaly", N},
        {"Enlarged Cardiomediastinum", N},
        {"Lung Lesion", P},
        {"Lung Opacity", U},
        {"Pleural Effusion", N}}},
      {"CXR3721_IM-1859",
       {{"Lung Opacity", P},
        {"Atelectasis", U},
        {"Cardiomegaly", N},
        {"Enlarged Cardiomediastinum", N},
        {"Pneumothorax", N},
        {"Pleural Effusion", N}}},
      {"CXR3123_IM-1468",
       {{"Cardiomegaly", P},
        {"Support Devices", P},
        {"Lung Opacity", N},
        {"Pleural Other", U},
        {"Pleural Effusion", U},
        {"Pneumothorax", N}}},
      {"CXR1347_IM-0225",
       {{"Enlarged Cardiomediastinum", N},
        {"Consolidation", N},
        {"Pneumothorax", N},
        {"Pleural Effusion", N},
        {"Fracture", N},
        {"No Finding", P}}},
      {"CXR621_IM-2203",
       {{"Cardiomegaly", N},
        {"Enlarged Cardiomediastinum", N},
        {"Pleural Effusion", N},
        {"Pneumothorax", N},
        {"Lung Opacity", N},
        {"Pneumonia", N},
        {"No Finding", P}}},
      {"CXR1812_IM-0525",
       {{"Consolidation", N},
        {"Lung Opacity", N},
        {"Pneumothorax", N},
        {"Pleural Effusion", N},
        {"Cardiomegaly", N},
        {"No Finding", P}}},
      {"CXR3810_IM-1920",
       {{"Cardiomegaly", N},
        {"Enlarged Cardiomediastinum", N},
        {"Lung Opacity", N},
        {"Pleural Effusion", N},
        {"Pneumothorax", N},
        {"Support Devices", P},
        {"No Finding", P}}},
      {"CXR1126_IM-0082",
       {{"Support Devices", P},
        {"Consolidation", N},
        {"Atelectasis", P},
        {"Lung Opacity", N},
        {"Pneumothorax", N},
        {"Pleural Effusion", N}}},
      {"CXR3000_IM-1386-0001",
       {{"Lung Lesion", P}, {"Pleural Effusion", N}, {"Pneumothorax", N}, {"Cardiomegaly", N}}},
      {"CXR2197_IM-0807",
       {{"Cardiomegaly", N}, {"Lung Opacity", P}, {"Pneumothorax", N}, {"Pleural Effusion", N}}},
      {"CXR2916_IM-1318",
       {{"Cardiomegaly", N},
        {"Consolidation", N},
        {"Pleural Effusion", N},
        {"Edema", N},
        {"Pneumothorax", N},
        {"No Finding", P}}},
      {"CXR43_IM-2070",
       {{"Cardiomegaly", N},
        {"Enlarged Cardiomediastinum", N},
        {"Lung Opacity", N},
        {"No Finding", P}}},
  };
  for (const auto& [id, expected] : cases) {
    INFO("IU X-Ray " << id);
    REQUIRE(reports.count(id) == 1);
    check_labels(reports.at(id), expected);
  }
}

TEST_CASE("eval: clinical precision/recall/F1, micro and macro", "[eval]") {
  // Two reports, labels chosen so every count is known: observation Cardiomegaly has tp 1,
  // fp 1; Pleural Effusion has fn 1; No Finding tp 0.
  std::vector<ReportLabels> hyp(2), ref(2);
  hyp[0][kCardiomegaly] = Label::positive;
  ref[0][kCardiomegaly] = Label::positive;
  hyp[1][kCardiomegaly] = Label::positive;
  ref[1][kPleuralEffusion] = Label::positive;
  hyp[1][kEdema] = Label::uncertain;
  ref[1][kEdema] = Label::positive;
  const auto s = clinical_scores(hyp, ref);
  CHECK(s.per_observation[kCardiomegaly].tp == 1);
  CHECK(s.per_observation[kCardiomegaly].fp == 1);
  CHECK(s.per_observation[kPleuralEffusion].fn == 1);
  CHECK(s.per_observation[kEdema].fn == 1);  // uncertain counts as negative by default
  CHECK(s.micro.precision == Approx(1.0 / 2.0));
  CHECK(s.micro.recall == Approx(1.0 / 3.0));
  CHECK(s.micro.f1 == Approx(2 * 0.5 / 3.0 / (0.5 + 1.0 / 3.0)));
  // Macro: only Cardiomegaly has non-zero values (P 0.5, R 1, F1 2/3); 14 observations.
  CHECK(s.macro.precision == Approx(0.5 / 14));
  CHECK(s.macro.recall == Approx(1.0 / 14));
  CHECK(s.macro.f1 == Approx((2.0 / 3.0) / 14));
  const auto u = clinical_scores(hyp, ref, /*uncertain_as_positive=*/true);
  CHECK(u.per_observation[kEdema].tp == 1);
  CHECK(u.micro.recall == Approx(2.0 / 3.0));
}
