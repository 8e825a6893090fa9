// Feature helpers for plugging a model into ihn without new weights: masked mean pooling of
// token-level hidden states (padding never counts) and L2 normalisation that is defined for
// zero vectors.
#pragma once

#include <ihn/detail/checks.hpp>

#include <torch/types.h>

namespace ihn {
inline namespace v0 {

/// Mean of `hidden` (B x T x D) over the positions where `mask` (B x T, any dtype; nonzero =
/// real token) is set. A row with no real token gives a zero vector, not NaN.
inline at::Tensor masked_mean(const at::Tensor& hidden, const at::Tensor& mask) {
  constexpr std::string_view where = "ihn::masked_mean";
  detail::check_floating(hidden, where, "hidden");
  detail::check_dim(hidden, 3, where, "hidden", "B x T x D");
  detail::check_defined(mask, where, "mask");
  detail::check_dim(mask, 2, where, "mask", "B x T");
  if (mask.size(0) != hidden.size(0) || mask.size(1) != hidden.size(1))
    detail::fail(where, "mask shape " + detail::shape_string(mask) +
                            " does not match hidden states " + detail::shape_string(hidden));
  auto weights = (mask != 0).to(hidden.scalar_type()).unsqueeze(-1);  // B x T x 1
  auto counts = weights.sum(1).clamp_min(1.0);                        // B x 1
  return (hidden * weights).sum(1) / counts;
}

/// Row-wise L2 normalisation along the last dimension; zero rows stay zero.
inline at::Tensor l2_normalize(const at::Tensor& x, double eps = 1e-12) {
  return x / x.norm(2, -1, /*keepdim=*/true).clamp_min(eps);
}

}  // namespace v0
}  // namespace ihn
