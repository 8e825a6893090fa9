// `ihn compare`: trains the same model without ihn and with each chosen ihn mode (paper,
// official) from the same seeds, evaluates every run on the test split and prints one
// side-by-side table, each arm against the run without ihn, with significance.
#include "command.hpp"
#include "html_report.hpp"
#include "train/pretrain.hpp"
#include "train_options.hpp"

#include <ihn/eval/chexpert.hpp>

#include <spawn.h>
#include <sys/wait.h>

#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <sstream>

extern char** environ;

namespace {

using ihn_toolkit::train::TrainConfig;

struct CompareArgs {
  int seeds = 3;
  uint64_t first_seed = 1;
  std::string model = "r2gen";
  std::string preset = "cpu-bench";
  std::string out = "runs/compare";
  std::string device = "cpu";
  int threads = 0;
  int resamples = 1000;
  int jobs = 2;
  bool table_only = false;
  bool reuse = false;
  std::string arms = "off,paper";
  std::shared_ptr<ihn::cli::RecipeOptions> recipe;
};

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw ihn::cli::CommandError(path + ": missing (the run did not finish)");
  return nlohmann::json::parse(in);
}

/// One `ihn train --config` child per run, so runs can go in parallel with one intra-op thread
/// each: on a small shared machine two single-threaded processes beat one two-threaded one, and
/// every run keeps its own RNG (a second thread in this process would share torch's generator).
pid_t spawn_run(const std::string& config_file) {
  std::vector<std::string> argv_s = {"/proc/self/exe", "train", "--config", config_file};
  std::vector<char*> argv;
  for (auto& s : argv_s) argv.push_back(s.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  if (posix_spawn(&pid, argv[0], nullptr, nullptr, argv.data(), environ) != 0)
    throw ihn::cli::CommandError("cannot start `ihn train` for " + config_file);
  return pid;
}

// "off,paper,official" -> {"off", "paper", "official"}; off first, no repeats.
std::vector<std::string> parse_arms(const std::string& text) {
  std::vector<std::string> arms;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t comma = std::min(text.find(',', start), text.size());
    const std::string arm = text.substr(start, comma - start);
    if (arm != "off" && arm != "paper" && arm != "official")
      throw ihn::cli::CommandError("--arms: unknown arm '" + arm + "' (use off, paper, official)",
                                   2);
    if (std::find(arms.begin(), arms.end(), arm) != arms.end())
      throw ihn::cli::CommandError("--arms: '" + arm + "' given twice", 2);
    arms.push_back(arm);
    start = comma + 1;
  }
  if (arms.size() < 2 || arms[0] != "off")
    throw ihn::cli::CommandError(
        "--arms must start with off (the baseline every arm is compared against) and name at "
        "least one ihn arm, e.g. off,paper or off,paper,official",
        2);
  return arms;
}

/// The run folder of `c` holds a finished run (test.json) of the same recipe: only where it
/// runs, how it prints and its folder may differ.
bool same_recipe_finished(const TrainConfig& c) {
  namespace fs = std::filesystem;
  if (!fs::exists(c.run.out + "/test.json") || !fs::exists(c.run.out + "/config.json"))
    return false;
  nlohmann::json there;
  try {
    std::ifstream in(c.run.out + "/config.json");
    there = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception&) {
    return false;
  }
  nlohmann::json here = ihn_toolkit::train::to_json(c);
  try {
    // Read back through the config type: a field the file predates takes its default, and
    // views 0 (the default) becomes the views the run actually fed.
    const TrainConfig read = ihn_toolkit::train::config_from_json(there);
    there = ihn_toolkit::train::to_json(read);
    there["views"] = ihn_toolkit::train::views_of(read);
  } catch (const std::exception&) {
    return false;
  }
  here["views"] = ihn_toolkit::train::views_of(c);
  for (const char* runtime : {"out", "label", "threads", "quiet", "plots", "device", "resume",
                              "stop_after", "channels_last", "visual_init", "pretrain_dir"}) {
    here.erase(runtime);
    there.erase(runtime);
  }
  if (c.ihn.mode == "off")  // options of the ihn arms: an ablation of them shares the off runs
    for (const char* ihn_option :
         {"negatives", "ihn_weight", "temperature", "schedule", "ascent_steps", "alignment",
          "report_features", "negatives_file", "official_legacy"}) {
      here.erase(ihn_option);
      there.erase(ihn_option);
    }
  return here == there;
}

