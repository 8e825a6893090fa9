// HardNegativeAugmenter<Model>: increasingly hard negatives for any LibTorch report
// generator, in the user's own training loop, with no new network weights.
//
//   ihn::HardNegativeAugmenter<MyModel> augmenter(model, ihn::Options{}
//       .negatives_per_sample(4).weight(0.1).temperature(0.07)
//       .schedule(ihn::ExponentialHardness{0.01}));
//   augmenter.set_epoch(epoch);                                  // epochs from 1
//   auto out  = model->forward(batch);                           // the user's forward
//   auto loss = out.generation_loss +
//               augmenter.loss(out.image_features, out.report_features, batch.ids, batch.texts);
//   optimizer.zero_grad(); loss.backward(); optimizer.step();    // min step (network)
//   augmenter.step();                                            // one optimiser step done
//
// Each call of loss() (1) refreshes the feature bank with the batch's detached report
// features, (2) starts each sample's K negatives at its closest peer reports (other ids, other
// report keys) — or where the previous visit's max step left them — (3) runs the max step:
// projected gradient ascent of the alignment loss w.r.t. the negatives only, inside a trust
// region whose radius grows with the hardness schedule and never closer to the image than the
// positive report, and (4) returns weight × AlignmentLoss with the negatives detached: the
// min-step term. The negatives live here, not in the model: the optimiser and the model's
// parameter list are unchanged. docs/method.md explains the method and every option.
#pragma once

#include <ihn/alignment_loss.hpp>
#include <ihn/collective.hpp>
#include <ihn/detail/arg.hpp>
#include <ihn/detail/checks.hpp>
#include <ihn/detail/precision.hpp>
#include <ihn/encoder_traits.hpp>
#include <ihn/features.hpp>
#include <ihn/negatives.hpp>
#include <ihn/options.hpp>
#include <ihn/schedule.hpp>
#include <ihn/state.hpp>

