// evaluate(): every metric of ihn::eval on a list of (id, hypothesis, reference) examples, with
// input checks, optional bootstrap intervals, and to_json() with pycocoevalcap's key names
// (BLEU_1..BLEU_4, ROUGE_L, CIDEr) plus the METEOR variant, clinical and distinctness scores.
//
// Defined behaviour for awkward input (docs/evaluation.md lists it):
//  * no examples, duplicate ids, text that is not UTF-8 -> EvalError naming the example;
//  * empty hypothesis -> scored as pycocoevalcap scores it (0 matches; ROUGE-L 0; METEOR 0);
//  * empty reference -> scored as pycocoevalcap scores it (it asserts only that a reference
//    exists); evaluate() lists such ids in EvalResult::empty_references so callers can warn;
//  * every reference empty -> EvalError (CIDEr has no document frequencies; pycocoevalcap fails).
#pragma once

#include <ihn/eval/bootstrap.hpp>
#include <ihn/eval/chexpert.hpp>
#include <ihn/eval/coco.hpp>
#include <ihn/eval/meteor.hpp>
#include <ihn/eval/retrieval.hpp>

#include <nlohmann/json.hpp>

#include <map>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace ihn {
inline namespace v0 {
namespace eval {

struct Example {
  std::string id;
  std::string hypothesis;
  std::string reference;
};

struct EvalOptions {
  bool meteor = true;
  MeteorOptions meteor_options;
  bool clinical = true;
  bool uncertain_as_positive = false;  ///< clinical P/R/F1: count "uncertain" as positive
  /// Bootstrap intervals for the corpus scores when resamples > 0.
  BootstrapOptions bootstrap{0, 0, 0.95};
};

struct EvalResult {
  std::vector<std::string> ids;
  CocoScores coco;
  std::optional<MeteorScores> meteor;
  std::optional<ClinicalScores> clinical;
  Distinctness distinct;
  /// Keyed by metric name (BLEU_4, CIDEr, METEOR_esw, clinical_micro_F1, ...).
  std::map<std::string, ConfidenceInterval> confidence_intervals;
  std::vector<std::string> empty_hypotheses, empty_references;  ///< ids, for warnings
};

namespace detail {
inline bool blank(const std::string& s) {
  return split_python_whitespace(s).empty();
}

inline void check_examples(const std::vector<Example>& examples) {
  if (examples.empty()) throw EvalError("evaluate: no examples");
  std::unordered_map<std::string, std::size_t> seen;
  for (std::size_t i = 0; i < examples.size(); ++i) {
    const auto& e = examples[i];
    auto [it, inserted] = seen.emplace(e.id, i);
    if (!inserted)
      throw EvalError("evaluate: duplicate id \"" + e.id + "\" (examples " +
                      std::to_string(it->second) + " and " + std::to_string(i) + ")");
    for (const auto& [field, text] : {std::pair<const char*, const std::string*>{"id", &e.id},
                                      {"hypothesis", &e.hypothesis},
                                      {"reference", &e.reference}}) {
      const auto bad = first_invalid_utf8(*text);
      if (bad != std::string::npos)
        throw EvalError("evaluate: example " + std::to_string(i) + " (id \"" +
                        (field == std::string("id") ? std::string("?") : e.id) + "\"): " + field +
                        " is not valid UTF-8 at byte " + std::to_string(bad));
    }
  }
}
}  // namespace detail

/// Scores every example; see the header comment for what is checked.
inline EvalResult evaluate(const std::vector<Example>& examples, const EvalOptions& options = {}) {
  detail::check_examples(examples);
  EvalResult r;
  std::vector<std::string> hyps, refs;
  for (const auto& e : examples) {
    r.ids.push_back(e.id);
    hyps.push_back(e.hypothesis);
    refs.push_back(e.reference);
    if (detail::blank(e.hypothesis)) r.empty_hypotheses.push_back(e.id);
    if (detail::blank(e.reference)) r.empty_references.push_back(e.id);
  }
  if (r.empty_references.size() == examples.size())
    throw EvalError("evaluate: every reference is empty (first id \"" + examples[0].id + "\")");
  r.coco = coco_scores(hyps, refs);
  if (options.meteor) r.meteor = meteor_scores(hyps, refs, MeteorScorer(options.meteor_options));
  if (options.clinical) r.clinical = clinical_scores(hyps, refs, options.uncertain_as_positive);
  r.distinct = distinctness(hyps);

  if (options.bootstrap.resamples > 0) {
    const std::size_t n = examples.size();
    const auto& stats = r.coco.bleu_stats;
    for (int k = 0; k < 4; ++k)
      r.confidence_intervals["BLEU_" + std::to_string(k + 1)] = bootstrap_ci(
          n,
          [&stats, k](const std::vector<std::size_t>& idx) { return corpus_bleu(stats, idx)[k]; },
          options.bootstrap);
    r.confidence_intervals["ROUGE_L"] =
        bootstrap_ci(n, mean_of(r.coco.rouge_l_per_example), options.bootstrap);
    r.confidence_intervals["CIDEr"] =
        bootstrap_ci(n, mean_of(r.coco.cider_per_example), options.bootstrap);
    if (r.meteor) {
      const MeteorScorer scorer([&] {
        auto o = options.meteor_options;
        o.synonyms = false;  // score() needs no WordNet; avoid loading it again
        return o;
      }());
      const auto& ms = r.meteor->stats;
      r.confidence_intervals[r.meteor->key] = bootstrap_ci(
          n,
          [&](const std::vector<std::size_t>& idx) {
            MeteorStats total;
            for (auto i : idx) total += ms[i];
            return scorer.score(total);
          },
          options.bootstrap);
    }
    if (r.clinical) {
      const auto& c = *r.clinical;
      const bool up = options.uncertain_as_positive;
      auto labels_of = [&](const std::vector<ReportLabels>& all,
                           const std::vector<std::size_t>& idx) {
        std::vector<ReportLabels> out;
        out.reserve(idx.size());
        for (auto i : idx) out.push_back(all[i]);
        return out;
      };
      r.confidence_intervals["clinical_micro_F1"] = bootstrap_ci(
          n,
          [&](const std::vector<std::size_t>& idx) {
            return clinical_scores(labels_of(c.hypothesis_labels, idx),
                                   labels_of(c.reference_labels, idx), up)
                .micro.f1;
          },
          options.bootstrap);
      r.confidence_intervals["clinical_macro_F1"] = bootstrap_ci(
          n,
          [&](const std::vector<std::size_t>& idx) {
            return clinical_scores(labels_of(c.hypothesis_labels, idx),
                                   labels_of(c.reference_labels, idx), up)
                .macro.f1;
          },
          options.bootstrap);
    }
  }
  return r;
}

inline nlohmann::json to_json(const PRF& p) {
  return {{"precision", p.precision},
          {"recall", p.recall},
          {"f1", p.f1},
          {"tp", p.tp},
          {"fp", p.fp},
          {"fn", p.fn}};
}

/// One JSON object: corpus scores under pycocoevalcap's names, then the rest; per-example
/// scores and labels when `per_example`.
inline nlohmann::json to_json(const EvalResult& r, bool per_example = false) {
  nlohmann::json j;
  j["n_examples"] = r.ids.size();
  for (int k = 0; k < 4; ++k) j["BLEU_" + std::to_string(k + 1)] = r.coco.bleu[k];
  j["ROUGE_L"] = r.coco.rouge_l;
  j["CIDEr"] = r.coco.cider;
  nlohmann::json notes;
  notes["BLEU_1..4, ROUGE_L, CIDEr"] =
      "pycocoevalcap as R2Gen calls it (no PTB tokenizer, one reference); corpus BLEU from "
      "pooled counts";
  if (r.meteor) {
    j[r.meteor->key] = r.meteor->corpus;
    notes[r.meteor->key] = r.meteor->description + "; not METEOR 1.5";
  }
  if (r.clinical) {
    const auto& c = *r.clinical;
    nlohmann::json cl;
    cl["labeller"] = "ihn rule-based CheXpert-style labeller (14 observations)";
    cl["uncertain_counted_as"] = c.uncertain_as_positive ? "positive" : "negative";
    cl["micro"] = to_json(c.micro);
    cl["macro"] = {
        {"precision", c.macro.precision}, {"recall", c.macro.recall}, {"f1", c.macro.f1}};
    for (int o = 0; o < kNumObservations; ++o)
      cl["per_observation"][kObservations[o]] = to_json(c.per_observation[o]);
    j["clinical"] = cl;
  }
  j["distinct"] = {{"distinct_reports", r.distinct.distinct_reports},
                   {"distinct_1", r.distinct.distinct_1},
                   {"distinct_2", r.distinct.distinct_2}};
  j["bleu_lengths"] = {{"testlen", r.coco.testlen}, {"reflen", r.coco.reflen}};
  if (!r.confidence_intervals.empty()) {
    for (const auto& [name, ci] : r.confidence_intervals)
      j["confidence_intervals"][name] = {{"estimate", ci.estimate},
                                         {"lower", ci.lower},
                                         {"upper", ci.upper},
                                         {"level", ci.level},
                                         {"resamples", ci.resamples},
                                         {"seed", ci.seed},
                                         {"method", "percentile bootstrap over examples"}};
  }
  if (!r.empty_hypotheses.empty()) j["empty_hypotheses"] = r.empty_hypotheses;
  if (!r.empty_references.empty()) j["empty_references"] = r.empty_references;
  j["notes"] = notes;
  if (per_example) {
    auto& rows = j["per_example"] = nlohmann::json::array();
    for (std::size_t i = 0; i < r.ids.size(); ++i) {
      nlohmann::json row;
      row["id"] = r.ids[i];
      for (int k = 0; k < 4; ++k)
        row["BLEU_" + std::to_string(k + 1)] = r.coco.bleu_per_example[k][i];
      row["ROUGE_L"] = r.coco.rouge_l_per_example[i];
      row["CIDEr"] = r.coco.cider_per_example[i];
      if (r.meteor) row[r.meteor->key] = r.meteor->per_example[i];
      if (r.clinical) {
        for (int o = 0; o < kNumObservations; ++o) {
          row["labels_hypothesis"][kObservations[o]] =
              label_name(r.clinical->hypothesis_labels[i][o]);
          row["labels_reference"][kObservations[o]] =
              label_name(r.clinical->reference_labels[i][o]);
        }
      }
      rows.push_back(std::move(row));
    }
  }
  return j;
}

}  // namespace eval
}  // namespace v0
}  // namespace ihn