/// "Cardiomegaly, Pleural Effusion" (the labeller's positive observations) or "No Finding".
std::string positive_findings(const std::string& report) {
  const auto labels = ihn::eval::label_report(report);
  std::string out;
  for (int o = 0; o < ihn::eval::kNumObservations; ++o)
    if (labels[static_cast<size_t>(o)] == ihn::eval::Label::positive)
      out +=
          (out.empty() ? "" : ", ") + std::string(ihn::eval::kObservations[static_cast<size_t>(o)]);
  return out.empty() ? "none" : out;
}

/// Test studies of the first seed where the arms' reports differ: first those where the
/// labeller's findings differ (abnormal references first), then those that differ in wording
/// alone. Each arm's report next to the reference, with the findings of each.
nlohmann::json differing_examples(const std::vector<std::vector<nlohmann::json>>& evals,
                                  const std::vector<std::string>& arms, size_t limit,
                                  size_t* differ_text, size_t* differ_findings) {
  const auto& first = evals[0][0].at("per_example_data");
  const auto ids = first.at("ids").get<std::vector<std::string>>();
  const auto refs = first.at("references").get<std::vector<std::string>>();
  std::vector<std::vector<std::string>> hyps;
  for (const auto& arm : evals)
    hyps.push_back(arm[0].at("per_example_data").at("hypotheses").get<std::vector<std::string>>());
  // Four tiers: findings differ (abnormal reference, normal reference), wording only (same).
  std::vector<size_t> tiers[4];
  *differ_text = *differ_findings = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    bool text = false, findings = false;
    for (size_t arm = 1; arm < hyps.size(); ++arm) {
      text = text || hyps[arm][i] != hyps[0][i];
      findings = findings || positive_findings(hyps[arm][i]) != positive_findings(hyps[0][i]);
    }
    if (!text) continue;
    ++*differ_text;
    *differ_findings += findings;
    const bool normal = positive_findings(refs[i]) == "No Finding";
    tiers[(findings ? 0 : 2) + (normal ? 1 : 0)].push_back(i);
  }
  std::vector<size_t> chosen;
  for (const auto& tier : tiers)
    for (size_t i : tier)
      if (chosen.size() < limit) chosen.push_back(i);
  nlohmann::json out = nlohmann::json::array();
  for (size_t i : chosen) {
    nlohmann::json e{
        {"id", ids[i]}, {"reference", refs[i]}, {"reference_findings", positive_findings(refs[i])}};
    for (size_t arm = 0; arm < arms.size(); ++arm)
      e["arms"][arms[arm]] = {{"report", hyps[arm][i]},
                              {"findings", positive_findings(hyps[arm][i])}};
    out.push_back(e);
  }
  return out;
}

std::string examples_markdown(const nlohmann::json& examples, const std::vector<std::string>& arms,
                              uint64_t seed, size_t differ_text, size_t differ_findings) {
  std::ostringstream o;
  o << "Test studies of seed " << seed << " where the arms' reports differ: " << differ_text
    << " differ in wording, " << differ_findings
    << " of them in the labeller's findings (listed first, abnormal references first). "
       "Findings: the labeller's positive observations.\n";
  for (const auto& e : examples) {
    o << "\n### " << e.at("id").get<std::string>() << "\n\n"
      << "- reference (" << e.at("reference_findings").get<std::string>()
      << "): " << e.at("reference").get<std::string>() << "\n";
    for (const auto& arm : arms)
      o << "- " << arm << " (" << e.at("arms").at(arm).at("findings").get<std::string>()
        << "): " << e.at("arms").at(arm).at("report").get<std::string>() << "\n";
  }
  return o.str();
}

