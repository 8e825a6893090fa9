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

#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace ihn_toolkit::train {

/// A user-facing failure (bad file, bad option); the message names the file and the fix.
struct TrainError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// Everything a run depends on. Stored in every checkpoint, so evaluate/generate/resume rebuild
/// the same model and data. Defaults are the `cpu-small` preset; apply_preset() sets others.
struct TrainConfig {
  std::string model = "r2gen";
  std::string preset = "cpu-small";
  // Data: "synth" (generated from synth_seed, nothing on disk) or "annotation" (ann + images).
  std::string data = "synth";
  std::string ann, images;
  std::string dataset = "iu_xray";  ///< iu_xray | mimic_cxr (cleaning, views)
  int synth_studies = 300;
  uint64_t synth_seed = 0;
  int synth_image_size = 64;  ///< rendered synthetic images, pixels per side
  /// Synthetic set: shares of the studies in the validation and test splits (the rest trains).
  double synth_val_fraction = 0.1, synth_test_fraction = 0.2;
  /// Synthetic set: share of studies drawn without findings (2/3, as in IU X-Ray's reports).
  double synth_normal_fraction = 2.0 / 3.0;
  int resize = 72;  ///< train: shorter side before the random crop; eval: to crop
  int crop = 64;
  int threshold = 3;
  /// Annotation entries with problems (missing images, empty reports, duplicate ids) are left
  /// out and listed instead of stopping the run.
  bool skip_bad = false;
  int max_seq_length = 60;
  // Model (R2GenOptions).
  int visual_depth = 18;
  /// A pretrained visual extractor to start from: a file of `ihn pretrain` ("" = from scratch,
  /// or the cached pretraining below when `pretrain` is set).
  std::string visual_init;
  /// Pretrain the extractor first (cached under pretrain_dir, reused when it exists): a
  /// 14-observation classifier on pretrain_studies synthetic studies of pretrain_seed.
  bool pretrain = false;
  int pretrain_studies = 2400;
  uint64_t pretrain_seed = 1000;
  int pretrain_epochs = 8;
  std::string pretrain_dir = "runs/pretrain";
  /// Keep the visual extractor fixed (no gradient, batch norm in inference mode): the decoder
  /// learns on the pretrained features instead of pulling them towards the language prior.
  bool freeze_visual = false;
  int d_model = 128, d_ff = 128, num_heads = 4, num_layers = 1;
  int rm_num_slots = 3, rm_num_heads = 4, rm_d_model = 128;
  double dropout = 0.1, drop_prob_lm = 0.5;
  /// Rows of the positional-encoding table (a state-dict buffer; 5000 upstream); 0 = just
  /// enough for max_seq_length (at least 100).
  int max_positions = 0;
  // R2GenCMN's cross-modal memory (used by --model cmn; per preset like the widths).
  int topk = 16, cmm_size = 256, cmm_dim = 128;
  /// Views fed to the model: 1 (frontal only) or 2 (IU X-Ray frontal + lateral); 0 = the
  /// default: 1 for MIMIC-CXR and for --ihn official (the release's IU X-Ray protocol), else 2.
  int views = 0;
  // Optimisation (R2Gen's recipe).
  int epochs = 10;
  int batch_size = 16;
  double lr_ve = 5e-5, lr_ed = 1e-4;
  double weight_decay = 5e-5;
  bool amsgrad = true;
  /// Adam's betas and epsilon: PyTorch's defaults for R2Gen; R2GenCMN uses (0.9, 0.98), 1e-9.
  double adam_beta1 = 0.9, adam_beta2 = 0.999, adam_eps = 1e-8;
  int lr_step = 50;  ///< StepLR step_size in epochs
  double lr_gamma = 0.1;
  double grad_clip = 0.1;  ///< clip gradients by value; <= 0 disables
  uint64_t seed = 9223;
  int early_stop = 50;  ///< epochs without a better validation score before stopping
  /// Validation score that picks best.pt: BLEU_4 (R2Gen's), clinical_f1_macro (the CheXpert-style
  /// labeller's macro F1 against the references) or CIDEr.
  std::string select_metric = "BLEU_4";
  // Decoding for validation/test.
  int beam_size = 3;
  // ihn (HardNegativeCallback).
  std::string ihn = "off";  ///< off | paper | official
  int negatives = 4;
  double ihn_weight = 0.1;
  double temperature = 0.07;
  std::string schedule = "exp:0.01";  ///< exp:ALPHA | linear:RAMP | cosine:RAMP | const:LAMBDA
  int ascent_steps = 5;
  /// ihn paper: the alignment term, info_nce (the paper's) or hinge (a triplet margin of 0.2 on
  /// cosine similarities, the library's variant).
  std::string alignment = "info_nce";
  /// ihn paper: the report features aligned with the image, `decoder` (the paper's: the masked
  /// mean of the final decoder states on the report, which attend to the image) or `text` (an
  /// extension, R2Gen only: the same states from a pass with no image, so the alignment cannot
  /// be met by copying the image into them). Retrieval in evaluation uses the same features.
  std::string report_features = "decoder";
  /// ihn paper: how the feature bank and the persistent negatives are held (ihn::Storage):
  /// float32, compact (bfloat16 bank, int8 negatives: a quarter of the memory) or auto
  /// (compact from 100,000 training reports on, e.g. MIMIC-CXR).
  std::string bank_storage = "auto";
  /// --ihn official: `ihn data negatives` output; empty = mine the same pairs at start-up.
  std::string negatives_file;
  /// --ihn official: the release's B x B projection (mixes every sample with all others).
  bool official_legacy = false;
  /// Arithmetic of the forward passes (training and decoding): fp32, bf16 or fp16 under
  /// autocast; weights, optimiser state and checkpoints stay float32 (nn/precision.hpp).
  std::string precision = "fp32";
  // Runtime (not part of the recipe; may change on resume).
  std::string out;
  std::string device = "cpu";
  /// CPU: the ResNet runs channels-last (NHWC), the faster layout for oneDNN; same values.
  bool channels_last = true;
  int threads = 0;  ///< 0 = LibTorch's default
  bool resume = false;
  bool quiet = false;  ///< no per-epoch progress lines (tests)
  int stop_after = 0;  ///< > 0: stop (as if interrupted) after this many steps of this run
  bool plots = true;   ///< gnuplot plots when gnuplot is installed
  std::string label;   ///< prefix of progress lines (compare: "[seed 1 ihn]")
  /// Data-parallel runs (torchrun or ihn train --nproc): a collective that has not completed
  /// within this many seconds (a rank died or hangs) ends the run with an error.
  int dist_timeout = 300;
  int bootstrap = 1000;  ///< resamples for the test-set confidence intervals
  std::string wordnet = "/usr/share/wordnet";
};

nlohmann::json to_json(const TrainConfig& config);
/// Unknown keys are an error naming them (a checkpoint from a newer version).
TrainConfig config_from_json(const nlohmann::json& json);
/// Sets the recipe fields of `name` (paper | cpu-small); throws TrainError for other names.
void apply_preset(TrainConfig& config, const std::string& name);
/// Checks every value (ranges, finiteness, names); throws TrainError naming the option. Also
/// applied to the config stored in every checkpoint read.
void validate_recipe(const TrainConfig& config);
/// validate_recipe, then the files the run reads (annotation, images, negatives, --visual-init).
void validate(const TrainConfig& config);
/// The views a run feeds its model (resolves TrainConfig::views == 0).
int views_of(const TrainConfig& config);

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
  return requested > 0 ? requested : run.beam_size;
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
