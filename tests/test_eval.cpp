// Tests of ihn::eval (no LibTorch): pycocoevalcap fixtures, METEOR by hand, the clinical
// labeller on hand-labelled IU X-Ray reports, retrieval, bootstrap, evaluate() and bad input.
#include "eval_test_common.hpp"

#include <nlohmann/json.hpp>

#include <fstream>
#include <map>
#include <random>
#include <set>

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

// The fixture holds pycocoevalcap's own numbers (R2Gen's call) for its hypothesis sets against
// the IU X-Ray test references (as many as the fixture's n_examples). 1e-9 is the project's
// agreement threshold; the arithmetic follows the Python order, so the differences seen are a few
// ulps (log/pow of another libm).
// The one UTF-8 codec (ihn/eval/utf8.hpp): each well-formed length, each way strict UTF-8 is
// violated (decoded but not well formed) and each structural error (not decoded at all).
TEST_CASE("eval: UTF-8 decoding, validation and encoding", "[eval]") {
  const struct {
    std::string bytes;
    char32_t code_point;
    std::size_t length;
    bool well_formed;
  } cases[] = {
      {"a", U'a', 1, true},
      {"\xC3\xA9", 0xE9, 2, true},
      {"\xE2\x80\xA8", 0x2028, 3, true},
      {"\xF0\x9F\x98\x80", 0x1F600, 4, true},
      {"\xF4\x8F\xBF\xBF", 0x10FFFF, 4, true},
      {"\xC0\x80", 0, 2, false},                 // overlong NUL
      {"\xC1\xBF", 0x7F, 2, false},              // overlong
      {"\xE0\x80\xAF", 0x2F, 3, false},          // overlong '/'
      {"\xF0\x8F\xBF\xBF", 0xFFFF, 4, false},    // overlong
      {"\xED\xA0\x80", 0xD800, 3, false},        // surrogate
      {"\xF4\x90\x80\x80", 0x110000, 4, false},  // above U+10FFFF
      {"\xF7\xBF\xBF\xBF", 0x1FFFFF, 4, false},  // above U+10FFFF
      {"\x80", 0, 0, false},                     // a continuation byte cannot start
      {"\xF8\x88\x80\x80\x80", 0, 0, false},     // no five-byte forms
      {"\xFF", 0, 0, false},
      {"\xC3", 0, 0, false},  // the text ends inside the sequence
      {"\xE2\x80", 0, 0, false},
      {"\xC3(", 0, 0, false},  // not a continuation byte
      {"\xF0\x9F\x98(", 0, 0, false},
  };
  for (const auto& c : cases) {
    INFO("bytes of length " << c.bytes.size() << ", expected code point " << c.code_point);
    const Utf8Sequence sequence = decode_utf8_sequence(c.bytes, 0);
    CHECK(sequence.length == c.length);
    CHECK(sequence.code_point == c.code_point);
    CHECK((sequence.length > 0 && is_well_formed(sequence)) == c.well_formed);
    CHECK((detail::first_invalid_utf8(c.bytes) == std::string::npos) == c.well_formed);
    if (c.length > 1) {  // encoding gives back the bytes of every decoded sequence but overlongs
      const char32_t shortest_from = c.length == 2 ? 0x80 : c.length == 3 ? 0x800 : 0x10000;
      std::string encoded;
      append_utf8(encoded, sequence.code_point);
      CHECK((encoded == c.bytes) == (c.code_point >= shortest_from));
    }
  }
  CHECK(detail::first_invalid_utf8("") == std::string::npos);
  CHECK(detail::first_invalid_utf8("ok \xC3\xA9 \xED\xA0\x80 x") == 6);
  CHECK(detail::first_invalid_utf8("ok \xC3\xA9 \xE2\x80") == 6);
  std::size_t round_trip_failures = 0;
  for (char32_t cp = 0; cp <= 0x10FFFF; ++cp) {
    if (cp >= 0xD800 && cp <= 0xDFFF) continue;
    std::string encoded;
    append_utf8(encoded, cp);
    const Utf8Sequence back = decode_utf8_sequence(encoded, 0);
    if (back.code_point != cp || back.length != encoded.size() || !is_well_formed(back) ||
        detail::first_invalid_utf8(encoded) != std::string::npos)
      ++round_trip_failures;
  }
  CHECK(round_trip_failures == 0);
}

