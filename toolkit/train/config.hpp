// What a run depends on, as one config per component: the data, the model, the optimisation,
// ihn (the library's own ihn::Options, plus the trainer's choices around it), decoding and
// evaluation, and the run itself. Each field's default is its initialiser here (ihn's come from
// the library); its key in config.json, its command-line flag, the values it accepts and its
// help are declared once, in options.hpp, from which the JSON reader and writer, the
// validation and the CLI bindings are generated.
//
// Needs neither LibTorch nor Eigen: the command-line front ends compile in seconds.
#pragma once

#include <ihn/options.hpp>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace ihn_toolkit::train {

/// A user-facing failure (bad file, bad option); the message names the file and the fix.
struct TrainError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// The synthetic data set (generated from `seed`, nothing on disk).
struct SyntheticConfig {
  int studies = 300;
  uint64_t seed = 0;
  int image_size = 64;  ///< rendered images, pixels per side
  /// Shares of the studies in the validation and test splits (the rest trains).
  double val_fraction = 0.1, test_fraction = 0.2;
  /// Share of studies drawn without findings (2/3, as in IU X-Ray's reports).
  double normal_fraction = 2.0 / 3.0;
};

/// Data: where the studies come from and how images and reports are prepared.
struct DataConfig {
  std::string source = "synth";  ///< synth, or annotation (ann + images)
  std::string ann, images;
  std::string dataset = "iu_xray";  ///< iu_xray | mimic_cxr (cleaning, views)
  SyntheticConfig synthetic;
  int resize = 72;  ///< train: shorter side before the random crop; eval: to crop
  int crop = 64;
  /// Views fed to the model: 1 (frontal only) or 2 (IU X-Ray frontal + lateral); 0 = the
  /// default: 1 for MIMIC-CXR and for --ihn official (the release's IU X-Ray protocol), else 2.
  int views = 0;
  int threshold = 3;  ///< vocabulary: minimum count in train
  int max_seq_length = 60;
  /// Annotation entries with problems (missing images, empty reports, duplicate ids) are left
  /// out and listed instead of stopping the run.
  bool skip_bad = false;
};

/// Pretraining the visual extractor as a 14-observation classifier on a disjoint synthetic set
/// (cached under `dir`, reused when it exists).
struct PretrainingConfig {
  bool enabled = false;
  int studies = 2400;
  uint64_t seed = 1000;
  int epochs = 8;
  std::string dir = "runs/pretrain";
};

/// R2Gen's relational memory (--model r2gen).
struct RelationalMemoryConfig {
  int num_slots = 3, num_heads = 4, d_model = 128;
};

/// R2GenCMN's cross-modal memory (--model cmn): each query reads the top-k of `size` slots.
struct CrossModalMemoryConfig {
  int topk = 16, size = 256, dim = 128;
};

/// Model: the generator, its visual extractor and each architecture's memory.
struct ModelConfig {
  std::string architecture = "r2gen";  ///< r2gen | cmn
  int visual_depth = 18;
  /// A pretrained visual extractor to start from: a file of `ihn pretrain` ("" = from scratch,
  /// or the cached pretraining when pretraining.enabled).
  std::string visual_init;
  PretrainingConfig pretraining;
  /// Keep the visual extractor fixed (no gradient, batch norm in inference mode): the decoder
  /// learns on the pretrained features instead of pulling them towards the language prior.
  bool freeze_visual = false;
  int d_model = 128, d_ff = 128, num_heads = 4, num_layers = 1;
  double dropout = 0.1, drop_prob_lm = 0.5;
  /// Rows of the positional-encoding table (a state-dict buffer; 5000 upstream); 0 = just
  /// enough for the data's max_seq_length (at least 100).
  int max_positions = 0;
  RelationalMemoryConfig relational_memory;
  CrossModalMemoryConfig cross_modal_memory;
};

/// Optimisation: R2Gen's recipe (Adam with amsgrad, two learning rates, StepLR per epoch,
/// clipping by value, selection on validation, early stopping) and the arithmetic.
struct OptimConfig {
  int epochs = 10;
  int batch_size = 16;  ///< the global batch (split across ranks in data-parallel runs)
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
  /// Arithmetic of the forward passes (training and decoding): fp32, bf16 or fp16 under
  /// autocast; weights, optimiser state and checkpoints stay float32 (nn/precision.hpp).
  std::string precision = "fp32";
};

