// The official-compatible training step (`--ihn official`), as the authors' release computes
// it (models/models.py forward_cxr, modules/trainer.py): the batch and each sample's offline
// negative pair go through the model in two passes; the pooled image features and the mean
// decoder states of both passes go through two projection heads (no bias, L2-normalised);
// ihn::official_loss_terms builds the closed-form harder negative with λ = exp(−α·epoch), the
// three-matrix CLIP loss and |cos(z, z⁻)|; ihn::official_total_loss weighs them 0.7/0.1/0.2.
// Separate from train.cpp so a test can check the step against the formulas by hand.
#pragma once

#include <torch/torch.h>

#include <ihn/official.hpp>

#include <cmath>

namespace ihn_toolkit::train {

/// The weights the official mode adds: the image and report projection heads and the two
/// learned log-temperatures (temp_1, temp_3 upstream, initialised to log(1/0.07)).
struct OfficialHeadsImpl : torch::nn::Module {
  OfficialHeadsImpl(int64_t image_dim, int64_t report_dim, int64_t embed_dim)
      : image(register_module("img_projection", ihn::OfficialProjection(image_dim, embed_dim))),
        report(register_module("text_projection", ihn::OfficialProjection(report_dim, embed_dim))),
        log_temperature_pos(register_parameter("temp_1", torch::full({}, std::log(1 / 0.07)))),
        log_temperature_hard(register_parameter("temp_3", torch::full({}, std::log(1 / 0.07)))) {}
  ihn::OfficialProjection image, report;
  torch::Tensor log_temperature_pos, log_temperature_hard;
};
TORCH_MODULE(OfficialHeads);

/// One batch on the device.
struct StepBatch {
  at::Tensor images, ids, masks;
};

struct OfficialStepResult {
  at::Tensor loss;             ///< 0.7 L_gen + 0.1 L_cp + 0.2 L_cs
  at::Tensor generation_loss;  ///< L_gen of the positive pass
  ihn::OfficialLossTerms terms;
  at::Tensor z, u, z_neg, u_neg;               ///< projected, normalised features of both passes
  at::Tensor image_features, report_features;  ///< the model's own features (positive pass)
};

/// Positive pass, negative pass, heads, released loss. `lambda` = official_lambda(α, epoch).
template <class Traits>
OfficialStepResult official_step(typename Traits::Model& model, OfficialHeads& heads,
                                 const StepBatch& positive, const StepBatch& negative,
                                 double lambda, const ihn::OfficialLossOptions& options) {
  auto pos = model->forward(positive.images, positive.ids, positive.masks);
  auto neg = model->forward(negative.images, negative.ids, negative.masks);
  OfficialStepResult r;
  r.generation_loss = Traits::generation_loss(pos.logprobs, positive.ids, positive.masks);
  r.z = heads->image->forward(Traits::official_image_input(pos));
  r.z_neg = heads->image->forward(Traits::official_image_input(neg));
  r.u = heads->report->forward(Traits::official_report_input(pos));
  r.u_neg = heads->report->forward(Traits::official_report_input(neg));
  r.terms =
      ihn::official_loss_terms(r.z, r.u, r.z_neg, r.u_neg, heads->log_temperature_pos,
                               heads->log_temperature_hard, lambda, options.legacy_batch_mixing());
  r.loss = ihn::official_total_loss(r.generation_loss, r.terms, options);
  r.image_features = pos.image_features;
  r.report_features = pos.report_features;
  return r;
}

}  // namespace ihn_toolkit::train
