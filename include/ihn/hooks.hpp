// The callback interface a training loop calls, with PyTorch Lightning's hook names, and a
// ready callback that drives a HardNegativeAugmenter — so a trainer that already has
// callbacks integrates ihn in one line:
//
//   trainer.callbacks.push_back(
//       std::make_shared<ihn::HardNegativeCallback<MyModel>>(model, ihn::Options{}));
//
// The trainer fills a BatchContext after its forward pass (features, ids, keys, the
// generation loss), calls the hooks in order, and backpropagates `context.loss`.
#pragma once

#include <ihn/augmenter.hpp>
#include <ihn/state.hpp>

#include <torch/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace ihn {
inline namespace v0 {

/// What a trainer knows about the current batch; callbacks read it and may add to `loss`.
struct BatchContext {
  int64_t epoch = 1;                     ///< from 1
  int64_t global_step = 0;               ///< optimiser steps taken before this batch
  int64_t batch_index = 0;               ///< within the epoch
  at::Tensor image_features;             ///< B x D, from the forward pass (with grad)
  at::Tensor report_features;            ///< B x D, from the forward pass (with grad)
  std::vector<int64_t> ids;              ///< training-set ids of the batch's samples (may be empty)
  std::vector<std::string> report_keys;  ///< identical-report keys (may be empty)
  at::Tensor loss;                     ///< the loss to backpropagate; starts as the generation loss
  std::map<std::string, double> logs;  ///< scalars for the trainer's log
};

/// No-op defaults; override what you need. Called in this order per batch:
/// on_train_batch_start → (forward) → on_before_backward → (backward) → on_after_backward →
/// on_before_optimizer_step → (step) → on_train_batch_end.
class Callback {
 public:
  virtual ~Callback() = default;
  virtual void on_train_start() {}
  virtual void on_train_epoch_start(int64_t /*epoch*/) {}
  virtual void on_train_batch_start(BatchContext& /*context*/) {}
  virtual void on_before_backward(BatchContext& /*context*/) {}
  virtual void on_after_backward(BatchContext& /*context*/) {}
  virtual void on_before_optimizer_step(BatchContext& /*context*/) {}
  virtual void on_train_batch_end(BatchContext& /*context*/) {}
  virtual void on_train_epoch_end(int64_t /*epoch*/) {}
  virtual void on_validation_epoch_end(int64_t /*epoch*/,
                                       const std::map<std::string, double>& /*metrics*/) {}
  virtual void on_train_end() {}
  /// Add what must survive a restart under a prefix of your own.
  virtual void on_save_checkpoint(StateDict& /*state*/) const {}
  virtual void on_load_checkpoint(const StateDict& /*state*/) {}
};

/// Drives a HardNegativeAugmenter from the hooks: sets the epoch, adds the min-step term in
/// on_before_backward (running the max step first), advances the clock after each optimiser
/// step, and saves/loads its state under "ihn.".
template <class Model>
class HardNegativeCallback : public Callback {
 public:
  HardNegativeCallback(Model& model, Options options = {}, at::Device device = at::kCPU)
      : augmenter_(model, std::move(options)), device_(device) {}

  void on_train_epoch_start(int64_t epoch) override { augmenter_.set_epoch(epoch); }

  void on_before_backward(BatchContext& context) override {
    auto term = augmenter_.loss(context.image_features, context.report_features, context.ids,
                                context.report_keys);
    context.loss = context.loss.defined() ? context.loss + term : term;
    const auto& stats = augmenter_.last_stats();
    context.logs["ihn/alignment"] = stats.alignment_loss;
    context.logs["ihn/max_step_gain"] = stats.loss_after_max - stats.loss_before_max;
    context.logs["ihn/cos_positive"] = stats.positive_similarity;
    context.logs["ihn/cos_negative"] = stats.negative_similarity;
    context.logs["ihn/hardness"] = stats.hardness;
  }

  void on_train_batch_end(BatchContext& /*context*/) override { augmenter_.step(); }

  void on_save_checkpoint(StateDict& state) const override {
    merge_state(state, "ihn", augmenter_.state_dict());
  }
  void on_load_checkpoint(const StateDict& state) override {
    augmenter_.load_state_dict(sub_state(state, "ihn"), device_);
  }

  HardNegativeAugmenter<Model>& augmenter() { return augmenter_; }

 private:
  HardNegativeAugmenter<Model> augmenter_;
  at::Device device_;
};

}  // namespace v0
}  // namespace ihn
