// The recipe options shared by `ihn train` and `ihn compare`. A preset is applied first and
// only the options a user actually gives override it, so each option is bound to a scratch
// value and copied into the config after parsing when it was set.
#pragma once

#include "command.hpp"
#include "train/train.hpp"

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

namespace ihn::cli {

class RecipeOptions {
 public:
  /// Adds --epochs, --lr-ve, ... to `cmd`; `with_ihn` adds --ihn and its options.
  RecipeOptions(CLI::App* cmd, bool with_ihn) {
    auto& s = scratch_;
    using C = ihn_examples::train::TrainConfig;
    add(cmd, "--epochs", s.epochs, "Training epochs (paper 100, cpu-small 10)", &C::epochs);
    add(cmd, "--batch-size", s.batch_size, "Studies per batch (16)", &C::batch_size);
    add(cmd, "--lr-ve", s.lr_ve, "Adam learning rate of the visual extractor (paper 5e-5)",
        &C::lr_ve);
    add(cmd, "--lr-ed", s.lr_ed, "Adam learning rate of everything else (paper 1e-4)", &C::lr_ed);
    add(cmd, "--weight-decay", s.weight_decay, "Adam weight decay (5e-5)", &C::weight_decay);
    add(cmd, "--lr-step", s.lr_step, "StepLR step size in epochs (50)", &C::lr_step);
    add(cmd, "--lr-gamma", s.lr_gamma, "StepLR factor (0.1)", &C::lr_gamma);
    add(cmd, "--grad-clip", s.grad_clip, "Clip gradients by value (0.1; 0 = off)", &C::grad_clip);
    add(cmd, "--early-stop", s.early_stop,
        "Stop after this many epochs without a better validation score (50)", &C::early_stop);
    add(cmd, "--select-metric", s.select_metric,
        "Validation score that picks best.pt: BLEU_4 (R2Gen's), clinical_f1_macro or CIDEr",
        &C::select_metric);
    add(cmd, "--beam-size", s.beam_size, "Beam size for validation and test decoding (3)",
        &C::beam_size);
    add(cmd, "--max-seq-length", s.max_seq_length, "Tokens per report incl. BOS/EOS (60)",
        &C::max_seq_length);
    add(cmd, "--threshold", s.threshold, "Vocabulary: minimum count in train (3)", &C::threshold);
    add(cmd, "--skip-bad", s.skip_bad,
        "Leave out annotation entries with problems (listed) instead of stopping", &C::skip_bad);
    add(cmd, "--visual-depth", s.visual_depth, "ResNet depth: 18, 34, 50 or 101", &C::visual_depth);
    add(cmd, "--visual-init", s.visual_init,
        "Start the visual extractor from this `ihn pretrain` file", &C::visual_init);
    add(cmd, "--pretrain", s.pretrain,
        "Pretrain the visual extractor first as a 14-observation classifier on a disjoint "
        "synthetic set (cached in --pretrain-dir and reused)",
        &C::pretrain);
    add(cmd, "--pretrain-studies", s.pretrain_studies, "Pretraining set: studies (2400)",
        &C::pretrain_studies);
    add(cmd, "--pretrain-seed", s.pretrain_seed,
        "Pretraining set: synthetic seed, not the generator's (1000)", &C::pretrain_seed);
    add(cmd, "--pretrain-epochs", s.pretrain_epochs, "Pretraining epochs (8)", &C::pretrain_epochs);
    add(cmd, "--pretrain-dir", s.pretrain_dir, "Cache of pretrained extractors (runs/pretrain)",
        &C::pretrain_dir);
    add(cmd, "--freeze-visual", s.freeze_visual,
        "Keep the (pretrained) visual extractor fixed: no gradient, batch norm in inference mode",
        &C::freeze_visual);
    add(cmd, "--d-model", s.d_model, "Transformer width (paper 512)", &C::d_model);
    add(cmd, "--d-ff", s.d_ff, "Feed-forward width (paper 512)", &C::d_ff);
    add(cmd, "--num-layers", s.num_layers, "Encoder and decoder layers (paper 3)", &C::num_layers);
    add(cmd, "--num-heads", s.num_heads, "Attention heads (paper 8)", &C::num_heads);
    add(cmd, "--rm-d-model", s.rm_d_model, "Relational memory width (paper 512)", &C::rm_d_model);
    add(cmd, "--rm-num-heads", s.rm_num_heads, "Relational memory heads (paper 8)",
        &C::rm_num_heads);
    add(cmd, "--topk", s.topk, "CMN: memory slots each query reads (paper 32)", &C::topk);
    add(cmd, "--cmm-size", s.cmm_size, "CMN: cross-modal memory slots (paper 2048)", &C::cmm_size);
    add(cmd, "--cmm-dim", s.cmm_dim, "CMN: cross-modal memory width (paper 512)", &C::cmm_dim);
    add(cmd, "--views", s.views,
        "Views fed to the model: 1 (frontal) or 2 (frontal + lateral); default 1 with --ihn "
        "official (the release's IU X-Ray protocol) and for MIMIC-CXR, else 2",
        &C::views);
    add(cmd, "--image-size", s.crop, "Image side fed to the network (crop; paper 224)", &C::crop);
    add(cmd, "--resize", s.resize, "Train: shorter side before the random crop (paper 256)",
        &C::resize);
    add(cmd, "--synth-studies", s.synth_studies, "Synthetic set: studies (300)", &C::synth_studies);
    add(cmd, "--synth-seed", s.synth_seed, "Synthetic set: seed (0)", &C::synth_seed);
    add(cmd, "--synth-image-size", s.synth_image_size, "Synthetic set: rendered image side",
        &C::synth_image_size);
    add(cmd, "--synth-val-fraction", s.synth_val_fraction,
        "Synthetic set: share of studies in the validation split (0.1)", &C::synth_val_fraction);
    add(cmd, "--synth-test-fraction", s.synth_test_fraction,
        "Synthetic set: share of studies in the test split (0.2)", &C::synth_test_fraction);
    add(cmd, "--synth-normal-fraction", s.synth_normal_fraction,
        "Synthetic set: share of studies without findings (0.667)", &C::synth_normal_fraction);
    add(cmd, "--bootstrap", s.bootstrap, "Resamples for the test-set intervals (1000)",
        &C::bootstrap);
    if (with_ihn) {
      add(cmd, "--ihn", s.ihn,
          "Hard negatives: off, paper or official (the released loss; see ihn train --help)",
          &C::ihn);
    }
    add(cmd, "--negatives", s.negatives, "ihn: hard negatives per sample K (4)", &C::negatives);
    add(cmd, "--ihn-weight", s.ihn_weight, "ihn: weight of the alignment term (0.1)",
        &C::ihn_weight);
    add(cmd, "--temperature", s.temperature, "ihn: InfoNCE temperature (0.07)", &C::temperature);
    add(cmd, "--schedule", s.schedule,
        "ihn: hardness schedule exp:ALPHA | linear:RAMP | cosine:RAMP | const:LAMBDA "
        "(paper exp:0.01, cpu-small exp:0.1)",
        &C::schedule);
    add(cmd, "--ascent-steps", s.ascent_steps, "ihn: gradient-ascent steps of the max step (5)",
        &C::ascent_steps);
    add(cmd, "--report-features", s.report_features,
        "ihn: report features aligned with the image, decoder (the paper's) or text (extension, "
        "R2Gen: decoder states of a pass without the image)",
        &C::report_features);
    add(cmd, "--alignment", s.alignment,
        "ihn: the alignment term, info_nce (the paper's) or hinge (triplet margin 0.2)",
        &C::alignment);
    add(cmd, "--negatives-file", s.negatives_file,
        "ihn official: negative pairs from `ihn data negatives` (default: mined at start-up "
        "with the same code)",
        &C::negatives_file);
    CLI::Option* legacy = cmd->add_flag(
        "--official-legacy", scratch_.official_legacy,
        "ihn official: the release's B x B projection that mixes every sample with all others");
    appliers_.push_back([legacy](ihn_examples::train::TrainConfig& c) {
      if (legacy->count() > 0) c.official_legacy = true;
    });
  }

