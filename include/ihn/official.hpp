// The official-compatible mode: what the authors' released ITHN code computes (Bhanu068/ITHN,
// models/models.py on R2GenCMN), for users who want to compare with it.
//
// One real negative (image, report) pair per sample is fed through the network; a harder
// negative report feature is synthesised in closed form,
//   p = u⁻ + ((z − u⁻)·(u − u⁻)) normalize(u − u⁻),   h = λ u⁻ + (1 − λ) p,   λ = exp(−α·epoch),
// and scored with a three-matrix CLIP loss plus |cos| between the image and the negative
// image. The released code forms the projection with a B x B product that mixes every sample
// with all others; that is kept as `legacy_batch_mixing` for bit-for-bit comparison, and the
// per-sample projection is the default. This mode adds weights (two projection heads and two
// temperatures, see OfficialProjection); the paper mode does not. docs/method.md §4.
#pragma once

#include <ihn/detail/arg.hpp>
#include <ihn/detail/checks.hpp>

#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <cmath>
#include <utility>

namespace ihn {
inline namespace v0 {

struct OfficialLossOptions {
  /// Reproduce the released B x B projection (every sample mixes all others) instead of
  /// the per-sample projection the formula describes.
  IHN_ARG(bool, legacy_batch_mixing) = false;
  /// λ_t = exp(−alpha · epoch), epochs from 1 (modules/trainer.py of the release).
  IHN_ARG(double, alpha) = 0.01;
  IHN_ARG(double, generation_weight) = 0.7;
  IHN_ARG(double, contrastive_weight) = 0.1;
  IHN_ARG(double, cosine_weight) = 0.2;
};

/// Intermediate and final terms, named as in the released code.
struct OfficialLossTerms {
  at::Tensor projection;        ///< p, B x D
  at::Tensor harder_negatives;  ///< h_neg = λ u⁻ + (1 − λ) p, B x D (not renormalised)
  at::Tensor similarity;        ///< S_fin = (S_pos + S_neg + S_hard) / 3, B x B
  at::Tensor l_cp;              ///< symmetric cross-entropy of S_fin (0-d)
  at::Tensor l_cs;              ///< mean |cos(z, z⁻)| (0-d)
};

/// λ of the released trainer for an epoch (from 1).
inline double official_lambda(double alpha, int64_t epoch) {
  return std::exp(-alpha * static_cast<double>(epoch));
}

/// The released loss terms. z, u, z_neg, u_neg: B x D, already projected and L2-normalised
/// (as OfficialProjection returns them); log_temperature_pos / _hard: 0-d (temp_1, temp_3).
inline OfficialLossTerms official_loss_terms(const at::Tensor& z, const at::Tensor& u,
                                             const at::Tensor& z_neg, const at::Tensor& u_neg,
                                             const at::Tensor& log_temperature_pos,
                                             const at::Tensor& log_temperature_hard, double lambda,
                                             bool legacy_batch_mixing) {
  constexpr std::string_view where = "ihn::official_loss_terms";
  const std::pair<const at::Tensor*, const char*> inputs[] = {
      {&z, "z"}, {&u, "u"}, {&z_neg, "z_neg"}, {&u_neg, "u_neg"}};
  for (const auto& [t, name] : inputs) {
    detail::check_floating(*t, where, name);
    detail::check_dim(*t, 2, where, name, "B x D");
    if (t->sizes() != z.sizes())
      detail::fail(where, std::string(name) + " has shape " + detail::shape_string(*t) +
                              ", expected " + detail::shape_string(z));
    detail::check_finite(*t, where, name);
  }
  if (!(lambda >= 0.0 && lambda <= 1.0)) detail::fail(where, "lambda must lie in [0, 1]");
  const int64_t batch = z.size(0);
  auto zi_uni = z - u_neg;
  auto ui_uni = u - u_neg;
  auto direction = ui_uni / ui_uni.norm(2, -1, true).clamp_min(1e-12);  // F.normalize
  at::Tensor p;
  if (legacy_batch_mixing) {
    p = u_neg + zi_uni.matmul(ui_uni.t()).matmul(direction);
  } else {
    p = u_neg + (zi_uni * direction).sum(-1, true) * direction;
  }
  OfficialLossTerms out;
  out.projection = p;
  out.harder_negatives = lambda * u_neg + (1.0 - lambda) * p;
  auto scale_pos = log_temperature_pos.exp();
  auto scale_hard = log_temperature_hard.exp();
  auto s_pos = (scale_pos * z).matmul(u.t());
  auto s_neg = (scale_pos * z_neg).matmul(u_neg.t());
  // The release multiplies element-wise by diag(−1): only the diagonal survives, negated.
  auto s_hard = (scale_hard * z).matmul(out.harder_negatives.t()) *
                at::diag(at::ones({batch}, z.options()) * -1);
  out.similarity = (s_pos + s_neg + s_hard) / 3;
  auto targets = at::arange(batch, z.options().dtype(at::kLong));
  auto caption = at::cross_entropy_loss(out.similarity, targets);
  auto image = at::cross_entropy_loss(out.similarity.t(), targets);
  out.l_cp = (caption + image) / 2.0;
  out.l_cs = at::cosine_similarity(z, z_neg, 1, 1e-8).abs().mean();
  return out;
}

/// 0.7 L_gen + 0.1 L_cp + 0.2 L_cs with the options' weights.
inline at::Tensor official_total_loss(const at::Tensor& generation_loss,
                                      const OfficialLossTerms& terms,
                                      const OfficialLossOptions& options = {}) {
  return options.generation_weight() * generation_loss + options.contrastive_weight() * terms.l_cp +
         options.cosine_weight() * terms.l_cs;
}

/// The release's projection head: Linear without bias, then row L2 normalisation. Its
/// parameter is `linear1.weight`, as upstream, so checkpoints load by name.
struct OfficialProjectionImpl : torch::nn::Module {
  OfficialProjectionImpl(int64_t in_features, int64_t out_features)
      : linear1(register_module(
            "linear1",
            torch::nn::Linear(torch::nn::LinearOptions(in_features, out_features).bias(false)))) {}
  at::Tensor forward(const at::Tensor& x) {
    auto y = linear1->forward(x);
    return y / y.norm(2, 1, true);
  }
  torch::nn::Linear linear1;
};
TORCH_MODULE(OfficialProjection);

}  // namespace v0
}  // namespace ihn