/// One training run of the comparison: a seed and an arm, run as an `ihn train` child.
struct CompareRun {
  TrainConfig config;
  int arm = 0;
  pid_t pid = 0;
  double started = -1, finished = -1;  ///< seconds since the start of compare
};

/// The runs, seeds x arms: the preset and the recipe options given, then what each arm and seed
/// sets (its ihn mode, seed, folder, label).
std::vector<CompareRun> plan_runs(const CompareArgs& a, const std::vector<std::string>& arms) {
  std::vector<CompareRun> runs;
  for (int s = 0; s < a.seeds; ++s)
    for (int arm = 0; arm < static_cast<int>(arms.size()); ++arm) {
      TrainConfig c;
      c.model.architecture = a.model;  // before the preset: the optimiser recipe is per model
      ihn_toolkit::train::apply_preset(c, a.preset);
      a.recipe->apply(c);
      c.ihn.mode = arms[static_cast<size_t>(arm)];
      if (c.ihn.mode != "official") {  // official-only options leave the other arms alone
        c.ihn.negatives_file.clear();
        c.ihn.official_legacy = false;
      }
      c.optim.seed = a.first_seed + static_cast<uint64_t>(s);
      c.run.device = a.device;
      c.run.threads = a.threads > 0 ? a.threads : (a.jobs > 1 ? 1 : 0);
      c.run.out = a.out + "/seed_" + std::to_string(c.optim.seed) + "/" +
                  ihn_toolkit::train::compare_arm_folder(c.ihn.mode);
      c.run.plots = false;
      c.run.label = "[seed " + std::to_string(c.optim.seed) + " " +
                    (c.ihn.mode == "off"     ? "without"
                     : c.ihn.mode == "paper" ? "ihn"
                                             : "official") +
                    "]";
      c.eval.bootstrap = 0;  // the comparison bootstraps itself
      ihn_toolkit::train::validate(c);
      runs.push_back({c, arm});
    }
  return runs;
}

/// One pretrained extractor for every run, made here (with all the runs' threads) before they
/// start, so parallel runs neither race to write it nor train it twice.
void pretrain_once(const CompareArgs& a, std::vector<CompareRun>& runs) {
  if (runs.front().config.model.pretraining.enabled &&
      runs.front().config.model.visual_init.empty()) {
    const TrainConfig& c = runs.front().config;
    auto p = ihn_toolkit::train::pretrain_config_for(c);
    p.threads = (a.threads > 0 ? a.threads : 1) * a.jobs;
    p.label = "[pretrain]";
    const std::string path = ihn_toolkit::train::pretrain_cache_path(c);
    const auto r = ihn_toolkit::train::ensure_pretrained(p, path);
    if (r.reused)
      fmt::print("[pretrain] reusing {} (held-out mean AUC {:.3f})\n", path,
                 r.metrics.value("mean_auc", 0.0));
    std::fflush(stdout);
    for (auto& run : runs) run.config.model.visual_init = path;
  }
}

/// Seconds left: the mean duration of the finished runs for every run not started, `jobs` at a
/// time, after the longest remainder of the running ones (`now`: seconds since the start).
double seconds_left(const std::vector<CompareRun>& all, int jobs, double now) {
  double sum = 0;
  int finished = 0, waiting = 0;
  for (const auto& r : all)
    if (r.finished > r.started) {
      sum += r.finished - r.started;
      ++finished;
    }
  if (finished == 0) return 0.0;
  const double mean = sum / finished;
  double running_left = 0;
  for (const auto& r : all) {
    if (r.started < 0 && r.finished < 0) ++waiting;
    if (r.started >= 0 && r.finished < 0)
      running_left = std::max(running_left, mean - (now - r.started));
  }
  return running_left + std::ceil(static_cast<double>(waiting) / jobs) * mean;
}

