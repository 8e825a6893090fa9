#include "nn/fused_adam.hpp"

#include "nn/cpu_dispatch.hpp"  // an AVX2 clone of the update loop

#include <ATen/Parallel.h>

#include <cmath>
#include <sstream>
#include <string>
#include <type_traits>

namespace ihn_toolkit::nn {

namespace {

/// The optimizer state's key for a parameter, as torch::optim::Adam makes it: LibTorch 1.13 keys
/// by the TensorImpl's address as a string (c10::guts::to_string, an ostream of the pointer,
/// which 2.x no longer has), 2.x by the address itself. A template on Key, so that only the
/// branch of the LibTorch in use is compiled.
template <class Key>
Key state_key(const torch::Tensor& p) {
  if constexpr (std::is_same_v<Key, std::string>) {
    std::ostringstream key;
    key << p.unsafeGetTensorImpl();
    return key.str();
  } else {
    return p.unsafeGetTensorImpl();
  }
}

struct Coefficients {
  float beta1, one_minus_beta1, beta2, one_minus_beta2, weight_decay, sqrt_bias_correction2, eps,
      neg_step_size;
};

bool fusable(const torch::Tensor& p, std::initializer_list<const torch::Tensor*> others) {
  if (!p.device().is_cpu() || p.scalar_type() != torch::kFloat || !p.is_non_overlapping_and_dense())
    return false;
  for (const auto* t : others)
    if (t != nullptr &&
        (!t->defined() || !t->device().is_cpu() || t->scalar_type() != torch::kFloat ||
         t->strides() != p.strides() || t->sizes() != p.sizes()))
      return false;
  return true;
}

// One element range of the update, written so that the compiler vectorises it (no branches, no
// errno from sqrt: this file is built with -O3 -fno-math-errno).
template <bool kAmsgrad, bool kWeightDecay>
IHN_AVX2_CLONE void update_range(float* __restrict p, const float* __restrict g,
                                 float* __restrict m, float* __restrict v, float* __restrict v_max,
                                 int64_t begin, int64_t end, const Coefficients c) {
  for (int64_t i = begin; i < end; ++i) {
    float gi = g[i];
    if (kWeightDecay) gi = gi + c.weight_decay * p[i];              // grad.add(p, weight_decay)
    const float mi = m[i] * c.beta1 + c.one_minus_beta1 * gi;       // exp_avg.mul_().add_()
    const float vi = v[i] * c.beta2 + c.one_minus_beta2 * gi * gi;  // exp_avg_sq.mul_().addcmul_()
    m[i] = mi;
    v[i] = vi;
    float second = vi;
    if (kAmsgrad) {  // torch::max_out: a NaN on either side propagates
      const float held = v_max[i];
      second = (held > vi || held != held) ? held : vi;
      v_max[i] = second;
    }
    const float denom = std::sqrt(second) / c.sqrt_bias_correction2 + c.eps;
    p[i] = p[i] + c.neg_step_size * mi / denom;  // addcdiv_(exp_avg, denom, -step_size)
  }
}

template <bool kAmsgrad, bool kWeightDecay>
void update(float* p, const float* g, float* m, float* v, float* v_max, int64_t n,
            const Coefficients& c) {
  at::parallel_for(0, n, 1 << 15, [&](int64_t begin, int64_t end) {
    update_range<kAmsgrad, kWeightDecay>(p, g, m, v, v_max, begin, end, c);
  });
}

void fused_update(const torch::Tensor& param, const torch::Tensor& grad, torch::Tensor& exp_avg,
                  torch::Tensor& exp_avg_sq, torch::Tensor* max_exp_avg_sq, const Coefficients& c) {
  // Dense with equal strides: the same flat offsets address the same element in all five.
  float* p = param.data_ptr<float>();
  const float* g = grad.data_ptr<float>();
  float* m = exp_avg.data_ptr<float>();
  float* v = exp_avg_sq.data_ptr<float>();
  float* v_max = max_exp_avg_sq ? max_exp_avg_sq->data_ptr<float>() : nullptr;
  const int64_t n = param.numel();
  const bool decay = c.weight_decay != 0;
  if (v_max)
    decay ? update<true, true>(p, g, m, v, v_max, n, c)
          : update<true, false>(p, g, m, v, v_max, n, c);
  else
    decay ? update<false, true>(p, g, m, v, v_max, n, c)
          : update<false, false>(p, g, m, v, v_max, n, c);
}

}  // namespace

torch::Tensor FusedAdam::step(LossClosure closure) {
  torch::NoGradGuard no_grad;
  torch::Tensor loss;
  if (closure != nullptr) {
    at::AutoGradMode enable_grad(true);
    loss = closure();
  }
  using Key = typename std::decay_t<decltype(state_)>::key_type;
  auto key = [](const torch::Tensor& p) { return state_key<Key>(p); };
  for (auto& group : param_groups_) {
    auto& options = static_cast<torch::optim::AdamOptions&>(group.options());
    for (auto& p : group.params()) {
      if (!p.grad().defined()) continue;
      auto grad = p.grad();
      TORCH_CHECK(!grad.is_sparse(), "FusedAdam does not support sparse gradients");
      auto found = state_.find(key(p));
      if (found == state_.end()) {
        auto state = std::make_unique<torch::optim::AdamParamState>();
        state->step(0);
        state->exp_avg(torch::zeros_like(p, at::MemoryFormat::Preserve));
        state->exp_avg_sq(torch::zeros_like(p, at::MemoryFormat::Preserve));
        if (options.amsgrad())
          state->max_exp_avg_sq(torch::zeros_like(p, at::MemoryFormat::Preserve));
        found = state_.emplace(key(p), std::move(state)).first;
      }
      auto& state = static_cast<torch::optim::AdamParamState&>(*found->second);
      auto& exp_avg = state.exp_avg();
      auto& exp_avg_sq = state.exp_avg_sq();
      auto& max_exp_avg_sq = state.max_exp_avg_sq();
      state.step(state.step() + 1);
      const double beta1 = std::get<0>(options.betas()), beta2 = std::get<1>(options.betas());
      const double bias_correction1 = 1 - std::pow(beta1, state.step());
      const double bias_correction2 = 1 - std::pow(beta2, state.step());
      const double step_size = options.lr() / bias_correction1;
      const bool amsgrad = options.amsgrad();
      if (fusable(p, {&grad, &exp_avg, &exp_avg_sq, amsgrad ? &max_exp_avg_sq : nullptr})) {
        // Scalars as ATen's float kernels see them: converted to float once.
        const Coefficients c{static_cast<float>(beta1),
                             static_cast<float>(1 - beta1),
                             static_cast<float>(beta2),
                             static_cast<float>(1 - beta2),
                             static_cast<float>(options.weight_decay()),
                             static_cast<float>(std::sqrt(bias_correction2)),
                             static_cast<float>(options.eps()),
                             static_cast<float>(-step_size)};
        fused_update(p, grad, exp_avg, exp_avg_sq, amsgrad ? &max_exp_avg_sq : nullptr, c);
        continue;
      }
      // torch::optim::Adam::step's operations.
      if (options.weight_decay() != 0) grad = grad.add(p, options.weight_decay());
      exp_avg.mul_(beta1).add_(grad, 1 - beta1);
      exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1 - beta2);
      torch::Tensor denom;
      if (amsgrad) {
        torch::max_out(max_exp_avg_sq, exp_avg_sq, max_exp_avg_sq);
        denom = (max_exp_avg_sq.sqrt() / std::sqrt(bias_correction2)).add_(options.eps());
      } else {
        denom = (exp_avg_sq.sqrt() / std::sqrt(bias_correction2)).add_(options.eps());
      }
      p.addcdiv_(exp_avg, denom, -step_size);
    }
  }
  return loss;
}

}  // namespace ihn_toolkit::nn
