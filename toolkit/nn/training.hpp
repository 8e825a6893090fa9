// Pieces a training step of either port needs: the official masked NLL (modules/loss.py, the same
// in R2Gen and R2GenCMN), the masked mean that turns decoder states into report features, and a
// parameter list without duplicates for optimisers (R2GenCMN registers one module under two
// names; LibTorch's Module::parameters() lists such tensors twice).
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

namespace ihn_toolkit::nn {

/// modules/loss.py compute_loss: masked NLL of logprobs (B, T-1, V+1) against ids[:, 1:] with
/// masks[:, 1:], summed over tokens and divided by the mask sum.
torch::Tensor compute_loss(const torch::Tensor& logprobs, const torch::Tensor& reports_ids,
                           const torch::Tensor& reports_masks);

/// Masked mean over dim 1: x (B, T, d), mask (B, T) -> (B, d).
torch::Tensor masked_mean(const torch::Tensor& x, const torch::Tensor& mask);

/// Valid positions of the teacher-forced decoder input ids[:, :-1]: masks[:, :-1], or, without
/// masks, ids > 0 with position 0 (BOS = 0) kept. (B, T-1).
torch::Tensor decoder_input_mask(const torch::Tensor& reports_ids,
                                 const torch::Tensor& reports_masks);

/// The optimiser's zero_grad with set_to_none: the official loops zero every gradient (LibTorch
/// 1.13's Optimizer::zero_grad has no set_to_none), which costs a write of every gradient and
/// makes backward add into it; with none, backward's first gradient becomes it. Every parameter
/// that gets a gradient gets it every step, so Adam and the clipping see the same values.
inline void clear_grads(torch::optim::Optimizer& optimizer) {
  for (auto& group : optimizer.param_groups())
    for (auto& p : group.params()) p.mutable_grad().reset();
}

/// named_parameters() with every tensor listed once, under the first name met in registration
/// order (Python's Module.named_parameters() does the same). Hand these, not parameters(), to an
/// optimiser: a tensor listed twice would be stepped twice.
torch::OrderedDict<std::string, torch::Tensor> unique_named_parameters(
    const torch::nn::Module& module);
/// The values of unique_named_parameters(module).
std::vector<torch::Tensor> unique_parameters(const torch::nn::Module& module);

}  // namespace ihn_toolkit::nn