/// Trains every run, `jobs` children at a time (reusing finished ones with --reuse), and
/// prints each one's test scores as it ends. Throws when a run fails or is interrupted.
void execute_runs(const CompareArgs& a, std::vector<CompareRun>& runs,
                  const std::function<double()>& elapsed) {
  size_t next = a.table_only ? runs.size() : 0, done = a.table_only ? runs.size() : 0;
  int running = 0;
  bool failed = false;
  while (done < runs.size()) {
    while (!failed && running < a.jobs && next < runs.size()) {
      auto& r = runs[next++];
      if (a.reuse && same_recipe_finished(r.config)) {
        ++done;
        r.started = r.finished = 0;  // no duration: left out of the estimate
        fmt::print("{} reusing the finished run in {} — {}/{} runs done\n", r.config.run.label,
                   r.config.run.out, done, runs.size());
        std::fflush(stdout);
        continue;
      }
      std::filesystem::create_directories(r.config.run.out);
      if (std::filesystem::exists(r.config.run.out + "/last.pt"))
        std::filesystem::remove_all(r.config.run.out);  // a fresh run, not a resumed one
      std::filesystem::create_directories(r.config.run.out);
      const std::string file = r.config.run.out + "/config.json";
      ihn::cli::write_file(file, ihn_toolkit::train::to_json(r.config).dump(2) + "\n");
      r.pid = spawn_run(file);
      r.started = elapsed();
      ++running;
    }
    if (running == 0) break;
    int status = 0;
    const pid_t pid = waitpid(-1, &status, 0);
    if (pid < 0) break;
    --running;
    ++done;
    for (auto& r : runs)
      if (r.pid == pid) {
        const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0 &&
                        std::filesystem::exists(r.config.run.out + "/test.json");
        if (!ok) {
          failed = true;
          fmt::print(stderr,
                     "{} failed or was interrupted (see above; continue it with ihn "
                     "train --out {} --resume)\n",
                     r.config.run.label, r.config.run.out);
          break;
        }
        r.finished = elapsed();
        const auto t = read_json(r.config.run.out + "/test.json");
        fmt::print(
            "{} test BLEU-4 {:.4f}, R@1 {:.4f} — {}/{} runs done, {:.0f} s elapsed, ~{:.0f} s "
            "left\n",
            r.config.run.label, t.at("BLEU_4").get<double>(),
            t.at("retrieval").at("image_to_report").at("R@1").get<double>(), done, runs.size(),
            elapsed(), seconds_left(runs, a.jobs, elapsed()));
        std::fflush(stdout);
      }
  }
  if (failed || done < runs.size())
    throw ihn::cli::CommandError("not every run finished; results so far are in " + a.out, 130);
}

