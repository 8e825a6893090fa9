// The models the trainer can train, one traits struct each. train.cpp is written once as
// templates over a traits struct and dispatches on ModelConfig::architecture (dispatch_model
// below); adding a model is a traits struct here plus one line in dispatch_model.
//
// What the trainer needs from `Traits::Model` (a TORCH_MODULE holder; R2GenModel is one):
//   Model(Traits::options(config.model, config.data.max_seq_length, vocab_size))
//   model->forward(images (B, V, 3, H, W), ids (B, T) int64, masks (B, T) float) -> out with
//     out.logprobs (B, T-1, vocab+1), out.image_features / out.report_features (B, d) for
//     retrieval and the paper mode, and what official_image_input / official_report_input read
//   model->beam_search(images, nn::BeamSearchOptions) -> .seq (B, L) int64
//   the ihn encoder interface (ihn::encoder_traits: image_features(batch), report_features(batch))
//     for --ihn paper's HardNegativeCallback<Model>
//   named_parameters()/named_buffers() for checkpoints and Traits::named_parameters for the
//     optimiser (must list each tensor once).
#pragma once

#include "cmn.hpp"
#include "r2gen.hpp"
#include "train/train.hpp"

#include <torch/torch.h>

#include <string>
#include <utility>
#include <vector>

namespace ihn_toolkit::train {

namespace r2gen = ihn_examples::r2gen;  // the ports the trainer trains
namespace cmn = ihn_examples::cmn;

/// Parts every model shares: the loss, the visual-extractor split of the optimiser groups, and
/// the inputs of the official-compatible projection heads as the release takes them (the pooled
/// CNN features `fc_feats`, and the unmasked mean over positions of the final decoder states).
struct ModelTraitsBase {
  static at::Tensor generation_loss(const at::Tensor& logprobs, const at::Tensor& ids,
                                    const at::Tensor& masks) {
    return r2gen::compute_loss(logprobs, ids, masks);  // modules/loss.py, shared by R2GenCMN
  }
  /// The optimiser's first group (lr_ve), as build_optimizer upstream.
  static bool is_visual_parameter(const std::string& name) {
    return name.rfind("visual_extractor.", 0) == 0;
  }
  /// The fields both ports' options share (extractor, transformer, dropout, positions).
  template <class Options>
  static Options& shared_options(Options& o, const ModelConfig& m, int max_seq_length) {
    return o.visual_depth(m.visual_depth)
        .d_model(m.d_model)
        .d_ff(m.d_ff)
        .num_heads(m.num_heads)
        .num_layers(m.num_layers)
        .dropout(m.dropout)
        .drop_prob_lm(m.drop_prob_lm)
        .max_positions(max_positions(m, max_seq_length));
  }
  /// Rows of the positional-encoding table: the config's, or just enough for the reports.
  static int64_t max_positions(const ModelConfig& m, int max_seq_length) {
    return m.max_positions > 0 ? m.max_positions : std::max(max_seq_length + 1, 100);
  }
  template <class Output>
  static at::Tensor official_image_input(const Output& out) {
    return out.fc_feats;
  }
  template <class Output>
  static at::Tensor official_report_input(const Output& out) {
    return out.details.decoder_out.mean(1);  // torch.mean(pos_rep_output, dim=1) upstream
  }
};

struct R2GenTraits : ModelTraitsBase {
  using Model = r2gen::R2GenModel;
  using Options = r2gen::R2GenOptions;
  static constexpr const char* name = "r2gen";
  static Options options(const ModelConfig& m, int max_seq_length, int64_t vocab_size) {
    Options o(vocab_size);
    const auto& memory = m.relational_memory;
    return shared_options(o, m, max_seq_length)
        .rm_num_slots(memory.num_slots)
        .rm_num_heads(memory.num_heads)
        .rm_d_model(memory.d_model);
  }
  /// Width of official_image_input for `views` views (fc_feats concatenates the views).
  static int64_t official_image_dim(const Options& o, int64_t views) { return views * o.d_vf(); }
  static int64_t official_report_dim(const Options& o) { return o.d_model(); }
  static std::vector<std::pair<std::string, at::Tensor>> named_parameters(Model& model) {
    std::vector<std::pair<std::string, at::Tensor>> out;
    for (const auto& p : model->named_parameters()) out.emplace_back(p.key(), p.value());
    return out;
  }
};

/// R2GenCMN (examples/cmn). Its memory attention is registered under two names as upstream, so
/// the optimiser takes the de-duplicated parameter list.
struct CMNTraits : ModelTraitsBase {
  using Model = cmn::CMNModel;
  using Options = cmn::CMNOptions;
  static constexpr const char* name = "cmn";
  static Options options(const ModelConfig& m, int max_seq_length, int64_t vocab_size) {
    Options o(vocab_size);
    const auto& memory = m.cross_modal_memory;
    return shared_options(o, m, max_seq_length)
        .topk(memory.topk)
        .cmm_size(memory.size)
        .cmm_dim(memory.dim);
  }
  static int64_t official_image_dim(const Options& o, int64_t views) { return views * o.d_vf(); }
  static int64_t official_report_dim(const Options& o) { return o.d_model(); }
  static std::vector<std::pair<std::string, at::Tensor>> named_parameters(Model& model) {
    std::vector<std::pair<std::string, at::Tensor>> out;
    for (const auto& p : model->unique_named_parameters()) out.emplace_back(p.key(), p.value());
    return out;
  }
};

/// Calls `f(Traits{})` with the traits of config.model.architecture; the one place that lists the
/// models.
template <class F>
decltype(auto) dispatch_model(const std::string& model, F&& f) {
  if (model == R2GenTraits::name) return f(R2GenTraits{});
  if (model == CMNTraits::name) return f(CMNTraits{});
  throw TrainError("--model " + model + ": use r2gen or cmn");
}

}  // namespace ihn_toolkit::train
