// ihn's own arithmetic runs in float32 (or float64) even inside a caller's autocast region.
//
// Why: the max step moves negatives by gradient ascent inside a trust region of radius ~0.1 and
// compares cosines that differ in the third decimal (positive vs hardest negative near the end
// of the schedule); bfloat16 keeps 8 significant bits (relative spacing 2^-8 ≈ 0.004), so
// steps and margins of that size would round away, and float16's range is too small for the
// logsumexp of the alignment loss at temperature 0.07. The cost is small: B x D and B x K x D
// tensors, not the network.
#pragma once

#include <c10/core/DispatchKeySet.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/types.h>

namespace ihn {
inline namespace v0 {
namespace detail {

/// While alive, no autocast (CPU, CUDA, ...) applies on this thread: ops run in their inputs'
/// dtype.
class Float32Region {
 public:
  Float32Region() : exclude_(c10::autocast_dispatch_keyset) {}

 private:
  c10::impl::ExcludeDispatchKeyGuard exclude_;
};

/// `t` in float32 when it is a reduced-precision float (bfloat16, float16); unchanged otherwise.
/// Differentiable: gradients flow back in the input's dtype.
inline at::Tensor at_least_float32(const at::Tensor& t) {
  if (!t.defined()) return t;
  const auto type = t.scalar_type();
  return type == at::kBFloat16 || type == at::kHalf ? t.to(at::kFloat) : t;
}

}  // namespace detail
}  // namespace v0
}  // namespace ihn