TEST_CASE("eval: BLEU, ROUGE-L, CIDEr equal pycocoevalcap on every fixture set and example",
          "[eval][shared]") {
  const auto fixture = load_json(ihn_eval_test::fixtures_dir() / "metrics" / "metrics.json");
  const auto refs = fixture.at("references").get<std::vector<std::string>>();
  REQUIRE(refs.size() == fixture.at("n_examples").get<std::size_t>());
  REQUIRE_FALSE(fixture.at("sets").empty());
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

// METEOR 1.5 stems with Snowball's English (Porter2) stemmer, not with Porter's 1980 one: the
// pairs marked "Porter: different" fail with the latter.
TEST_CASE("eval: METEOR's stemmer is Snowball English", "[eval]") {
  ihn::eval::detail::SnowballStemmer stem;
  // Pairs from the Snowball English algorithm's description and the IU X-Ray vocabulary.
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"caresses", "caress"},
      {"ponies", "poni"},
      {"ties", "tie"},  // Porter: different
      {"cats", "cat"},
      {"skies", "sky"},               // Porter: different
      {"dying", "die"},               // Porter: different
      {"news", "news"},               // Porter: different
      {"generously", "generous"},     // Porter: different
      {"generalization", "general"},  // Porter: different
      {"communication", "communic"},  // Porter: different
      {"consigned", "consign"},
      {"knightly", "knight"},  // Porter: different
      {"relational", "relat"},
      {"happy", "happi"},
      {"agreed", "agre"},
      {"hopping", "hop"},
      {"filing", "file"},
      {"effusions", "effus"},
      {"effusion", "effus"},
      {"opacities", "opac"},
      {"overlying", "over"},    // Porter: different
      {"relatively", "relat"},  // Porter: different
      {"mildly", "mild"},       // Porter: different
      {"status", "status"},     // Porter: different
      {"was", "was"},           // Porter: different
      {"airways", "airway"},    // Porter: different
      {"enlarged", "enlarg"},
      {"is", "is"},
  };
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

