// The pretrained visual extractor (pretrain.hpp): the generator's own ResNet trunk over every
// view, the views' pooled features concatenated, one linear layer to the 14 CheXpert
// observations, binary cross-entropy; Adam; the generator's image transform.
#include "train/pretrain.hpp"

#include <torch/torch.h>

#include <ihn/eval/chexpert.hpp>
#include <ihn/state.hpp>

#include "data/image.hpp"
#include "data/synthetic.hpp"
#include "nn/multiview.hpp"
#include "nn/resnet.hpp"
#include "train/train.hpp"

#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <numeric>
#include <random>
#include <sstream>

namespace ihn_toolkit::train {

namespace fs = std::filesystem;
using json = nlohmann::json;

// The fields that change the weights, in the file and the cache name; the runtime ones (threads,
// layout, printing) are left out.
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(PretrainConfig, visual_depth, views, synth_studies,
                                                synth_seed, synth_image_size, resize, crop, epochs,
                                                batch_size, lr, weight_decay, flip_probability,
                                                seed)

json to_json(const PretrainConfig& c) {
  return json(c);
}

PretrainConfig pretrain_config_from_json(const json& j) {
  return j.get<PretrainConfig>();
}

void validate(const PretrainConfig& c) {
  auto need = [](bool ok, const std::string& what) {
    if (!ok) throw TrainError("pretrain: " + what);
  };
  need(c.visual_depth == 18 || c.visual_depth == 34 || c.visual_depth == 50 ||
           c.visual_depth == 101 || c.visual_depth == 152,
       "--visual-depth must be 18, 34, 50, 101 or 152");
  need(c.views == 1 || c.views == 2, "views must be 1 or 2");
  need(c.synth_studies >= 20, "--studies must be >= 20");
  need(c.synth_image_size >= 32, "--synth-image-size must be >= 32");
  need(c.crop >= 32 && c.resize >= c.crop, "need 32 <= --image-size <= --resize");
  need(c.epochs >= 1, "--epochs must be >= 1");
  need(c.batch_size >= 2, "--batch-size must be >= 2 (batch norm)");
  need(std::isfinite(c.lr) && c.lr > 0, "--lr must be a finite number > 0");
  need(std::isfinite(c.weight_decay) && c.weight_decay >= 0,
       "--weight-decay must be a finite number >= 0");
  need(c.flip_probability >= 0 && c.flip_probability <= 1, "--flip must be between 0 and 1");
}

PretrainConfig pretrain_config_for(const TrainConfig& t) {
  PretrainConfig p;
  p.visual_depth = t.model.visual_depth;
  p.views = views_of(t);
  p.synth_image_size = t.data.synthetic.image_size;
  p.resize = t.data.resize;
  p.crop = t.data.crop;
  p.synth_studies = t.model.pretraining.studies;
  p.synth_seed = t.model.pretraining.seed;
  p.epochs = t.model.pretraining.epochs;
  p.threads = t.run.threads;
  p.channels_last = t.run.channels_last;
  return p;
}

std::string pretrain_cache_name(const PretrainConfig& c) {
  std::ostringstream o;
  o << "visual_r" << c.visual_depth << "_v" << c.views << "_" << c.synth_image_size << "px_c"
    << c.crop << "_r" << c.resize << "_s" << c.synth_seed << "_n" << c.synth_studies << "_e"
    << c.epochs << "_b" << c.batch_size << "_lr" << c.lr << "_wd" << c.weight_decay << "_flip"
    << c.flip_probability << "_seed" << c.seed << ".pt";
  return o.str();
}

std::string pretrain_cache_path(const TrainConfig& t) {
  return (fs::path(t.model.pretraining.dir) / pretrain_cache_name(pretrain_config_for(t))).string();
}

namespace {

/// Area under the ROC curve by ranks (ties get their mean rank); NaN with one class only.
double roc_auc(const std::vector<float>& scores, const std::vector<int>& labels) {
  const size_t n = scores.size();
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), size_t{0});
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return scores[a] < scores[b]; });
  std::vector<double> rank(n);
  for (size_t i = 0; i < n;) {
    size_t j = i;
    while (j + 1 < n && scores[order[j + 1]] == scores[order[i]]) ++j;
    for (size_t k = i; k <= j; ++k) rank[order[k]] = (static_cast<double>(i + j) / 2.0) + 1.0;
    i = j + 1;
  }
  double positives = 0, rank_sum = 0;
  for (size_t i = 0; i < n; ++i)
    if (labels[i]) {
      positives += 1;
      rank_sum += rank[i];
    }
  const double negatives = static_cast<double>(n) - positives;
  if (positives == 0 || negatives == 0) return std::nan("");
  return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives);
}