/// The comparison of the finished runs: the table (compare.md), compare.json, the examples that
/// differ between arms, the curves and report.html, and a verdict per arm.
void summarize(const CompareArgs& a, const std::vector<std::string>& arms,
               const std::vector<CompareRun>& runs, const std::function<double()>& elapsed) {
  std::vector<std::vector<nlohmann::json>> evals(arms.size());
  std::vector<std::string> dirs, titles;
  for (const auto& r : runs) {
    evals[r.arm].push_back(read_json(r.config.run.out + "/test.json"));
    dirs.push_back(r.config.run.out);
    titles.push_back(r.config.run.label);
  }
  const auto rows = ihn_toolkit::train::compare_evaluations(evals, a.resamples, 0);
  const std::string md = ihn_toolkit::train::compare_markdown(rows, arms);
  fmt::print(
      "\nTest split, {} seed(s); mean ± 95% CI over seeds (t); difference = arm − off, "
      "paired bootstrap over seeds x studies ({} resamples); significant = p < 0.05\n\n{}",
      a.seeds, a.resamples, md);
  ihn::cli::write_file(a.out + "/compare.md", md);
  nlohmann::json j;
  j["seeds"] = a.seeds;
  j["first_seed"] = a.first_seed;
  j["preset"] = a.preset;
  j["arms"] = arms;
  j["seconds"] = elapsed();
  j["rows"] = ihn_toolkit::train::compare_json(rows, arms);
  {
    size_t differ_text = 0, differ_findings = 0;
    j["examples"] = differing_examples(evals, arms, 8, &differ_text, &differ_findings);
    j["examples_differ_text"] = differ_text;
    j["examples_differ_findings"] = differ_findings;
    ihn::cli::write_file(
        a.out + "/examples.md",
        examples_markdown(j["examples"], arms, a.first_seed, differ_text, differ_findings));
  }
  j["provenance"] = ihn_toolkit::train::provenance();
  ihn::cli::write_file(a.out + "/compare.json", j.dump(2) + "\n");
  const std::string note = ihn_toolkit::train::plot_runs(dirs, titles, a.out + "/curves.png");
  fmt::print("\n");
  ihn::cli::write_html_report(a.out);
  for (size_t arm = 1; arm < arms.size(); ++arm) {
    int better = 0, worse = 0, tested = 0;
    for (const auto& r : rows) {
      if (!r.arms[arm - 1].bootstrapped) continue;  // set-level: no test
      ++tested;
      if (r.arms[arm - 1].significant) (r.arms[arm - 1].difference > 0 ? better : worse)++;
    }
    fmt::print(
        "{} vs off: significantly better on {} metric(s), worse on {}, no significant "
        "difference on {}\n",
        arms[arm], better, worse, tested - better - worse);
  }
  fmt::print(
      "(per study; see 'seeds +/=/-' for how many seeds carry each difference)\nwritten: "
      "{}/compare.md, {}/compare.json{}\n{}{}total {:.0f} s\n",
      a.out, a.out, note.empty() ? ", " + a.out + "/curves.png" : std::string(), note,
      note.empty() ? "" : "\n", elapsed());
}

void run_compare(CompareArgs& a) {
  if (a.seeds < 1) throw ihn::cli::CommandError("--seeds must be >= 1");
  const auto arms = parse_arms(a.arms);
  if (a.jobs < 1) throw ihn::cli::CommandError("--jobs must be >= 1");
  // Children get SIGINT from the terminal too; they save and exit, and so do we.
  std::signal(SIGINT, SIG_IGN);
  std::signal(SIGTERM, SIG_IGN);
  const auto t0 = std::chrono::steady_clock::now();
  const std::function<double()> elapsed = [t0] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  auto runs = plan_runs(a, arms);
  if (!a.table_only) {
    fmt::print("ihn compare: {} seed(s) x {{{}}}, preset {}, {} run(s) at a time, output {}\n",
               a.seeds, a.arms, a.preset, a.jobs, a.out);
    std::fflush(stdout);
    pretrain_once(a, runs);
  }
  execute_runs(a, runs, elapsed);
  summarize(a, arms, runs, elapsed);
}

