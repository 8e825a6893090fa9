// AlignmentLoss: how well each image picks out its own report, against the other reports of
// the batch and against hard negatives given as extra candidates.
//
//   ihn::AlignmentLoss loss(ihn::AlignmentLossOptions{}.temperature(0.07));
//   at::Tensor l = loss(image_feats, report_feats, negatives, negative_mask, same_report);
//
// Features are L2-normalised inside (any scale in, cosine similarities used). The default is
// a symmetric InfoNCE with a fixed temperature: image→report over the B reports plus the K
// hard negatives of that image, report→image over the B images. A hinge (triplet) variant is
// available. No learned weights. Reports that share a key with the positive (identical
// texts, common in IU X-Ray) are not treated as negatives when `same_report` is given.
// Equations: docs/method.md §2.
#pragma once

#include <ihn/collective.hpp>
#include <ihn/detail/arg.hpp>
#include <ihn/detail/checks.hpp>
#include <ihn/detail/precision.hpp>
#include <ihn/features.hpp>
#include <ihn/options.hpp>

#include <torch/types.h>

#include <cmath>
#include <limits>

namespace ihn {
inline namespace v0 {

struct AlignmentLossOptions {
  IHN_ARG(AlignmentKind, kind) = AlignmentKind::info_nce;
  /// InfoNCE temperature τ (fixed; the paper's 0.07).
  IHN_ARG(double, temperature) = 0.07;
  /// Hinge margin on cosine similarities.
  IHN_ARG(double, hinge_margin) = 0.2;
  /// Hinge: only the hardest candidate per anchor (VSE++) instead of the sum.
  IHN_ARG(bool, hinge_max_violation) = false;
  /// Also score report→image (over the batch's images); hard negatives are reports, so they
  /// only enter the image→report direction.
  IHN_ARG(bool, symmetric) = true;
  /// Data-parallel training: operator() scores the global batch (every rank's features and
  /// negatives gathered, gradients to this rank's rows), its gradient scaled for averaging
  /// across ranks; see collective.hpp. per_sample() stays local.
  IHN_ARG(std::shared_ptr<Collective>, process_group);
};

class AlignmentLoss {
 public:
  explicit AlignmentLoss(AlignmentLossOptions options = {}) : options_(options) {
    if (!(options_.temperature() > 0.0) || !std::isfinite(options_.temperature()))
      detail::fail("ihn::AlignmentLoss", "temperature must be finite and > 0");
    if (!(options_.hinge_margin() >= 0.0))
      detail::fail("ihn::AlignmentLoss", "hinge_margin must be >= 0");
  }

  const AlignmentLossOptions& options() const { return options_; }

  /// Mean over the batch of per_sample(...); over the global batch with a process group
  /// (same_report is then not accepted: it would have to name every rank's reports).
  at::Tensor operator()(const at::Tensor& images, const at::Tensor& reports,
                        const at::Tensor& negatives = {}, const at::Tensor& negative_mask = {},
                        const at::Tensor& same_report = {}) const {
    const auto& group = options_.process_group();
    if (!group || group->world_size() == 1)
      return per_sample(images, reports, negatives, negative_mask, same_report).mean();
    if (same_report.defined())
      detail::fail("ihn::AlignmentLoss",
                   "same_report is local; with a process group use "
                   "HardNegativeAugmenter, which gathers report keys");
    detail::check_dim(images, 2, "ihn::AlignmentLoss", "image features", "B x D");
    const auto layout = detail::row_layout(*group, images.size(0), images.device());
    auto global = [&](const at::Tensor& local) {  // gradients reach this rank's rows
      return detail::with_local_rows(detail::gather_rows(*group, local, layout), local,
                                     layout.offset);
    };
    const auto global_images = global(images);
    const auto global_reports = global(reports);
    at::Tensor global_negatives, global_mask;
    if (negatives.defined() && negatives.numel() > 0) {
      global_negatives = global(negatives);
      if (negative_mask.defined())
        global_mask =
            detail::gather_rows(*group, negative_mask.to(at::kByte), layout).to(at::kBool);
    }
    auto loss = per_sample(global_images, global_reports, global_negatives, global_mask).mean();
    return detail::scale_gradient(loss, static_cast<double>(group->world_size()));
  }

  /// One loss value per sample (B). images, reports: B x D. negatives: B x K x D (undefined
  /// or K = 0 for none). negative_mask: B x K bool, false = unused slot. same_report: B x B
  /// bool, true where reports i and j share a key (diagonal ignored). Sample i's hard
  /// negatives enter only term i, which the max step relies on.
  /// In float32 inside an autocast region too (detail/precision.hpp).
  at::Tensor per_sample(const at::Tensor& images_in, const at::Tensor& reports_in,
                        const at::Tensor& negatives_in = {}, const at::Tensor& negative_mask = {},
                        const at::Tensor& same_report = {}) const {
    constexpr std::string_view where = "ihn::AlignmentLoss";
    detail::check_floating(images_in, where, "image features");
    detail::check_floating(reports_in, where, "report features");
    const detail::Float32Region float32_region;
    const at::Tensor images = detail::at_least_float32(images_in);
    const at::Tensor reports = detail::at_least_float32(reports_in);
    const at::Tensor negatives = detail::at_least_float32(negatives_in);
    detail::check_floating(images, where, "image features");
    detail::check_floating(reports, where, "report features");
    detail::check_dim(images, 2, where, "image features", "B x D");
    detail::check_dim(reports, 2, where, "report features", "B x D");
    if (images.sizes() != reports.sizes())
      detail::fail(where, "image features " + detail::shape_string(images) +
                              " and report features " + detail::shape_string(reports) +
                              " must have the same shape");
    const int64_t batch = images.size(0);
    if (batch == 0) detail::fail(where, "empty batch");
    const bool has_negatives = negatives.defined() && negatives.numel() > 0;
    if (negatives.defined() && negatives.numel() > 0) {
      detail::check_dim(negatives, 3, where, "negatives", "B x K x D");
      if (negatives.size(0) != batch || negatives.size(2) != images.size(1))
        detail::fail(where, "negatives " + detail::shape_string(negatives) +
                                " do not match features " + detail::shape_string(images));
      if (negative_mask.defined() && (negative_mask.dim() != 2 || negative_mask.size(0) != batch ||
                                      negative_mask.size(1) != negatives.size(1)))
        detail::fail(where,
                     "negative_mask must be B x K, got " + detail::shape_string(negative_mask));
    }
    if (same_report.defined() &&
        (same_report.dim() != 2 || same_report.size(0) != batch || same_report.size(1) != batch))
      detail::fail(where, "same_report must be B x B, got " + detail::shape_string(same_report));

    const auto z = l2_normalize(images);
    const auto u = l2_normalize(reports);
    auto sim = z.matmul(u.t());  // B x B: image i vs report j
    const auto diagonal = at::eye(batch, sim.options().dtype(at::kBool));
    at::Tensor excluded = diagonal.logical_not().logical_and(
        same_report.defined() ? same_report.to(at::kBool) : at::zeros_like(diagonal));
    at::Tensor hard;  // B x K similarities to the hard negatives
    at::Tensor hard_excluded;
    if (has_negatives) {
      hard = at::einsum("bd,bkd->bk", {z, l2_normalize(negatives)});
      hard_excluded = negative_mask.defined()
                          ? negative_mask.to(at::kBool).logical_not()
                          : at::zeros_like(hard, hard.options().dtype(at::kBool));
    }
    const auto positive = sim.diagonal();
    if (options_.kind() == AlignmentKind::info_nce) {
      const double inv_t = 1.0 / options_.temperature();
      const double minus_inf = -std::numeric_limits<double>::infinity();
      auto logits = (sim * inv_t).masked_fill(excluded, minus_inf);
      auto row_logits =
          has_negatives ? at::cat({logits, (hard * inv_t).masked_fill(hard_excluded, minus_inf)}, 1)
                        : logits;
      auto image_to_report = at::logsumexp(row_logits, 1) - positive * inv_t;
      if (!options_.symmetric()) return image_to_report;
      auto report_to_image = at::logsumexp(logits.t(), 1) - positive * inv_t;
      return 0.5 * (image_to_report + report_to_image);
    }
    // Hinge: relu(margin − s(i, i) + s(i, c)) over the candidates c of anchor i.
    const double margin = options_.hinge_margin();
    auto reduce = [&](const at::Tensor& violations) {
      return options_.hinge_max_violation() ? std::get<0>(violations.max(1)) : violations.sum(1);
    };
    auto in_batch = (margin - positive.unsqueeze(1) + sim)
                        .clamp_min(0.0)
                        .masked_fill(excluded.logical_or(diagonal), 0.0);
    auto image_side = in_batch;
    if (has_negatives)
      image_side = at::cat(
          {in_batch,
           (margin - positive.unsqueeze(1) + hard).clamp_min(0.0).masked_fill(hard_excluded, 0.0)},
          1);
    auto image_to_report = reduce(image_side);
    if (!options_.symmetric()) return image_to_report;
    auto report_side = (margin - positive.unsqueeze(1) + sim.t())
                           .clamp_min(0.0)
                           .masked_fill(excluded.t().logical_or(diagonal), 0.0);
    return 0.5 * (image_to_report + reduce(report_side));
  }

 private:
  AlignmentLossOptions options_;
};

}  // namespace v0
}  // namespace ihn