struct Classifier {
  nn::VisualExtractor extractor;
  torch::nn::Linear head;
  torch::Tensor logits(const torch::Tensor& images) {  // (B, V, 3, H, W)
    return head->forward(nn::multiview_features(*extractor, images, "pretrain").second);
  }
};

/// (B, V, 3, H, W) images and (B, 14) float labels of `studies[idx]`.
std::pair<torch::Tensor, torch::Tensor> make_batch(
    const std::vector<ihn_toolkit::data::SyntheticStudy>& studies, const std::vector<size_t>& idx,
    const ihn_toolkit::data::ImageTransform& transform, int views, uint64_t seed, int64_t epoch) {
  std::vector<torch::Tensor> images, labels;
  for (size_t i : idx) {
    const auto& s = studies[i];
    std::mt19937_64 rng(ihn_toolkit::data::sample_seed(seed, epoch, i));
    std::vector<torch::Tensor> v = {transform(ihn_toolkit::data::to_rgb(s.frontal), rng)};
    if (views == 2) v.push_back(transform(ihn_toolkit::data::to_rgb(s.lateral), rng));
    images.push_back(torch::stack(v));
    std::vector<float> l(s.chexpert.begin(), s.chexpert.end());
    labels.push_back(torch::tensor(l));
  }
  return {torch::stack(images), torch::stack(labels)};
}

json held_out_metrics(Classifier& model,
                      const std::vector<ihn_toolkit::data::SyntheticStudy>& studies,
                      const std::vector<size_t>& test,
                      const ihn_toolkit::data::ImageTransform& transform, int views) {
  torch::NoGradGuard no_grad;
  model.extractor->eval();
  std::vector<std::vector<float>> scores(ihn::eval::kNumObservations);
  std::vector<std::vector<int>> truth(ihn::eval::kNumObservations);
  for (size_t start = 0; start < test.size(); start += 64) {
    std::vector<size_t> idx(
        test.begin() + static_cast<std::ptrdiff_t>(start),
        test.begin() + static_cast<std::ptrdiff_t>(std::min(test.size(), start + 64)));
    auto [images, labels] = make_batch(studies, idx, transform, views, 0, 0);
    auto p = torch::sigmoid(model.logits(images)).contiguous();
    for (size_t b = 0; b < idx.size(); ++b)
      for (int o = 0; o < ihn::eval::kNumObservations; ++o) {
        scores[o].push_back(p[static_cast<int64_t>(b)][o].item<float>());
        truth[o].push_back(studies[idx[b]].chexpert[static_cast<size_t>(o)]);
      }
  }
  json per = json::object();
  double auc_sum = 0, f1_sum = 0;
  int auc_n = 0;
  for (int o = 0; o < ihn::eval::kNumObservations; ++o) {
    const double auc = roc_auc(scores[o], truth[o]);
    long long tp = 0, fp = 0, fn = 0;
    for (size_t i = 0; i < scores[o].size(); ++i) {
      const bool h = scores[o][i] >= 0.5f, r = truth[o][i] != 0;
      tp += h && r;
      fp += h && !r;
      fn += !h && r;
    }
    const double f1 = tp ? 2.0 * tp / static_cast<double>(2 * tp + fp + fn) : 0.0;
    f1_sum += f1;
    if (!std::isnan(auc)) {
      auc_sum += auc;
      ++auc_n;
    }
    per[ihn::eval::kObservations[static_cast<size_t>(o)]] = {
        {"auc", std::isnan(auc) ? json(nullptr) : json(auc)}, {"f1", f1}};
  }
  return {{"studies", test.size()},
          {"mean_auc", auc_n ? auc_sum / auc_n : 0.0},
          {"macro_f1_at_0.5", f1_sum / ihn::eval::kNumObservations},
          {"per_observation", per}};
}

