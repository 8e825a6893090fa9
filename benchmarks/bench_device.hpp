// The benchmarks' device flag (`cpu`, the default, or `cuda`): where the model, its inputs and
// the optimiser's state live, and a synchronisation point before every clock read, so that a
// timed region includes the GPU work queued in it (CUDA kernels run asynchronously).
//
// torch::cuda::is_available() and torch::cuda::synchronize() (torch/torch.h includes them) are
// part of LibTorch's C++ API in 1.13 and 2.x, also in a CPU-only build, where is_available() is
// false and synchronize() is never reached.
#pragma once
#include <torch/torch.h>

#include <stdexcept>
#include <string>

namespace ihn_bench {

inline bool is_device_flag(const std::string& flag) {
  return flag == "cpu" || flag == "cuda";
}

/// "cpu" or "cuda" -> the device; throws std::runtime_error, saying why, when CUDA is asked for
/// and this LibTorch build or machine has none.
inline torch::Device parse_device(const std::string& name) {
  if (name == "cpu") return torch::Device(torch::kCPU);
  if (name != "cuda") throw std::runtime_error("unknown device " + name + " (use cpu or cuda)");
  if (!torch::cuda::is_available())
    throw std::runtime_error(
        "device cuda requested, but torch::cuda::is_available() is false: this LibTorch is a "
        "CPU-only build or no CUDA device is visible (build against a CUDA LibTorch, e.g. "
        "-DCMAKE_PREFIX_PATH=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)'))");
  return torch::Device(torch::kCUDA);
}

/// Waits until the work queued on `device` is done (a no-op on the CPU, where it already is).
inline void synchronize(const torch::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize(device.has_index() ? device.index() : -1);
}

}  // namespace ihn_bench