void add_compare_command(CLI::App& app) {
  auto args = std::make_shared<CompareArgs>();
  auto* cmd = app.add_subcommand("compare", "Train without and with ihn from the same seeds");
  cmd->add_option("--seeds", args->seeds, "Number of seeds")->capture_default_str();
  cmd->add_option("--first-seed", args->first_seed, "Seeds are first-seed, first-seed+1, ...")
      ->capture_default_str();
  cmd->add_option("--model", args->model, "Generator: r2gen or cmn")->capture_default_str();
  cmd->add_option("--preset", args->preset,
                  "Recipe: cpu-bench (the calibrated main job), cpu-bench-full, gpu-bench, "
                  "cpu-small or paper")
      ->capture_default_str();
  cmd->add_option("--out", args->out, "Output folder")->capture_default_str();
  cmd->add_option("--device", args->device, "cpu or cuda")->capture_default_str();
  cmd->add_option("--threads", args->threads,
                  "Intra-op threads per run (default 1 when runs go in parallel)");
  cmd->add_flag("--reuse", args->reuse,
                "Keep the runs in --out that finished with the same recipe (an interrupted "
                "comparison, or the off arm copied in for an ablation) instead of retraining");
  cmd->add_flag("--table-only", args->table_only,
                "Train nothing: tabulate the finished runs already in --out (same --seeds)");
  cmd->add_option("--jobs", args->jobs, "Runs trained at the same time (separate processes)")
      ->capture_default_str();
  cmd->add_option("--resamples", args->resamples, "Paired bootstrap resamples")
      ->capture_default_str();
  cmd->add_option("--arms", args->arms,
                  "Arms, off first: off,paper | off,official | off,paper,official")
      ->capture_default_str();
  args->recipe = std::make_shared<ihn::cli::RecipeOptions>(cmd, false);
  cmd->footer(R"(DESCRIPTION
  For each seed, trains the model once per arm on the built-in synthetic data set — without
  ihn (off), with --ihn paper, and with --arms ...,official also with --ihn official (the
  authors' released recipe; one view unless --views is given, mined negatives unless
  --negatives-file is) — with the same initialisation, data order and augmentation, selects
  each run's best epoch on the recipe's validation score (--select-metric) and evaluates it on
  the test split. Give --views 2 (or 1) to feed every arm the same views.

  The default preset, cpu-bench, is the calibrated benchmark of docs/results.md: 1,500
  synthetic studies (300 test, a quarter of them without findings), R2Gen at the cpu-small
  size, its visual extractor pretrained first as a 14-observation classifier on a disjoint
  synthetic set (once; cached in --pretrain-dir and reused) and kept fixed, 18 epochs, best
  epoch on validation clinical F1 (macro). About 14 minutes on 2 cores, 11 with the
  pretrained extractor cached.

TABLE
  BLEU-1..4, METEOR variant, ROUGE-L, CIDEr, clinical F1 micro/macro, the same F1s and
  BLEU-4 on the abnormal studies alone (a reference with a finding), F1 of each of the 14
  observations, retrieval R@1 (image -> report, from the model's features) and the share of
  distinct reports: the mean
  over seeds ± the 95% t interval over seeds for each arm, and for each arm the difference
  (arm − off) with a paired bootstrap over seeds x test studies: its 95% interval and
  two-sided p-value.
  "significant" means p < 0.05 (no correction for the 27 metrics tested). The share of
  distinct reports is a property of the set of reports, which a resample of studies changes,
  so it gets no interval or p-value ("n/a"): compare its means and "seeds +/=/-". The bootstrap
  resamples studies, not seeds: "seeds +/=/-" counts the seeds where ihn is better, equal or
  worse, and shows when a difference rests on one or two seeds.

OUTPUT (in --out)
  seed_S/without, seed_S/with_ihn,  each a full `ihn train` run folder (replaced when they
  seed_S/official                   already hold a run: compare always trains afresh)
  compare.md, compare.json          the table (compare.json also holds the examples)
  examples.md                       test studies of the first seed where the arms' reports
                                    differ, abnormal first: each arm's report, the reference,
                                    and the labeller's findings of each
  report.html                       one page to open in a browser: the table, the charts and
                                    every test study of the first seed with its views, the
                                    reference and each arm's report, findings marked per
                                    sentence (true/false positive, missed); filterable
  curves_loss.svg, curves_validation.svg, f1_per_observation.svg   the charts, for papers
  curves.png                        training loss and validation BLEU-4 of every run (gnuplot)

EXAMPLES
  ihn compare
  ihn compare --seeds 5 --epochs 20 --out runs/cmp5
  ihn compare --negatives 8 --schedule linear:10
  ihn compare --arms off,paper,official --views 2
  ihn compare --table-only --out runs/compare)");
  cmd->callback([args] { run_compare(*args); });
}

}  // namespace

IHN_REGISTER_COMMAND(40, add_compare_command);