  /// Copies the options that were given into `config`.
  void apply(ihn_examples::train::TrainConfig& config) const {
    for (const auto& a : appliers_) a(config);
  }

  /// Whether `flag` (e.g. "--epochs") was on the command line.
  bool given(const std::string& flag) const {
    auto it = options_.find(flag);
    return it != options_.end() && it->second->count() > 0;
  }

 private:
  template <class T>
  void add(CLI::App* cmd, const std::string& flag, T& target, const std::string& help,
           T ihn_examples::train::TrainConfig::*member) {
    CLI::Option* opt = nullptr;
    if constexpr (std::is_same_v<T, bool>)  // --pretrain and --no-pretrain (a preset may set it)
      opt = cmd->add_flag(flag + ",!--no-" + flag.substr(2), target, help);
    else
      opt = cmd->add_option(flag, target, help);
    options_[flag] = opt;
    appliers_.push_back([opt, member, this](ihn_examples::train::TrainConfig& c) {
      if (opt->count() > 0) c.*member = scratch_.*member;
    });
  }

  ihn_examples::train::TrainConfig scratch_;
  std::map<std::string, CLI::Option*> options_;
  std::vector<std::function<void(ihn_examples::train::TrainConfig&)>> appliers_;
};

/// What an authors' .pth cannot tell about itself (`ihn evaluate` and `ihn generate`).
inline void add_authors_options(CLI::App* cmd,
                                ihn_examples::train::AuthorsCheckpointOptions& authors) {
  cmd->add_option("--dataset", authors.dataset, "Authors' .pth: iu_xray or mimic_cxr")
      ->capture_default_str();
  cmd->add_option("--threshold", authors.threshold,
                  "Authors' .pth: vocabulary cut-off (default: iu_xray 3, mimic_cxr 10)");
  cmd->add_option("--max-seq-length", authors.max_seq_length,
                  "Authors' .pth: longest report in tokens (default: iu_xray 60, mimic_cxr 100)");
  cmd->add_option("--num-heads", authors.num_heads, "Authors' .pth: attention heads (default 8)");
  cmd->add_option("--rm-num-heads", authors.rm_num_heads,
                  "Authors' R2Gen .pth: relational-memory heads (default 8)");
  cmd->add_option("--topk", authors.topk, "Authors' R2GenCMN .pth: memory top-k (default 32)");
}

}  // namespace ihn::cli