#include <torch/types.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace ihn {
inline namespace v0 {

/// Numbers from the last loss() call, for logging.
struct AugmenterStats {
  double alignment_loss = 0;       ///< unweighted min-step alignment loss
  double loss_before_max = 0;      ///< alignment loss with the negatives at their feasible start
  double loss_after_max = 0;       ///< ... after the max step (>= before)
  double positive_similarity = 0;  ///< mean cos(image, own report)
  double negative_similarity = 0;  ///< mean cos(image, hard negative) over used slots
  double hardness = 0;
  double radius = 0;
  int64_t used_negatives = 0;  ///< slots filled (B x K at most)
};

template <class Model>
class HardNegativeAugmenter {
 public:
  HardNegativeAugmenter(Model& model, Options options = {})
      : model_(&model),
        options_(std::move(options)),
        loss_(AlignmentLossOptions{}
                  .kind(options_.loss_kind())
                  .temperature(options_.temperature())
                  .hinge_margin(options_.hinge_margin())),
        bank_(options_.storage()),
        negatives_(options_.storage()),
        rng_(options_.seed()) {
    constexpr std::string_view where = "ihn::HardNegativeAugmenter";
    if (options_.negatives_per_sample() < 0)
      detail::fail(where, "negatives_per_sample must be >= 0");
    if (!(options_.weight() >= 0.0)) detail::fail(where, "weight must be >= 0");
    if (options_.ascent_steps() < 0) detail::fail(where, "ascent_steps must be >= 0");
    if (!(options_.step_size() > 0.0)) detail::fail(where, "step_size must be > 0");
    if (!(options_.min_radius() >= 0.0 && options_.min_radius() <= options_.max_radius() &&
          options_.max_radius() <= max_trust_radius))
      detail::fail(where, "need 0 <= min_radius <= max_radius <= sqrt(2)");
    if (!(options_.margin() > 0.0 && options_.margin() < 2.0))
      detail::fail(where,
                   "margin must lie in (0, 2): negatives must stay strictly less "
                   "similar to the image than the positive");
    if (options_.candidate_pool() != 0 &&
        options_.candidate_pool() < options_.negatives_per_sample())
      detail::fail(where, "candidate_pool must be 0 or >= negatives_per_sample");
    validate_schedule(options_.schedule());
  }

  const Options& options() const { return options_; }
  Model& model() { return *model_; }
  /// ihn's paper mode adds no network weights.
  static constexpr int64_t added_parameters() { return 0; }

  /// The min-step term for a batch (see the header comment). ids: the samples' training-set
  /// ids (enables the feature bank and persistent negatives; empty = in-batch peers only).
  /// report_keys: text that identifies identical reports (e.g. the cleaned report); samples
  /// with equal keys are never each other's negatives (empty = every sample distinct).
  ///
  /// Inside an autocast region (mixed precision) it computes in float32: reduced-precision
  /// features are converted on entry (gradients flow back in their dtype), see
  /// detail/precision.hpp for why.
  at::Tensor loss(const at::Tensor& image_features_in, const at::Tensor& report_features_in,
                  const std::vector<int64_t>& ids = {},
                  const std::vector<std::string>& report_keys = {}) {
    constexpr std::string_view where = "ihn::HardNegativeAugmenter::loss";
    detail::check_floating(image_features_in, where, "image features");
    detail::check_floating(report_features_in, where, "report features");
    const detail::Float32Region float32_region;
    const at::Tensor image_features = detail::at_least_float32(image_features_in);
    const at::Tensor report_features = detail::at_least_float32(report_features_in);
    detail::check_floating(image_features, where, "image features");
    detail::check_floating(report_features, where, "report features");
    detail::check_dim(image_features, 2, where, "image features", "B x D");
    detail::check_dim(report_features, 2, where, "report features", "B x D");
    if (image_features.sizes() != report_features.sizes())
      detail::fail(where, "image features " + detail::shape_string(image_features) +
                              " and report features " + detail::shape_string(report_features) +
                              " differ in shape (both must be B x D in one space)");
    const int64_t batch = image_features.size(0);
    if (batch == 0) detail::fail(where, "empty batch");
    if (!ids.empty() && static_cast<int64_t>(ids.size()) != batch)
      detail::fail(where,
                   std::to_string(ids.size()) + " ids for a batch of " + std::to_string(batch));
    if (!report_keys.empty() && static_cast<int64_t>(report_keys.size()) != batch)
      detail::fail(where, std::to_string(report_keys.size()) + " report keys for a batch of " +
                              std::to_string(batch));
    detail::check_finite(image_features, where, "image features");
    detail::check_finite(report_features, where, "report features");

    const auto device = report_features.device();
    const int64_t k = options_.negatives_per_sample();
    at::Tensor images = image_features, reports = report_features, key_hashes;
    std::vector<int64_t> batch_ids = ids;
    const int64_t world = distributed() ? options_.process_group()->world_size() : 1;
    if (world > 1) {
      // The global batch: every rank's rows, this rank's own with their gradients.
      auto& group = *options_.process_group();
      const auto layout = detail::row_layout(group, batch, device);
      images = detail::with_local_rows(detail::gather_rows(group, image_features, layout),
                                       image_features, layout.offset);
      reports = detail::with_local_rows(detail::gather_rows(group, report_features, layout),
                                        report_features, layout.offset);
      key_hashes = detail::gather_rows(
          group, make_key_hashes(ids, report_keys, batch, layout.offset).to(device), layout);
      batch_ids = gather_ids(ids, batch, layout, device);
    } else {
      key_hashes = make_key_hashes(ids, report_keys, batch).to(device);
    }
    auto same_report = key_hashes.unsqueeze(1).eq(key_hashes.unsqueeze(0));
    const int64_t pool = options_.candidate_pool() > k ? options_.candidate_pool() : k;

    PeerSelection peers;
    at::Tensor rows;  // bank rows of the batch (ids mode)
    if (!batch_ids.empty() && reserved_ > 0) {
      bank_.reserve(reserved_, reports);
      if (options_.keep_negatives() && k > 0) negatives_.reserve(reserved_, k, reports);
      reserved_ = 0;
    }
    if (!batch_ids.empty()) {
      auto id_tensor = at::tensor(batch_ids, at::kLong);
      bank_.update(id_tensor, reports, key_hashes);
      peers = closest_peers_in_bank(bank_, reports, id_tensor, key_hashes, pool);
      rows = bank_rows(batch_ids).to(device);
    } else {
      peers = closest_peers_in_batch(reports, key_hashes, pool);
    }
    if (pool > k) peers = sample_candidates(peers, k);

    // Warm start: where a sample's peers are the ones it had last time, continue from there.
    auto start = peers.features;
    if (rows.defined() && options_.keep_negatives() && k > 0) {
      negatives_.reserve(bank_.size(), k, reports);
      auto same_peer = negatives_.peers(rows).eq(peers.peer_ids).logical_and(peers.mask);
      start = at::where(same_peer.unsqueeze(-1), negatives_.negatives(rows), start);
    }

    const double hardness = schedule_hardness(options_.schedule(), epoch_, step_);
    const double radius =
        options_.min_radius() + (options_.max_radius() - options_.min_radius()) * hardness;
    at::Tensor negatives = peers.features;
    MaxStepResult max_step;
    if (k > 0) {
      max_step =
          maximise_negatives(loss_, images, reports, peers.features, start, peers.mask, same_report,
                             MaxStepOptions{}
                                 .steps(options_.ascent_steps())
                                 .step_size(options_.step_size())
                                 .radius(radius)
                                 .margin(options_.margin()));
      negatives = max_step.negatives;
      if (rows.defined() && options_.keep_negatives())
        negatives_.put(rows, negatives, peers.peer_ids);
    }
    last_negatives_ = negatives;
    last_mask_ = peers.mask;

    // Min step: the network sees fixed negatives.
    auto alignment = loss_(images, reports, negatives.detach(), peers.mask, same_report);
    record_stats(alignment, max_step, images, reports, negatives, peers.mask, hardness, radius);
    // Each rank's gradient reaches its own rows only; averaged over ranks it must be the
    // global loss's gradient.
    return options_.weight() * detail::scale_gradient(alignment, static_cast<double>(world));
  }

  /// The same, with features taken from the model through ihn::encoder_traits<Model>.
  template <class Batch>
  at::Tensor loss_for(const Batch& batch, const std::vector<int64_t>& ids = {},
                      const std::vector<std::string>& report_keys = {}) {
    return loss(encoder_traits<Model>::image_features(*model_, batch),
                encoder_traits<Model>::report_features(*model_, batch), ids, report_keys);
  }

  /// Call once per optimiser step: advances per-step schedules.
  void step() { ++step_; }
  /// Call at the start of each epoch (epochs count from 1, as the authors count).
  void set_epoch(int64_t epoch) { epoch_ = epoch; }
  int64_t epoch() const { return epoch_; }
  int64_t global_step() const { return step_; }
  double hardness() const { return schedule_hardness(options_.schedule(), epoch_, step_); }

  /// B x K x D negatives of the last batch (detached, unit norm) and their B x K mask.
  const at::Tensor& last_negatives() const { return last_negatives_; }
  const at::Tensor& last_negative_mask() const { return last_mask_; }
  const AugmenterStats& last_stats() const { return stats_; }
  const FeatureBank& bank() const { return bank_; }
  /// Preallocates the bank and the negatives for `reports` training samples (the training
  /// set's size) at the next loss() call, when the feature size and device are known: at
  /// scale this avoids growing multi-gigabyte stores (and their transient copies) during the
  /// first epoch. Results are unchanged.
  void reserve(int64_t reports) {
    if (reports < 0) detail::fail("ihn::HardNegativeAugmenter::reserve", "reports must be >= 0");
    reserved_ = reports;
  }
  /// Bytes the augmenter holds for the training set (bank and negatives, allocated).
  int64_t memory_bytes() const { return bank_.memory_bytes() + negatives_.memory_bytes(); }

  /// Everything needed to continue exactly: bank, negatives, clock, RNG.
  StateDict state_dict() const {
    StateDict state;
    state["clock"] = at::tensor(std::vector<int64_t>{epoch_, step_}, at::kLong);
    state["negatives_per_sample"] =
        at::tensor(std::vector<int64_t>{options_.negatives_per_sample()});
    if (bank_.size()) {
      state["bank.ids"] = bank_.ids().clone();
      state["bank.features"] = bank_.features().cpu().clone();
      state["bank.key_hashes"] = bank_.key_hashes().cpu().clone();
    }
    merge_state(state, "negatives", negatives_.state_dict(bank_.size()));
    std::ostringstream rng_text;
    rng_text << rng_;
    const std::string text = rng_text.str();
    state["rng"] = at::tensor(std::vector<uint8_t>(text.begin(), text.end()), at::kByte);
    return state;
  }

  /// Restores a state_dict(); tensors move to `device` (the model's device).
  void load_state_dict(const StateDict& state, at::Device device = at::kCPU) {
    const std::string owner = "ihn::HardNegativeAugmenter::load_state_dict";
    auto clock = detail::require(state, "clock", owner).to(at::kLong);
    const int64_t saved_k = detail::require(state, "negatives_per_sample", owner).item<int64_t>();
    if (saved_k != options_.negatives_per_sample())
      detail::fail(owner, "state was saved with negatives_per_sample " + std::to_string(saved_k) +
                              ", options say " + std::to_string(options_.negatives_per_sample()));
    epoch_ = clock[0].item<int64_t>();
    step_ = clock[1].item<int64_t>();
    if (state.count("bank.ids")) {
      bank_.assign(state.at("bank.ids"), state.at("bank.features").to(device),
                   state.at("bank.key_hashes"));
    } else {
      bank_.assign({}, {}, {});
    }
    negatives_.load_state_dict(sub_state(state, "negatives"), device);
    auto bytes = detail::require(state, "rng", owner).contiguous();
    std::string text(reinterpret_cast<const char*>(bytes.data_ptr<uint8_t>()),
                     static_cast<size_t>(bytes.numel()));
    std::istringstream in(text);
    in >> rng_;
    if (!in) detail::fail(owner, "corrupt RNG state");
  }

 private:
  bool distributed() const { return options_.process_group() != nullptr; }

  // Every rank's ids in rank order (the global batch's); all ranks give ids or none does.
  std::vector<int64_t> gather_ids(const std::vector<int64_t>& ids, int64_t batch,
                                  const detail::RowLayout& layout, at::Device device) const {
    auto local = ids.empty() ? at::full({batch}, -1, at::kLong) : at::tensor(ids, at::kLong);
    auto all = detail::gather_rows(*options_.process_group(), local.to(device), layout).cpu();
    const bool any_missing = (all < 0).any().item<bool>();
    if (any_missing && !(all < 0).all().item<bool>())
      detail::fail("ihn::HardNegativeAugmenter::loss",
                   "some ranks passed ids and others did not (or an id is negative)");
    if (any_missing) return {};
    return std::vector<int64_t>(all.data_ptr<int64_t>(), all.data_ptr<int64_t>() + all.numel());
  }

  // Hashes of the report keys; without keys, of the ids; without either, of the global row
  // (row_offset: this rank's first row in the global batch).
  at::Tensor make_key_hashes(const std::vector<int64_t>& ids, const std::vector<std::string>& keys,
                             int64_t batch, int64_t row_offset = 0) const {
    std::vector<int64_t> hashes(static_cast<size_t>(batch));
    for (int64_t i = 0; i < batch; ++i) {
      const auto idx = static_cast<size_t>(i);
      if (!keys.empty())
        hashes[idx] = detail::fnv1a64(keys[idx]);
      else if (!ids.empty())  // no keys: every id is its own report
        hashes[idx] = detail::fnv1a64("\x01id:" + std::to_string(ids[idx]));
      else
        hashes[idx] = detail::fnv1a64("\x01row:" + std::to_string(row_offset + i));
    }
    return at::tensor(hashes, at::kLong);
  }

  at::Tensor bank_rows(const std::vector<int64_t>& ids) const {
    std::vector<int64_t> rows;
    rows.reserve(ids.size());
    for (auto id : ids) rows.push_back(bank_.row_of(id));
    return at::tensor(rows, at::kLong);
  }

  /// Keeps K of the pool's valid candidates per sample, at random (own generator), in
  /// order of similarity.
  PeerSelection sample_candidates(const PeerSelection& pool, int64_t k) {
    auto mask_cpu = pool.mask.to(at::kCPU);
    const int64_t batch = mask_cpu.size(0);
    const int64_t width = mask_cpu.size(1);
    std::vector<int64_t> chosen;
    chosen.reserve(static_cast<size_t>(batch * k));
    auto acc = mask_cpu.accessor<bool, 2>();
    for (int64_t b = 0; b < batch; ++b) {
      std::vector<int64_t> valid, invalid;
      for (int64_t j = 0; j < width; ++j) (acc[b][j] ? valid : invalid).push_back(j);
      std::vector<int64_t> pick;
      std::sample(valid.begin(), valid.end(), std::back_inserter(pick),
                  std::min<int64_t>(k, static_cast<int64_t>(valid.size())), rng_);
      for (size_t j = 0; pick.size() < static_cast<size_t>(k); ++j) pick.push_back(invalid[j]);
      chosen.insert(chosen.end(), pick.begin(), pick.end());
    }
    auto index = at::tensor(chosen, at::kLong).view({batch, k}).to(pool.mask.device());
    PeerSelection out;
    out.mask = pool.mask.gather(1, index);
    out.peer_ids = pool.peer_ids.gather(1, index);
    out.similarity = pool.similarity.gather(1, index);
    out.features =
        pool.features.gather(1, index.unsqueeze(-1).expand({batch, k, pool.features.size(2)}));
    return out;
  }

  void record_stats(const at::Tensor& alignment, const MaxStepResult& max_step,
                    const at::Tensor& images, const at::Tensor& reports,
                    const at::Tensor& negatives, const at::Tensor& mask, double hardness,
                    double radius) {
    at::NoGradGuard no_grad;
    auto z = l2_normalize(images.detach());
    auto u = l2_normalize(reports.detach());
    stats_.alignment_loss = alignment.item<double>();
    stats_.loss_before_max = max_step.loss_before.defined()
                                 ? max_step.loss_before.mean().item<double>()
                                 : stats_.alignment_loss;
    stats_.loss_after_max = max_step.loss_after.defined()
                                ? max_step.loss_after.mean().item<double>()
                                : stats_.alignment_loss;
    stats_.positive_similarity = (z * u).sum(-1).mean().item<double>();
    stats_.used_negatives = mask.defined() ? mask.sum().item<int64_t>() : 0;
    if (stats_.used_negatives > 0) {
      auto sims = at::einsum("bd,bkd->bk", {z, negatives});
      stats_.negative_similarity =
          (sims * mask.to(sims.scalar_type())).sum().item<double>() / stats_.used_negatives;
    } else {
      stats_.negative_similarity = 0;
    }
    stats_.hardness = hardness;
    stats_.radius = radius;
  }

  Model* model_;
  Options options_;
  AlignmentLoss loss_;
  FeatureBank bank_;
  NegativeStore negatives_;  // per bank row: K negatives and the peers they started from
  at::Tensor last_negatives_, last_mask_;
  AugmenterStats stats_;
  std::mt19937_64 rng_;
  int64_t epoch_ = 1;
  int64_t step_ = 0;
  int64_t reserved_ = 0;  // rows to preallocate at the next loss() (reserve())
};

}  // namespace v0
}  // namespace ihn