/// ihn: off, the paper's method through the library (HardNegativeCallback) or the release's
/// loss (official_step.hpp).
struct IhnConfig {
  std::string mode = "off";  ///< off | paper | official
  /// The library's options, with its defaults: K (negatives_per_sample), weight, temperature,
  /// schedule, ascent_steps, loss_kind. --ihn official reads K, weight, temperature and the
  /// schedule's α from here too. The trainer sets seed, storage and process_group per run.
  ihn::Options library;
  /// The report features aligned with the image, `decoder` (the paper's: the masked mean of the
  /// final decoder states on the report, which attend to the image) or `text` (an extension,
  /// R2Gen only: the same states from a pass with no image, so the alignment cannot be met by
  /// copying the image into them). Retrieval in evaluation uses the same features.
  std::string report_features = "decoder";
  /// How the feature bank and the persistent negatives are held (ihn::Storage): float32,
  /// compact (bfloat16 bank, int8 negatives: a quarter of the memory) or auto (compact from
  /// 100,000 training reports on, e.g. MIMIC-CXR).
  std::string bank_storage = "auto";
  /// --ihn official: `ihn data negatives` output; empty = mine the same pairs at start-up.
  std::string negatives_file;
  /// --ihn official: the release's B x B projection (mixes every sample with all others).
  bool official_legacy = false;
};

/// Decoding and evaluation of the validation and test splits.
struct EvalConfig {
  int beam_size = 3;
  int bootstrap = 1000;  ///< resamples for the test-set confidence intervals
  std::string wordnet = "/usr/share/wordnet";
};

/// Where and how the run executes: not part of the recipe, may change on resume.
struct RunConfig {
  std::string preset = "cpu-small";
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
  /// Data-parallel runs on GPUs: what carries the CUDA tensors (dist::DeviceBackend's names).
  std::string dist_backend = "auto";
};

/// Everything a run depends on. Stored in every checkpoint (config.json: one flat object, a
/// key per option), so evaluate/generate/resume rebuild the same model and data. Defaults are
/// the `cpu-small` preset; apply_preset() sets others.
struct TrainConfig {
  DataConfig data;
  ModelConfig model;
  OptimConfig optim;
  IhnConfig ihn;
  EvalConfig eval;
  RunConfig run;
};

nlohmann::json to_json(const TrainConfig& config);
/// Unknown keys are an error naming them (a checkpoint from a newer version).
TrainConfig config_from_json(const nlohmann::json& json);
/// Sets the recipe fields of `name` (paper | cpu-small | ...); throws TrainError for others.
void apply_preset(TrainConfig& config, const std::string& name);
/// Checks every value (ranges, finiteness, names); throws TrainError naming the option. Also
/// applied to the config stored in every checkpoint read.
void validate_recipe(const TrainConfig& config);
/// validate_recipe, then the files the run reads (annotation, images, negatives, --visual-init).
void validate(const TrainConfig& config);
/// The views a run feeds its model (resolves DataConfig::views == 0).
int views_of(const TrainConfig& config);
/// --ihn official's α: the release's λ = exp(−α·epoch) needs an exp:ALPHA per-epoch schedule.
double official_alpha_of(const ihn::HardnessSchedule& schedule);

}  // namespace ihn_toolkit::train

/// config.json holds the library's kinds as the text the command line takes.
namespace nlohmann {
template <>
struct adl_serializer<ihn::HardnessSchedule> {
  static void to_json(json& j, const ihn::HardnessSchedule& s) { j = ihn::to_string(s); }
  static void from_json(const json& j, ihn::HardnessSchedule& s) {
    s = ihn::parse_schedule(j.get<std::string>());  // throws std::invalid_argument naming it
  }
};
template <>
struct adl_serializer<ihn::AlignmentKind> {
  static void to_json(json& j, ihn::AlignmentKind k) { j = ihn::to_string(k); }
  static void from_json(const json& j, ihn::AlignmentKind& k) {
    const auto text = j.get<std::string>();
    if (text != "info_nce" && text != "hinge")
      throw std::invalid_argument("alignment '" + text + "': use info_nce or hinge");
    k = text == "hinge" ? ihn::AlignmentKind::hinge : ihn::AlignmentKind::info_nce;
  }
};
}  // namespace nlohmann
