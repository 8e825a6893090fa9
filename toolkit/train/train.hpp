// The trainer behind `ihn train | evaluate | generate | compare`: the upstream R2Gen recipe
// (Adam with amsgrad, two learning rates, StepLR per epoch, gradient clipping by value, model
// selection on validation BLEU-4, early stopping) with ihn plugged in through the library's
// callback interface (ihn::HardNegativeCallback), exactly as a user's trainer would; atomic
// checkpoints every epoch that resume bit-exactly; progress lines, a JSONL log, generated
// reports and gnuplot plots.
//
// This header needs neither LibTorch nor Eigen, so the command-line front ends that include
// it compile in seconds; everything that needs LibTorch lives in train.cpp.
#pragma once

#include "train/config.hpp"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace ihn_toolkit::train {

struct TrainResult {
  int epochs_done = 0;
  int best_epoch = 0;
  double best_val_score = 0;  ///< of TrainConfig::select_metric
  bool interrupted = false;   ///< SIGINT/SIGTERM or stop_after: last.pt holds the state
  double seconds = 0;
  std::vector<double> epoch_losses;  ///< mean training loss per epoch, from epoch 1
  nlohmann::json test;               ///< evaluate() of best.pt on the test split (when finished)
};

/// Trains (or resumes) into config.out: last.pt and best.pt every epoch, log.jsonl,
/// reports/epoch_N_val.jsonl, test.json, reports/test.jsonl, plots. SIGINT/SIGTERM finish the
/// current step, save last.pt and return with interrupted = true.
TrainResult train(TrainConfig config);

/// What an authors' checkpoint (a .pth of the official R2Gen / R2GenCMN / ITHN trainers,
/// docs/authors_checkpoints.md) cannot tell: the dataset (vocabulary cleaning, threshold, views),
/// and the head counts and top-k, which tensor shapes do not determine. 0 = the official value.
struct AuthorsCheckpointOptions {
  std::string dataset = "iu_xray";
  int threshold = 0;       ///< vocabulary cut-off: 0 = the dataset's (iu_xray 3, mimic_cxr 10)
  int max_seq_length = 0;  ///< decoding length: 0 = the dataset's (60, 100)
  int num_heads = 0;       ///< 0 = 8
  int rm_num_heads = 0;    ///< 0 = 8 (R2Gen's relational memory)
  int topk = 0;            ///< 0 = 32 (R2GenCMN's memory)
};

/// The beam size evaluate and generate decode with: the one asked for, or (0) the run's own.
inline int beam_size_for(int requested, const TrainConfig& run) {
  return requested > 0 ? requested : run.eval.beam_size;
}

struct EvaluateOptions {
  std::string checkpoint;
  std::string split = "test";
  std::string ann, images;  ///< override the checkpoint's data (annotation runs)
  bool skip_bad = false;    ///< leave out (and list) bad entries of --ann instead of stopping
  int beam_size = 0;        ///< 0 = the checkpoint's (beam_size_for)
  int bootstrap = 1000;
  uint64_t bootstrap_seed = 0;
  std::string device = "cpu";
  /// CPU: the ResNet runs channels-last (NHWC), the faster layout for oneDNN; same values.
  bool channels_last = true;
  int threads = 0;
  std::string wordnet;      ///< empty = the checkpoint's config; missing WordNet drops synonyms
  std::string reports_out;  ///< JSONL of generated reports ("" = none)
  std::string precision;    ///< decoding arithmetic, fp32 | bf16 | fp16 ("" = the run's)
  AuthorsCheckpointOptions authors;  ///< an authors' .pth (then --ann and --images are needed)
};

/// All metrics on a split: ihn::eval::to_json(EvalResult) plus "retrieval" (R@1/5/10 both
/// ways from the model's image and report features) and "per_example_data" used by compare.
nlohmann::json evaluate_checkpoint(const EvaluateOptions& options);

struct GenerateOptions {
  std::string checkpoint;
  std::vector<std::string> images;  ///< frontal [, lateral]; one image is used for every view
  std::string ann;                  ///< rebuild the vocabulary of an authors' checkpoint
  int beam_size = 0;                ///< 0 = the checkpoint's (beam_size_for)
  std::string device = "cpu";
  /// CPU: the ResNet runs channels-last (NHWC), the faster layout for oneDNN; same values.
  bool channels_last = true;
  AuthorsCheckpointOptions authors;  ///< an authors' .pth (then `ann` is needed)
};
std::string generate_report(const GenerateOptions& options);

/// One arm against the `off` arm (arm 0) on one metric: the paired bootstrap over seeds x
/// examples of (arm − off).
struct ArmDifference {
  double mean = 0, ci = 0;  ///< the arm's mean over seeds and 95 % t half-width
  double difference = 0, lower = 0, upper = 0, p_value = 1;
  bool significant = false;
  /// False for a set-level metric (the share of distinct reports): resampling studies with
  /// replacement shrinks the set, so no bootstrap interval or p-value is given (NaN) and the
  /// difference is that of the means over seeds.
  bool bootstrapped = true;
  /// Seeds where arm > off, equal, arm < off: the bootstrap resamples studies, so a
  /// difference carried by one or two seeds shows here.
  int seeds_better = 0, seeds_equal = 0, seeds_worse = 0;
};
/// Table rows of `ihn compare`: one per metric, mean ± CI over seeds of the `off` arm and, for
/// every other arm, its mean ± CI and its difference from `off`.
struct CompareRow {
  std::string metric;
  double mean_off = 0, ci_off = 0;  ///< ci = half-width, 95 %
  std::vector<ArmDifference> arms;  ///< arms 1.. in the order given
};
/// `evals[arm][seed]` = evaluate_checkpoint() JSON; arm 0 is without ihn, every other arm is
/// compared against it. `names[arm]` labels the arms (e.g. off, paper, official).
std::vector<CompareRow> compare_evaluations(const std::vector<std::vector<nlohmann::json>>& evals,
                                            int resamples, uint64_t seed);
std::string compare_markdown(const std::vector<CompareRow>& rows,
                             const std::vector<std::string>& names);
nlohmann::json compare_json(const std::vector<CompareRow>& rows,
                            const std::vector<std::string>& names);

/// What produced a result: the command line of this process (argv[0] shown as `ihn`), the
/// versions of ihn, LibTorch and the compiler, and the UTC time.
nlohmann::json provenance();

/// The images of the studies `ids` as the run's data holds them (the synthetic set rebuilt
/// from its seed, or the annotation's files), each view reduced to at most `max_side` pixels
/// and encoded as JPEG; a study whose image cannot be read gets none and a line in `problems`.
struct StudyImages {
  std::vector<std::string> view_names;  ///< "frontal", "lateral" (IU X-Ray) or "view 1", ...
  std::map<std::string, std::vector<std::string>> jpeg;  ///< id -> JPEG bytes of each view
  std::vector<std::string> problems;
};
StudyImages study_images(const TrainConfig& config, const std::vector<std::string>& ids,
                         int max_side = 192);

/// The run folder of an arm of `ihn compare` inside seed_S/ (the two-arm layout keeps its
/// historic names: without, with_ihn).
std::string compare_arm_folder(const std::string& arm);

/// Installs SIGINT/SIGTERM handlers that ask train() to stop after the current step.
void install_signal_handlers();
bool stop_requested();

/// Plots `log.jsonl` of each run dir into `png` with gnuplot; returns a note when gnuplot is
/// missing or failed ("" on success).
std::string plot_runs(const std::vector<std::string>& run_dirs,
                      const std::vector<std::string>& titles, const std::string& png);

}  // namespace ihn_toolkit::train
