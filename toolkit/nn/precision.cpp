#include "nn/precision.hpp"

#include <ATen/autocast_mode.h>
#include <torch/cuda.h>
#include <torch/version.h>

#include <fstream>
#include <sstream>
#include <stdexcept>

// LibTorch 2.4 replaced the per-device autocast functions by ones taking the device type.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
#define IHN_AUTOCAST_BY_DEVICE_TYPE 1
#else
#define IHN_AUTOCAST_BY_DEVICE_TYPE 0
#endif

namespace ihn_toolkit::nn {

namespace {

void set_autocast(c10::DeviceType type, bool enabled, at::ScalarType dtype) {
#if IHN_AUTOCAST_BY_DEVICE_TYPE
  at::autocast::set_autocast_enabled(type, enabled);
  at::autocast::set_autocast_dtype(type, dtype);
#else
  if (type == c10::DeviceType::CPU) {
    at::autocast::set_cpu_enabled(enabled);
    at::autocast::set_autocast_cpu_dtype(dtype);
  } else {
    at::autocast::set_enabled(enabled);
    at::autocast::set_autocast_gpu_dtype(dtype);
  }
#endif
}

at::ScalarType autocast_dtype(c10::DeviceType type) {
#if IHN_AUTOCAST_BY_DEVICE_TYPE
  return at::autocast::get_autocast_dtype(type);
#else
  return type == c10::DeviceType::CPU ? at::autocast::get_autocast_cpu_dtype()
                                      : at::autocast::get_autocast_gpu_dtype();
#endif
}

}  // namespace

Precision parse_precision(const std::string& name) {
  if (name == "fp32") return Precision::fp32;
  if (name == "bf16") return Precision::bf16;
  if (name == "fp16") return Precision::fp16;
  throw std::invalid_argument("--precision " + name + ": use fp32, bf16 or fp16");
}

const char* to_string(Precision precision) {
  switch (precision) {
    case Precision::bf16:
      return "bf16";
    case Precision::fp16:
      return "fp16";
    default:
      return "fp32";
  }
}

bool cpu_has_native_bf16() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line);) {
    if (line.rfind("flags", 0) != 0) continue;
    std::istringstream flags(line);
    for (std::string flag; flags >> flag;)
      if (flag == "avx512_bf16" || flag == "amx_bf16") return true;
    return false;  // the first CPU's flags stand for all
  }
  return false;
}

std::string precision_support() {
  const bool cuda = torch::cuda::is_available();
  std::string out = "precision: fp32 (CPU";
  out += cuda ? ", CUDA)\n" : ")\n";
  out += std::string("           bf16 (CPU: ") +
         (cpu_has_native_bf16() ? "native, AVX512-BF16/AMX through oneDNN"
                                : "emulated, slower than fp32 on this CPU") +
         (cuda ? "; CUDA: Ampere or newer" : "; no CUDA device") + ")\n";
  out += std::string("           fp16 (") +
         (cuda ? "CUDA, with loss scaling" : "CUDA only; none here") + ")";
  return out;
}

void check_precision(Precision precision, const c10::Device& device) {
  if (precision == Precision::fp16 && device.is_cpu())
    throw std::invalid_argument(
        "--precision fp16 runs on CUDA only (LibTorch's CPU autocast has no float16 kernels); "
        "on the CPU use --precision bf16");
}

bool autocast_enabled(c10::DeviceType device_type) {
#if IHN_AUTOCAST_BY_DEVICE_TYPE
  return at::autocast::is_autocast_enabled(device_type);
#else
  return device_type == c10::DeviceType::CPU ? at::autocast::is_cpu_enabled()
                                             : at::autocast::is_enabled();
#endif
}

AutocastGuard::AutocastGuard(Precision precision, c10::DeviceType device_type) {
  if (precision == Precision::fp32) return;
  active_ = true;
  device_type_ = device_type;
  was_enabled_ = autocast_enabled(device_type);
  was_dtype_ = autocast_dtype(device_type);
  set_autocast(device_type, true, precision == Precision::bf16 ? at::kBFloat16 : at::kHalf);
  at::autocast::increment_nesting();
}

AutocastGuard::~AutocastGuard() {
  if (!active_) return;
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  set_autocast(device_type_, was_enabled_, was_dtype_);
}

GradScaler::GradScaler(bool enabled, double initial_scale, double growth_factor,
                       double backoff_factor, int64_t growth_interval)
    : enabled_(enabled),
      scale_(enabled ? initial_scale : 1.0),
      growth_factor_(growth_factor),
      backoff_factor_(backoff_factor),
      growth_interval_(growth_interval) {
  if (!(initial_scale > 0) || !(growth_factor > 1) || !(backoff_factor > 0 && backoff_factor < 1) ||
      growth_interval < 1)
    throw std::invalid_argument(
        "GradScaler: need initial_scale > 0, growth_factor > 1, 0 < backoff_factor < 1 and "
        "growth_interval >= 1");
}

torch::Tensor GradScaler::scale_loss(const torch::Tensor& loss) const {
  return enabled_ ? loss * scale_ : loss;
}

bool GradScaler::unscale_gradients(const std::vector<torch::Tensor>& parameters) const {
  if (!enabled_) return true;
  torch::NoGradGuard no_grad;
  const double inverse = 1.0 / scale_;
  // One device-to-host read per step, not one per parameter: the flags stay on the device.
  torch::Tensor all_finite;
  for (const auto& p : parameters) {
    auto& g = p.mutable_grad();
    if (!g.defined()) continue;
    g.mul_(inverse);
    auto finite = torch::isfinite(g).all();
    all_finite = all_finite.defined() ? all_finite.logical_and(finite) : finite;
  }
  return !all_finite.defined() || all_finite.item<bool>();
}

void GradScaler::update(bool found_inf) {
  if (!enabled_) return;
  if (found_inf) {
    scale_ *= backoff_factor_;
    finite_steps_ = 0;
  } else if (++finite_steps_ >= growth_interval_) {
    scale_ *= growth_factor_;
    finite_steps_ = 0;
  }
}

void GradScaler::restore(double scale, int64_t finite_steps) {
  if (!enabled_) return;
  if (!(scale > 0) || finite_steps < 0)
    throw std::invalid_argument("GradScaler: a checkpoint's loss scale must be > 0");
  scale_ = scale;
  finite_steps_ = finite_steps;
}

}  // namespace ihn_toolkit::nn
