// Adam (with amsgrad and L2 weight decay, as torch::optim::Adam) whose per-parameter update on
// CPU float32 tensors is one pass over memory instead of about ten tensor operations and two
// temporaries: the step of a paper-config R2Gen (78 M parameters) reads and writes each of
// parameter, gradient and the three moments once. It is a torch::optim::Adam: same options,
// same state (AdamParamState), so checkpoints written with either load into the other.
#pragma once

#include <torch/torch.h>

namespace ihn_toolkit::nn {

class FusedAdam : public torch::optim::Adam {
 public:
  using torch::optim::Adam::Adam;
  /// torch::optim::Adam::step's arithmetic, element by element in float32 (the same operations
  /// in the same order; up to a rounding of the fused multiply-adds ATen's kernels use). Other
  /// devices, dtypes or layouts take torch::optim::Adam's tensor operations.
  torch::Tensor step(LossClosure closure = nullptr) override;
};

}  // namespace ihn_toolkit::nn
