// `ihn eval`: score generated reports against references with every metric of ihn::eval
// (pycocoevalcap BLEU/ROUGE-L/CIDEr, METEOR_esw, clinical P/R/F1, distinctness), optionally
// with bootstrap intervals and a paired comparison against a second system. Plain C++ and
// ihn::eval only -- this file must not include LibTorch, so it compiles in seconds.
#include "command.hpp"

#include <ihn/eval.hpp>

#include <fmt/core.h>

#include <cstdio>
#include <iostream>
#include <memory>
#include <string>

namespace {

struct EvalArgs {
  std::string hyps, refs, compare;
  bool json = false, per_example = false, no_synonyms = false, no_meteor = false;
  bool uncertain_positive = false;
  int bootstrap = 0;
  std::uint64_t seed = 0;
  std::string wordnet = "/usr/share/wordnet";
};

std::vector<ihn::eval::Example> load(const std::string& hyps, const std::string& refs) {
  return ihn::eval::match_by_id(ihn::eval::read_reports_jsonl(hyps),
                                ihn::eval::read_reports_jsonl(refs), hyps, refs);
}

void warn_empty(const ihn::eval::EvalResult& r, const std::string& hyps, const std::string& refs) {
  auto warn = [](const std::vector<std::string>& ids, const std::string& what,
                 const std::string& file) {
    if (ids.empty()) return;
    fmt::print(stderr,
               "ihn eval: warning: {} empty {} in {} (first id \"{}\"); scored as "
               "pycocoevalcap scores them\n",
               ids.size(), what, file, ids[0]);
  };
  warn(r.empty_hypotheses, "hypotheses", hyps);
  warn(r.empty_references, "references", refs);
}

void print_table(const ihn::eval::EvalResult& r, const EvalArgs& a) {
  using ihn::eval::ConfidenceInterval;
  fmt::print("ihn eval: {} examples (hypotheses {}, references {})\n\n", r.ids.size(), a.hyps,
             a.refs);
  const bool ci = !r.confidence_intervals.empty();
  fmt::print("{:<22} {:>10}{}\n", "metric", "score", ci ? "    95% CI (bootstrap)" : "");
  auto row = [&](const std::string& name, double value) {
    fmt::print("{:<22} {:10.6f}", name, value);
    auto it = r.confidence_intervals.find(name);
    if (it != r.confidence_intervals.end())
      fmt::print("    [{:.6f}, {:.6f}]", it->second.lower, it->second.upper);
    fmt::print("\n");
  };
  for (int k = 0; k < 4; ++k) row("BLEU_" + std::to_string(k + 1), r.coco.bleu[k]);
  row("ROUGE_L", r.coco.rouge_l);
  row("CIDEr", r.coco.cider);
  if (r.meteor) row(r.meteor->key, r.meteor->corpus);
  if (r.clinical) {
    const auto& c = *r.clinical;
    fmt::print(
        "\nclinical (rule-based CheXpert-style labels, 14 observations; uncertain counted "
        "as {})\n",
        c.uncertain_as_positive ? "positive" : "negative");
    fmt::print("{:<22} {:10.6f} {:10.6f} {:10.6f}\n", "micro P / R / F1", c.micro.precision,
               c.micro.recall, c.micro.f1);
    fmt::print("{:<22} {:10.6f} {:10.6f} {:10.6f}\n", "macro P / R / F1", c.macro.precision,
               c.macro.recall, c.macro.f1);
    for (const char* name : {"clinical_micro_F1", "clinical_macro_F1"}) {
      auto it = r.confidence_intervals.find(name);
      if (it != r.confidence_intervals.end())
        fmt::print("{:<22}            [{:.6f}, {:.6f}]\n", name, it->second.lower,
                   it->second.upper);
    }
  }
  fmt::print("\ndistinct reports {:.6f}   distinct-1 {:.6f}   distinct-2 {:.6f}\n",
             r.distinct.distinct_reports, r.distinct.distinct_1, r.distinct.distinct_2);
  if (r.meteor) fmt::print("\n{} = {}\n", r.meteor->key, r.meteor->description);
}

nlohmann::json compare_systems(const ihn::eval::EvalResult& a, const ihn::eval::EvalResult& b,
                               const ihn::eval::BootstrapOptions& options) {
  using namespace ihn::eval;
  nlohmann::json out;
  const std::size_t n = a.ids.size();
  auto put = [&](const std::string& name, const ResampleStatistic& sa,
                 const ResampleStatistic& sb) {
    const auto c = paired_bootstrap(n, sa, sb, options);
    out[name] = {{"difference", c.difference},
                 {"lower", c.lower},
                 {"upper", c.upper},
                 {"p_value", c.p_value},
                 {"level", c.level},
                 {"resamples", c.resamples},
                 {"seed", c.seed}};
  };
  for (int k = 0; k < 4; ++k) {
    auto stat = [k](const std::vector<BleuStats>& s) {
      return [&s, k](const std::vector<std::size_t>& idx) { return corpus_bleu(s, idx)[k]; };
    };
    put("BLEU_" + std::to_string(k + 1), stat(a.coco.bleu_stats), stat(b.coco.bleu_stats));
  }
  put("ROUGE_L", mean_of(a.coco.rouge_l_per_example), mean_of(b.coco.rouge_l_per_example));
  put("CIDEr", mean_of(a.coco.cider_per_example), mean_of(b.coco.cider_per_example));
  if (a.meteor && b.meteor)
    put(a.meteor->key, mean_of(a.meteor->per_example), mean_of(b.meteor->per_example));
  if (a.clinical && b.clinical) {
    // Clinical F1 recomputed from the resampled labels of each system.
    auto f1 = [](const ClinicalScores& c, bool micro) {
      return [&c, micro](const std::vector<std::size_t>& idx) {
        std::vector<ReportLabels> h, r;
        for (auto i : idx) {
          h.push_back(c.hypothesis_labels[i]);
          r.push_back(c.reference_labels[i]);
        }
        const auto s = clinical_scores(h, r, c.uncertain_as_positive);
        return micro ? s.micro.f1 : s.macro.f1;
      };
    };
    put("clinical_micro_F1", f1(*a.clinical, true), f1(*b.clinical, true));
    put("clinical_macro_F1", f1(*a.clinical, false), f1(*b.clinical, false));
  }
  return out;
}

void run_eval(const EvalArgs& a) {
  using namespace ihn::eval;
  try {
    EvalOptions options;
    options.meteor = !a.no_meteor;
    options.meteor_options.synonyms = !a.no_synonyms;
    options.meteor_options.wordnet_dir = a.wordnet;
    options.uncertain_as_positive = a.uncertain_positive;
    options.bootstrap.resamples = a.bootstrap;
    options.bootstrap.seed = a.seed;
    const auto examples = load(a.hyps, a.refs);
    const auto result = evaluate(examples, options);
    warn_empty(result, a.hyps, a.refs);
    nlohmann::json comparison;
    if (!a.compare.empty()) {
      auto other_examples = load(a.compare, a.refs);
      // Same examples in the same order as the first system, so the resamples pair up.
      std::unordered_map<std::string, std::size_t> position;
      for (std::size_t i = 0; i < other_examples.size(); ++i) position[other_examples[i].id] = i;
      std::vector<Example> ordered;
      for (const auto& e : examples) ordered.push_back(other_examples.at(position.at(e.id)));
      EvalOptions other_options = options;
      other_options.bootstrap.resamples = 0;
      const auto other = evaluate(ordered, other_options);
      warn_empty(other, a.compare, a.refs);
      BootstrapOptions b = options.bootstrap;
      if (b.resamples <= 0) b.resamples = 1000;
      comparison = compare_systems(result, other, b);
    }
    if (a.json) {
      auto j = to_json(result, a.per_example);
      if (!comparison.is_null()) {
        j["comparison"] = comparison;
        j["comparison_note"] = "paired bootstrap over examples: hypotheses minus --compare";
      }
      std::cout << j.dump(1) << "\n";
    } else {
      print_table(result, a);
      if (!comparison.is_null()) {
        fmt::print("\npaired bootstrap, {} minus {} ({} resamples, seed {})\n", a.hyps, a.compare,
                   comparison.begin()->at("resamples").get<int>(), a.seed);
        fmt::print("{:<22} {:>12}    {:<28} {:>8}\n", "metric", "difference", "95% CI", "p");
        for (const auto& [name, c] : comparison.items()) {
          // The p-value's resolution is 2 / resamples: say "<" rather than print a 0.
          const double p = c.at("p_value").get<double>();
          const double resolution = 2.0 / c.at("resamples").get<double>();
          const std::string p_text =
              p == 0 ? fmt::format("<{:.4g}", resolution) : fmt::format("{:.4f}", p);
          fmt::print("{:<22} {:12.6f}    [{:.6f}, {:.6f}]   {:>8}\n", name,
                     c.at("difference").get<double>(), c.at("lower").get<double>(),
                     c.at("upper").get<double>(), p_text);
        }
      }
    }
  } catch (const EvalError& e) {
    throw ihn::cli::CommandError(e.what());
  }
}

void add_eval_command(CLI::App& app) {
  auto args = std::make_shared<EvalArgs>();
  auto* cmd = app.add_subcommand(
      "eval",
      "Score generated reports against references (BLEU, ROUGE-L, CIDEr, METEOR_esw, "
      "clinical F1, distinctness)");
  cmd->add_option("--hyps", args->hyps, "Generated reports, JSON Lines")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--refs", args->refs, "Reference reports, JSON Lines")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_flag("--json", args->json, "Print one JSON object instead of the table");
  cmd->add_flag("--per-example", args->per_example,
                "With --json: include per-example scores and clinical labels");
  cmd->add_option("--bootstrap", args->bootstrap,
                  "Resamples for 95% percentile bootstrap intervals (0 = none)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--seed", args->seed, "Seed of the bootstrap's std::mt19937_64 (default 0)");
  cmd->add_option("--compare", args->compare,
                  "A second system's reports (JSON Lines): paired bootstrap of the differences")
      ->check(CLI::ExistingFile);
  cmd->add_option("--wordnet", args->wordnet,
                  "WordNet dict folder for METEOR's synonym stage (default /usr/share/wordnet)");
  cmd->add_flag("--no-synonyms", args->no_synonyms,
                "METEOR without the WordNet stage (reported as METEOR_es)");
  cmd->add_flag("--no-meteor", args->no_meteor, "Skip METEOR");
  cmd->add_flag("--uncertain-positive", args->uncertain_positive,
                "Clinical P/R/F1: count 'uncertain' labels as positive (default: as negative)");
  cmd->footer(R"(DESCRIPTION
  Reads two JSON Lines files with one {"id": ..., "report": ...} object per line (id: string
  or integer), pairs them by id and scores each generated report against its one reference,
  as given: no tokenizer is applied, so pass reports tokenised the way your references are
  (R2Gen: lower case, " . " between sentences).

METRICS
  BLEU_1..BLEU_4, ROUGE_L, CIDEr
      Exactly pycocoevalcap as R2Gen calls it (no PTB tokenizer, one reference per example):
      corpus BLEU with the "closest" reference length and coco-caption smoothing; ROUGE-L
      F-measure (beta 1.2) averaged; CIDEr-D (sigma 6, x10, document frequencies from these
      references).
  METEOR_esw (METEOR_es with --no-synonyms)
      METEOR 1.5's scoring with only the exact, Snowball-stem and WordNet-synonym stages; no
      paraphrase table. Not comparable with published METEOR 1.5 numbers.
  clinical
      Precision, recall and F1, micro (pooled over observations) and macro (mean over the 14),
      between the labels a rule-based CheXpert-style labeller gives the two reports.
  distinct
      Share of distinct generated reports, distinct-1 and distinct-2 over all of them.

OUTPUT
  A table, or with --json one JSON object whose keys BLEU_1 ... CIDEr are pycocoevalcap's.
  With --bootstrap N, 95% percentile intervals over examples (seeded: same seed, same numbers).
  With --compare, the paired bootstrap difference (this system minus the other), its interval
  and a two-sided p-value.

ERRORS
  Exit status 1 with a message naming the file and line (malformed JSON, missing id/report,
  bytes that are not UTF-8, duplicate ids), or the ids present in only one file. Empty
  reports are scored as pycocoevalcap scores them, with a warning on stderr. A missing
  WordNet stops with a message; use --wordnet DIR or --no-synonyms.

EXAMPLES
  ihn eval --hyps gen.jsonl --refs test.jsonl
  ihn eval --hyps gen.jsonl --refs test.jsonl --json --bootstrap 1000 --seed 1
  ihn eval --hyps a.jsonl --refs test.jsonl --compare b.jsonl --bootstrap 2000)");
  cmd->callback([args] { run_eval(*args); });
}

}  // namespace

IHN_REGISTER_COMMAND(50, add_eval_command);
