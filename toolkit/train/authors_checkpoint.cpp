// Authors' checkpoints (authors_checkpoint.hpp): detection, configuration inference, vocabulary
// and loading. One translation unit with LibTorch, linked into ihn_train.
#include "train/authors_checkpoint.hpp"

#include <torch/torch.h>

#include <ihn/io/pth.hpp>

#include "data/annotation.hpp"
#include "data/tokenizer.hpp"
#include "nn/resnet.hpp"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

namespace ihn_toolkit::train::authors {

namespace fs = std::filesystem;

namespace {

// The official defaults (main.py of R2Gen and R2GenCMN, and every released run script).
constexpr int kDefaultNumHeads = 8;
constexpr int kDefaultRmNumHeads = 8;
constexpr int kDefaultTopk = 32;

const char* const kDataParallelPrefix = "module.";

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

/// Lookups that name the checkpoint and the key when something is missing or malformed.
class Keys {
 public:
  Keys(const ShapeMap& shapes, std::string file, std::string what)
      : file_(std::move(file)), what_(std::move(what)) {
    bool all_prefixed = !shapes.empty();
    for (const auto& e : shapes) all_prefixed = all_prefixed && starts_with(e.first, "module.");
    data_parallel_ = all_prefixed;
    for (const auto& [name, shape] : shapes)
      map_[all_prefixed ? name.substr(std::strlen(kDataParallelPrefix)) : name] = shape;
  }
  bool data_parallel() const { return data_parallel_; }
  bool has(const std::string& key) const { return map_.count(key) > 0; }
  bool has_prefix(const std::string& prefix) const {
    auto it = map_.lower_bound(prefix);
    return it != map_.end() && starts_with(it->first, prefix);
  }
  /// The shape of `key`, which must have `rank` dimensions.
  const std::vector<int64_t>& shape(const std::string& key, size_t rank) const {
    auto it = map_.find(key);
    if (it == map_.end())
      throw TrainError(file_ + ": no state_dict entry '" + key + "', which every " + what_ +
                       " checkpoint has (a checkpoint of modified code?)");
    if (it->second.size() != rank)
      throw TrainError(file_ + ": state_dict entry '" + key + "' has shape " +
                       shape_text(it->second) + ", expected " + std::to_string(rank) +
                       " dimensions as in the official " + what_);
    return it->second;
  }
  int dim(const std::string& key, size_t rank, size_t index) const {
    return static_cast<int>(shape(key, rank)[index]);
  }
  /// Number of consecutive children `prefix`0., `prefix`1., ... (ModuleList / Sequential).
  int count_children(const std::string& prefix) const {
    int n = 0;
    while (has_prefix(prefix + std::to_string(n) + ".")) ++n;
    return n;
  }
  std::vector<std::string> with_prefix(const std::string& prefix) const {
    std::vector<std::string> out;
    for (auto it = map_.lower_bound(prefix); it != map_.end() && starts_with(it->first, prefix);
         ++it)
      out.push_back(it->first);
    return out;
  }
  const std::string& file() const { return file_; }
  [[noreturn]] void fail(const std::string& problem) const {
    throw TrainError(file_ + ": " + problem);
  }

