// `ihn train`: trains a report generator with or without increasingly hard negatives
// (toolkit/train), with checkpoints every epoch and bit-exact --resume.
#include "command.hpp"
#include "html_report.hpp"
#include "train_options.hpp"

#include "train/distributed.hpp"

#include <fmt/core.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>

namespace {

using ihn_toolkit::train::TrainConfig;

struct TrainArgs {
  TrainConfig config;
  std::string preset = "cpu-small";
  std::string data;
  std::string config_file;
  bool nchw = false;
  int nproc = 1;
  std::shared_ptr<ihn::cli::RecipeOptions> recipe;
  CLI::Option* seed_opt = nullptr;
  CLI::Option* device_opt = nullptr;
  CLI::Option* threads_opt = nullptr;
};

TrainConfig read_config_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw ihn::cli::CommandError(path + ": cannot read the --config file");
  try {
    return ihn_toolkit::train::config_from_json(nlohmann::json::parse(in));
  } catch (const nlohmann::json::exception& e) {
    throw ihn::cli::CommandError(path + ": not a JSON training config (" + e.what() + ")");
  }
}

// --nproc N: this command line again, N times, as torchrun's workers on this machine.
void launch_workers(int nproc) {
  if (std::getenv("WORLD_SIZE") != nullptr)
    throw ihn::cli::CommandError(
        "--nproc starts its own workers; under torchrun (WORLD_SIZE is set) leave it out");
  std::vector<std::string> argv;
  const auto& all = ihn::cli::program_arguments();
  for (size_t i = 0; i < all.size(); ++i) {
    if (all[i] == "--nproc") {
      ++i;  // and its value
      continue;
    }
    if (all[i].rfind("--nproc=", 0) == 0) continue;
    argv.push_back(all[i]);
  }
  const std::string failure = ihn_toolkit::train::dist::launch_local(nproc, argv);
  if (!failure.empty())
    throw ihn::cli::CommandError("ihn train --nproc " + std::to_string(nproc) + ": " + failure);
}

void run_train(TrainArgs& a) {
  if (a.nproc > 1) return launch_workers(a.nproc);
  TrainConfig c;
  if (!a.config_file.empty()) {
    c = read_config_file(a.config_file);  // the whole recipe, e.g. written by ihn compare
  } else {
    c.model.architecture =
        a.config.model.architecture;  // before the preset: the optimiser recipe is per model
    ihn_toolkit::train::apply_preset(c, a.preset);
  }
  a.recipe->apply(c);
  const bool from_file = !a.config_file.empty();
  if (!from_file || !a.config.run.out.empty()) c.run.out = a.config.run.out;
  if (!from_file || a.device_opt->count() > 0) c.run.device = a.config.run.device;
  if (!from_file || a.threads_opt->count() > 0) c.run.threads = a.config.run.threads;
  c.run.resume = a.config.run.resume;
  // Resumed without --epochs, a run keeps its own epoch count, not the preset's.
  if (c.run.resume && !from_file && !a.recipe->given("--epochs")) c.optim.epochs = 0;
  if (!from_file || a.config.run.stop_after > 0) c.run.stop_after = a.config.run.stop_after;
  if (!from_file || a.config.run.quiet) c.run.quiet = a.config.run.quiet;
  if (a.nchw) c.run.channels_last = false;
  if (!from_file || a.config.run.plots) c.run.plots = !a.config.run.plots;  // bound to --no-plots
  if (!from_file) {
    c.model.architecture = a.config.model.architecture;
    c.data.dataset = a.config.data.dataset;
  }
  if (a.seed_opt->count() > 0) c.optim.seed = a.config.optim.seed;
  if (!a.config.data.ann.empty() || !a.config.data.images.empty()) {
    if (a.data == "synth")
      throw ihn::cli::CommandError("give either --data synth or --ann/--images, not both");
    c.data.source = "annotation";
    c.data.ann = a.config.data.ann;
    c.data.images = a.config.data.images;
  } else if (!a.data.empty() && a.data != "synth") {
    throw ihn::cli::CommandError("--data " + a.data +
                                 ": only 'synth' is built in; for real data give --ann "
                                 "annotation.json --images DIR");
  }
  ihn_toolkit::train::install_signal_handlers();
  const auto r = ihn_toolkit::train::train(c);
  if (ihn_toolkit::train::dist::read_environment().rank != 0) return;  // rank 0 reports
  if (r.interrupted) {
    fmt::print("{}interrupted after {} complete epochs; resume with: ihn train --out {} --resume\n",
               c.run.label.empty() ? "" : (c.run.label + " "), r.epochs_done, c.run.out);
    return;
  }
  const std::string label = c.run.label.empty() ? "" : c.run.label + " ";
  if (c.run.plots && !r.test.is_null()) ihn::cli::write_html_report(c.run.out, label, c.run.quiet);
  if (c.run.quiet) return;
  fmt::print("{}done: {} epochs in {:.0f} s; best validation {} {:.4f} at epoch {} ({}/best.pt)\n",
             label, r.epochs_done, r.seconds, c.optim.select_metric, r.best_val_score, r.best_epoch,
             c.run.out);
  if (!r.test.is_null())
    fmt::print(
        "{}test (best.pt): BLEU-4 {:.4f}  ROUGE-L {:.4f}  CIDEr {:.4f}  retrieval R@1 {:.4f} "
        "(all metrics: {}/test.json)\n",
        label, r.test.at("BLEU_4").get<double>(), r.test.at("ROUGE_L").get<double>(),
        r.test.at("CIDEr").get<double>(),
        r.test.at("retrieval").at("image_to_report").at("R@1").get<double>(), c.run.out);
}