/// One epoch of the multi-label classifier on the training studies, in a seeded order.
void train_epoch(Classifier& model, torch::optim::Adam& adam,
                 const std::vector<ihn_toolkit::data::SyntheticStudy>& studies,
                 const std::vector<size_t>& train_idx,
                 const ihn_toolkit::data::ImageTransform& transform, const PretrainConfig& c,
                 int epoch, std::mt19937_64& order_rng) {
  model.extractor->train();
  std::vector<size_t> order = train_idx;
  std::shuffle(order.begin(), order.end(), order_rng);
  double loss_sum = 0;
  int steps = 0;
  const auto te = std::chrono::steady_clock::now();
  // Drop a last batch of one: batch norm cannot train on a single image.
  for (size_t start = 0; start + 1 < order.size(); start += static_cast<size_t>(c.batch_size)) {
    std::vector<size_t> idx(
        order.begin() + static_cast<std::ptrdiff_t>(start),
        order.begin() + static_cast<std::ptrdiff_t>(
                            std::min(order.size(), start + static_cast<size_t>(c.batch_size))));
    auto [images, labels] = make_batch(studies, idx, transform, c.views, c.seed, epoch);
    auto loss = torch::binary_cross_entropy_with_logits(model.logits(images), labels);
    adam.zero_grad();
    loss.backward();
    adam.step();
    loss_sum += loss.item<double>();
    ++steps;
  }
  if (c.quiet) return;
  fmt::print("{}pretrain epoch {}/{}  loss {:.4f}  {:.0f} s\n",
             c.label.empty() ? "" : c.label + " ", epoch, c.epochs, loss_sum / std::max(steps, 1),
             std::chrono::duration<double>(std::chrono::steady_clock::now() - te).count());
  std::fflush(stdout);
}

/// The extractor under the generator's own names, the head, and the config and metrics.
void save_pretrained(const Classifier& model, const PretrainConfig& c, const json& metrics,
                     const std::string& path) {
  ihn::StateDict state;
  for (const auto& p : model.extractor->named_parameters())
    state["visual_extractor." + p.key()] = p.value().detach().contiguous();
  for (const auto& b : model.extractor->named_buffers())
    state["visual_extractor." + b.key()] = b.value().detach().contiguous();
  for (const auto& p : model.head->named_parameters())
    state["classifier." + p.key()] = p.value().detach();
  const std::string info = json{{"config", to_json(c)}, {"metrics", metrics}}.dump();
  state["pretrain.json"] = torch::from_blob(const_cast<char*>(info.data()),
                                            {static_cast<int64_t>(info.size())}, torch::kUInt8)
                               .clone();
  if (!fs::path(path).parent_path().empty()) fs::create_directories(fs::path(path).parent_path());
  try {
    ihn::save_state(state, path);
  } catch (const std::exception& e) {
    throw TrainError(std::string("pretrain: ") + e.what());
  }
}

}  // namespace

