// Dropout whose CPU float32 mask is a counter-based hash instead of LibTorch's Bernoulli draws.
//
// LibTorch 1.13's CPU dropout draws a double per element from the serial mt19937 generator and
// makes three passes (mask, scale, multiply) plus a stored mask for backward. Here one 64-bit
// draw from the default CPU generator seeds the call; element i is kept when a 32-bit hash of
// (seed, i) is at least p·2³², in one vectorised, parallel pass; backward recomputes the same
// mask from the seed instead of storing it. The mask is a pure function of (seed, i): the same
// whatever the thread count, and a checkpoint's generator state resumes it.
// Other devices and dtypes, and eval mode, behave as torch::dropout.
#pragma once

#include <torch/torch.h>

namespace ihn_toolkit::nn {

/// x with each element zeroed with probability p and the rest scaled by 1/(1-p) when `train`;
/// x itself otherwise. Differentiable.
torch::Tensor dropout(const torch::Tensor& x, double p, bool train);

/// The keep-mask the CPU path uses for `seed` over `numel` elements (1 = kept): for tests.
torch::Tensor dropout_mask(uint64_t seed, int64_t numel, double p);

/// torch::nn::Dropout with nn::dropout as its forward (same options; clone() returns a plain
/// torch::nn::DropoutImpl).
struct DropoutImpl : torch::nn::DropoutImpl {
  using torch::nn::DropoutImpl::DropoutImpl;
  torch::Tensor forward(torch::Tensor x) { return nn::dropout(x, options.p(), is_training()); }
};
TORCH_MODULE(Dropout);

}  // namespace ihn_toolkit::nn
