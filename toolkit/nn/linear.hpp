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

#include <vector>

namespace ihn_toolkit::nn {

/// x (..., in) -> x Wᵀ + b (..., out), differentiable in all three. `bias` may be undefined.
torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& weight,
                     const torch::Tensor& bias = {});

/// True when this build multiplies CPU float32 through oneDNN (IHN_WITH_DNNL).
bool linear_uses_dnnl();

/// A Linear layer applied at every step of a recurrence (the relational memory's loop over the
/// report's positions), with the weight's gradient computed once for all steps. Each step's
/// product x_t Wᵀ + b and, in backward, its input gradient are computed at once, as the
/// recurrence needs them; the weight's gradient Σ_t dy_tᵀ x_t (and the bias's Σ dy_t) waits until
/// the last step's output gradient has arrived and is then one product over all steps' rows,
/// instead of one thin product per step (its reduction only a few rows deep) and one
/// accumulation per step into the weight's gradient. Make one per forward pass: it keeps the
/// steps' inputs and output gradients until the backward pass has used them. Without grad
/// mode, or for a weight that needs no gradient, it is nn::linear.
class SharedWeightLinear {
 public:
  SharedWeightLinear(const torch::Tensor& weight, const torch::Tensor& bias);
  torch::Tensor operator()(const torch::Tensor& x) const;
  /// The steps' inputs and output gradients, recorded by each step's backward and consumed by
  /// the gathering node's. An intrusive_ptr target, so that autograd contexts can hold it.
  struct Records : torch::CustomClassHolder {
    std::vector<torch::Tensor> inputs, grads;
  };

 private:
  /// The weight and bias as the steps use them: outputs of the node that gathers their
  /// gradients (or the originals without grad mode).
  torch::Tensor weight_, bias_;
  c10::intrusive_ptr<Records> records_;
};

/// torch::nn::Linear with the same parameters, names and initialisation, whose forward is
/// nn::linear. A drop-in: checkpoints, deterministic fills and optimisers see the same module.
/// (clone() returns a plain torch::nn::LinearImpl.)
struct LinearImpl : torch::nn::LinearImpl {
  using torch::nn::LinearImpl::LinearImpl;
  torch::Tensor forward(const torch::Tensor& x) { return nn::linear(x, weight, bias); }
};
TORCH_MODULE(Linear);

}  // namespace ihn_toolkit::nn
