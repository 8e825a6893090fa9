// `ihn pretrain`: a visual extractor pretrained as a 14-observation multi-label classifier on a
// labelled synthetic set of its own seed — the field's practice of starting a report generator
// from a CheXpert- (or ImageNet-) pretrained encoder, on data disjoint from the set the
// generator is trained and scored on. The file holds the extractor under the generator's own
// parameter names (`visual_extractor.model.*`), so `ihn train --visual-init FILE` copies it in.
//
// Like train.hpp this header needs no LibTorch; pretrain.cpp is the heavy translation unit.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

namespace torch::nn {
class Module;
}

namespace ihn_toolkit::train {

struct TrainConfig;

/// Everything the pretrained extractor depends on; stored in the file, and the cache name
/// `ihn compare` / `ihn train --pretrain` derive from it (pretrain_cache_name).
struct PretrainConfig {
  int visual_depth = 18;
  int views = 2;
  int synth_studies = 2400;
  uint64_t synth_seed = 1000;  ///< a seed the generator's benchmark never uses (docs/results.md)
  int synth_image_size = 64;
  int resize = 72;  ///< train: shorter side before the random crop; eval: resize to crop
  int crop = 64;
  int epochs = 8;
  int batch_size = 32;
  double lr = 1e-3;
  double weight_decay = 0;
  /// Probability of R2Gen's horizontal flip in training. 0 by default: a flipped chest film
  /// puts the heart on the wrong side, and the features should keep which side a finding is on.
  double flip_probability = 0;
  uint64_t seed = 1;
  // Runtime (not part of what is learnt).
  int threads = 0;
  bool channels_last = true;
  bool quiet = false;
  std::string label;  ///< prefix of progress lines
};

nlohmann::json to_json(const PretrainConfig& config);
PretrainConfig pretrain_config_from_json(const nlohmann::json& json);
/// Checks ranges; throws TrainError naming the option.
void validate(const PretrainConfig& config);

/// The pretraining a generator config asks for: its depth, views and image geometry, with the
/// pretraining set's own size, seed and schedule (TrainConfig::pretrain_*).
PretrainConfig pretrain_config_for(const TrainConfig& config);
/// A file name that changes with every field that changes the weights, e.g.
/// "visual_r18_v2_64px_s1000_n2400_e8_b32_lr0.001_wd0_seed1.pt".
std::string pretrain_cache_name(const PretrainConfig& config);
/// Where a generator config's pretraining is cached: pretrain_dir / pretrain_cache_name.
std::string pretrain_cache_path(const TrainConfig& config);

struct PretrainResult {
  std::string path;
  bool reused = false;  ///< the file existed and matched: nothing was trained
  double seconds = 0;
  nlohmann::json metrics;  ///< held-out split: mean AUC, macro F1 at 0.5, per observation
};

/// Trains the classifier and writes `path` atomically (visual_extractor.* weights, the linear
/// head as classifier.*, and pretrain.json with the config and held-out metrics).
PretrainResult pretrain_visual_extractor(const PretrainConfig& config, const std::string& path);

/// `path` if it holds a pretraining of exactly `config`, else trains it there first.
PretrainResult ensure_pretrained(const PretrainConfig& config, const std::string& path);

/// Copies the `visual_extractor.*` weights and batch-norm statistics of a pretrained file into
/// `extractor` (a generator's visual_extractor); every tensor must be there with its shape.
/// Returns the file's pretrain.json.
nlohmann::json load_pretrained_extractor(torch::nn::Module& extractor, const std::string& path);

/// The config and metrics stored in a pretrained file (throws TrainError naming the file).
nlohmann::json read_pretrain_info(const std::string& path);

}  // namespace ihn_toolkit::train