PretrainResult pretrain_visual_extractor(const PretrainConfig& c, const std::string& path) {
  validate(c);
  const auto t0 = std::chrono::steady_clock::now();
  if (c.threads > 0) at::set_num_threads(c.threads);
  const std::string label = c.label.empty() ? "" : c.label + " ";
  ihn_toolkit::data::SyntheticOptions so;
  so.studies = c.synth_studies;
  so.seed = c.synth_seed;
  so.image_size = c.synth_image_size;
  so.validate();
  const auto studies = ihn_toolkit::data::generate_synthetic(so);
  // The set's own train and val splits train; its test split measures (nothing is selected on
  // it, so it is an honest held-out figure).
  std::vector<size_t> train_idx, test_idx;
  for (size_t i = 0; i < studies.size(); ++i)
    (studies[i].study.split == "test" ? test_idx : train_idx).push_back(i);

  torch::manual_seed(c.seed);
  Classifier model{nn::VisualExtractor(nn::VisualExtractorOptions().depth(c.visual_depth)),
                   torch::nn::Linear(c.views * nn::resnet_out_channels(c.visual_depth),
                                     ihn::eval::kNumObservations)};
  if (c.channels_last) nn::to_channels_last(*model.extractor);
  std::vector<torch::Tensor> params = model.extractor->parameters();
  for (const auto& p : model.head->parameters()) params.push_back(p);
  torch::optim::Adam adam(params, torch::optim::AdamOptions(c.lr).weight_decay(c.weight_decay));

  ihn_toolkit::data::TransformOptions train_t = ihn_toolkit::data::TransformOptions::r2gen_train();
  train_t.resize = c.resize;
  train_t.crop = c.crop;
  train_t.flip_probability = c.flip_probability;
  ihn_toolkit::data::TransformOptions eval_t = ihn_toolkit::data::TransformOptions::r2gen_eval();
  eval_t.resize = eval_t.crop = c.crop;
  const ihn_toolkit::data::ImageTransform train_transform(train_t), eval_transform(eval_t);

  if (!c.quiet)
    fmt::print(
        "{}pretrain: ResNet-{} on {} labelled synthetic studies (seed {}, {} px, {} view(s)), "
        "{} epochs, 14 observations; held out {}\n",
        label, c.visual_depth, train_idx.size(), c.synth_seed, c.crop, c.views, c.epochs,
        test_idx.size());
  std::mt19937_64 order_rng(c.seed);
  for (int epoch = 1; epoch <= c.epochs; ++epoch)
    train_epoch(model, adam, studies, train_idx, train_transform, c, epoch, order_rng);
  PretrainResult r;
  r.metrics = held_out_metrics(model, studies, test_idx, eval_transform, c.views);

  save_pretrained(model, c, r.metrics, path);
  r.path = path;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!c.quiet) {
    fmt::print(
        "{}pretrain: held-out mean AUC {:.3f}, macro F1 {:.3f} at 0.5 ({} studies); {} ({:.0f} "
        "s)\n",
        label, r.metrics["mean_auc"].get<double>(), r.metrics["macro_f1_at_0.5"].get<double>(),
        test_idx.size(), path, r.seconds);
    std::fflush(stdout);
  }
  return r;
}

json read_pretrain_info(const std::string& path) {
  ihn::StateDict state;
  try {
    state = ihn::load_state(path);
  } catch (const std::exception& e) {
    throw TrainError(e.what());
  }
  auto it = state.find("pretrain.json");
  if (it == state.end())
    throw TrainError(path + ": no pretrain.json entry (not written by `ihn pretrain`)");
  const auto bytes = it->second.contiguous();
  const std::string text(reinterpret_cast<const char*>(bytes.data_ptr<uint8_t>()),
                         static_cast<size_t>(bytes.numel()));
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    throw TrainError(path + ": pretrain.json is not valid JSON (" + e.what() + ")");
  }
}

json load_pretrained_extractor(torch::nn::Module& extractor, const std::string& path) {
  const json info = read_pretrain_info(path);
  const ihn::StateDict state = ihn::load_state(path);
  torch::NoGradGuard no_grad;
  auto copy = [&](const std::string& name, torch::Tensor& target) {
    auto it = state.find("visual_extractor." + name);
    if (it == state.end())
      throw TrainError(path + ": no weights for 'visual_extractor." + name +
                       "' (pretrained with another depth? its config: " + info.at("config").dump() +
                       ")");
    if (it->second.sizes() != target.sizes())
      throw TrainError(path + ": 'visual_extractor." + name + "' has shape " +
                       c10::str(it->second.sizes()) + ", the model expects " +
                       c10::str(target.sizes()) + " (its config: " + info.at("config").dump() +
                       ")");
    target.copy_(it->second);
  };
  for (auto& p : extractor.named_parameters()) copy(p.key(), p.value());
  for (auto& b : extractor.named_buffers()) copy(b.key(), b.value());
  return info;
}

PretrainResult ensure_pretrained(const PretrainConfig& c, const std::string& path) {
  if (fs::exists(path)) {
    const json info = read_pretrain_info(path);
    if (info.at("config") == to_json(c)) {
      PretrainResult r;
      r.path = path;
      r.reused = true;
      r.metrics = info.at("metrics");
      return r;
    }
    throw TrainError(path + ": holds a pretraining of another configuration (" +
                     info.at("config").dump() + "); remove it or choose another --pretrain-dir");
  }
  return pretrain_visual_extractor(c, path);
}

}  // namespace ihn_toolkit::train
