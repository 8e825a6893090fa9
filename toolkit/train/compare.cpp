// The comparison of runs with and without ihn (compare_evaluations, its Markdown and JSON)
// and the training curves (plot_runs): plain C++ on ihn::eval, no LibTorch, so this TU builds
// in seconds next to train.cpp.
#include "train/internal.hpp"
#include "train/train.hpp"

#include <ihn/eval.hpp>

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <memory>
#include <numeric>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace ihn_toolkit::train {

namespace fs = std::filesystem;
using json = nlohmann::json;

ihn::eval::MeteorOptions meteor_options(const std::string& wordnet, std::string* note) {
  ihn::eval::MeteorOptions mo;
  mo.wordnet_dir = wordnet;
  if (wordnet.empty() || !fs::exists(fs::path(wordnet) / "data.noun")) {
    mo.synonyms = false;
    if (note)
      *note = "WordNet not found at '" + wordnet +
              "': METEOR without the synonym stage (apt-get install wordnet-base)";
  }
  return mo;
}

// ------------------------------------------------------------------------------------------
// Comparison

namespace {

struct SeedScores {
  ihn::eval::EvalResult result;
  std::vector<long> ranks;
  std::vector<std::string> hypotheses;
  /// The reference has a finding (its labels are not No Finding alone): the studies where a
  /// template of the normal report cannot be right.
  std::vector<bool> abnormal;
};

/// The examples of `idx` whose reference is abnormal.
std::vector<size_t> abnormal_only(const SeedScores& s, const std::vector<size_t>& idx) {
  std::vector<size_t> out;
  for (auto i : idx)
    if (s.abnormal[i]) out.push_back(i);
  return out;
}

using Metric = std::function<double(const SeedScores&, const std::vector<size_t>&)>;

double mean_over(const std::vector<double>& v, const std::vector<size_t>& idx) {
  double s = 0;
  for (auto i : idx) s += v[i];
  return idx.empty() ? 0 : s / static_cast<double>(idx.size());
}

double t_quantile_975(int df) {
  return df < 1 ? 0 : ihn::eval::student_t_quantile(0.975, df);
}

}  // namespace

