// `ihn evaluate`: every metric of a trained checkpoint on a split (table or JSON), the
// generated reports as JSON Lines, bootstrap intervals, and retrieval from the model's features.
#include "command.hpp"
#include "html_report.hpp"
#include "train/train.hpp"
#include "train_options.hpp"

#include <fmt/core.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>

namespace {

struct EvaluateArgs {
  ihn_toolkit::train::EvaluateOptions options;
  std::string json_out;
  std::string out;
  bool json = false;
  bool no_report = false;
};

void run_evaluate(EvaluateArgs& a) {
  namespace fs = std::filesystem;
  const std::string run_dir = fs::path(a.options.checkpoint).parent_path().empty()
                                  ? std::string(".")
                                  : fs::path(a.options.checkpoint).parent_path().string();
  if (a.options.reports_out.empty())
    a.options.reports_out = run_dir + "/reports/evaluate_" + a.options.split + ".jsonl";
  if (a.out.empty()) a.out = run_dir + "/evaluate_" + a.options.split;
  auto j = ihn_toolkit::train::evaluate_checkpoint(a.options);
  if (!a.no_report) {
    // The whole evaluation, per-study data included, is what `ihn report` rebuilds from.
    std::error_code ec;
    fs::create_directories(a.out, ec);
    if (ec)
      throw ihn::cli::CommandError(a.out + ": cannot create the folder (" + ec.message() + ")");
    ihn::cli::write_file(a.out + "/evaluation.json", j.dump(2) + "\n");
  }
  j.erase("per_example_data");
  if (!a.json_out.empty()) ihn::cli::write_file(a.json_out, j.dump(2) + "\n");
  if (a.json) {
    fmt::print("{}\n", j.dump(2));
    if (!a.no_report) ihn::cli::write_html_report(a.out, "", /*quiet=*/true);
    return;
  }
  const auto& ci =
      j.contains("confidence_intervals") ? j["confidence_intervals"] : nlohmann::json::object();
  fmt::print("{} on the {} split ({} studies, beam {})\n\n", a.options.checkpoint, a.options.split,
             j["n_examples"].get<int>(), j["beam_size"].get<int>());
  fmt::print("{:<22} {:>8}   {}\n", "metric", "value", "95% bootstrap CI");
  auto row = [&](const std::string& name, const std::string& key, double v) {
    if (ci.contains(key))
      fmt::print("{:<22} {:8.4f}   [{:.4f}, {:.4f}]\n", name, v, ci[key]["lower"].get<double>(),
                 ci[key]["upper"].get<double>());
    else
      fmt::print("{:<22} {:8.4f}\n", name, v);
  };
  for (int k = 1; k <= 4; ++k) {
    const std::string key = "BLEU_" + std::to_string(k);
    row("BLEU-" + std::to_string(k), key, j[key].get<double>());
  }
  for (const char* key : {"METEOR_esw", "METEOR_es", "METEOR_e"})
    if (j.contains(key)) row(key, key, j[key].get<double>());
  row("ROUGE-L", "ROUGE_L", j["ROUGE_L"].get<double>());
  row("CIDEr", "CIDEr", j["CIDEr"].get<double>());
  if (j.contains("clinical")) {
    row("clinical F1 micro", "clinical_micro_F1", j["clinical"]["micro"]["f1"].get<double>());
    row("clinical F1 macro", "clinical_macro_F1", j["clinical"]["macro"]["f1"].get<double>());
  }
  row("retrieval R@1 (i->r)", "", j["retrieval"]["image_to_report"]["R@1"].get<double>());
  row("retrieval R@5 (i->r)", "", j["retrieval"]["image_to_report"]["R@5"].get<double>());
  row("retrieval R@1 (r->i)", "", j["retrieval"]["report_to_image"]["R@1"].get<double>());
  row("distinct reports", "", j["distinct"]["distinct_reports"].get<double>());
  row("distinct-2", "", j["distinct"]["distinct_2"].get<double>());
  fmt::print("\nreports: {}\n", a.options.reports_out);
  if (!a.no_report) ihn::cli::write_html_report(a.out);
  if (j.contains("notes") && j["notes"].contains("wordnet"))
    fmt::print("note: {}\n", j["notes"]["wordnet"].get<std::string>());
}

void add_evaluate_command(CLI::App& app) {
  auto args = std::make_shared<EvaluateArgs>();
  auto* cmd = app.add_subcommand("evaluate", "All metrics of a trained checkpoint on a split");
  cmd->add_option("--checkpoint", args->options.checkpoint,
                  "RUN/best.pt written by ihn train, or an authors' .pth (official R2Gen)")
      ->required();
  cmd->add_option("--split", args->options.split, "train, val or test")->capture_default_str();
  cmd->add_option("--ann", args->options.ann,
                  "Evaluate on this annotation instead of the checkpoint's data (same vocabulary)");
  cmd->add_option("--images", args->options.images, "Image root for --ann");
  cmd->add_flag("--skip-bad", args->options.skip_bad,
                "Leave out bad entries of --ann (listed) instead of stopping");
  auto& authors = args->options.authors;
  ihn::cli::add_authors_options(cmd, authors);
  ihn::cli::add_beam_size_option(cmd, args->options.beam_size);
  cmd->add_option("--bootstrap", args->options.bootstrap, "Bootstrap resamples (0 = none)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--seed", args->options.bootstrap_seed, "Bootstrap seed");
  cmd->add_option("--device", args->options.device, "cpu or cuda")->capture_default_str();
  cmd->add_option("--precision", args->options.precision,
                  "Decoding arithmetic: fp32, bf16 or fp16 (default: the run's --precision)")
      ->check(CLI::IsMember({"fp32", "bf16", "fp16"}));
  cmd->add_option("--threads", args->options.threads, "Intra-op threads (0 = default)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--wordnet", args->options.wordnet, "WordNet dict folder for METEOR synonyms");
  cmd->add_option("--reports", args->options.reports_out,
                  "Generated reports, JSON Lines (default RUN/reports/evaluate_SPLIT.jsonl)");
  cmd->add_option("--json-out", args->json_out, "Also write the JSON to this file");
  cmd->add_option("--out", args->out,
                  "Folder for evaluation.json (with per-study data) and report.html (default "
                  "RUN/evaluate_SPLIT)");
  cmd->add_flag("--no-report", args->no_report, "Write neither evaluation.json nor report.html");
  cmd->add_flag("--json", args->json, "Print JSON instead of the table");
  cmd->footer(R"(DESCRIPTION
  Rebuilds the run's data (the synthetic set from its seed, or its annotation) and model from
  the checkpoint, decodes the split with beam search and scores the reports against the
  tokenizer round trip of the ground truth, as R2Gen does.

METRICS
  BLEU-1..4, ROUGE-L, CIDEr (pycocoevalcap-exact), METEOR_esw (exact+stem+WordNet stages of
  METEOR 1.5; METEOR_es without WordNet), clinical F1 micro/macro (rule-based CheXpert-style
  labeller), retrieval R@K from the model's own image and report features (the direct measure
  of how discriminative they are), share of distinct reports. 95% percentile bootstrap
  intervals over studies.

AUTHORS' CHECKPOINTS
  A .pth of the official R2Gen trainer is evaluated as R2Gen's test does: give the annotation
  it was trained on (--ann, which rebuilds the vocabulary), the image root (--images) and
  --dataset; sizes are inferred from the weights, heads default to the official 8, images get
  Resize((224, 224)) and ImageNet normalisation, beam size 3. See docs/authors_checkpoints.md.

OUTPUT
  RUN/reports/evaluate_SPLIT.jsonl   the generated reports (--reports)
  RUN/evaluate_SPLIT/evaluation.json every metric and the per-study data (--out)
  RUN/evaluate_SPLIT/report.html     results, charts, every study with its views, reports,
                                     findings and closest reports (ihn report rebuilds it)

ERRORS
  A missing or foreign checkpoint, a vocabulary that differs from the data's, or a bad split
  stop with exit status 1 and a message naming the file.

EXAMPLES
  ihn evaluate --checkpoint runs/ihn/best.pt
  ihn evaluate --checkpoint runs/ihn/best.pt --split val --json
  ihn evaluate --checkpoint model_iu_xray.pth --ann data/iu_xray/annotation.json \
      --images data/iu_xray/images --dataset iu_xray --reports test_reports.jsonl)");
  cmd->callback([args] { run_evaluate(*args); });
}

}  // namespace

IHN_REGISTER_COMMAND(20, add_evaluate_command);