void add_train_command(CLI::App& app) {
  auto args = std::make_shared<TrainArgs>();
  auto* cmd = app.add_subcommand("train", "Train a report generator (optionally with ihn)");
  args->config.run.plots = false;
  cmd->add_option("--model", args->config.model.architecture, "Generator: r2gen or cmn")
      ->capture_default_str();
  cmd->add_option("--data", args->data, "Built-in data set: synth (the default without --ann)");
  cmd->add_option("--ann", args->config.data.ann, "R2Gen annotation.json (real data)");
  cmd->add_option("--images", args->config.data.images, "Image root of the annotation");
  cmd->add_option("--dataset", args->config.data.dataset, "iu_xray (2 views) or mimic_cxr (1 view)")
      ->capture_default_str();
  cmd->add_option("--out", args->config.run.out,
                  "Run folder (checkpoints, logs, reports); required unless --config sets it");
  cmd->add_option("--config", args->config_file,
                  "A JSON training config (as stored in checkpoints; ihn compare writes one per "
                  "run): replaces --preset; flags still override it");
  cmd->add_option("--preset", args->preset,
                  "Recipe: cpu-small, cpu-bench (the main job's), cpu-bench-full, gpu-bench or "
                  "paper")
      ->capture_default_str();
  args->seed_opt =
      cmd->add_option("--seed", args->config.optim.seed, "Seed of init, order, dropout, ihn");
  args->device_opt =
      cmd->add_option("--device", args->config.run.device, "cpu or cuda")->capture_default_str();
  args->threads_opt = cmd->add_option("--threads", args->config.run.threads,
                                      "Intra-op threads (0 = LibTorch's default)");
  cmd->add_flag("--resume", args->config.run.resume,
                "Continue RUN/last.pt bit-exactly (its recipe; --epochs may extend the run)");
  cmd->add_option("--stop-after", args->config.run.stop_after,
                  "Stop (save, as on Ctrl-C) after this many optimiser steps");
  cmd->add_flag("--quiet", args->config.run.quiet, "No progress lines");
  cmd->add_option("--nproc", args->nproc,
                  "Data-parallel training in N local processes (c10d Gloo), as torchrun "
                  "--nproc_per_node N would start them; --batch-size stays the global batch")
      ->check(CLI::Range(1, 1024));
  cmd->add_flag("--nchw", args->nchw,
                "CPU: keep the ResNet in LibTorch's default NCHW layout instead of channels-last "
                "(same values up to rounding; channels-last is faster)");
  cmd->add_flag("--no-plots", args->config.run.plots,
                "Write neither report.html nor curves.png (gnuplot)");
  args->recipe = std::make_shared<ihn::cli::RecipeOptions>(cmd, true);
  cmd->footer(R"(DESCRIPTION
  Trains R2Gen (memory-driven transformer) with the upstream recipe: Adam with amsgrad and
  weight decay 5e-5, two learning rates (visual extractor / the rest), StepLR per epoch,
  gradient clipping by value 0.1, batch 16, selection on validation BLEU-4 (beam search),
  early stopping. A preset sets the sizes; every recipe option overrides it.

  With --ihn paper, increasingly hard negatives join through the library's callback
  (ihn::HardNegativeCallback): image features = mean of the encoder output, report features
  = masked mean of the decoder states; ids = training-set indices; reports with the same
  cleaned text are never each other's negatives.

  With --ihn official, the authors' released recipe instead: each sample's negative
  (image, report) pair — the closest different training report by TF-IDF cosine, from
  --negatives-file (`ihn data negatives`) or mined at start-up — is loaded and run through the
  model in a second pass; pooled image features and mean decoder states of both passes go
  through two projection heads with learned temperatures (the weights this mode adds, printed
  at start, a third optimiser group); a harder negative is synthesised in closed form with
  lambda = exp(-alpha epoch) (alpha from --schedule exp:ALPHA) and the loss is
  0.7 L_gen + 0.1 L_cp + 0.2 L_cs (include/ihn/official.hpp). By default one view (frontal),
  as the release trains on IU X-Ray; --views 2 feeds both. --official-legacy reproduces the
  release's B x B projection bit for bit.

PRESETS
  paper       ResNet-101, 224 px, d_model 512, 3 layers, 100 epochs, StepLR 50/0.1, exp:0.01
  cpu-small   ResNet-18, 64 px, d_model 128, 1 layer, 10 epochs, lr x10 (from scratch),
              exp:0.1 (the hardness the paper reaches in ~100 epochs, in 10)
  cpu-bench   the calibrated main job (docs/results.md): cpu-small's model on 1,500 studies
              (a quarter normal), extractor pretrained on another synthetic seed and frozen
              (--pretrain --freeze-visual), 18 epochs, selection on clinical F1 (macro)
  cpu-bench-full, gpu-bench   the same at 6,000 studies; gpu-bench at the paper's model size

OUTPUT (in --out)
  last.pt, best.pt    model, optimiser, trainer, ihn, RNG, vocabulary and config; written
                      atomically every epoch, best.pt first: last.pt commits the epoch
  log.jsonl           one line per step and per epoch (every metric); on --resume, rows
                      after last.pt's step are dropped (they are trained again)
  .lock               held while a run writes the folder: a second run on it is refused
  reports/            generated validation reports per epoch, test reports of best.pt
  test.json           all metrics of best.pt on the test split (as ihn evaluate)
  report.html         results, charts and every test study with its report (ihn report)
  curves_*.svg, f1_per_observation.svg   the charts, for papers
  curves.png          loss and validation BLEU-4 (when gnuplot is installed)

DATA-PARALLEL TRAINING
  ihn train --nproc N ... starts N processes on this machine; torchrun starts them on one or
  many machines (torchrun --no_python --nnodes M --nproc_per_node N ihn train ...), and SLURM
  through torchrun. Each process reads RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
  MASTER_PORT and joins a c10d Gloo group. --batch-size is the global batch: the same global
  order as one process, each rank taking its share; weights start from rank 0's, gradients
  are averaged after every backward (bucketed all-reduce), and with --ihn paper every rank's
  feature bank holds every rank's reports. Validation is decoded in shards and gathered;
  rank 0 writes the log, checkpoints and the test results. Results match one process with
  the same global batch up to float rounding (batch norm statistics are per rank, as in DDP).
  A rank that dies or hangs stops the others within --dist-timeout seconds; --resume (or
  torchrun's restart) continues from last.pt, with the same or another number of ranks.

SIGNALS
  Ctrl-C or SIGTERM: the current step finishes, last.pt is saved, exit status 0; continue
  with --resume. A second Ctrl-C kills at once. After kill -9 or a power cut, --resume
  continues from the last epoch's last.pt and ends with the same weights and results
  (docs/reliability.md).

EXAMPLES
  ihn train --data synth --out runs/base
  ihn train --data synth --ihn paper --out runs/ihn --seed 1
  ihn data negatives --ann iu_xray/annotation.json --out iu_negatives.json
  ihn train --ann iu_xray/annotation.json --images iu_xray/images --preset paper \
            --ihn official --negatives-file iu_negatives.json --out runs/official
  ihn train --out runs/ihn --resume --epochs 20
  ihn train --ann iu_xray/annotation.json --images iu_xray/images --preset paper --out runs/iu)");
  cmd->callback([args] { run_train(*args); });
}

}  // namespace

IHN_REGISTER_COMMAND(10, add_train_command);