namespace {

/// Every run's test evaluation rescored per example (the metrics need per-study statistics),
/// scores[arm][seed]; `meteor_key` gets the METEOR variant's name.
std::vector<std::vector<SeedScores>> rescore(const std::vector<std::vector<json>>& evals,
                                             std::string* meteor_key) {
  std::vector<std::vector<SeedScores>> scores(evals.size());
  ihn::eval::EvalOptions eo;
  eo.meteor_options = meteor_options(
      fs::exists("/usr/share/wordnet/data.noun") ? "/usr/share/wordnet" : "", nullptr);
  for (size_t arm = 0; arm < evals.size(); ++arm)
    for (const auto& e : evals[arm]) {
      const auto& d = e.at("per_example_data");
      SeedScores s;
      std::vector<ihn::eval::Example> ex;
      const auto ids = d.at("ids").get<std::vector<std::string>>();
      const auto hyps = d.at("hypotheses").get<std::vector<std::string>>();
      const auto refs = d.at("references").get<std::vector<std::string>>();
      for (size_t i = 0; i < ids.size(); ++i) ex.push_back({ids[i], hyps[i], refs[i]});
      s.result = ihn::eval::evaluate(ex, eo);
      *meteor_key = s.result.meteor->key;
      s.ranks = d.at("i2r_ranks").get<std::vector<long>>();
      s.hypotheses = hyps;
      for (const auto& labels : s.result.clinical->reference_labels)
        s.abnormal.push_back(labels[ihn::eval::kNoFinding] != ihn::eval::Label::positive);
      scores[arm].push_back(std::move(s));
    }
  return scores;
}

/// The compared metrics, each a function of one seed's scores on a subset of its studies.
std::vector<std::pair<std::string, Metric>> compare_metrics(
    const std::string& meteor_key, std::shared_ptr<const ihn::eval::MeteorScorer> scorer) {
  std::vector<std::pair<std::string, Metric>> metrics;
  for (int k = 0; k < 4; ++k)
    metrics.emplace_back("BLEU-" + std::to_string(k + 1),
                         [k](const SeedScores& s, const std::vector<size_t>& idx) {
                           return ihn::eval::corpus_bleu(s.result.coco.bleu_stats, idx)[k];
                         });
  metrics.emplace_back(meteor_key, [scorer](const SeedScores& s, const std::vector<size_t>& idx) {
    ihn::eval::MeteorStats total;
    for (auto i : idx) total += s.result.meteor->stats[i];
    return scorer->score(total);
  });
  metrics.emplace_back("ROUGE-L", [](const SeedScores& s, const std::vector<size_t>& idx) {
    return mean_over(s.result.coco.rouge_l_per_example, idx);
  });
  metrics.emplace_back("CIDEr", [](const SeedScores& s, const std::vector<size_t>& idx) {
    return mean_over(s.result.coco.cider_per_example, idx);
  });
  const auto clinical = [](const SeedScores& s, const std::vector<size_t>& idx) {
    const auto labels = [&idx](const std::vector<ihn::eval::ReportLabels>& all) {
      std::vector<ihn::eval::ReportLabels> out;
      for (auto i : idx) out.push_back(all[i]);
      return out;
    };
    const auto& c = *s.result.clinical;
    return ihn::eval::clinical_scores(labels(c.hypothesis_labels), labels(c.reference_labels));
  };
  metrics.emplace_back("clinical F1 micro", [clinical](const SeedScores& s, const auto& idx) {
    return clinical(s, idx).micro.f1;
  });
  metrics.emplace_back("clinical F1 macro", [clinical](const SeedScores& s, const auto& idx) {
    return clinical(s, idx).macro.f1;
  });
  // The same scores on the abnormal studies alone, and F1 per observation: where a generator
  // that writes the normal template scores nothing.
  metrics.emplace_back("clinical F1 macro, abnormal",
                       [clinical](const SeedScores& s, const std::vector<size_t>& all) {
                         return clinical(s, abnormal_only(s, all)).macro.f1;
                       });
  metrics.emplace_back("clinical F1 micro, abnormal",
                       [clinical](const SeedScores& s, const std::vector<size_t>& all) {
                         return clinical(s, abnormal_only(s, all)).micro.f1;
                       });
  metrics.emplace_back("BLEU-4, abnormal", [](const SeedScores& s, const std::vector<size_t>& all) {
    return ihn::eval::corpus_bleu(s.result.coco.bleu_stats, abnormal_only(s, all))[3];
  });
  for (int o = 0; o < ihn::eval::kNumObservations; ++o)
    metrics.emplace_back(std::string("F1 ") + ihn::eval::kObservations[static_cast<size_t>(o)],
                         [clinical, o](const SeedScores& s, const std::vector<size_t>& idx) {
                           return clinical(s, idx).per_observation[static_cast<size_t>(o)].f1;
                         });
  metrics.emplace_back("retrieval R@1", [](const SeedScores& s, const std::vector<size_t>& idx) {
    double hits = 0;
    for (auto i : idx) hits += s.ranks[i] == 1;
    return idx.empty() ? 0 : hits / static_cast<double>(idx.size());
  });
  metrics.emplace_back("distinct reports", [](const SeedScores& s, const std::vector<size_t>& idx) {
    std::set<size_t> unique_examples(idx.begin(), idx.end());
    std::set<std::string> texts;
    for (auto i : unique_examples) texts.insert(s.hypotheses[i]);
    return unique_examples.empty()
               ? 0
               : static_cast<double>(texts.size()) / static_cast<double>(unique_examples.size());
  });
  return metrics;
}

/// The examples of all seeds in one list, seed s at [offset[s], offset[s + 1]), so that the
/// bootstrap resamples seeds x examples.
std::vector<size_t> seed_offsets(const std::vector<std::vector<SeedScores>>& scores) {
  const size_t seeds = scores[0].size();
  std::vector<size_t> offset(seeds + 1, 0);
  for (size_t s = 0; s < seeds; ++s) {
    const size_t n = scores[0][s].hypotheses.size();
    for (size_t arm = 1; arm < scores.size(); ++arm)
      if (scores[arm][s].hypotheses.size() != n)
        throw TrainError("compare: runs of seed " + std::to_string(s) +
                         " have different test sets");
    offset[s + 1] = offset[s] + n;
  }
  return offset;
}

/// One metric's row: each arm's mean over seeds with its t interval, and each arm against the
/// first (seeds better/equal/worse; paired bootstrap over seeds x studies unless `set_level`).
CompareRow compare_row(const std::string& name, const Metric& metric,
                       const std::vector<std::vector<SeedScores>>& scores,
                       const std::vector<size_t>& offset, bool set_level, int resamples,
                       uint64_t seed) {
  const size_t arms = scores.size(), seeds = scores[0].size();
  // The statistic of a resample: the mean over seeds of each seed's metric on its examples.
  auto statistic = [&](size_t arm) {
    return [&, arm](const std::vector<size_t>& idx) {
      std::vector<std::vector<size_t>> per(seeds);
      for (auto i : idx) {
        const auto s = static_cast<size_t>(std::upper_bound(offset.begin(), offset.end(), i) -
                                           offset.begin() - 1);
        per[s].push_back(i - offset[s]);
      }
      double sum = 0;
      int used = 0;
      for (size_t s = 0; s < seeds; ++s)
        if (!per[s].empty()) {
          sum += metric(scores[arm][s], per[s]);
          ++used;
        }
      return used ? sum / used : 0.0;
    };
  };
  CompareRow row;
  row.metric = name;
  row.arms.resize(arms - 1);
  std::vector<std::vector<double>> per_seed(arms);
  for (size_t arm = 0; arm < arms; ++arm) {
    std::vector<double>& values = per_seed[arm];
    for (size_t s = 0; s < seeds; ++s) {
      std::vector<size_t> all(offset[s + 1] - offset[s]);
      std::iota(all.begin(), all.end(), size_t{0});
      values.push_back(metric(scores[arm][s], all));
    }
    const double mean = std::accumulate(values.begin(), values.end(), 0.0) / values.size();
    double var = 0;
    for (double v : values) var += (v - mean) * (v - mean);
    const double half = values.size() > 1
                            ? t_quantile_975(static_cast<int>(values.size()) - 1) *
                                  std::sqrt(var / (values.size() - 1)) / std::sqrt(values.size())
                            : 0.0;
    (arm == 0 ? row.mean_off : row.arms[arm - 1].mean) = mean;
    (arm == 0 ? row.ci_off : row.arms[arm - 1].ci) = half;
  }
  for (size_t arm = 1; arm < arms; ++arm) {
    auto& a = row.arms[arm - 1];
    for (size_t s = 0; s < seeds; ++s) {
      const double d = per_seed[arm][s] - per_seed[0][s];
      (std::abs(d) < 1e-12 ? a.seeds_equal : d > 0 ? a.seeds_better : a.seeds_worse)++;
    }
    if (set_level) {
      a.difference = a.mean - row.mean_off;
      a.lower = a.upper = a.p_value = std::numeric_limits<double>::quiet_NaN();
      a.significant = false;
      a.bootstrapped = false;
      continue;
    }
    // The same resample seed for every arm: each arm's interval is the two-arm comparison it
    // would be on its own.
    const auto pc = ihn::eval::paired_bootstrap(offset[seeds], statistic(arm), statistic(0),
                                                {resamples, seed, 0.95});
    a.difference = pc.difference;
    a.lower = pc.lower;
    a.upper = pc.upper;
    a.p_value = pc.p_value;
    a.significant = pc.p_value < 0.05;
  }
  return row;
}

}  // namespace

