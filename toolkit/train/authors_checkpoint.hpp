// Checkpoints written by the authors' official trainers (R2Gen, R2GenCMN and the paper's ITHN
// code): `torch.save({'epoch', 'state_dict', 'optimizer', 'monitor_best'})` to a `.pth`. They
// carry neither the run's arguments nor its vocabulary, so this file
//   * tells an ihn checkpoint from a PyTorch one by content (sniff_checkpoint),
//   * recognises the architecture from the state-dict keys (R2Gen: the relational memory
//     `encoder_decoder.model.rm.*`; R2GenCMN: `encoder_decoder.memory_matrix`; ITHN: CMN plus
//     the contrastive heads `img_projection.*`, `text_projection.*`, `temp_1`, `temp_3`),
//   * infers every size the tensor shapes determine (infer_config) and takes the official
//     defaults for the rest (heads, top-k), which the user may override,
//   * rebuilds R2Gen's vocabulary from the annotation and checks it against the logit rows,
//   * builds our model and loads the weights by name (ihn::io), reporting mismatches by key.
// See docs/authors_checkpoints.md.
#pragma once

#include "train/train.hpp"

#include <ihn/io/pth.hpp>

#include <torch/nn/module.h>
#include "data/tokenizer.hpp"

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace ihn_toolkit::train::authors {

enum class Architecture { r2gen, r2gencmn, ithn };
const char* architecture_name(Architecture architecture);  ///< "R2Gen", "R2GenCMN", "ITHN"

/// name -> shape of every state-dict entry, in the file's order.
using ShapeMap = std::vector<std::pair<std::string, std::vector<int64_t>>>;

/// The model configuration of an authors' checkpoint. Sizes come from tensor shapes; the head
/// counts and top-k cannot (every split of d_model has the same shapes) and hold the official
/// defaults or the user's overrides; `*_from_default` says which.
struct AuthorsConfig {
  Architecture architecture = Architecture::r2gen;
  bool data_parallel = false;  ///< keys carried nn.DataParallel's "module." prefix
  int visual_depth = 101;      ///< ResNet depth, from the blocks per stage
  int d_vf = 2048;             ///< visual feature channels (att_embed input)
  int d_model = 512, d_ff = 512, num_layers = 3;
  int num_heads = 8;
  bool num_heads_from_default = true;
  int vocab_size = 0;        ///< tokens without the 0 id: logit rows - 1
  int max_positions = 5000;  ///< rows of the positional-encoding table `pe`
  // R2Gen's relational memory.
  int rm_num_slots = 0, rm_d_model = 0, rm_num_heads = 0;
  bool rm_num_heads_from_default = true;
  // R2GenCMN's cross-modal memory (CMN and ITHN).
  int cmm_size = 0, cmm_dim = 0, topk = 0;
  bool topk_from_default = true;
  // ITHN's contrastive heads (used in training only; generation ignores them).
  int ithn_image_projection_in = 0, ithn_projection_dim = 0;
  std::vector<std::string> training_only_keys;  ///< ITHN's heads, skipped when loading

  /// One line per value, "(default)" where the shapes could not tell it.
  std::string describe() const;
};

/// What the user can tell us that the file cannot (GenerateOptions/EvaluateOptions::authors).
using Overrides = AuthorsCheckpointOptions;

enum class CheckpointFormat { ihn, pytorch };
/// ihn: written by `ihn train` (a zip whose pickle holds our config and vocabulary entries) —
/// also returned for a missing file, so the caller's "not found" message applies; pytorch: any
/// other torch.save file (zip or legacy). Anything else throws TrainError naming the file.
CheckpointFormat sniff_checkpoint(const std::string& path);

/// Throws TrainError naming `file` when the keys match none of the three architectures.
Architecture detect_architecture(const ShapeMap& shapes, const std::string& file);
/// Detects and infers; `file` only names the checkpoint in errors. DataParallel's "module."
/// prefix is accepted. Throws TrainError naming the key when an expected entry is missing or
/// has an impossible shape.
AuthorsConfig infer_config(const ShapeMap& shapes, const std::string& file,
                           const Overrides& overrides = {});

/// Threshold and report length of the official run scripts for `dataset` (iu_xray: 3, 60;
/// mimic_cxr: 10, 100) unless overridden (> 0).
int effective_threshold(const Overrides& overrides);
int effective_max_seq_length(const Overrides& overrides);

/// The run configuration our trainer's evaluation and generation use for an authors'
/// checkpoint: the inferred model sizes, the official test transform (Resize((224, 224)),
/// ImageNet normalisation), beam size 3, and the annotation as data.
TrainConfig to_train_config(const AuthorsConfig& config, const Overrides& overrides,
                            const std::string& ann, const std::string& images);

/// R2Gen's vocabulary rebuilt from the annotation's train reports (the official Tokenizer),
/// checked against the checkpoint's `vocab_size`; a mismatch throws TrainError naming the
/// annotation, both sizes and the likely fix.
ihn_toolkit::data::Tokenizer rebuild_vocabulary(const std::string& ann, const Overrides& overrides,
                                                int64_t vocab_size, const std::string& checkpoint);

/// An authors' checkpoint read and checked, before a model is built from it.
struct AuthorsCheckpoint {
  AuthorsConfig config;
  TrainConfig train_config;  ///< to_train_config(); model "r2gen" or "cmn" (CMN and ITHN)
  ihn_toolkit::data::Tokenizer tokenizer;
  ihn::io::StateDict state;  ///< the weights, ITHN's training-only heads removed
};

/// Reads `path`, infers the configuration and rebuilds the vocabulary from `ann`. Every failure
/// is a TrainError naming the file: unreadable file, unknown architecture, vocabulary mismatch.
AuthorsCheckpoint read_authors_checkpoint(const std::string& path, const std::string& ann,
                                          const std::string& images, const Overrides& overrides);

/// Loads `state` into `model` (our port of `config.architecture`) by name and sets eval mode.
/// Missing/unexpected keys and shape mismatches throw a TrainError naming `path` and the keys.
ihn::io::LoadReport load_authors_weights(torch::nn::Module& model, ihn::io::StateDict state,
                                         const AuthorsConfig& config, const std::string& path);

}  // namespace ihn_toolkit::train::authors
