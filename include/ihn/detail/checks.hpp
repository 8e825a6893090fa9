// Input validation shared by the library: every public entry point checks shapes, dtypes
// and finiteness first and throws std::invalid_argument naming the argument and the problem,
// so a NaN from a user's model is reported where it enters ihn, not three steps later.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>

namespace ihn {
inline namespace v0 {
namespace detail {

inline std::string shape_string(const at::Tensor& t) {
  std::ostringstream out;
  out << t.sizes();
  return out.str();
}

[[noreturn]] inline void fail(std::string_view where, const std::string& what) {
  throw std::invalid_argument(std::string(where) + ": " + what);
}

inline void check_defined(const at::Tensor& t, std::string_view where, std::string_view name) {
  if (!t.defined()) fail(where, std::string(name) + " is an undefined tensor");
}

inline void check_floating(const at::Tensor& t, std::string_view where, std::string_view name) {
  check_defined(t, where, name);
  if (!t.is_floating_point())
    fail(where, std::string(name) + " must be a floating-point tensor, got " +
                    std::string(c10::toString(t.scalar_type())));
}

inline void check_dim(const at::Tensor& t, int64_t dim, std::string_view where,
                      std::string_view name, std::string_view expected_layout) {
  if (t.dim() != dim)
    fail(where, std::string(name) + " must be " + std::string(expected_layout) + ", got shape " +
                    shape_string(t));
}

/// Throws when `t` holds NaN or Inf, naming the first offending row.
inline void check_finite(const at::Tensor& t, std::string_view where, std::string_view name) {
  at::NoGradGuard no_grad;
  auto finite = at::isfinite(t.detach());
  if (finite.all().item<bool>()) return;
  auto rows = t.dim() > 1 ? finite.reshape({t.size(0), -1}).all(1) : finite;
  const int64_t first_bad = (~rows).nonzero().index({0, 0}).item<int64_t>();
  const bool has_nan = at::isnan(t.detach()).any().item<bool>();
  fail(where, std::string(name) + " contains " + (has_nan ? "NaN" : "Inf") + " (first at row " +
                  std::to_string(first_bad) +
                  "); check the model's forward pass and the learning rate");
}

/// 64-bit FNV-1a: a stable hash of report keys (std::hash is not stable across platforms,
/// and the hashes are saved in the augmenter's state).
inline int64_t fnv1a64(std::string_view text) {
  uint64_t hash = 1469598103934665603ULL;
  for (unsigned char c : text) {
    hash ^= c;
    hash *= 1099511628211ULL;
  }
  return static_cast<int64_t>(hash);
}

}  // namespace detail
}  // namespace v0
}  // namespace ihn
