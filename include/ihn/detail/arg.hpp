// IHN_ARG: chained-setter options, as torch::nn's TORCH_ARG, so option structs read
// `Options{}.negatives_per_sample(4).weight(0.1)`; as there, the non-const getter gives a
// reference that a config reader or a command-line parser can bind.
#pragma once

#define IHN_ARG(T, name)                            \
 public:                                            \
  auto name(const T& new_##name)->decltype(*this) { \
    this->name##_ = new_##name;                     \
    return *this;                                   \
  }                                                 \
  const T& name() const noexcept {                  \
    return this->name##_;                           \
  }                                                 \
  T& name() noexcept {                              \
    return this->name##_;                           \
  }                                                 \
                                                    \
 private:                                           \
  T name##_ /* NOLINT */