// METEOR expectations are the METEOR formulas written out by hand; they differ from the
// scorer's arithmetic only in operation order, hence a relative 1e-12 (rounding is ~1e-16).
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
  SECTION("reordered sentences: one chunk per sentence") {
    // A left-to-right nearest-position matcher pairs the first "no" with the reference's first
    // "no" and makes 4 chunks here; the fewest possible is 2.
    const auto s = scorer.align("no pleural effusion . no pneumothorax .",
                                "no pneumothorax . no pleural effusion .");
    CHECK(s.matches() == 7);
    CHECK(s.chunks == 2);
  }
  SECTION("corpus aggregation: identical segments add no chunks") {
    MeteorStats total;
    total += scorer.align("the heart is enlarged", "the heart is enlarged");
    CHECK(total.chunks == 0);
    total += scorer.align("is enlarged the heart", "the heart is enlarged");
    CHECK(total.chunks == 2);
    // 8 matches on each side, 2 chunks: frag = 2 / 8, P = R = 1.
    CHECK(scorer.score(total) == Approx(1 - gamma * std::pow(2.0 / 8.0, beta)).epsilon(1e-12));
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
  // "upper limits of normal" is one borderline state: its "normal" must not win.
  check_labels("the heart size is at the upper limits of normal .", {{"Cardiomegaly", U}});
  check_labels("normal", {{"No Finding", P}});  // a state word alone mentions nothing
  check_labels("", {{"No Finding", P}});
  // Paraphrases a synthetic IU-style generator is likely to use.
  check_labels("the cardiac silhouette is enlarged .", {{"Cardiomegaly", P}});
  check_labels("normal heart size .", {{"Cardiomegaly", N}, {"No Finding", P}});
  check_labels("the mediastinum is widened .", {{"Enlarged Cardiomediastinum", P}});
  check_labels("there is a 1.5 cm nodule in the left lower lobe .", {{"Lung Lesion", P}});
  check_labels("a left-sided pneumothorax is present .", {{"Pneumothorax", P}});
  check_labels("old healed left rib fractures .", {{"Fracture", P}});
  check_labels("the heart is enlarged and there is a small left pleural effusion .",
               {{"Cardiomegaly", P}, {"Pleural Effusion", P}});
  check_labels("the lungs are clear without focal consolidation , effusion , or pneumothorax .",
               {{"Lung Opacity", N},
                {"Consolidation", N},
                {"Pleural Effusion", N},
                {"Pneumothorax", N},
                {"No Finding", P}});
  check_labels("right lower lobe consolidation consistent with pneumonia .",
               {{"Consolidation", P}, {"Pneumonia", P}});
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

// Expected values here and in the retrieval/distinctness/bootstrap tests are small rationals;
// Catch's default Approx (relative ~1.2e-5) only absorbs their floating-point rounding, while a
// wrong count would change them by at least 1/20.
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

TEST_CASE("eval: retrieval recall@K and median rank, pessimistic ties", "[eval]") {
  // Three examples in 2-D. Images: e0, e1, e0+e1 direction; reports: matched except report 2,
  // which points along e0 and so ties with report 0 for image 0.
  Eigen::MatrixXd images(3, 2), reports(3, 2);
  images << 1, 0, 0, 1, 1, 1;
  reports << 2, 0, 0, 3, 1, 0;
  const auto r = retrieval_scores(images, reports);
  // image 0: sims (1, 0, 1) -> report 2 ties with the truth -> rank 2 (ties count against).
  // image 1: sims (0, 1, 0) -> rank 1. image 2: sims (.707, .707, .707) -> rank 3.
  CHECK(r.image_to_report.ranks == std::vector<long>{2, 1, 3});
  CHECK(r.image_to_report.recall_at_1 == Approx(1.0 / 3.0));
  CHECK(r.image_to_report.recall_at_5 == Approx(1.0));
  CHECK(r.image_to_report.median_rank == Approx(2.0));
  // report 2 as query: sims with images (1, 0, .707) -> image 0 beats the truth -> rank 2.
  CHECK(r.report_to_image.ranks == std::vector<long>{1, 1, 2});
  CHECK(r.report_to_image.median_rank == Approx(1.0));
  // Collapsed reports: every candidate ties, every rank is n.
  Eigen::MatrixXd same = Eigen::MatrixXd::Ones(4, 2);
  const auto collapsed = retrieval_scores(images.topRows(2).replicate(2, 1), same);
  CHECK(collapsed.image_to_report.recall_at_1 == 0.0);
  CHECK(collapsed.image_to_report.median_rank == Approx(4.0));
  CHECK_THROWS_AS(retrieval_scores(images, reports.leftCols(1)), EvalError);
}

TEST_CASE("eval: nearest reports of each image, most similar first, ties to the lower index",
          "[eval]") {
  Eigen::MatrixXd images(3, 2), reports(3, 2);
  images << 1, 0, 0, 1, 1, 1;
  reports << 2, 0, 0, 3, 1, 0;
  const auto n = nearest_reports(images, reports, 2);
  // image 0: sims (1, 0, 1): reports 0 and 2 tie, the lower index first.
  CHECK(n.index[0] == std::vector<long>{0, 2});
  CHECK(n.similarity[0][0] == Approx(1.0));
  CHECK(n.similarity[0][1] == Approx(1.0));
  CHECK(n.index[1] == std::vector<long>{1, 0});  // sims (0, 1, 0)
  CHECK(n.similarity[1][1] == Approx(0.0).margin(1e-12));
  // The ranks of retrieval_scores agree: image 1's own report is first.
  CHECK(retrieval_scores(images, reports).image_to_report.ranks[1] == 1);
  // k beyond the candidates gives all of them; k 0 none.
  CHECK(nearest_reports(images, reports, 10).index[2].size() == 3);
  CHECK(nearest_reports(images, reports, 0).index[2].empty());
  CHECK_THROWS_AS(nearest_reports(images, reports.leftCols(1), 1), EvalError);
}

TEST_CASE("eval: distinctness", "[eval]") {
  const auto d = distinctness({"the heart is normal", "the heart is normal", "no effusion"});
  CHECK(d.distinct_reports == Approx(2.0 / 3.0));
  // unigrams: 10 tokens, distinct {the, heart, is, normal, no, effusion} = 6.
  CHECK(d.distinct_1 == Approx(6.0 / 10.0));
  // bigrams: 3 + 3 + 1 = 7, distinct = 4.
  CHECK(d.distinct_2 == Approx(4.0 / 7.0));
  CHECK(distinctness({}).distinct_reports == 0.0);
}

TEST_CASE("eval: bootstrap intervals are seeded, cover the estimate, and shrink with n", "[eval]") {
  std::vector<double> small, large;
  for (int i = 0; i < 40; ++i) small.push_back(i % 4);
  for (int i = 0; i < 4000; ++i) large.push_back(i % 4);
  BootstrapOptions o;
  o.resamples = 500;
  o.seed = 7;
  const auto a = bootstrap_ci(small.size(), mean_of(small), o);
  const auto b = bootstrap_ci(small.size(), mean_of(small), o);
  CHECK(a.lower == b.lower);  // same seed, same interval
  CHECK(a.upper == b.upper);
  CHECK(a.estimate == Approx(1.5));
  CHECK(a.lower < a.estimate);
  CHECK(a.upper > a.estimate);
  const auto wide = a.upper - a.lower;
  const auto narrow = bootstrap_ci(large.size(), mean_of(large), o);
  // sd of the mean scales as 1/sqrt(n): 100x the examples -> ~10x narrower; allow 5x-20x.
  CHECK((narrow.upper - narrow.lower) < wide / 5);
  CHECK((narrow.upper - narrow.lower) > wide / 20);
  o.seed = 8;
  const auto c = bootstrap_ci(small.size(), mean_of(small), o);
  CHECK((c.lower != a.lower || c.upper != a.upper));
  CHECK_THROWS_AS(bootstrap_ci(0, mean_of(small), o), EvalError);
}

TEST_CASE("eval: paired bootstrap tells different systems from equal ones", "[eval]") {
  std::vector<double> a, b, a_copy;
  for (int i = 0; i < 200; ++i) {
    a.push_back((i * 37 % 100) / 100.0);
    b.push_back((i * 37 % 100) / 100.0 - 0.1);  // B is worse by 0.1 on every example
  }
  a_copy = a;
  BootstrapOptions o;
  o.resamples = 1000;
  o.seed = 3;
  const auto diff = paired_bootstrap(a.size(), mean_of(a), mean_of(b), o);
  CHECK(diff.difference == Approx(0.1));
  CHECK(diff.lower == Approx(0.1));  // the per-example difference is constant
  CHECK(diff.p_value == 0.0);
  const auto same = paired_bootstrap(a.size(), mean_of(a), mean_of(a_copy), o);
  CHECK(same.difference == 0.0);
  CHECK(same.p_value == 1.0);
  // Equal scores that differ by rounding only (here a relative 1e-15, always the same sign, as
  // a different summation order can give) are a tie (p = 1), not a "significant" difference.
  const ResampleStatistic rounded = [&a](const std::vector<std::size_t>& idx) {
    return mean_of(a)(idx) * (1 - 1e-15);
  };
  const auto rounding = paired_bootstrap(a.size(), mean_of(a), rounded, o);
  CHECK(rounding.difference > 0.0);
  CHECK(rounding.p_value == 1.0);
}

// Reference quantiles are R's qt(), to 15 significant digits; df 1 and 2 also have closed
// forms. The tolerance, 1e-9, is far below the 3-decimal table and the 1.96 + 2.5 / df
// approximation this function replaced (off by 7e-4 at df = 30).
TEST_CASE("eval: Student t quantiles equal published values", "[eval]") {
  const struct {
    double probability, df, t;
  } known[] = {{0.975, 1, 12.7062047361747},   {0.975, 2, 4.30265272974946},
               {0.975, 10, 2.22813885198627},  {0.975, 30, 2.04227245630124},
               {0.975, 100, 1.98397151852355}, {0.995, 5, 4.03214298355523},
               {0.95, 1, 6.31375151467504},    {0.9, 3, 1.63774435369621}};
  for (const auto& k : known) {
    INFO("p = " << k.probability << ", df = " << k.df);
    CHECK(student_t_quantile(k.probability, k.df) == Approx(k.t).margin(1e-9).epsilon(0));
    CHECK(student_t_quantile(1 - k.probability, k.df) == Approx(-k.t).margin(1e-9).epsilon(0));
  }
  const double pi = std::acos(-1.0);
  for (double p : {0.6, 0.8, 0.99, 0.9999}) {
    INFO("p = " << p);
    CHECK(student_t_quantile(p, 1) == Approx(std::tan(pi * (p - 0.5))).epsilon(1e-12));
    CHECK(student_t_quantile(p, 2) ==
          Approx((2 * p - 1) / std::sqrt(2 * p * (1 - p))).epsilon(1e-12));
  }
  // Large df tends to the normal quantile 1.959963984540054.
  CHECK(student_t_quantile(0.975, 1e6) == Approx(1.959963984540054).margin(1e-5));
  CHECK(student_t_quantile(0.5, 7) == 0.0);
  CHECK_THROWS_WITH(student_t_quantile(1.0, 3), Catch::Contains("probability"));
  CHECK_THROWS_WITH(student_t_quantile(0.975, 0), Catch::Contains("degrees of freedom"));
}

namespace {
std::vector<Example> tiny_examples() {
  return {{"a", "the heart is enlarged .", "the heart is enlarged ."},
          {"b", "no pleural effusion .", "there is a small left pleural effusion ."},
          {"c", "the lungs are clear .", "the lungs are clear . no pneumothorax ."}};
}
EvalOptions no_wordnet_eval() {
  EvalOptions o;
  o.meteor_options.synonyms = false;
  return o;
}
}  // namespace

TEST_CASE("eval: evaluate() agrees with the individual metrics and writes JSON", "[eval]") {
  auto options = no_wordnet_eval();
  options.bootstrap.resamples = 200;
  options.bootstrap.seed = 1;
  const auto examples = tiny_examples();
  const auto r = evaluate(examples, options);
  std::vector<std::string> hyps, refs;
  for (const auto& e : examples) {
    hyps.push_back(e.hypothesis);
    refs.push_back(e.reference);
  }
  const auto coco = coco_scores(hyps, refs);
  CHECK(r.coco.bleu[3] == coco.bleu[3]);
  CHECK(r.coco.cider == coco.cider);
  REQUIRE(r.meteor);
  CHECK(r.meteor->key == "METEOR_es");
  REQUIRE(r.clinical);
  // Hypothesis b says "no effusion" where the reference has one: a false negative.
  CHECK(r.clinical->per_observation[kPleuralEffusion].fn == 1);
  CHECK(r.clinical->per_observation[kCardiomegaly].tp == 1);
  const auto j = to_json(r, /*per_example=*/true);
  for (const char* key : {"BLEU_1", "BLEU_2", "BLEU_3", "BLEU_4", "ROUGE_L", "CIDEr", "METEOR_es"})
    CHECK(j.contains(key));
  CHECK(j.at("BLEU_4").get<double>() == coco.bleu[3]);
  CHECK(j.at("clinical").at("uncertain_counted_as") == "negative");
  CHECK(j.at("clinical").contains("micro"));
  CHECK(j.at("clinical").contains("macro"));
  CHECK(j.at("per_example").size() == 3);
  CHECK(j.at("per_example")[1].at("labels_reference").at("Pleural Effusion") == "positive");
  const auto& ci = j.at("confidence_intervals").at("BLEU_4");
  CHECK(ci.at("lower").get<double>() <= ci.at("upper").get<double>());
  CHECK(j.at("confidence_intervals").contains("clinical_micro_F1"));
}

TEST_CASE("eval: bad input gives defined behaviour or an error naming the example", "[eval]") {
  const auto options = no_wordnet_eval();
  SECTION("no examples") {
    CHECK_THROWS_WITH(evaluate({}, options), Catch::Contains("no examples"));
  }
  SECTION("duplicate ids") {
    auto ex = tiny_examples();
    ex[2].id = "a";
    CHECK_THROWS_WITH(evaluate(ex, options), Catch::Contains("duplicate id \"a\""));
  }
  SECTION("non-UTF-8 text") {
    auto ex = tiny_examples();
    ex[1].hypothesis = "no \xff effusion";
    CHECK_THROWS_WITH(evaluate(ex, options), Catch::Contains("id \"b\"") &&
                                                 Catch::Contains("hypothesis is not valid UTF-8"));
    ex[1].hypothesis = "ok";
    ex[2].reference = "\xc3\x28";  // a truncated two-byte sequence
    CHECK_THROWS_WITH(evaluate(ex, options), Catch::Contains("reference is not valid UTF-8"));
  }
  SECTION("empty hypothesis: scored 0 as pycocoevalcap does, listed") {
    auto ex = tiny_examples();
    ex[0].hypothesis = "";
    const auto r = evaluate(ex, options);
    CHECK(r.coco.bleu_per_example[0][0] < 1e-9);
    CHECK(r.coco.rouge_l_per_example[0] == 0.0);
    CHECK(r.coco.cider_per_example[0] == 0.0);
    CHECK(r.meteor->per_example[0] == 0.0);
    CHECK(r.empty_hypotheses == std::vector<std::string>{"a"});
  }
  SECTION("empty reference: scored as pycocoevalcap does, listed; all empty is an error") {
    auto ex = tiny_examples();
    ex[1].reference = "";
    const auto r = evaluate(ex, options);
    CHECK(r.empty_references == std::vector<std::string>{"b"});
    CHECK(r.coco.rouge_l_per_example[1] == 0.0);
    for (auto& e : ex) e.reference = " ";
    CHECK_THROWS_WITH(evaluate(ex, options), Catch::Contains("every reference is empty"));
  }
  SECTION("size mismatches and bad bootstrap settings") {
    CHECK_THROWS_AS(coco_scores({"a"}, {}), EvalError);
    CHECK_THROWS_AS(meteor_scores({"a"}, {}, MeteorScorer(no_wordnet())), EvalError);
    CHECK_THROWS_AS(clinical_scores(std::vector<ReportLabels>(2), std::vector<ReportLabels>(1)),
                    EvalError);
    const std::vector<double> v = {1, 2, 3};
    BootstrapOptions o;
    o.resamples = 0;
    CHECK_THROWS_WITH(bootstrap_ci(3, mean_of(v), o), Catch::Contains("resamples"));
    o.resamples = 10;
    o.level = 1.5;
    CHECK_THROWS_WITH(bootstrap_ci(3, mean_of(v), o), Catch::Contains("level"));
    CHECK_THROWS_WITH(paired_bootstrap(0, mean_of(v), mean_of(v)), Catch::Contains("no examples"));
  }
}

TEST_CASE("eval: JSONL reading and matching by id name file, line and ids", "[eval]") {
  const auto dir = ihn_eval_test::scratch_dir("eval_jsonl");
  auto write = [&](const std::string& name, const std::string& text) {
    std::ofstream(dir / name, std::ios::binary) << text;
    return dir / name;
  };
  const auto good = write(
      "good.jsonl", "{\"id\": \"x\", \"report\": \"a b\"}\n\n{\"id\": 7, \"report\": \"c\"}\n");
  const auto reports = read_reports_jsonl(good);
  REQUIRE(reports.size() == 2);
  CHECK(reports[1].id == "7");
  CHECK(reports[1].line == 3);

  auto error_of = [](const std::filesystem::path& p) {
    try {
      read_reports_jsonl(p);
    } catch (const EvalError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK_THAT(error_of(write("bad.jsonl",
                            "{\"id\": \"x\", \"report\": \"a\"}\n{\"id\": \"y\", \"report\": \n")),
             Catch::Contains("bad.jsonl:2: malformed JSON"));
  CHECK_THAT(error_of(write("noid.jsonl", "{\"report\": \"a\"}\n")),
             Catch::Contains("noid.jsonl:1: missing \"id\""));
  CHECK_THAT(error_of(write("norep.jsonl", "{\"id\": \"q\"}\n")),
             Catch::Contains("norep.jsonl:1: missing \"report\" (id \"q\")"));
  CHECK_THAT(error_of(write("type.jsonl", "{\"id\": \"q\", \"report\": 3}\n")),
             Catch::Contains("\"report\" must be a string"));
  CHECK_THAT(
      error_of(write("dup.jsonl",
                     "{\"id\": \"q\", \"report\": \"a\"}\n{\"id\": \"q\", \"report\": \"b\"}\n")),
      Catch::Contains("dup.jsonl:2: duplicate id \"q\" (first on line 1)"));
  CHECK_THAT(error_of(write("utf.jsonl", "{\"id\": \"q\", \"report\": \"caf\xe9\"}\n")),
             Catch::Contains("utf.jsonl:1: byte 27 is not valid UTF-8"));
  CHECK_THAT(error_of(write("idtype.jsonl", "{\"id\": [1], \"report\": \"a\"}\n")),
             Catch::Contains("idtype.jsonl:1: \"id\" must be a string or an integer"));
  CHECK_THAT(error_of(write("array.jsonl", "[1, 2]\n")),
             Catch::Contains("array.jsonl:1: expected a JSON object"));
  CHECK_THAT(error_of(write("empty.jsonl", "\n")), Catch::Contains("no reports"));
  CHECK_THAT(error_of(dir / "absent.jsonl"), Catch::Contains("cannot open"));

  const std::vector<Report> hyps = {{"1", "a", 1}, {"2", "b", 2}};
  const std::vector<Report> refs = {{"2", "B", 1}, {"3", "C", 2}};
  CHECK_THROWS_WITH(match_by_id(hyps, refs),
                    Catch::Contains("1 in hypotheses but not in references (\"1\")") &&
                        Catch::Contains("1 in references but not in hypotheses (\"3\")"));
  const std::vector<Report> refs_ok = {{"2", "B", 1}, {"1", "A", 2}};
  const auto matched = match_by_id(hyps, refs_ok);
  CHECK(matched[0].reference == "A");  // hypotheses' order, references found by id
  CHECK(matched[1].reference == "B");
}

TEST_CASE("eval: bit-parallel LCS equals the dynamic programme", "[eval]") {
  // Random sequences over small alphabets (many matches) and lengths crossing the 64-bit word
  // boundaries; the DP is the textbook recurrence rouge.py uses.
  std::mt19937_64 rng(5);
  for (int trial = 0; trial < 400; ++trial) {
    const std::size_t la = rng() % 200, lb = rng() % 200;
    const std::uint32_t alphabet = 1 + static_cast<std::uint32_t>(rng() % 12);
    std::vector<std::uint32_t> a(la), b(lb);
    for (auto& x : a) x = static_cast<std::uint32_t>(rng() % alphabet);
    for (auto& x : b) x = static_cast<std::uint32_t>(rng() % alphabet);
    INFO("trial " << trial << " lengths " << la << ", " << lb);
    CHECK(ihn::eval::detail::lcs_length(a, b) == ihn::eval::detail::lcs_length_dp(a, b));
  }
}

// Properties on the fixture's "hypothesis = reference" set: every metric must say "perfect".
TEST_CASE("eval: identical reports score perfectly on every metric", "[eval][shared]") {
  const auto fixture = load_json(ihn_eval_test::fixtures_dir() / "metrics" / "metrics.json");
  const auto refs = fixture.at("references").get<std::vector<std::string>>();
  std::vector<Example> examples;
  for (std::size_t i = 0; i < refs.size(); ++i)
    examples.push_back({std::to_string(i), refs[i], refs[i]});
  EvalOptions options;
  options.meteor_options.synonyms = std::filesystem::exists("/usr/share/wordnet/data.noun");
  const auto r = evaluate(examples, options);
  REQUIRE(r.meteor);
  for (double m : r.meteor->per_example) CHECK(m == 1.0);  // one chunk, no penalty: exactly 1
  // METEOR's aggregation adds no chunks for identical segments: the corpus score is 1 too
  // (summing their chunks would give ~0.70 here, the fragmentation penalty being concave).
  CHECK(r.meteor->corpus == Approx(1.0).epsilon(1e-12));
  REQUIRE(r.clinical);
  CHECK(r.clinical->micro.f1 == 1.0);
  CHECK(r.clinical->micro.tp > 0);
  CHECK(r.clinical->micro.fp == 0);
  CHECK(r.clinical->micro.fn == 0);
  std::set<std::string> distinct(refs.begin(), refs.end());
  CHECK(r.distinct.distinct_reports == Approx(static_cast<double>(distinct.size()) / refs.size()));
}