std::vector<CompareRow> compare_evaluations(const std::vector<std::vector<json>>& evals,
                                            int resamples, uint64_t seed) {
  if (evals.size() < 2 || evals[0].empty())
    throw TrainError("compare: need runs without ihn and at least one arm with it");
  for (const auto& arm : evals)
    if (arm.size() != evals[0].size())
      throw TrainError("compare: every arm needs the same number of seeds");
  std::string meteor_key = "METEOR";
  const auto scores = rescore(evals, &meteor_key);
  const auto offset = seed_offsets(scores);
  // score() needs no WordNet: the per-example statistics already hold the matches.
  const auto scorer = std::make_shared<const ihn::eval::MeteorScorer>(meteor_options("", nullptr));
  // Metrics of the set of reports rather than of each study: a bootstrap resample repeats
  // studies, which changes the set itself (its percentile interval need not even contain the
  // estimate), so they get no interval or p-value.
  const std::set<std::string> set_level = {"distinct reports"};
  std::vector<CompareRow> rows;
  for (const auto& [name, metric] : compare_metrics(meteor_key, scorer))
    rows.push_back(
        compare_row(name, metric, scores, offset, set_level.count(name) > 0, resamples, seed));
  return rows;
}

std::string compare_markdown(const std::vector<CompareRow>& rows,
                             const std::vector<std::string>& names) {
  if (!rows.empty() && names.size() != rows[0].arms.size() + 1)
    throw TrainError("compare: " + std::to_string(names.size()) + " arm names for " +
                     std::to_string(rows[0].arms.size() + 1) + " arms");
  std::ostringstream o;
  o << "| metric | " << names[0];
  for (size_t a = 1; a < names.size(); ++a) o << " | " << names[a];
  for (size_t a = 1; a < names.size(); ++a)
    o << " | " << names[a] << " − " << names[0] << " [95% CI] | p | significant | seeds +/=/-";
  o << " |\n|---";
  for (size_t a = 0; a < names.size(); ++a) o << "|---";
  for (size_t a = 1; a < names.size(); ++a) o << "|---|---|---|---";
  o << "|\n";
  for (const auto& r : rows) {
    o << fmt::format("| {} | {:.4f} ± {:.4f}", r.metric, r.mean_off, r.ci_off);
    for (const auto& a : r.arms) o << fmt::format(" | {:.4f} ± {:.4f}", a.mean, a.ci);
    for (const auto& a : r.arms) {
      if (a.bootstrapped)
        o << fmt::format(" | {:+.4f} [{:+.4f}, {:+.4f}] | {:.3f} | {} | {}/{}/{}", a.difference,
                         a.lower, a.upper, a.p_value, a.significant ? "yes" : "no", a.seeds_better,
                         a.seeds_equal, a.seeds_worse);
      else
        o << fmt::format(" | {:+.4f} [n/a: set-level] | n/a | n/a | {}/{}/{}", a.difference,
                         a.seeds_better, a.seeds_equal, a.seeds_worse);
    }
    o << " |\n";
  }
  return o.str();
}

