// Every option of TrainConfig declared once: X(path, key, flag, check, help) gives where it
// lives (`config.<path>`: its component's config, config.hpp, whose initialisers are the
// defaults), its key in config.json, its command-line flag, the values it accepts and, for the
// recipe options that `ihn train` and `ihn compare` share, its help. The JSON reader and writer,
// the validation of every config (command line, --config files, checkpoints) and the CLI
// bindings (apps/ihn/train_options.hpp) are generated from IHN_TRAIN_OPTIONS. Options without
// help are bound by each command itself (--out, --model, ...) or come only from presets and
// config files (Adam's betas, dropout). config.json stays one flat object, a key per option, so
// every checkpoint written before the components had their own configs still reads.
#pragma once

#include <limits>

namespace ihn_toolkit::train {

/// The values an option accepts. Numbers: finite and within [min, max] (either end open);
/// strings: one of `choices` ("a|b|c"; null = any). `model`: checked only for that --model.
struct OptionCheck {
  double min = -std::numeric_limits<double>::infinity();
  double max = std::numeric_limits<double>::infinity();
  bool min_open = false, max_open = false;
  const char* choices = nullptr;
  const char* model = nullptr;
  constexpr OptionCheck for_model(const char* name) const {
    OptionCheck c = *this;
    c.model = name;
    return c;
  }
};

namespace checks {
constexpr OptionCheck any() {
  return {};
}
constexpr OptionCheck finite() {
  return {};
}  // numbers are always checked for finiteness
constexpr OptionCheck at_least(double min) {
  OptionCheck c;
  c.min = min;
  return c;
}
constexpr OptionCheck above(double min) {
  OptionCheck c;
  c.min = min;
  c.min_open = true;
  return c;
}
constexpr OptionCheck between(double min, double max) {
  OptionCheck c;
  c.min = min;
  c.max = max;
  return c;
}
/// [0, 1): dropout, Adam's betas.
constexpr OptionCheck probability() {
  OptionCheck c = between(0, 1);
  c.max_open = true;
  return c;
}
/// (0, 1): a share of the studies that must leave some for the other splits.
constexpr OptionCheck open_unit() {
  OptionCheck c = above(0);
  c.max = 1;
  c.max_open = true;
  return c;
}
constexpr OptionCheck one_of(const char* choices) {
  OptionCheck c;
  c.choices = choices;
  return c;
}
}  // namespace checks

// Each component's options: X(path, key, flag, check, help). The groups are also the sections of
// `ihn train --help` (IHN_TRAIN_OPTION_GROUPS).
// clang-format off
/// Data: the data set, its images and reports.
#define IHN_DATA_OPTIONS(X) \
  X(data.source, data, "--data", any(), "") \
  X(data.ann, ann, "--ann", any(), "") \
  X(data.images, images, "--images", any(), "") \
  X(data.dataset, dataset, "--dataset", one_of("iu_xray|mimic_cxr"), "") \
  X(data.synthetic.studies, synth_studies, "--synth-studies", between(10, 1e7), "Synthetic set: studies (300)") \
  X(data.synthetic.seed, synth_seed, "--synth-seed", any(), "Synthetic set: seed (0)") \
  X(data.synthetic.image_size, synth_image_size, "--synth-image-size", between(32, 4096), "Synthetic set: rendered image side") \
  X(data.synthetic.val_fraction, synth_val_fraction, "--synth-val-fraction", open_unit(), "Synthetic set: share of studies in the validation split (0.1)") \
  X(data.synthetic.test_fraction, synth_test_fraction, "--synth-test-fraction", open_unit(), "Synthetic set: share of studies in the test split (0.2)") \
  X(data.synthetic.normal_fraction, synth_normal_fraction, "--synth-normal-fraction", between(0, 1), "Synthetic set: share of studies without findings (0.667)") \
  X(data.resize, resize, "--resize", between(32, 4096), "Train: shorter side before the random crop (paper 256)") \
  X(data.crop, crop, "--image-size", between(32, 4096), "Image side fed to the network (crop; paper 224)") \
  X(data.views, views, "--views", between(0, 2), "Views fed to the model: 1 (frontal) or 2 (frontal + lateral); default 1 with --ihn  official (the release's IU X-Ray protocol) and for MIMIC-CXR, else 2") \
  X(data.threshold, threshold, "--threshold", at_least(1), "Vocabulary: minimum count in train (3)") \
  X(data.max_seq_length, max_seq_length, "--max-seq-length", between(3, 4096), "Tokens per report incl. BOS/EOS (60)") \
  X(data.skip_bad, skip_bad, "--skip-bad", any(), "Leave out annotation entries with problems (listed) instead of stopping")
/// Model: the generator and its visual extractor.
#define IHN_MODEL_OPTIONS(X) \
  X(model.architecture, model, "--model", one_of("r2gen|cmn"), "") \
  X(model.visual_depth, visual_depth, "--visual-depth", any(), "ResNet depth: 18, 34, 50 or 101") \
  X(model.visual_init, visual_init, "--visual-init", any(), "Start the visual extractor from this `ihn pretrain` file") \
  X(model.pretraining.enabled, pretrain, "--pretrain", any(), "Pretrain the visual extractor first as a 14-observation classifier on a disjoint  synthetic set (cached in --pretrain-dir and reused)") \
  X(model.pretraining.studies, pretrain_studies, "--pretrain-studies", at_least(1), "Pretraining set: studies (2400)") \
  X(model.pretraining.seed, pretrain_seed, "--pretrain-seed", any(), "Pretraining set: synthetic seed, not the generator's (1000)") \
  X(model.pretraining.epochs, pretrain_epochs, "--pretrain-epochs", at_least(1), "Pretraining epochs (8)") \
  X(model.pretraining.dir, pretrain_dir, "--pretrain-dir", any(), "Cache of pretrained extractors (runs/pretrain)") \
  X(model.freeze_visual, freeze_visual, "--freeze-visual", any(), "Keep the (pretrained) visual extractor fixed: no gradient, batch norm in inference mode") \
  X(model.d_model, d_model, "--d-model", between(1, 65536), "Transformer width (paper 512)") \
  X(model.d_ff, d_ff, "--d-ff", between(1, 262144), "Feed-forward width (paper 512)") \
  X(model.num_heads, num_heads, "--num-heads", between(1, 1024), "Attention heads (paper 8)") \
  X(model.num_layers, num_layers, "--num-layers", between(1, 64), "Encoder and decoder layers (paper 3)") \
  X(model.relational_memory.num_slots, rm_num_slots, "--rm-num-slots", between(1, 1024).for_model("r2gen"), "") \
  X(model.relational_memory.num_heads, rm_num_heads, "--rm-num-heads", between(1, 1024).for_model("r2gen"), "Relational memory heads (paper 8)") \
  X(model.relational_memory.d_model, rm_d_model, "--rm-d-model", between(1, 65536).for_model("r2gen"), "Relational memory width (paper 512)") \
  X(model.dropout, dropout, "--dropout", probability(), "") \
  X(model.drop_prob_lm, drop_prob_lm, "--drop-prob-lm", probability(), "") \
  X(model.cross_modal_memory.topk, topk, "--topk", at_least(1).for_model("cmn"), "CMN: memory slots each query reads (paper 32)") \
  X(model.cross_modal_memory.size, cmm_size, "--cmm-size", between(1, 1 << 20).for_model("cmn"), "CMN: cross-modal memory slots (paper 2048)") \
  X(model.cross_modal_memory.dim, cmm_dim, "--cmm-dim", between(1, 65536).for_model("cmn"), "CMN: cross-modal memory width (paper 512)") \
  X(model.max_positions, max_positions, "--max-positions", between(0, 1 << 20), "")
/// Optimisation: epochs, Adam, the learning-rate schedule, selection, precision.
#define IHN_OPTIMISATION_OPTIONS(X) \
  X(optim.epochs, epochs, "--epochs", at_least(1), "Training epochs (paper 100, cpu-small 10)") \
  X(optim.batch_size, batch_size, "--batch-size", between(1, 1 << 20), "Studies per batch (16)") \
  X(optim.lr_ve, lr_ve, "--lr-ve", above(0), "Adam learning rate of the visual extractor (paper 5e-5)") \
  X(optim.lr_ed, lr_ed, "--lr-ed", above(0), "Adam learning rate of everything else (paper 1e-4)") \
  X(optim.weight_decay, weight_decay, "--weight-decay", at_least(0), "Adam weight decay (5e-5)") \
  X(optim.amsgrad, amsgrad, "--amsgrad", any(), "") \
  X(optim.adam_beta1, adam_beta1, "--adam-beta1", probability(), "") \
  X(optim.adam_beta2, adam_beta2, "--adam-beta2", probability(), "") \
  X(optim.adam_eps, adam_eps, "--adam-eps", above(0), "") \
  X(optim.lr_step, lr_step, "--lr-step", at_least(1), "StepLR step size in epochs (50)") \
  X(optim.lr_gamma, lr_gamma, "--lr-gamma", above(0), "StepLR factor (0.1)") \
  X(optim.grad_clip, grad_clip, "--grad-clip", finite(), "Clip gradients by value (0.1; 0 = off)") \
  X(optim.seed, seed, "--seed", any(), "") \
  X(optim.early_stop, early_stop, "--early-stop", at_least(1), "Stop after this many epochs without a better validation score (50)") \
  X(optim.select_metric, select_metric, "--select-metric", one_of("BLEU_4|clinical_f1_macro|CIDEr"), "Validation score that picks best.pt: BLEU_4 (R2Gen's), clinical_f1_macro or CIDEr") \
  X(optim.precision, precision, "--precision", one_of("fp32|bf16|fp16"), "Forward-pass arithmetic: fp32, bf16 (autocast: CPUs with AVX512-BF16, CUDA) or fp16 (CUDA, loss scaling); weights and checkpoints stay float32")
/// ihn: hard negatives: the library's options (ihn::Options) and the released mode.
#define IHN_IHN_OPTIONS(X) \
  X(ihn.mode, ihn, "--ihn", one_of("off|paper|official"), "Hard negatives: off, paper or official (the released loss; see ihn train --help)") \
  X(ihn.library.negatives_per_sample(), negatives, "--negatives", between(0, 65536), "ihn: hard negatives per sample K (4)") \
  X(ihn.library.weight(), ihn_weight, "--ihn-weight", at_least(0), "ihn: weight of the alignment term (0.1)") \
  X(ihn.library.temperature(), temperature, "--temperature", above(0), "ihn: InfoNCE temperature (0.07)") \
  X(ihn.library.schedule(), schedule, "--schedule", any(), "ihn: hardness schedule exp:ALPHA | linear:RAMP | cosine:RAMP | const:LAMBDA  (paper exp:0.01, cpu-small exp:0.1)") \
  X(ihn.library.ascent_steps(), ascent_steps, "--ascent-steps", between(0, 1000), "ihn: gradient-ascent steps of the max step (5)") \
  X(ihn.library.loss_kind(), alignment, "--alignment", any(), "ihn: the alignment term, info_nce (the paper's) or hinge (triplet margin 0.2)") \
  X(ihn.report_features, report_features, "--report-features", one_of("decoder|text"), "ihn: report features aligned with the image, decoder (the paper's) or text (extension,  R2Gen: decoder states of a pass without the image)") \
  X(ihn.bank_storage, bank_storage, "--bank-storage", one_of("auto|float32|compact"), "ihn: feature bank and negatives in float32 or compact (bfloat16 bank, int8 negatives; a quarter of the memory); auto = compact from 100,000 training reports") \
  X(ihn.negatives_file, negatives_file, "--negatives-file", any(), "ihn official: negative pairs from `ihn data negatives` (default: mined at start-up  with the same code)") \
  X(ihn.official_legacy, official_legacy, "--official-legacy", any(), "ihn official: the release's B x B projection that mixes every sample with all others")
/// Decoding and evaluation: beam search and the test-set statistics.
#define IHN_EVALUATION_OPTIONS(X) \
  X(eval.beam_size, beam_size, "--beam-size", between(1, 256), "Beam size for validation and test decoding (3)") \
  X(eval.bootstrap, bootstrap, "--bootstrap", at_least(0), "Resamples for the test-set intervals (1000)") \
  X(eval.wordnet, wordnet, "--wordnet", any(), "")
/// Run: where and how the run executes (not part of the recipe).
#define IHN_RUN_OPTIONS(X) \
  X(run.preset, preset, "--preset", any(), "") \
  X(run.out, out, "--out", any(), "") \
  X(run.device, device, "--device", any(), "") \
  X(run.channels_last, channels_last, "--channels-last", any(), "") \
  X(run.threads, threads, "--threads", at_least(0), "") \
  X(run.resume, resume, "--resume", any(), "") \
  X(run.quiet, quiet, "--quiet", any(), "") \
  X(run.stop_after, stop_after, "--stop-after", at_least(0), "") \
  X(run.plots, plots, "--plots", any(), "") \
  X(run.label, label, "--label", any(), "") \
  X(run.dist_timeout, dist_timeout, "--dist-timeout", between(1, 86400), "Distributed runs: seconds a collective may wait for the other ranks before the run stops with an error (300)") \
  X(run.dist_backend, dist_backend, "--dist-backend", one_of("auto|gloo|nccl"), "Distributed runs on GPUs: NCCL or Gloo for the CUDA tensors' collectives; auto = NCCL when LibTorch has it and every rank a GPU of its own (host tensors always use Gloo)")
/// Every option of TrainConfig.
#define IHN_TRAIN_OPTIONS(X) IHN_DATA_OPTIONS(X) IHN_MODEL_OPTIONS(X) IHN_OPTIMISATION_OPTIONS(X) \
  IHN_IHN_OPTIONS(X) IHN_EVALUATION_OPTIONS(X) IHN_RUN_OPTIONS(X)
/// G(section title, options macro) for each group, in the order of --help.
#define IHN_TRAIN_OPTION_GROUPS(G) G("Data", IHN_DATA_OPTIONS) G("Model", IHN_MODEL_OPTIONS) \
  G("Optimisation", IHN_OPTIMISATION_OPTIONS) G("ihn", IHN_IHN_OPTIONS) \
  G("Decoding and evaluation", IHN_EVALUATION_OPTIONS) G("Run", IHN_RUN_OPTIONS)
// clang-format on

}  // namespace ihn_toolkit::train