 private:
  std::map<std::string, std::vector<int64_t>> map_;
  std::string file_, what_;
  bool data_parallel_ = false;
};

/// torchvision's ResNet layouts: blocks per stage and whether the block is a bottleneck.
int resnet_depth(const Keys& keys) {
  std::vector<int> blocks;
  for (int stage = 4; stage <= 7; ++stage)
    blocks.push_back(keys.count_children("visual_extractor.model." + std::to_string(stage) + "."));
  const bool bottleneck = keys.has("visual_extractor.model.4.0.conv3.weight");
  const std::vector<std::pair<int, std::vector<int>>> layouts_basic = {{18, {2, 2, 2, 2}},
                                                                       {34, {3, 4, 6, 3}}};
  const std::vector<std::pair<int, std::vector<int>>> layouts_bottleneck = {
      {50, {3, 4, 6, 3}}, {101, {3, 4, 23, 3}}, {152, {3, 8, 36, 3}}};
  for (const auto& [depth, layout] : bottleneck ? layouts_bottleneck : layouts_basic)
    if (layout == blocks) return depth;
  std::ostringstream s;
  s << "the visual extractor (visual_extractor.model.4-7) has " << blocks[0] << ", " << blocks[1]
    << ", " << blocks[2] << ", " << blocks[3] << (bottleneck ? " bottleneck" : " basic")
    << " blocks per stage, which is none of ResNet-18/34/50/101/152";
  keys.fail(s.str());
  return 0;
}

int head_count(int override_value, int fallback, bool* from_default) {
  *from_default = override_value <= 0;
  return override_value > 0 ? override_value : fallback;
}

}  // namespace

const char* architecture_name(Architecture architecture) {
  switch (architecture) {
    case Architecture::r2gen:
      return "R2Gen";
    case Architecture::r2gencmn:
      return "R2GenCMN";
    case Architecture::ithn:
      return "ITHN";
  }
  return "?";
}

std::string AuthorsConfig::describe() const {
  std::ostringstream s;
  auto dflt = [](bool d) { return d ? " (official default; not in the weights)" : " (given)"; };
  s << "architecture " << architecture_name(architecture)
    << (data_parallel ? " (DataParallel keys)" : "") << "\n"
    << "visual_extractor resnet" << visual_depth << ", d_vf " << d_vf << "\n"
    << "d_model " << d_model << ", d_ff " << d_ff << ", num_layers " << num_layers << "\n"
    << "num_heads " << num_heads << dflt(num_heads_from_default) << "\n"
    << "vocab_size " << vocab_size << " (+1 logits), pe rows " << max_positions << "\n";
  if (architecture == Architecture::r2gen)
    s << "rm_num_slots " << rm_num_slots << ", rm_d_model " << rm_d_model << ", rm_num_heads "
      << rm_num_heads << dflt(rm_num_heads_from_default) << "\n";
  else
    s << "cmm_size " << cmm_size << ", cmm_dim " << cmm_dim << ", topk " << topk
      << dflt(topk_from_default) << "\n";
  if (architecture == Architecture::ithn)
    s << "ITHN heads: image projection " << ithn_image_projection_in << " -> "
      << ithn_projection_dim << " (training only, " << training_only_keys.size()
      << " entries not loaded)\n";
  return s.str();
}

CheckpointFormat sniff_checkpoint(const std::string& path) {
  if (!fs::exists(path)) return CheckpointFormat::ihn;  // read_checkpoint explains "not found"
  std::ifstream f(path, std::ios::binary);
  unsigned char magic[4] = {0, 0, 0, 0};
  f.read(reinterpret_cast<char*>(magic), 4);
  const std::string neither =
      path +
      ": neither a checkpoint written by ihn train (RUN/best.pt) nor a PyTorch torch.save file "
      "such as the authors' model_best.pth";
  if (std::memcmp(magic, "PK\x03\x04", 4) == 0) {
    // Both are zip archives with a pickle: ours is a dict holding the run's config and
    // vocabulary next to the weights; its keys appear verbatim in the (small) pickle. Read with
    // ihn::io's ZipReader (sizes checked against the file, CRC verified), never with miniz.
    std::string pickle;
    try {
      ihn::io::ZipReader zip(ihn::io::ByteSource::file(path));
      if (!zip.has("data.pkl")) throw TrainError(neither + " (a zip without data.pkl)");
      pickle = zip.read("data.pkl", ihn::io::kMaxPickleBytes);
    } catch (const TrainError&) {
      throw;
    } catch (const std::exception& e) {
      // A checkpoint cut short (a full disk, a copy interrupted) is still recognisably a zip.
      throw TrainError(std::string(e.what()).substr(0, 300) +
                       " (a checkpoint that is truncated or corrupt: copy or train it again)");
    }
    const bool ours = pickle.find("config.json") != std::string::npos &&
                      pickle.find("vocab.json") != std::string::npos;
    return ours ? CheckpointFormat::ihn : CheckpointFormat::pytorch;
  }
  if (magic[0] == 0x80) return CheckpointFormat::pytorch;  // legacy torch.save: a pickle
  throw TrainError(neither);
}

Architecture detect_architecture(const ShapeMap& shapes, const std::string& file) {
  const Keys keys(shapes, file, "authors'");
  if (keys.has("encoder_decoder.memory_matrix")) {
    const bool ithn = keys.has_prefix("img_projection.") || keys.has_prefix("text_projection.") ||
                      keys.has("temp_1") || keys.has("temp_3");
    return ithn ? Architecture::ithn : Architecture::r2gencmn;
  }
  if (keys.has_prefix("encoder_decoder.model.rm.")) return Architecture::r2gen;
  std::string first;
  for (size_t i = 0; i < shapes.size() && i < 3; ++i) first += (i ? ", " : "") + shapes[i].first;
  throw TrainError(file + ": the state_dict (" + std::to_string(shapes.size()) +
                   " entries, first: " + (first.empty() ? "none" : first) +
                   ") is none of R2Gen (encoder_decoder.model.rm.*), R2GenCMN "
                   "(encoder_decoder.memory_matrix) or ITHN (R2GenCMN plus img_projection, "
                   "text_projection, temp_1, temp_3)");
}

AuthorsConfig infer_config(const ShapeMap& shapes, const std::string& file,
                           const Overrides& overrides) {
  AuthorsConfig c;
  c.architecture = detect_architecture(shapes, file);
  const Keys keys(shapes, file, architecture_name(c.architecture));
  c.data_parallel = keys.data_parallel();
  c.visual_depth = resnet_depth(keys);
  const std::string ed = "encoder_decoder.";
  c.d_model = keys.dim(ed + "att_embed.0.weight", 2, 0);
  c.d_vf = keys.dim(ed + "att_embed.0.weight", 2, 1);
  const int channels = static_cast<int>(ihn_toolkit::nn::resnet_out_channels(c.visual_depth));
  if (c.d_vf != channels)
    keys.fail("att_embed takes " + std::to_string(c.d_vf) + " visual channels but its ResNet-" +
              std::to_string(c.visual_depth) + " gives " + std::to_string(channels));
  const std::string layers = ed + "model.encoder.layers.";
  c.num_layers = keys.count_children(layers);
  if (c.num_layers == 0) keys.fail("no encoder layers (" + layers + "0.*)");
  const int decoder_layers = keys.count_children(ed + "model.decoder.layers.");
  if (decoder_layers != c.num_layers)
    keys.fail(std::to_string(c.num_layers) + " encoder layers but " +
              std::to_string(decoder_layers) + " decoder layers; the official models share " +
              "num_layers");
  c.d_ff = keys.dim(layers + "0.feed_forward.w_1.weight", 2, 0);
  const int logits = keys.dim(ed + "logit.weight", 2, 0);
  if (logits < 2) keys.fail("encoder_decoder.logit.weight has " + std::to_string(logits) + " rows");
  c.vocab_size = logits - 1;
  const int embeddings = keys.dim(ed + "model.tgt_embed.0.lut.weight", 2, 0);
  if (embeddings != logits)
    keys.fail("the word embedding has " + std::to_string(embeddings) +
              " rows but the logit layer " + std::to_string(logits));
  c.max_positions = keys.dim(ed + "model.tgt_embed.1.pe", 3, 1);
  c.num_heads = head_count(overrides.num_heads, kDefaultNumHeads, &c.num_heads_from_default);
  if (c.d_model % c.num_heads != 0)
    keys.fail("d_model " + std::to_string(c.d_model) + " is not divisible by " +
              std::to_string(c.num_heads) + " heads: give the run's --num-heads");

  if (c.architecture == Architecture::r2gen) {
    // rm.W: Linear(rm_d_model, 2 * rm_d_model); MCLN's mlp_gamma.0: Linear(slots * rm_d, d).
    c.rm_d_model = keys.dim(ed + "model.rm.W.weight", 2, 1);
    const int memory =
        keys.dim(ed + "model.decoder.layers.0.sublayer.0.norm.mlp_gamma.0.weight", 2, 1);
    if (c.rm_d_model <= 0 || memory % c.rm_d_model != 0)
      keys.fail("the conditional layer norm reads " + std::to_string(memory) +
                " memory values, not a multiple of rm_d_model " + std::to_string(c.rm_d_model));
    c.rm_num_slots = memory / c.rm_d_model;
    if (c.rm_d_model != c.d_model)
      keys.fail("the relational memory is " + std::to_string(c.rm_d_model) +
                " wide but d_model is " + std::to_string(c.d_model) +
                "; R2Gen feeds it the token embeddings, so they must agree");
    c.rm_num_heads =
        head_count(overrides.rm_num_heads, kDefaultRmNumHeads, &c.rm_num_heads_from_default);
    if (c.rm_d_model % c.rm_num_heads != 0)
      keys.fail("rm_d_model " + std::to_string(c.rm_d_model) + " is not divisible by " +
                std::to_string(c.rm_num_heads) + " heads: give the run's --rm-num-heads");
  } else {
    c.cmm_size = keys.dim(ed + "memory_matrix", 2, 0);
    c.cmm_dim = keys.dim(ed + "memory_matrix", 2, 1);
    c.topk = head_count(overrides.topk, kDefaultTopk, &c.topk_from_default);
  }
  if (c.architecture == Architecture::ithn) {
    c.ithn_projection_dim = keys.dim("img_projection.linear1.weight", 2, 0);
    c.ithn_image_projection_in = keys.dim("img_projection.linear1.weight", 2, 1);
    for (const char* prefix : {"img_projection.", "text_projection.", "temp_1", "temp_3"})
      for (const auto& key : keys.with_prefix(prefix))
        c.training_only_keys.push_back((c.data_parallel ? kDataParallelPrefix : "") + key);
  }
  return c;
}

int effective_threshold(const Overrides& overrides) {
  if (overrides.threshold > 0) return overrides.threshold;
  return overrides.dataset == "mimic_cxr" ? 10 : 3;
}

int effective_max_seq_length(const Overrides& overrides) {
  if (overrides.max_seq_length > 0) return overrides.max_seq_length;
  return overrides.dataset == "mimic_cxr" ? 100 : 60;
}

TrainConfig to_train_config(const AuthorsConfig& config, const Overrides& overrides,
                            const std::string& ann, const std::string& images) {
  TrainConfig c;
  c.model.architecture = config.architecture == Architecture::r2gen ? "r2gen" : "cmn";
  c.run.preset = "paper";
  c.data.source = "annotation";
  c.data.ann = ann;
  c.data.images = images;
  c.data.dataset = overrides.dataset;
  c.data.threshold = effective_threshold(overrides);
  c.data.max_seq_length = effective_max_seq_length(overrides);
  // R2Gen's test transform: Resize((224, 224)), ToTensor, Normalize(ImageNet mean/std); our
  // eval transform resizes to crop x crop.
  c.data.resize = 224;
  c.data.crop = 224;
  c.model.visual_depth = config.visual_depth;
  c.model.d_model = config.d_model;
  c.model.d_ff = config.d_ff;
  c.model.num_heads = config.num_heads;
  c.model.num_layers = config.num_layers;
  c.model.relational_memory.num_slots = config.rm_num_slots;
  c.model.relational_memory.num_heads = config.rm_num_heads;
  c.model.relational_memory.d_model = config.rm_d_model;
  c.model.cross_modal_memory.topk = config.topk;
  c.model.cross_modal_memory.size = config.cmm_size;
  c.model.cross_modal_memory.dim = config.cmm_dim;
  c.model.max_positions = config.max_positions;
  // Beam size and batch: TrainConfig's defaults, the official scripts' (3, 16).
  c.run.out = "-";
  return c;
}

ihn_toolkit::data::Tokenizer rebuild_vocabulary(const std::string& ann, const Overrides& overrides,
                                                int64_t vocab_size, const std::string& checkpoint) {
  if (ann.empty())
    throw TrainError(checkpoint +
                     ": an authors' checkpoint carries no vocabulary; give --ann with the "
                     "annotation.json it was trained on (R2Gen rebuilds the vocabulary from its "
                     "train split) and --dataset iu_xray|mimic_cxr");
  ihn_toolkit::data::Dataset dataset;
  try {
    dataset = ihn_toolkit::data::parse_dataset(overrides.dataset);
  } catch (const std::exception& e) {
    throw TrainError("--dataset " + overrides.dataset + ": " + e.what());
  }
  ihn_toolkit::data::AnnotationOptions ao;
  ao.dataset = dataset;
  ao.on_bad_entry = ihn_toolkit::data::OnBadEntry::skip;  // only the train reports matter here
  ihn_toolkit::data::Annotation annotation;
  try {
    annotation = ihn_toolkit::data::load_annotation(ann, ao);
  } catch (const std::exception& e) {
    throw TrainError(e.what());
  }
  const int threshold = effective_threshold(overrides);
  auto tokenizer =
      ihn_toolkit::data::Tokenizer::build(annotation.train_reports(), dataset, threshold);
  if (tokenizer.vocab_size() != vocab_size)
    throw TrainError(
        ann + ": the vocabulary rebuilt from its " + std::to_string(annotation.train.size()) +
        " train reports (--dataset " + overrides.dataset + ", threshold " +
        std::to_string(threshold) + ") has " + std::to_string(tokenizer.vocab_size()) +
        " tokens, but " + checkpoint + " was trained with " + std::to_string(vocab_size) +
        " (its logit rows - 1). Give the annotation the checkpoint was trained on, with the "
        "run's --dataset and --threshold (official: iu_xray 3, mimic_cxr 10)");
  return tokenizer;
}

AuthorsCheckpoint read_authors_checkpoint(const std::string& path, const std::string& ann,
                                          const std::string& images, const Overrides& overrides) {
  ihn::io::StateDict state;
  try {
    state = ihn::io::read_state_dict(path);
  } catch (const std::exception& e) {
    throw TrainError(path + ": cannot read it as a PyTorch checkpoint: " + e.what());
  }
  ShapeMap shapes;
  shapes.reserve(state.size());
  for (const auto& [name, tensor] : state) shapes.emplace_back(name, tensor.sizes().vec());
  AuthorsConfig config = infer_config(shapes, path, overrides);
  // ITHN's contrastive heads only shape the training loss; generation does not use them.
  const std::string parallel = "module.";
  auto training_only = [&](const std::pair<std::string, torch::Tensor>& entry) {
    const auto& keys = config.training_only_keys;
    const std::string bare =
        entry.first.rfind(parallel, 0) == 0 ? entry.first.substr(parallel.size()) : entry.first;
    return std::find(keys.begin(), keys.end(), entry.first) != keys.end() ||
           std::find(keys.begin(), keys.end(), bare) != keys.end() ||
           std::find(keys.begin(), keys.end(), parallel + bare) != keys.end();
  };
  state.erase(std::remove_if(state.begin(), state.end(), training_only), state.end());
  auto tokenizer = rebuild_vocabulary(ann, overrides, config.vocab_size, path);
  auto train_config = to_train_config(config, overrides, ann, images);
  return {std::move(config), std::move(train_config), std::move(tokenizer), std::move(state)};
}

ihn::io::LoadReport load_authors_weights(torch::nn::Module& model, ihn::io::StateDict state,
                                         const AuthorsConfig& config, const std::string& path) {
  auto report =
      ihn::io::load_state_dict(model, std::move(state), ihn::io::LoadOptions().strict(false));
  if (!report.ok())
    throw TrainError(path + ": the weights do not fit the " +
                     std::string(architecture_name(config.architecture)) +
                     " model inferred from them: " + report.summary() +
                     " (a checkpoint of modified official code?)");
  model.eval();
  return report;
}

}  // namespace ihn_toolkit::train::authors