json compare_json(const std::vector<CompareRow>& rows, const std::vector<std::string>& names) {
  json j = json::array();
  for (const auto& r : rows) {
    json row{{"metric", r.metric},
             {names.at(0), {{"mean", r.mean_off}, {"ci95_half_width", r.ci_off}}}};
    for (size_t a = 0; a < r.arms.size(); ++a) {
      const auto& d = r.arms[a];
      row[names.at(a + 1)] = {
          {"mean", d.mean},
          {"ci95_half_width", d.ci},
          {"difference", d.difference},
          {"difference_ci95", d.bootstrapped ? json{d.lower, d.upper} : json(nullptr)},
          {"p_value", d.bootstrapped ? json(d.p_value) : json(nullptr)},
          {"significant", d.bootstrapped ? json(d.significant) : json(nullptr)},
          {"bootstrapped", d.bootstrapped},
          {"seeds_better_equal_worse", {d.seeds_better, d.seeds_equal, d.seeds_worse}}};
    }
    j.push_back(row);
  }
  return j;
}

// ------------------------------------------------------------------------------------------
// Plots

std::string compare_arm_folder(const std::string& arm) {
  return arm == "off" ? "without" : arm == "paper" ? "with_ihn" : arm;
}

std::string plot_runs(const std::vector<std::string>& run_dirs,
                      const std::vector<std::string>& titles, const std::string& png) {
  // gnuplot runs from PATH without a shell (posix_spawnp with an argv), so no path or title is
  // ever parsed by /bin/sh; it is looked up first so that nothing is written when it is absent.
  const char* not_installed =
      "plots: gnuplot is not installed, no PNG written (apt-get install gnuplot-nox; "
      "the numbers are in log.jsonl)";
  const char* search_path = std::getenv("PATH");
  bool found = false;
  std::istringstream path_dirs(search_path ? search_path : "");
  for (std::string path_dir; !found && std::getline(path_dirs, path_dir, ':');)
    found = ::access(((path_dir.empty() ? "." : path_dir) + "/gnuplot").c_str(), X_OK) == 0;
  if (!found) return not_installed;
  // In gnuplot's single-quoted strings a quote is written twice.
  auto quoted = [](const std::string& text) {
    std::string out = "'";
    for (char c : text) out += c == '\'' ? std::string("''") : std::string(1, c);
    return out + "'";
  };
  const fs::path dir = fs::path(png).parent_path();
  std::ostringstream script;
  script << "set terminal png size 1000,400\nset output " << quoted(png) << "\n"
         << "set multiplot layout 1,2\nset key bottom right\nset xlabel 'epoch'\n";
  std::vector<std::string> files;
  for (size_t r = 0; r < run_dirs.size(); ++r) {
    const std::string dat = (dir / ("curve_" + std::to_string(r) + ".dat")).string();
    std::ifstream in((fs::path(run_dirs[r]) / "log.jsonl").string());
    std::ofstream out(dat);
    std::string line;
    std::map<int, std::pair<double, double>> by_epoch;  // a resumed run may repeat an epoch
    while (std::getline(in, line)) {
      auto j = json::parse(line, nullptr, false);
      if (j.is_discarded() || j.value("type", "") != "epoch") continue;
      by_epoch[j["epoch"].get<int>()] = {j["train_loss"].get<double>(),
                                         j["val_BLEU_4"].get<double>()};
    }
    for (const auto& [e, v] : by_epoch) out << e << " " << v.first << " " << v.second << "\n";
    files.push_back(dat);
  }
  auto plot = [&](const char* title, int column) {
    script << "set title '" << title << "'\nplot ";
    for (size_t r = 0; r < files.size(); ++r)
      script << (r ? ", " : "") << quoted(files[r]) << " using 1:" << column
             << " with linespoints title " << quoted(titles[r]);
    script << "\n";
  };
  plot("training loss", 2);
  plot("validation BLEU-4", 3);
  script << "unset multiplot\n";
  const std::string gp = (dir / "curves.gp").string();
  std::ofstream(gp) << script.str();
  // stdin from and stdout/stderr to /dev/null, as the shell redirections did.
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  std::string program = "gnuplot";
  std::vector<char*> argv = {program.data(), const_cast<char*>(gp.c_str()), nullptr};
  pid_t pid = 0;
  const int spawn_error = posix_spawnp(&pid, "gnuplot", &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (spawn_error == ENOENT) return not_installed;
  int status = 0;
  pid_t waited = -1;
  if (spawn_error == 0) do
      waited = waitpid(pid, &status, 0);
    while (waited < 0 && errno == EINTR);
  if (waited != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
    return "plots: gnuplot failed on " + gp + " (png terminal missing?)";
  return "";
}

}  // namespace ihn_toolkit::train
