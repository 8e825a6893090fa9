// What training (train.cpp) and evaluation (evaluate.cpp) share: the run's data, checkpoints
// and the models they hold, and decoding a split. Internal to toolkit/train; needs LibTorch.
#pragma once

#include <torch/torch.h>

#include "train/authors_checkpoint.hpp"
#include "train/internal.hpp"
#include "train/models.hpp"
#include "train/train.hpp"

#include <ihn/state.hpp>

#include "data/annotation.hpp"
#include "data/loader.hpp"
#include "data/negatives.hpp"
#include "data/synthetic.hpp"
#include "data/tokenizer.hpp"
#include "nn/generator.hpp"
#include "nn/precision.hpp"

#include <fmt/core.h>
#include <Eigen/Dense>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

namespace ihn_toolkit::train {
namespace fs = std::filesystem;
using json = nlohmann::json;
}  // namespace ihn_toolkit::train

/// Used by train.cpp and evaluate.cpp through `using namespace session`.
namespace ihn_toolkit::train::session {

struct RunData {
  ihn_toolkit::data::Tokenizer tokenizer;
  std::unique_ptr<ihn_toolkit::data::ReportDataset> train, val, test;
  std::unordered_map<std::string, int64_t> train_index;  // study id -> training-set index
  std::vector<std::string> train_keys;                   // cleaned report per training index
  int64_t views = 2;
};

inline ihn_toolkit::data::SyntheticOptions synthetic_options_of(const TrainConfig& c) {
  ihn_toolkit::data::SyntheticOptions so;
  so.studies = c.data.synthetic.studies;
  so.seed = c.data.synthetic.seed;
  so.image_size = c.data.synthetic.image_size;
  so.val_fraction = c.data.synthetic.val_fraction;
  so.test_fraction = c.data.synthetic.test_fraction;
  so.normal_fraction = c.data.synthetic.normal_fraction;
  so.validate();
  return so;
}

inline RunData build_data(const TrainConfig& c) {
  namespace d = ihn_toolkit::data;
  d::R2GenDataOptions o;
  o.threshold = c.data.threshold;
  o.max_seq_length = static_cast<size_t>(c.data.max_seq_length);
  o.seed = c.optim.seed;
  o.train_transform = d::TransformOptions::r2gen_train();
  o.train_transform.resize = c.data.resize;
  o.train_transform.crop = c.data.crop;
  o.eval_transform = d::TransformOptions::r2gen_eval();
  o.eval_transform.resize = c.data.crop;
  o.eval_transform.crop = c.data.crop;
  std::optional<d::R2GenData> made;
  if (c.data.source == "synth") {
    const auto studies = d::generate_synthetic(synthetic_options_of(c));
    made.emplace(d::make_r2gen_data(d::to_annotation(studies), d::images_by_split(studies), o));
  } else {
    d::AnnotationOptions ao;
    ao.dataset = d::parse_dataset(c.data.dataset);
    ao.image_root = c.data.images;
    ao.on_bad_entry = c.data.skip_bad ? d::OnBadEntry::skip : d::OnBadEntry::fail;
    d::Annotation ann;
    try {
      ann = d::load_annotation(c.data.ann, ao);
    } catch (const std::exception& e) {
      throw TrainError(e.what());
    }
    if (!ann.problems.empty() && !c.run.quiet) fmt::print("{}\n", ann.summary());
    made.emplace(d::make_r2gen_data(ann, c.data.images, o));
  }
  RunData r{made->tokenizer, std::make_unique<d::ReportDataset>(made->train),
            std::make_unique<d::ReportDataset>(made->val),
            std::make_unique<d::ReportDataset>(made->test)};
  const size_t n = *r.train->size();
  for (size_t i = 0; i < n; ++i) {
    r.train_index.emplace(r.train->study(i).id, static_cast<int64_t>(i));
    r.train_keys.push_back(r.tokenizer.clean(r.train->study(i).report));
  }
  r.views = views_of(c);
  return r;
}

/// The first `views` views of a batch (B, V, 3, H, W): the loader yields every view the data
/// set has; the single-view protocol keeps the frontal one (image_path[0]).
inline at::Tensor select_views(const at::Tensor& images, int64_t views) {
  return images.size(1) > views ? images.narrow(1, 0, views) : images;
}

/// "synth:studies=N,seed=S" or the annotation path: the source `ihn data negatives` records.
inline std::string data_source(const TrainConfig& c) {
  return c.data.source == "synth" ? "synth:studies=" + std::to_string(c.data.synthetic.studies) +
                                        ",seed=" + std::to_string(c.data.synthetic.seed)
                                  : c.data.ann;
}

/// Training index -> training index of its offline negative (--ihn official), from
/// --negatives-file or mined at start-up with the same code as `ihn data negatives`.
inline std::vector<int64_t> official_negatives(const TrainConfig& c, const RunData& data,
                                               std::string* description) {
  std::vector<ihn_toolkit::data::Study> studies;
  const size_t n = *data.train->size();
  for (size_t i = 0; i < n; ++i) studies.push_back(data.train->study(i));
  ihn_toolkit::data::Negatives negatives;
  std::string where = c.ihn.negatives_file;
  const auto t0 = std::chrono::steady_clock::now();
  try {
    if (c.ihn.negatives_file.empty()) {
      negatives = ihn_toolkit::data::mine_negatives(
          studies, ihn_toolkit::data::parse_dataset(c.data.dataset), data_source(c));
      where = "mined at start-up";
    } else {
      negatives = ihn_toolkit::data::load_negatives(c.ihn.negatives_file);
    }
  } catch (const ihn_toolkit::data::NegativesError& e) {
    throw TrainError(e.what());
  }
  const auto map = negatives.by_id();
  std::vector<int64_t> out(n);
  double mean = 0;
  for (size_t i = 0; i < n; ++i) {
    const auto& id = studies[i].id;
    auto it = map.find(id);
    if (it == map.end())
      throw TrainError(where + ": no negative for training study '" + id +
                       "' (written for another data set? rerun `ihn data negatives` on this one)");
    auto neg = data.train_index.find(it->second);
    if (neg == data.train_index.end())
      throw TrainError(where + ": the negative '" + it->second + "' of '" + id +
                       "' is not a training study of this data set");
    out[i] = neg->second;
  }
  for (double s : negatives.similarity) mean += s;
  mean /= std::max<size_t>(negatives.similarity.size(), 1);
  if (description)
    *description =
        fmt::format("{} ({}, mean TF-IDF cosine {:.3f}, {:.2f} s)", where, negatives.method, mean,
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  return out;
}

inline at::Tensor bytes_tensor(const std::string& s) {
  auto t = torch::empty({static_cast<int64_t>(s.size())}, torch::kUInt8);
  if (!s.empty()) std::memcpy(t.data_ptr(), s.data(), s.size());
  return t;
}
inline std::string tensor_bytes(const at::Tensor& t) {
  auto c = t.contiguous().to(torch::kCPU);
  return std::string(static_cast<const char*>(c.data_ptr()), static_cast<size_t>(c.numel()));
}
inline at::Tensor scalar_tensor(double v) {
  return torch::tensor({v}, torch::kFloat64);
}
inline double tensor_scalar(const ihn::StateDict& s, const std::string& key,
                            const std::string& file) {
  auto it = s.find(key);
  if (it == s.end())
    throw TrainError(file + ": no entry '" + key + "' (not an ihn train checkpoint)");
  return it->second.to(torch::kFloat64).item<double>();
}

inline void put_model(ihn::StateDict& s, torch::nn::Module& model) {
  for (const auto& p : model.named_parameters()) s["model." + p.key()] = p.value().detach();
  for (const auto& b : model.named_buffers()) s["model." + b.key()] = b.value().detach();
}

inline void load_model(torch::nn::Module& model, const ihn::StateDict& s, const std::string& file) {
  torch::NoGradGuard no_grad;
  auto copy = [&](const std::string& name, at::Tensor& target) {
    auto it = s.find("model." + name);
    if (it == s.end())
      throw TrainError(file + ": no weights for '" + name +
                       "' (checkpoint of a different model/config?)");
    if (it->second.sizes() != target.sizes())
      throw TrainError(file + ": '" + name + "' has shape " + std::to_string(it->second.numel()) +
                       " elements, the model expects " + std::to_string(target.numel()) +
                       " (vocabulary or config differ from the checkpoint's)");
    target.copy_(it->second);
  };
  for (auto& p : model.named_parameters()) copy(p.key(), p.value());
  for (auto& b : model.named_buffers()) copy(b.key(), b.value());
}

inline std::string optimizer_bytes(torch::optim::Optimizer& optimizer) {
  torch::serialize::OutputArchive archive;
  optimizer.save(archive);
  std::ostringstream os;
  archive.save_to(os);
  return os.str();
}
inline void load_optimizer(torch::optim::Optimizer& optimizer, const std::string& bytes,
                           torch::Device device) {
  torch::serialize::InputArchive archive;
  std::istringstream is(bytes);
  archive.load_from(is, device);  // Adam's moments live where the parameters do
  optimizer.load(archive);
}

struct Checkpoint {
  ihn::StateDict state;
  TrainConfig config;
  ihn_toolkit::data::Tokenizer tokenizer;
};

inline Checkpoint read_checkpoint(const std::string& path) {
  if (!fs::exists(path))
    throw TrainError(path +
                     ": checkpoint not found (train one with `ihn train --out RUN`; "
                     "then use RUN/best.pt)");
  ihn::StateDict s;
  try {
    s = ihn::load_state(path);
  } catch (const std::exception& e) {
    throw TrainError(std::string(e.what()) + " (pass a best.pt/last.pt written by ihn train)");
  }
  auto config_it = s.find("config.json");
  auto vocab_it = s.find("vocab.json");
  if (config_it == s.end() || vocab_it == s.end())
    throw TrainError(path + ": not an ihn train checkpoint (no config/vocabulary entries)");
  TrainConfig c;
  try {
    c = config_from_json(json::parse(tensor_bytes(config_it->second)));
    // Before any model is built from it: a zero head count divides by zero inside LibTorch.
    validate_recipe(c);
  } catch (const std::exception& e) {
    throw TrainError(path + ": the run config stored in the checkpoint is invalid: " + e.what());
  }
  auto tok = [&] {
    try {
      return ihn_toolkit::data::Tokenizer::from_json(tensor_bytes(vocab_it->second));
    } catch (const std::exception& e) {
      throw TrainError(path + ": the vocabulary stored in the checkpoint is invalid: " + e.what());
    }
  }();
  return {std::move(s), std::move(c), std::move(tok)};
}

/// A checkpoint's run config, vocabulary and loaded model, from a checkpoint written by ihn train
/// or from an authors' .pth of the official code (authors_checkpoint.hpp; told apart by content,
/// `ann` rebuilds its vocabulary).
template <class Model>
struct LoadedCheckpoint {
  TrainConfig config;
  ihn_toolkit::data::Tokenizer tokenizer;
  Model model;
  bool authors = false;
};

/// Loads `path` and calls fn(traits, LoadedCheckpoint<Traits::Model>) for the model it holds.
template <class F>
decltype(auto) with_checkpoint_model(const std::string& path, const std::string& ann,
                                     const std::string& images,
                                     const AuthorsCheckpointOptions& authors_options, F&& fn) {
  if (authors::sniff_checkpoint(path) == authors::CheckpointFormat::pytorch) {
    auto a = authors::read_authors_checkpoint(path, ann, images, authors_options);
    return dispatch_model(a.train_config.model.architecture, [&](auto traits) {
      using Traits = decltype(traits);
      typename Traits::Model model(Traits::options(
          a.train_config.model, a.train_config.data.max_seq_length, a.tokenizer.vocab_size()));
      authors::load_authors_weights(*model, std::move(a.state), a.config, path);
      return fn(traits,
                LoadedCheckpoint<typename Traits::Model>{a.train_config, a.tokenizer, model, true});
    });
  }
  auto ck = read_checkpoint(path);
  return dispatch_model(ck.config.model.architecture, [&](auto traits) {
    using Traits = decltype(traits);
    typename Traits::Model model(
        Traits::options(ck.config.model, ck.config.data.max_seq_length, ck.tokenizer.vocab_size()));
    load_model(*model, ck.state, path);
    return fn(traits,
              LoadedCheckpoint<typename Traits::Model>{ck.config, ck.tokenizer, model, false});
  });
}

/// Moves the model to `device` and, on the CPU with `channels_last` (the default), stores the
/// ResNet's weights channels-last so that the trunk runs NHWC: oneDNN's convolutions then need no
/// layout reorder of every activation (docs/performance.md). The values are the same.
template <class Model>
void place_model(Model& model, const TrainConfig& c, const torch::Device& device) {
  model->to(device);
  if (c.run.channels_last && device.is_cpu()) nn::to_channels_last(*model->visual_extractor);
}

inline torch::Device parse_device(const std::string& name) {
  torch::Device device(name);
  if (device.is_cuda() && !torch::cuda::is_available())
    throw TrainError("--device " + name +
                     ": CUDA is not available in this LibTorch build or machine (use cpu)");
  return device;
}

inline std::vector<int64_t> row_ids(const at::Tensor& seq_row) {
  auto r = seq_row.to(torch::kCPU).contiguous();
  const int64_t* p = r.data_ptr<int64_t>();
  return std::vector<int64_t>(p, p + r.numel());
}

struct Decoded {
  std::vector<std::string> ids, hypotheses, references;
  std::vector<std::vector<float>> image_features, report_features;
};

inline constexpr int kDecodeBatch = 64;

/// --report-features text: the masked mean of R2Gen's decoder states from a pass without the
/// image.
inline at::Tensor text_report_features(r2gen::R2GenModel& model, const at::Tensor& ids,
                                       const at::Tensor& masks) {
  return nn::masked_mean(model->encoder_decoder->text_only_decoder_states(ids),
                         nn::decoder_input_mask(ids, masks));
}

/// Beam-searches every study of `dataset` (with a shard: this rank's block of it); with
/// `features`, also the teacher-forced image and report features for retrieval.
template <class Model>
Decoded decode_split(Model& model, const ihn_toolkit::data::ReportDataset& dataset,
                     const ihn_toolkit::data::Tokenizer& tok, const TrainConfig& c, int beam_size,
                     torch::Device device, bool features,
                     const ihn_toolkit::data::Shard& shard = {}) {
  torch::NoGradGuard no_grad;
  model->eval();
  Decoded out;
  ihn_toolkit::data::ReportLoaderOptions lo;
  // Decoding has no batch-norm statistics or gradients to keep small: wide batches amortise the
  // per-token work of beam search over more studies (each study's beams are its own).
  lo.batch_size = static_cast<size_t>(std::max(c.optim.batch_size, kDecodeBatch));
  lo.shard = shard;
  auto loader = ihn_toolkit::data::make_report_loader(dataset, lo);
  size_t index = *dataset.size() * shard.rank / shard.world_size;  // the block's first study
  // Decoding in the run's precision (a float32 run decodes exactly as before); an fp16 (CUDA)
  // checkpoint decodes on the CPU in float32.
  auto precision = nn::parse_precision(c.optim.precision);
  if (precision == nn::Precision::fp16 && device.is_cpu()) precision = nn::Precision::fp32;
  const nn::AutocastGuard autocast(precision, device.type());
  for (auto& batch : *loader) {
    auto images = select_views(batch.images, views_of(c)).to(device);
    auto result = model->beam_search(
        images, nn::BeamSearchOptions().beam_size(beam_size).max_length(c.data.max_seq_length));
    for (int64_t b = 0; b < result.seq.size(0); ++b, ++index) {
      out.ids.push_back(batch.ids[b]);
      out.hypotheses.push_back(tok.decode(row_ids(result.seq[b])));
      out.references.push_back(
          tok.round_trip(dataset.study(index).report, static_cast<size_t>(c.data.max_seq_length)));
    }
    if (features) {
      auto fwd =
          model->forward(images, batch.reports_ids.to(device), batch.reports_masks.to(device));
      auto add = [](std::vector<std::vector<float>>& rows, const at::Tensor& t) {
        auto f = t.to(torch::kCPU, torch::kFloat32).contiguous();
        for (int64_t b = 0; b < f.size(0); ++b) {
          const float* p = f[b].data_ptr<float>();
          rows.emplace_back(p, p + f.size(1));
        }
      };
      add(out.image_features, fwd.image_features);
      if constexpr (std::is_same_v<Model, r2gen::R2GenModel>) {
        add(out.report_features, c.ihn.report_features == "text"
                                     ? text_report_features(model, batch.reports_ids.to(device),
                                                            batch.reports_masks.to(device))
                                     : fwd.report_features);
      } else {
        add(out.report_features, fwd.report_features);
      }
    }
  }
  return out;
}

inline Eigen::MatrixXd to_matrix(const std::vector<std::vector<float>>& rows) {
  Eigen::MatrixXd m(static_cast<Eigen::Index>(rows.size()),
                    rows.empty() ? 0 : static_cast<Eigen::Index>(rows[0].size()));
  for (size_t i = 0; i < rows.size(); ++i)
    for (size_t j = 0; j < rows[i].size(); ++j) m(i, j) = rows[i][j];
  return m;
}

inline void write_reports(const std::string& path, const Decoded& d) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream out(path);
  if (!out) throw TrainError("cannot write " + path);
  for (size_t i = 0; i < d.ids.size(); ++i)
    out << json{{"id", d.ids[i]}, {"report", d.hypotheses[i]}, {"reference", d.references[i]}}
               .dump()
        << "\n";
  out.close();
  if (out.fail()) throw TrainError("writing " + path + " failed (disk full?)");
}

/// The checkpoint's config as evaluation runs it: another annotation or precision when asked,
/// and no pretraining (the checkpoint holds the extractor's weights). evaluate.cpp.
TrainConfig evaluation_config(const EvaluateOptions& options, TrainConfig c);

/// evaluate_checkpoint's result for a decoded split (with features): the metrics with their
/// bootstrap intervals, retrieval, each study's closest reports, the config `c` and provenance;
/// writes options.reports_out when set. evaluate.cpp.
json score_decoded(const EvaluateOptions& options, const TrainConfig& c, const Decoded& dec,
                   int beam);

inline std::string format_score(double value) {
  return fmt::format("{:.4f}", value);
}

inline std::string format_duration(double seconds) {
  const int s = static_cast<int>(std::lround(std::max(0.0, seconds)));
  return s >= 60 ? fmt::format("{}m{:02}s", s / 60, s % 60) : fmt::format("{}s", s);
}

}  // namespace ihn_toolkit::train::session
