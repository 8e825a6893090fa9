// Hard negatives in feature space: where they start (the closest peer reports) and how the
// max step moves them (projected gradient ascent of the alignment loss, on the unit sphere,
// inside a trust region around the start, never as close to the image as the positive).
//
// These are the building blocks of HardNegativeAugmenter; they are public so that a user can
// run a max step on tensors of their own. Everything here works on detached B x K x D
// tensors only: no network weights are touched and no second network pass is made.
// Equations: docs/method.md §3.
#pragma once

#include <ihn/alignment_loss.hpp>
#include <ihn/bank.hpp>
#include <ihn/detail/arg.hpp>
#include <ihn/detail/checks.hpp>
#include <ihn/features.hpp>

#include <torch/autograd.h>
#include <torch/types.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace ihn {
inline namespace v0 {

// ---------------------------------------------------------------------------------------
// Geometry on the unit sphere
// ---------------------------------------------------------------------------------------

/// Largest chord radius for which a spherical cap is geodesically convex (90°): the max
/// step's feasibility argument needs that.
inline constexpr double max_trust_radius = 1.4142135623730951;

namespace detail {

/// Unit component of `v` orthogonal to unit `axis` (same shapes, last dim D); where `v` is
/// parallel to `axis`, the component of `fallback`, and failing that a coordinate axis.
inline at::Tensor perpendicular_direction(const at::Tensor& v, const at::Tensor& axis,
                                          const at::Tensor& fallback) {
  constexpr double tiny = 1e-6;
  auto reject = [&](const at::Tensor& x) { return x - (x * axis).sum(-1, true) * axis; };
  auto w = reject(v);
  auto w_norm = w.norm(2, -1, true);
  if ((w_norm > tiny).all().item<bool>()) return w / w_norm;  // the common case
  auto alt = reject(fallback.expand_as(v));
  auto alt_norm = alt.norm(2, -1, true);
  // A coordinate axis least aligned with `axis` is never parallel to it.
  auto basis = at::zeros_like(v).scatter_(-1, axis.abs().argmin(-1, true), 1.0);
  auto coord = reject(basis);
  auto chosen = at::where(w_norm > tiny, w, at::where(alt_norm > tiny, alt, coord));
  return l2_normalize(chosen);
}

}  // namespace detail

/// Projects unit vectors `x` onto the spherical cap of chord radius `radius` around unit
/// `anchor` (both ... x D): points already inside stay; others move along the great circle
/// towards the anchor onto the cap's rim.
inline at::Tensor project_to_cap(const at::Tensor& x, const at::Tensor& anchor, double radius) {
  const double cos_max = 1.0 - 0.5 * radius * radius;  // chord r <-> cos θ = 1 − r²/2
  const double sin_max = std::sqrt(std::max(0.0, 1.0 - cos_max * cos_max));
  auto cos_xa = (x * anchor).sum(-1, true);
  if ((cos_xa >= cos_max).all().item<bool>()) return x;
  auto rim = cos_max * anchor + sin_max * detail::perpendicular_direction(x, anchor, anchor);
  return at::where(cos_xa >= cos_max, x, rim);
}

/// Rotates unit vectors `x` away from unit `image` (broadcastable) until cos(x, image) <=
/// `limit` (same leading shape as x's, last dim 1), keeping their direction orthogonal to
/// the image. `fallback` orients vectors that coincide with the image.
inline at::Tensor enforce_margin(const at::Tensor& x, const at::Tensor& image,
                                 const at::Tensor& limit, const at::Tensor& fallback) {
  // Aim a hair inside the limit so that float rounding leaves the result feasible.
  auto clamped = (limit - 1e-6).clamp(-1.0, 1.0);
  auto cos_xz = (x * image).sum(-1, true);
  auto side = detail::perpendicular_direction(x, image.expand_as(x), fallback);
  auto rotated = clamped * image + (1.0 - clamped * clamped).clamp_min(0.0).sqrt() * side;
  return at::where(cos_xz > clamped, rotated, x);
}

/// The furthest point from `from` towards `to` along their great circle (normalised linear
/// interpolation) that keeps cos(·, image) <= limit. `from` must satisfy the limit; where
/// `to` does, `to` is returned. The cosine along the path is a function of five dot
/// products, so the bisection runs on scalars; the point returned is checked again and
/// falls back to `from` if rounding put it over the limit.
inline at::Tensor retreat_to_margin(const at::Tensor& from, const at::Tensor& to,
                                    const at::Tensor& image, const at::Tensor& limit,
                                    int iterations = 40) {
  auto full_limit = limit.expand({from.sizes().vec()}).narrow(-1, 0, 1);
  auto ok = (to * image).sum(-1, true) <= full_limit;
  if (ok.all().item<bool>()) return to;
  auto step = to - from;
  // cos(normalize(from + s·step), image) = (a + s b) / sqrt(f + 2 s c + s² e)
  auto terms = at::cat({(from * image).sum(-1, true), (step * image).sum(-1, true),
                        (from * step).sum(-1, true), (step * step).sum(-1, true),
                        (from * from).sum(-1, true), full_limit},
                       -1)
                   .to(at::kCPU, at::kDouble)
                   .contiguous();
  const int64_t rows = terms.numel() / 6;
  const double* t = terms.data_ptr<double>();
  auto ok_cpu = ok.to(at::kCPU).contiguous();
  const bool* ok_ptr = ok_cpu.data_ptr<bool>();
  std::vector<double> fraction(static_cast<size_t>(rows), 1.0);
  for (int64_t r = 0; r < rows; ++r) {
    if (ok_ptr[r]) continue;
    const double a = t[6 * r], b = t[6 * r + 1], c = t[6 * r + 2], e = t[6 * r + 3],
                 f = t[6 * r + 4], lim = t[6 * r + 5];
    double lo = 0.0, hi = 1.0;
    for (int i = 0; i < iterations; ++i) {
      const double mid = 0.5 * (lo + hi);
      const double norm = std::sqrt(std::max(1e-30, f + 2.0 * mid * c + mid * mid * e));
      ((a + mid * b) / norm <= lim ? lo : hi) = mid;
    }
    fraction[static_cast<size_t>(r)] = lo;
  }
  auto shape = ok.sizes().vec();
  auto s = at::tensor(fraction, at::kDouble).view(shape).to(from.options());
  auto point = l2_normalize(from + s * step);
  auto good = (point * image).sum(-1, true) <= full_limit;
  return at::where(ok, to, at::where(good, point, from));
}

// ---------------------------------------------------------------------------------------
// Where negatives start: the closest peer reports
// ---------------------------------------------------------------------------------------

/// The K closest peers of each query.
struct PeerSelection {
  at::Tensor features;    ///< B x K x D, unit (zeros where unused)
  at::Tensor mask;        ///< B x K bool: false = fewer than K eligible peers
  at::Tensor peer_ids;    ///< B x K int64: bank ids (or in-batch indices); −1 where unused
  at::Tensor similarity;  ///< B x K cosine similarity of each peer to its query
};

namespace detail {

/// The K highest-scoring candidates of each row of `similarity` (B x N) that are not
/// `excluded` (B x N bool). `gather` and `ids_of` map candidate indices (B x n) to unit
/// features (B x n x D, in the similarity's dtype) and to the candidates' ids (B x n).
template <class Gather, class IdsOf>
PeerSelection select_top_k(const at::Tensor& similarity, const at::Tensor& excluded,
                           const Gather& gather, const IdsOf& ids_of, int64_t k, int64_t dim) {
  const int64_t batch = similarity.size(0);
  const auto options = similarity.options();
  PeerSelection out;
  const int64_t take = std::min<int64_t>(k, similarity.size(1));
  if (k == 0 || take == 0) {
    out.features = at::zeros({batch, k, dim}, options);
    out.mask = at::zeros({batch, k}, options.dtype(at::kBool));
    out.peer_ids = at::full({batch, k}, -1, options.dtype(at::kLong));
    out.similarity = at::zeros({batch, k}, options);
    return out;
  }
  const double minus_inf = -std::numeric_limits<double>::infinity();
  auto scores = similarity.masked_fill(excluded, minus_inf);
  auto [values, index] = scores.topk(take, 1, /*largest=*/true, /*sorted=*/true);
  auto valid = values > minus_inf;
  auto feats = gather(index) * valid.unsqueeze(-1).to(similarity.scalar_type());
  auto ids = ids_of(index).masked_fill(valid.logical_not(), -1);
  values = values.masked_fill(valid.logical_not(), 0.0);
  if (take < k) {  // fewer candidates than K: pad with unused slots
    const int64_t pad = k - take;
    feats = at::cat({feats, at::zeros({batch, pad, dim}, feats.options())}, 1);
    valid = at::cat({valid, at::zeros({batch, pad}, valid.options())}, 1);
    ids = at::cat({ids, at::full({batch, pad}, -1, ids.options())}, 1);
    values = at::cat({values, at::zeros({batch, pad}, values.options())}, 1);
  }
  out.features = feats;
  out.mask = valid;
  out.peer_ids = ids;
  out.similarity = values;
  return out;
}

}  // namespace detail

/// The K bank entries most similar to each (normalised) query report, excluding the query's
/// own id and every entry with the same key hash.
inline PeerSelection closest_peers_in_bank(const FeatureBank& bank, const at::Tensor& queries,
                                           const at::Tensor& query_ids,
                                           const at::Tensor& query_key_hashes, int64_t k) {
  at::NoGradGuard no_grad;
  auto q = l2_normalize(queries.detach());
  const int64_t batch = q.size(0), dim = q.size(1);
  const auto bank_ids = bank.size() ? bank.ids().to(q.device()) : at::zeros({0}, at::kLong);
  auto gather = [&](const at::Tensor& rows) { return bank.gather(rows, q.scalar_type()); };
  auto ids_of = [&](const at::Tensor& rows) {
    return bank_ids.index_select(0, rows.reshape({-1})).view(rows.sizes());
  };
  if (bank.size() == 0)
    return detail::select_top_k(at::zeros({batch, 0}, q.options()),
                                at::zeros({batch, 0}, q.options().dtype(at::kBool)), gather, ids_of,
                                k, dim);
  auto excluded =
      query_ids.to(q.device())
          .unsqueeze(1)
          .eq(bank_ids.unsqueeze(0))
          .logical_or(
              query_key_hashes.to(q.device()).unsqueeze(1).eq(bank.key_hashes().unsqueeze(0)));
  const int64_t shortlist = k + 64;
  if (bank.similarity_tolerance() == 0.0 || bank.size() <= shortlist)
    return detail::select_top_k(bank.similarity(q), excluded, gather, ids_of, k, dim);
  // Reduced-precision bank: rank approximately over the whole bank, then rescore a shortlist
  // exactly; peers within similarity_tolerance() of the K-th may trade places.
  const double minus_inf = -std::numeric_limits<double>::infinity();
  auto [approx, rows] =
      bank.approximate_similarity(q).masked_fill(excluded, minus_inf).topk(shortlist, 1);
  auto candidates = gather(rows);  // B x m x D
  auto exact = at::bmm(candidates, q.unsqueeze(-1)).squeeze(-1);
  auto gather_listed = [&](const at::Tensor& index) {
    return candidates.gather(1, index.unsqueeze(-1).expand({batch, index.size(1), dim}));
  };
  auto ids_listed = [&](const at::Tensor& index) { return ids_of(rows.gather(1, index)); };
  return detail::select_top_k(exact, approx.isinf(), gather_listed, ids_listed, k, dim);
}

/// The K most similar other reports of the same batch (no ids), excluding same-key reports.
/// peer_ids are batch indices.
inline PeerSelection closest_peers_in_batch(const at::Tensor& reports, const at::Tensor& key_hashes,
                                            int64_t k) {
  at::NoGradGuard no_grad;
  auto u = l2_normalize(reports.detach());
  const int64_t batch = u.size(0);
  auto similarity = u.matmul(u.t());
  auto keys = key_hashes.to(u.device());
  auto excluded = at::eye(batch, u.options().dtype(at::kBool))
                      .logical_or(keys.unsqueeze(1).eq(keys.unsqueeze(0)));
  auto gather = [&](const at::Tensor& rows) {
    return u.index_select(0, rows.reshape({-1})).view({rows.size(0), rows.size(1), u.size(1)});
  };
  auto ids_of = [](const at::Tensor& index) { return index; };
  return detail::select_top_k(similarity, excluded, gather, ids_of, k, u.size(1));
}

// ---------------------------------------------------------------------------------------
// The max step
// ---------------------------------------------------------------------------------------

struct MaxStepOptions {
  IHN_ARG(int64_t, steps) = 5;
  /// Initial geodesic step (chord length) of each ascent iteration, halved per sample
  /// whenever a step would lower that sample's loss.
  IHN_ARG(double, step_size) = 0.25;
  /// Chord radius of the trust region around each negative's (feasible) start.
  IHN_ARG(double, radius) = 0.5;
  /// cos(image, negative) <= cos(image, positive) − margin, always.
  IHN_ARG(double, margin) = 0.05;
};

struct MaxStepResult {
  at::Tensor negatives;    ///< B x K x D unit, detached
  at::Tensor loss_before;  ///< B per-sample alignment loss at the feasible start
  at::Tensor loss_after;   ///< B, >= loss_before element-wise
};

/// Moves each negative onto the feasible set, then runs projected gradient ascent of the
/// per-sample alignment loss with respect to the negatives only. images and reports are
/// detached inside (the network stays frozen: no parameter and no .grad is touched).
/// anchors: B x K x D trust-region centres; start: B x K x D initial points (e.g. the
/// previous visit's negatives, or the anchors); mask: B x K bool.
inline MaxStepResult maximise_negatives(const AlignmentLoss& loss, const at::Tensor& images,
                                        const at::Tensor& reports, const at::Tensor& anchors,
                                        const at::Tensor& start, const at::Tensor& mask,
                                        const at::Tensor& same_report,
                                        const MaxStepOptions& options) {
  constexpr std::string_view where = "ihn::maximise_negatives";
  if (options.steps() < 0) detail::fail(where, "steps must be >= 0");
  if (!(options.step_size() > 0.0)) detail::fail(where, "step_size must be > 0");
  if (!(options.radius() >= 0.0 && options.radius() <= max_trust_radius))
    detail::fail(where, "radius must lie in [0, sqrt(2)] (a convex cap on the sphere)");
  if (!(options.margin() >= 0.0)) detail::fail(where, "margin must be >= 0");
  // Constant inputs: the ascent never reaches the network.
  const auto z = l2_normalize(images.detach());
  const auto u = l2_normalize(reports.detach());
  const auto image_dir = z.unsqueeze(1);                                       // B x 1 x D
  const auto limit = ((z * u).sum(-1, true) - options.margin()).unsqueeze(1);  // B x 1 x 1
  const auto positive_dir = u.unsqueeze(1);
  const auto active = mask.to(at::kBool).unsqueeze(-1);

  at::NoGradGuard outer_no_grad;
  // Feasible trust-region centres, then a feasible start inside the cap.
  auto centre = enforce_margin(l2_normalize(anchors.detach()), image_dir, limit, positive_dir);
  auto current = project_to_cap(l2_normalize(start.detach()), centre, options.radius());
  current = retreat_to_margin(centre, current, image_dir, limit);
  current = at::where(active, current, centre);

  auto per_sample = [&](const at::Tensor& negatives) {
    return loss.per_sample(z, u, negatives, mask, same_report);
  };
  MaxStepResult result;
  result.loss_before = per_sample(current);
  auto current_loss = result.loss_before;
  auto step = at::full({z.size(0), 1, 1}, options.step_size(), z.options());
  for (int64_t s = 0; s < options.steps(); ++s) {
    // For both loss kinds, ∂ℓ_i/∂n_ik is a non-negative multiple of ẑ_i (softmax weight / τ,
    // or the hinge's indicator), so the normalised tangential ascent direction is the
    // tangential part of ẑ_i: computed directly instead of through autograd.
    auto tangent = image_dir - (image_dir * current).sum(-1, true) * current;
    auto direction = l2_normalize(tangent);
    auto candidate = l2_normalize(current + step * direction);
    candidate = project_to_cap(candidate, centre, options.radius());
    candidate = retreat_to_margin(current, candidate, image_dir, limit);
    candidate = at::where(active, candidate, current);
    auto candidate_loss = per_sample(candidate);
    // Accept per sample only when its loss does not drop: the max step is monotone.
    auto accept = candidate_loss >= current_loss;
    const auto accept3 = accept.view({-1, 1, 1});
    current = at::where(accept3, candidate, current);
    current_loss = at::where(accept, candidate_loss, current_loss);
    step = at::where(accept3, step, 0.5 * step);
  }
  result.negatives = current;
  result.loss_after = current_loss;
  return result;
}

}  // namespace v0
}  // namespace ihn
