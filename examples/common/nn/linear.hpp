// Linear layers whose CPU float32 products run oneDNN's sgemm instead of LibTorch's BLAS.
//
// Debian's LibTorch multiplies through OpenBLAS, which on the transformer's shapes (a few hundred
// to a few thousand rows, 256-2048 columns) reaches 115-180 GFLOP/s on two cores where oneDNN's
// sgemm reaches 180-225 (docs/performance.md, "Linear layers"). In training (grad mode on) the
// forward and both backward products of a Linear go through `linear()` below; everything else
// (no_grad inference and decoding, CUDA, other dtypes, a build without oneDNN's headers) runs
// at::linear. The two agree to float32 rounding.
#pragma once

#include <torch/torch.h>

namespace ihn_examples::nn {

/// x (..., in) -> x Wᵀ + b (..., out), differentiable in all three. `bias` may be undefined.
torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& weight,
                     const torch::Tensor& bias = {});

/// True when this build multiplies CPU float32 through oneDNN (IHN_WITH_DNNL).
bool linear_uses_dnnl();

/// torch::nn::Linear with the same parameters, names and initialisation, whose forward is
/// nn::linear. A drop-in: checkpoints, deterministic fills and optimisers see the same module.
/// (clone() returns a plain torch::nn::LinearImpl.)
struct LinearImpl : torch::nn::LinearImpl {
  using torch::nn::LinearImpl::LinearImpl;
  torch::Tensor forward(const torch::Tensor& x) { return nn::linear(x, weight, bias); }
};
TORCH_MODULE(Linear);

}  // namespace ihn_examples::nn
