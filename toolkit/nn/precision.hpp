// Mixed precision for the ports and the trainer: which precisions a machine runs, autocast
// around the forward pass, and dynamic loss scaling for float16.
//
// The weights, their gradients and the optimiser's state stay float32 (the master copy):
// autocast runs the convolutions and matrix products in bfloat16 / float16 and keeps the
// reductions that need range or precision (softmax, log-softmax, norms, losses) in float32.
// Checkpoints are therefore float32 whatever the precision, and interchangeable.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace ihn_toolkit::nn {

enum class Precision { fp32, bf16, fp16 };

/// "fp32", "bf16", "fp16" -> Precision; anything else throws std::invalid_argument.
Precision parse_precision(const std::string& name);
const char* to_string(Precision precision);

/// The CPU executes bfloat16 dot products natively (AVX512-BF16 or AMX-BF16, which oneDNN
/// uses for convolutions and matrix products); without it bf16 is emulated and slower.
bool cpu_has_native_bf16();

/// One line per precision saying where it runs on this machine (for `ihn version`).
std::string precision_support();

/// Throws std::invalid_argument, naming the option, for a precision `device` cannot run
/// (float16 on the CPU: LibTorch's CPU autocast has no float16 kernels).
void check_precision(Precision precision, const c10::Device& device);

/// Whether autocast is on for `device_type` on this thread (any LibTorch version).
bool autocast_enabled(c10::DeviceType device_type);

/// Autocast for one device type to the precision's dtype while alive; fp32 does nothing.
/// Restores the previous state, and empties autocast's cast-weight cache when the outermost
/// region ends (the weights change with every optimiser step).
class AutocastGuard {
 public:
  AutocastGuard(Precision precision, c10::DeviceType device_type);
  ~AutocastGuard();
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  bool active_ = false;
  c10::DeviceType device_type_ = c10::DeviceType::CPU;
  bool was_enabled_ = false;
  at::ScalarType was_dtype_ = at::kBFloat16;
};

/// Dynamic loss scaling for float16, as torch.cuda.amp.GradScaler: the loss is multiplied by
/// the scale before backward so that small gradients do not flush to zero; the gradients are
/// divided by it before clipping and the step; a step whose gradients hold an Inf or NaN is
/// skipped and the scale halved; after `growth_interval` finite steps in a row it doubles.
/// Disabled (bf16, fp32) it is the identity and never skips.
class GradScaler {
 public:
  explicit GradScaler(bool enabled, double initial_scale = 65536.0, double growth_factor = 2.0,
                      double backoff_factor = 0.5, int64_t growth_interval = 2000);

  bool enabled() const { return enabled_; }
  double scale() const { return scale_; }
  int64_t finite_steps() const { return finite_steps_; }

  /// loss * scale (loss itself when disabled).
  torch::Tensor scale_loss(const torch::Tensor& loss) const;
  /// Divides every defined gradient by the scale; returns false when any of them holds an Inf
  /// or NaN (the step must then be skipped). Disabled: true, gradients untouched.
  bool unscale_gradients(const std::vector<torch::Tensor>& parameters) const;
  /// After each step: backs off on `found_inf`, grows after growth_interval finite steps.
  void update(bool found_inf);
  /// For checkpoints: the scale and the count of finite steps since the last change.
  void restore(double scale, int64_t finite_steps);

 private:
  bool enabled_;
  double scale_, growth_factor_, backoff_factor_;
  int64_t growth_interval_, finite_steps_ = 0;
};

}  // namespace ihn_toolkit::nn
