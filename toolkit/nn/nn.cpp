// Implementation of the shared blocks (transformer.hpp, resnet.hpp), the generic decoders
// (decoding.hpp) and the training helpers (training.hpp), in one translation unit: every TU that
// includes torch costs ~20 s to compile.
#include "transformer.hpp"

#include "cpu_dispatch.hpp"
#include "decoding.hpp"
#include "dropout.hpp"
#include "linear.hpp"
#include "multiview.hpp"
#include "precision.hpp"
#include "resnet.hpp"
#include "training.hpp"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>

#if IHN_WITH_DNNL
#include <dnnl.h>
#endif

namespace ihn_toolkit::nn {

// ---------------------------------------------------------------------------------------------
// Linear layers (linear.hpp)

namespace {

#if IHN_WITH_DNNL
/// Row-major C (m x n) = op(A) op(B) + beta C: oneDNN's sgemm, threaded with OpenMP like the
/// rest of LibTorch's CPU work (and serial when called inside a parallel region).
void sgemm(bool transpose_a, bool transpose_b, int64_t m, int64_t n, int64_t k, const float* a,
           int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  const auto status = dnnl_sgemm(transpose_a ? 'T' : 'N', transpose_b ? 'T' : 'N', m, n, k, 1.0f, a,
                                 lda, b, ldb, beta, c, ldc);
  TORCH_CHECK(status == dnnl_success, "nn::linear: dnnl_sgemm failed (status ",
              static_cast<int>(status), ")");
}

bool dnnl_applies(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias) {
  auto cpu_float = [](const torch::Tensor& t) {
    return t.device().is_cpu() && t.scalar_type() == torch::kFloat && !t.is_sparse();
  };
  return cpu_float(x) && cpu_float(weight) && (!bias.defined() || cpu_float(bias)) &&
         weight.dim() == 2 && x.dim() >= 1 && x.size(-1) == weight.size(1) &&
         (!bias.defined() || (bias.dim() == 1 && bias.size(0) == weight.size(0))) &&
         x.numel() > 0 && weight.numel() > 0;
}
#endif

/// a·b for 2-d tensors, transposed as flagged, through oneDNN's sgemm for contiguous CPU float32
/// operands (at::mm otherwise). No autograd: for hand-written backward passes.
torch::Tensor matmul_2d(const torch::Tensor& a, bool transpose_a, const torch::Tensor& b,
                        bool transpose_b) {
  const auto lhs = transpose_a ? a.t() : a, rhs = transpose_b ? b.t() : b;
#if IHN_WITH_DNNL
  if (a.device().is_cpu() && b.device().is_cpu() && a.scalar_type() == torch::kFloat &&
      b.scalar_type() == torch::kFloat && a.is_contiguous() && b.is_contiguous() && a.numel() > 0 &&
      b.numel() > 0) {
    const int64_t m = lhs.size(0), k = lhs.size(1), n = rhs.size(1);
    auto c = torch::empty({m, n}, a.options());
    sgemm(transpose_a, transpose_b, m, n, k, a.data_ptr<float>(), a.size(1), b.data_ptr<float>(),
          b.size(1), 0.0f, c.data_ptr<float>(), n);
    return c;
  }
#endif
  return lhs.mm(rhs);
}

#if IHN_WITH_DNNL
struct LinearFunction : torch::autograd::Function<LinearFunction> {
  // Without bias: an undefined tensor cannot be a Function input.
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& weight) {
    return forward(ctx, x, weight, torch::Tensor());
  }
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& weight, const torch::Tensor& bias) {
    const int64_t in = weight.size(1), out = weight.size(0);
    auto rows = x.reshape({-1, in}).contiguous();  // a view when x is contiguous
    auto w = weight.contiguous();
    const int64_t m = rows.size(0);
    // As addmm: C starts as the broadcast bias and the product is added to it (a copy: for one
    // row, contiguous() would hand back the bias itself).
    auto y = bias.defined() ? bias.expand({m, out}).clone(at::MemoryFormat::Contiguous)
                            : torch::empty({m, out}, x.options());
    sgemm(false, true, m, out, in, rows.data_ptr<float>(), in, w.data_ptr<float>(), in,
          bias.defined() ? 1.0f : 0.0f, y.data_ptr<float>(), out);
    ctx->save_for_backward({rows, w});
    ctx->saved_data["input_sizes"] = x.sizes().vec();
    ctx->saved_data["has_bias"] = bias.defined();
    auto sizes = x.sizes().vec();
    sizes.back() = out;
    return y.view(sizes);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const auto& rows = saved[0];
    const auto& w = saved[1];
    auto grad = grad_outputs[0].reshape({rows.size(0), w.size(0)}).contiguous();
    torch::Tensor grad_x, grad_w, grad_b;
    if (ctx->needs_input_grad(0))  // dL/dx = dL/dy W
      grad_x = matmul_2d(grad, false, w, false).view(ctx->saved_data["input_sizes"].toIntVector());
    if (ctx->needs_input_grad(1)) grad_w = matmul_2d(grad, true, rows, false);  // (dL/dy)ᵀ x
    // (Past the inputs' count, an undefined gradient is dropped: the bias-free form has two.)
    if (ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2)) grad_b = grad.sum(0);
    return {grad_x, grad_w, grad_b};
  }
};
#endif

}  // namespace

bool linear_uses_dnnl() {
#if IHN_WITH_DNNL
  return true;
#else
  return false;
#endif
}

torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& weight,
                     const torch::Tensor& bias) {
#if IHN_WITH_DNNL
  // Training only: under no_grad (evaluation, decoding) the products have a few rows per step,
  // where oneDNN's sgemm is not faster (docs/performance.md), and the reports decoded stay
  // those of LibTorch's BLAS.
  // Inside autocast the product belongs to at::linear, which runs it in bf16 / fp16.
  if (at::GradMode::is_enabled() && dnnl_applies(x, weight, bias) &&
      !autocast_enabled(x.device().type()))
    return bias.defined() ? LinearFunction::apply(x, weight, bias)
                          : LinearFunction::apply(x, weight);
#endif
  return torch::nn::functional::linear(x, weight, bias);
}

// ---------------------------------------------------------------------------------------------
// SharedWeightLinear (linear.hpp)

namespace {

using torch::autograd::AutogradContext;

c10::intrusive_ptr<SharedWeightLinear::Records> records_of(AutogradContext* ctx) {
  return c10::static_intrusive_pointer_cast<SharedWeightLinear::Records>(
      ctx->saved_data["records"].toCapsule());
}

/// Passes the weight and bias through; its backward runs once every step has delivered its
/// (undefined) gradient for them, and computes both from the steps' records.
struct GatherWeightGradFunction : torch::autograd::Function<GatherWeightGradFunction> {
  static torch::autograd::variable_list forward(
      AutogradContext* ctx, const torch::Tensor& weight, const torch::Tensor& bias,
      c10::intrusive_ptr<SharedWeightLinear::Records> records) {
    ctx->saved_data["records"] = c10::IValue::make_capsule(std::move(records));
    ctx->set_materialize_grads(false);
    return {weight.view_as(weight), bias.view_as(bias)};
  }
  static torch::autograd::variable_list backward(AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto records = records_of(ctx);
    torch::Tensor grad_w, grad_b;
    if (!records->inputs.empty()) {
      const auto inputs = torch::cat(records->inputs), outputs = torch::cat(records->grads);
      grad_w = matmul_2d(outputs, true, inputs, false);  // Σ_t dy_tᵀ x_t
      grad_b = outputs.sum(0);
    }
    records->inputs.clear();  // a second backward (retain_graph) records afresh
    records->grads.clear();
    auto add = [](torch::Tensor total, const torch::Tensor& other) {
      return !other.defined() ? total : !total.defined() ? other : total.add_(other);
    };
    return {add(grad_w, grads[0]), add(grad_b, grads[1]), torch::Tensor()};
  }
};

/// One step's x Wᵀ + b. Backward: the input's gradient now, the weight's via the records.
struct StepLinearFunction : torch::autograd::Function<StepLinearFunction> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& weight, const torch::Tensor& bias,
                               c10::intrusive_ptr<SharedWeightLinear::Records> records) {
    const int64_t in = weight.size(1);
    auto rows = x.reshape({-1, in}).contiguous();
    // LibTorch's product: on a step's few rows it is faster than oneDNN's (docs/performance.md).
    auto y = torch::addmm(bias, rows, weight.t());
    ctx->save_for_backward({rows, weight});
    ctx->saved_data["records"] = c10::IValue::make_capsule(std::move(records));
    ctx->saved_data["input_sizes"] = x.sizes().vec();
    auto sizes = x.sizes().vec();
    sizes.back() = weight.size(0);
    return y.view(sizes);
  }
  static torch::autograd::variable_list backward(AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& rows = saved[0];
    const auto& weight = saved[1];
    auto grad = grads[0].reshape({rows.size(0), weight.size(0)}).contiguous();
    // Only when this backward wants the weight's gradient: otherwise the gathering node does not
    // run, and records left behind would count again in a later backward.
    if (ctx->needs_input_grad(1)) {
      auto records = records_of(ctx);
      records->inputs.push_back(rows);
      records->grads.push_back(grad);
    }
    torch::Tensor grad_x;
    if (ctx->needs_input_grad(0))
      grad_x = matmul_2d(grad, false, weight.contiguous(), false)
                   .view(ctx->saved_data["input_sizes"].toIntVector());
    return {grad_x, torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

SharedWeightLinear::SharedWeightLinear(const torch::Tensor& weight, const torch::Tensor& bias)
    : weight_(weight), bias_(bias) {
  TORCH_CHECK(bias.defined(), "SharedWeightLinear: a bias is required");
  // Inside autocast the steps are plain linear() calls: at::linear casts their operands.
  if (at::GradMode::is_enabled() && (weight.requires_grad() || bias.requires_grad()) &&
      !autocast_enabled(weight.device().type())) {
    records_ = c10::make_intrusive<Records>();
    auto gathered = GatherWeightGradFunction::apply(weight, bias, records_);
    weight_ = gathered[0];
    bias_ = gathered[1];
  }
}

torch::Tensor SharedWeightLinear::operator()(const torch::Tensor& x) const {
  if (!records_ || !at::GradMode::is_enabled()) return nn::linear(x, weight_, bias_);
  return StepLinearFunction::apply(x, weight_, bias_, records_);
}

// ---------------------------------------------------------------------------------------------
// Dropout (dropout.hpp)

namespace {

/// out[i] = in[i] * (keep(seed, i) ? scale : 0) over [begin, end), where keep compares a 32-bit
/// hash of (seed, i) with the threshold: two rounds of MurmurHash3's finaliser (a bijection of
/// 32-bit words with full avalanche) around the seed's halves. 32-bit integer arithmetic and a
/// multiply by a selected constant, written without branches so that it vectorises (0.4 ns per
/// element with AVX2 against 2 ns for 64-bit SplitMix); a NaN input stays NaN, as in
/// torch::dropout's input * mask.
IHN_AVX2_CLONE void dropout_range(const float* __restrict in, float* __restrict out, int64_t begin,
                                  int64_t end, uint64_t seed, uint32_t threshold, float scale) {
  const auto low = static_cast<uint32_t>(seed), high = static_cast<uint32_t>(seed >> 32);
  for (int64_t i = begin; i < end; ++i) {
    uint32_t h = static_cast<uint32_t>(i) * 0x9E3779B9U + low;
    h ^= h >> 16;
    h *= 0x85EBCA6BU;
    h ^= h >> 13;
    h *= 0xC2B2AE35U;
    h ^= h >> 16;
    h ^= high;
    h *= 0x85EBCA6BU;
    h ^= h >> 13;
    h *= 0xC2B2AE35U;
    h ^= h >> 16;
    const float keep = h >= threshold ? scale : 0.0f;
    out[i] = in[i] * keep;
  }
}

uint32_t dropout_threshold(double p) {
  return static_cast<uint32_t>(std::min(4294967295.0, std::floor(p * 4294967296.0)));
}

/// The masked, scaled copy of a contiguous CPU float tensor.
torch::Tensor apply_dropout_mask(const torch::Tensor& x, uint64_t seed, double p) {
  auto in = x.contiguous();
  auto out = torch::empty_like(in);
  const float* src = in.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  const uint32_t threshold = dropout_threshold(p);
  const auto scale = static_cast<float>(1.0 / (1.0 - p));
  at::parallel_for(0, in.numel(), 1 << 14, [&](int64_t begin, int64_t end) {
    dropout_range(src, dst, begin, end, seed, threshold, scale);
  });
  return out;
}

struct DropoutFunction : torch::autograd::Function<DropoutFunction> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                               double p) {
    uint64_t seed = 0;
    {  // One draw from the global generator, under its lock, as LibTorch's own samplers do.
      auto generator = at::detail::getDefaultCPUGenerator();
      std::lock_guard<std::mutex> lock(generator.mutex());
      seed = at::check_generator<at::CPUGeneratorImpl>(generator)->random64();
    }
    ctx->saved_data["seed"] = static_cast<int64_t>(seed);
    ctx->saved_data["p"] = p;
    return apply_dropout_mask(x, seed, p);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto seed = static_cast<uint64_t>(ctx->saved_data["seed"].toInt());
    const double p = ctx->saved_data["p"].toDouble();
    return {apply_dropout_mask(grad_outputs[0], seed, p), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor dropout(const torch::Tensor& x, double p, bool train) {
  if (!train || p == 0.0) return x;
  // The counter is 32 bits: one mask covers up to 2^32 elements.
  if (x.device().is_cpu() && x.scalar_type() == torch::kFloat && p > 0.0 && p < 1.0 &&
      !x.is_sparse() && x.numel() <= (int64_t{1} << 32))
    return DropoutFunction::apply(x, p);
  return torch::dropout(x, p, train);
}

torch::Tensor dropout_mask(uint64_t seed, int64_t numel, double p) {
  return apply_dropout_mask(torch::ones({numel}), seed, p).ne(0);
}

// ---------------------------------------------------------------------------------------------
// Transformer blocks

LayerNormImpl::LayerNormImpl(int64_t features, double eps_, const LayerNormNames& names)
    : gamma(register_parameter(names.weight, torch::ones({features}))),
      beta(register_parameter(names.bias, torch::zeros({features}))),
      eps(eps_) {}

std::pair<torch::Tensor, torch::Tensor> layer_norm_parts(const torch::Tensor& x, double eps) {
  auto mean = x.mean(-1, /*keepdim=*/true);
  auto std = x.std(-1, /*unbiased=*/true, /*keepdim=*/true);
  return {x - mean, std + eps};
}

torch::Tensor LayerNormImpl::forward(const torch::Tensor& x) {
  auto [centered, denom] = layer_norm_parts(x, eps);
  // Python's order: ((gamma * (x - mean)) / (std + eps)) + beta.
  return gamma * centered / denom + beta;
}

MultiHeadedAttentionImpl::MultiHeadedAttentionImpl(const MultiHeadedAttentionOptions& options_)
    : options(options_),
      d_k(options_.d_model() / options_.heads()),
      linears(register_module("linears", torch::nn::ModuleList())) {
  if (options.d_model() % options.heads() != 0)
    throw std::invalid_argument("MultiHeadedAttention: d_model " +
                                std::to_string(options.d_model()) + " is not divisible by heads " +
                                std::to_string(options.heads()));
  for (int i = 0; i < 4; ++i) linears->push_back(Linear(options.d_model(), options.d_model()));
}

torch::Tensor MultiHeadedAttentionImpl::project(int64_t i, const torch::Tensor& x) {
  return split_heads(linears[i]->as<Linear>()->forward(x));
}

torch::Tensor MultiHeadedAttentionImpl::split_heads(const torch::Tensor& y) const {
  return y.view({y.size(0), -1, options.heads(), d_k}).transpose(1, 2);
}

torch::Tensor MultiHeadedAttentionImpl::attend(const torch::Tensor& q, const torch::Tensor& k,
                                               const torch::Tensor& v, const torch::Tensor& mask) {
  // LibTorch's CPU bmm (without MKL) multiplies the batch one BLAS call per matrix: for a few
  // query-key pairs per head (the relational memory's 3x4, a decoding step's 1xT) the calls
  // cost far more than the sums. A broadcast product and a reduction do them in one kernel each.
  const bool few_pairs = q.device().is_cpu() && q.size(-2) * k.size(-2) <= kFewPairs;
  auto scores = few_pairs ? (q.unsqueeze(-2) * k.unsqueeze(-3)).sum(-1)
                          : torch::matmul(q, k.transpose(-2, -1));
  scores = scores / std::sqrt(static_cast<double>(d_k));
  if (mask.defined()) {
    // (B, Lq, Lk) -> (B, 1, Lq, Lk): one mask for all heads.
    auto m = mask.dim() == 3 ? mask.unsqueeze(1) : mask;
    scores = scores.masked_fill(m.logical_not(), options.masked_fill());
  }
  auto p = torch::softmax(scores, -1);
  p = nn::dropout(p, options.dropout(), is_training());
  return few_pairs ? (p.unsqueeze(-1) * v.unsqueeze(-3)).sum(-2) : torch::matmul(p, v);
}

torch::Tensor MultiHeadedAttentionImpl::concat_heads(const torch::Tensor& heads) const {
  return heads.transpose(1, 2).contiguous().view({heads.size(0), -1, options.heads() * d_k});
}

torch::Tensor MultiHeadedAttentionImpl::merge(const torch::Tensor& heads) {
  return linears[3]->as<Linear>()->forward(concat_heads(heads));
}

torch::Tensor MultiHeadedAttentionImpl::forward(const torch::Tensor& query,
                                                const torch::Tensor& key,
                                                const torch::Tensor& value,
                                                const torch::Tensor& mask) {
  return merge(attend(project(0, query), project(1, key), project(2, value), mask));
}

PositionwiseFeedForwardImpl::PositionwiseFeedForwardImpl(int64_t d_model, int64_t d_ff,
                                                         double dropout_)
    : w_1(register_module("w_1", Linear(d_model, d_ff))),
      w_2(register_module("w_2", Linear(d_ff, d_model))),
      dropout(dropout_) {}

torch::Tensor PositionwiseFeedForwardImpl::forward(const torch::Tensor& x) {
  return w_2(nn::dropout(torch::relu(w_1(x)), dropout, is_training()));
}

EmbeddingsImpl::EmbeddingsImpl(int64_t d_model_, int64_t vocab)
    : lut(register_module("lut", torch::nn::Embedding(vocab, d_model_))), d_model(d_model_) {}

torch::Tensor EmbeddingsImpl::forward(const torch::Tensor& x) {
  return lut(x) * std::sqrt(static_cast<double>(d_model));
}

torch::Tensor PositionalEncodingImpl::table(int64_t max_len, int64_t d_model) {
  // Same float32 operations as the Python constructor.
  auto pe = torch::zeros({max_len, d_model});
  auto position = torch::arange(0, max_len).unsqueeze(1).to(torch::kFloat);
  auto div_term = torch::exp(torch::arange(0, d_model, 2).to(torch::kFloat) *
                             -(std::log(10000.0) / static_cast<double>(d_model)));
  using torch::indexing::None;
  using torch::indexing::Slice;
  pe.index_put_({Slice(), Slice(0, None, 2)}, torch::sin(position * div_term));
  pe.index_put_({Slice(), Slice(1, None, 2)}, torch::cos(position * div_term));
  return pe.unsqueeze(0);
}

PositionalEncodingImpl::PositionalEncodingImpl(int64_t d_model, double dropout_, int64_t max_len)
    : pe(register_buffer("pe", table(max_len, d_model))), dropout(dropout_) {}

torch::Tensor PositionalEncodingImpl::forward(const torch::Tensor& x, int64_t offset) {
  if (offset + x.size(1) > pe.size(1))
    throw std::out_of_range("PositionalEncoding: positions up to " +
                            std::to_string(offset + x.size(1)) + " exceed max_len " +
                            std::to_string(pe.size(1)));
  auto y = x + pe.narrow(1, offset, x.size(1));
  return nn::dropout(y, dropout, is_training());
}

SublayerConnectionImpl::SublayerConnectionImpl(int64_t d_model, double dropout_,
                                               const LayerNormNames& names)
    : norm(register_module("norm", LayerNorm(d_model, 1e-6, names))), dropout(dropout_) {}

torch::Tensor SublayerConnectionImpl::forward(
    const torch::Tensor& x, const std::function<torch::Tensor(const torch::Tensor&)>& sublayer) {
  return x + nn::dropout(sublayer(norm(x)), dropout, is_training());
}

namespace {
MultiHeadedAttention make_attention(const TransformerStackOptions& o) {
  return MultiHeadedAttention(MultiHeadedAttentionOptions(o.heads(), o.d_model())
                                  .dropout(o.dropout())
                                  .masked_fill(o.masked_fill()));
}
}  // namespace

EncoderLayerImpl::EncoderLayerImpl(const TransformerStackOptions& o)
    : self_attn(register_module("self_attn", make_attention(o))),
      feed_forward(register_module("feed_forward",
                                   PositionwiseFeedForward(o.d_model(), o.d_ff(), o.dropout()))),
      sublayer(register_module("sublayer", torch::nn::ModuleList())) {
  for (int i = 0; i < 2; ++i)
    sublayer->push_back(SublayerConnection(o.d_model(), o.dropout(), o.norm_names()));
}

torch::Tensor EncoderLayerImpl::forward(const torch::Tensor& x, const torch::Tensor& mask) {
  auto y = sublayer[0]->as<SublayerConnectionImpl>()->forward(
      x, [&](const torch::Tensor& n) { return self_attn(n, n, n, mask); });
  return sublayer[1]->as<SublayerConnectionImpl>()->forward(
      y, [&](const torch::Tensor& n) { return feed_forward(n); });
}

EncoderImpl::EncoderImpl(const TransformerStackOptions& o)
    : layers(register_module("layers", torch::nn::ModuleList())),
      norm(register_module("norm", LayerNorm(o.d_model(), 1e-6, o.norm_names()))) {
  for (int64_t i = 0; i < o.layers(); ++i) layers->push_back(EncoderLayer(o));
}

torch::Tensor EncoderImpl::forward(torch::Tensor x, const torch::Tensor& mask) {
  for (const auto& layer : *layers) x = layer->as<EncoderLayerImpl>()->forward(x, mask);
  return norm(x);
}

DecoderLayerImpl::DecoderLayerImpl(const TransformerStackOptions& o)
    : self_attn(register_module("self_attn", make_attention(o))),
      src_attn(register_module("src_attn", make_attention(o))),
      feed_forward(register_module("feed_forward",
                                   PositionwiseFeedForward(o.d_model(), o.d_ff(), o.dropout()))),
      sublayer(register_module("sublayer", torch::nn::ModuleList())) {
  for (int i = 0; i < 3; ++i)
    sublayer->push_back(SublayerConnection(o.d_model(), o.dropout(), o.norm_names()));
}

SublayerConnectionImpl& DecoderLayerImpl::sub(int64_t i) {
  return *sublayer[i]->as<SublayerConnectionImpl>();
}

torch::Tensor DecoderLayerImpl::forward(const torch::Tensor& x, const torch::Tensor& memory,
                                        const torch::Tensor& src_mask,
                                        const torch::Tensor& tgt_mask) {
  auto y = sub(0).forward(x, [&](const torch::Tensor& n) { return self_attn(n, n, n, tgt_mask); });
  y = sub(1).forward(y,
                     [&](const torch::Tensor& n) { return src_attn(n, memory, memory, src_mask); });
  return sub(2).forward(y, [&](const torch::Tensor& n) { return feed_forward(n); });
}

DecoderImpl::DecoderImpl(const TransformerStackOptions& o)
    : layers(register_module("layers", torch::nn::ModuleList())),
      norm(register_module("norm", LayerNorm(o.d_model(), 1e-6, o.norm_names()))) {
  for (int64_t i = 0; i < o.layers(); ++i) layers->push_back(DecoderLayer(o));
}

torch::Tensor DecoderImpl::forward(torch::Tensor x, const torch::Tensor& memory,
                                   const torch::Tensor& src_mask, const torch::Tensor& tgt_mask) {
  for (const auto& layer : *layers)
    x = layer->as<DecoderLayerImpl>()->forward(x, memory, src_mask, tgt_mask);
  return norm(x);
}

torch::Tensor subsequent_mask(int64_t size, const torch::Device& device) {
  return torch::ones({1, size, size}, torch::TensorOptions().dtype(torch::kBool).device(device))
      .tril();
}

// ---------------------------------------------------------------------------------------------
// ResNet (torchvision layout)

namespace {
torch::nn::Conv2d conv(int64_t in, int64_t out, int64_t kernel, int64_t stride, int64_t padding) {
  return torch::nn::Conv2d(
      torch::nn::Conv2dOptions(in, out, kernel).stride(stride).padding(padding).bias(false));
}
}  // namespace

ResNetBlockImpl::ResNetBlockImpl(bool bottleneck_, int64_t in_planes, int64_t planes,
                                 int64_t stride)
    : bottleneck(bottleneck_) {
  const int64_t expansion = bottleneck ? 4 : 1;
  if (bottleneck) {
    conv1 = register_module("conv1", conv(in_planes, planes, 1, 1, 0));
    bn1 = register_module("bn1", torch::nn::BatchNorm2d(planes));
    conv2 = register_module("conv2", conv(planes, planes, 3, stride, 1));
    bn2 = register_module("bn2", torch::nn::BatchNorm2d(planes));
    conv3 = register_module("conv3", conv(planes, planes * expansion, 1, 1, 0));
    bn3 = register_module("bn3", torch::nn::BatchNorm2d(planes * expansion));
  } else {
    conv1 = register_module("conv1", conv(in_planes, planes, 3, stride, 1));
    bn1 = register_module("bn1", torch::nn::BatchNorm2d(planes));
    conv2 = register_module("conv2", conv(planes, planes, 3, 1, 1));
    bn2 = register_module("bn2", torch::nn::BatchNorm2d(planes));
  }
  if (stride != 1 || in_planes != planes * expansion) {
    downsample = register_module(
        "downsample", torch::nn::Sequential(conv(in_planes, planes * expansion, 1, stride, 0),
                                            torch::nn::BatchNorm2d(planes * expansion)));
  }
}

torch::Tensor ResNetBlockImpl::forward(const torch::Tensor& x) {
  // In place, as torchvision's ReLU(inplace=True) and `out += identity`: batch norm's backward
  // needs its input, not its output, and ReLU's needs only its result, so no activation the
  // graph keeps is overwritten; a block allocates three (basic) or four (bottleneck) fewer
  // activation-sized buffers.
  auto out = bn1(conv1(x)).relu_();
  if (bottleneck) {
    out = bn2(conv2(out)).relu_();
    out = bn3(conv3(out));
  } else {
    out = bn2(conv2(out));
  }
  out += downsample ? downsample->forward(x) : x;
  return out.relu_();
}

namespace {
std::pair<bool, std::vector<int64_t>> resnet_layout(int64_t depth) {
  switch (depth) {
    case 18:
      return {false, {2, 2, 2, 2}};
    case 34:
      return {false, {3, 4, 6, 3}};
    case 50:
      return {true, {3, 4, 6, 3}};
    case 101:
      return {true, {3, 4, 23, 3}};
    case 152:
      return {true, {3, 8, 36, 3}};
    default:
      throw std::invalid_argument("ResNet depth " + std::to_string(depth) +
                                  " is not one of 18, 34, 50, 101, 152");
  }
}
}  // namespace

int64_t resnet_out_channels(int64_t depth) {
  return resnet_layout(depth).first ? 2048 : 512;
}

torch::nn::Sequential make_resnet_trunk(int64_t depth) {
  auto [bottleneck, blocks] = resnet_layout(depth);
  const int64_t expansion = bottleneck ? 4 : 1;
  torch::nn::Sequential trunk(
      conv(3, 64, 7, 2, 3), torch::nn::BatchNorm2d(64),
      torch::nn::ReLU(torch::nn::ReLUOptions().inplace(true)),
      torch::nn::MaxPool2d(torch::nn::MaxPool2dOptions(3).stride(2).padding(1)));
  int64_t in_planes = 64;
  for (int layer = 0; layer < 4; ++layer) {
    const int64_t planes = 64 << layer;
    ResNetStage stage;
    for (int64_t b = 0; b < blocks[layer]; ++b) {
      const int64_t stride = (b == 0 && layer > 0) ? 2 : 1;
      stage->push_back(ResNetBlock(bottleneck, in_planes, planes, stride));
      in_planes = planes * expansion;
    }
    trunk->push_back(stage);
  }
  // torchvision's init (kaiming fan_out for convs, BN weight 1 / bias 0); ImageNet weights are
  // not available here, a checkpoint replaces these.
  for (auto& m : trunk->modules(/*include_self=*/false)) {
    if (auto* c = m->as<torch::nn::Conv2d>()) {
      torch::nn::init::kaiming_normal_(c->weight, 0.0, torch::kFanOut, torch::kReLU);
    }
  }
  return trunk;
}

VisualExtractorImpl::VisualExtractorImpl(const VisualExtractorOptions& options_)
    : options(options_), model(register_module("model", make_resnet_trunk(options_.depth()))) {}

VisualFeatures VisualExtractorImpl::forward(const torch::Tensor& images) {
  if (images.dim() != 4 || images.size(1) != 3)
    throw std::invalid_argument("VisualExtractor: images must be (B, 3, H, W), got " +
                                c10::str(images.sizes()));
  // The input follows the memory format of the first convolution's weight (see
  // to_channels_last), so the whole trunk runs in one layout without reorders.
  const auto& conv1_weight = model->ptr(0)->as<torch::nn::Conv2dImpl>()->weight;
  auto map =
      model->forward(images.contiguous(conv1_weight.suggest_memory_format()));  // (B, C, h, w)
  const auto B = map.size(0), C = map.size(1);
  // The official AvgPool2d(7) on the 7x7 map of a 224x224 input is the global average.
  auto avg = map.mean({2, 3});
  auto patch = map.reshape({B, C, -1}).permute({0, 2, 1});
  return {patch, avg};
}

void to_channels_last(torch::nn::Module& module) {
  torch::NoGradGuard no_grad;
  for (auto& p : module.parameters()) {
    if (p.dim() == 4) p.set_data(p.data().contiguous(at::MemoryFormat::ChannelsLast));
  }
}

// ---------------------------------------------------------------------------------------------
// Decoding

GreedyResult greedy_decode(IncrementalDecoder& decoder, int64_t batch_size,
                           const GreedyOptions& options, const torch::Device& device) {
  torch::NoGradGuard no_grad;
  const auto T = options.max_length();
  auto long_opts = torch::TensorOptions().dtype(torch::kLong).device(device);
  auto seq = torch::full({batch_size, T}, 0, long_opts);  // pad_idx = 0
  torch::Tensor seq_logprobs;
  // Host copy of the chosen ids for the trigram bookkeeping (upstream reads them with .item()).
  std::vector<std::vector<int64_t>> host(batch_size);
  // Per row: (a, b) -> continuations seen after (a, b), with multiplicity (upstream appends
  // to a list, and every entry adds one penalty unit).
  std::vector<std::map<std::pair<int64_t, int64_t>, std::vector<int64_t>>> trigrams(batch_size);
  auto it = torch::full({batch_size}, options.bos(), long_opts);
  torch::Tensor unfinished;
  for (int64_t t = 0; t <= T; ++t) {
    auto logprobs = decoder.step(it);
    if (!seq_logprobs.defined())
      seq_logprobs = torch::zeros({batch_size, T, logprobs.size(1)}, logprobs.options());
    if (options.block_trigrams() && t >= 3) {
      auto mask_cpu = torch::zeros(logprobs.sizes(), torch::kFloat);
      auto m = mask_cpu.accessor<float, 2>();
      for (int64_t i = 0; i < batch_size; ++i) {
        const auto& s = host[i];
        std::pair<int64_t, int64_t> prev_two{s[t - 3], s[t - 2]};
        trigrams[i][prev_two].push_back(s[t - 1]);
        std::pair<int64_t, int64_t> last_two{s[t - 2], s[t - 1]};
        auto found = trigrams[i].find(last_two);
        if (found != trigrams[i].end())
          for (auto j : found->second) m[i][j] += 1;
      }
      // Same float32 operations as upstream: logprobs + (mask * -0.693 * alpha), alpha = 2.
      logprobs = logprobs + (mask_cpu.to(logprobs.device()) * -0.693 * 2.0);
    }
    if (t == T) break;
    auto [sample_logprobs, next] = logprobs.max(1);
    (void)sample_logprobs;
    if (t == 0) {
      unfinished = next != options.eos();
    } else {
      next = next.masked_fill(unfinished.logical_not(), 0);
      logprobs = logprobs * unfinished.unsqueeze(1).to(logprobs.dtype());
      unfinished = unfinished.logical_and(next != options.eos());
    }
    seq.select(1, t).copy_(next);
    seq_logprobs.select(1, t).copy_(logprobs);
    auto next_cpu = next.cpu();
    for (int64_t i = 0; i < batch_size; ++i) host[i].push_back(next_cpu[i].item<int64_t>());
    if (unfinished.sum().item<int64_t>() == 0) break;
    it = next;
  }
  return {seq, seq_logprobs};
}

BeamSearchResult beam_search(IncrementalDecoder& decoder, int64_t batch_size,
                             const BeamSearchOptions& options, const torch::Device& device) {
  torch::NoGradGuard no_grad;
  const int64_t beam = options.beam_size();
  const int64_t T = options.max_length();
  auto long_opts = torch::TensorOptions().dtype(torch::kLong).device(device);
  // First step: BOS on one row per study, then every study gets `beam` identical rows.
  auto logprobs = decoder.step(torch::full({batch_size}, options.bos(), long_opts));
  const int64_t V = logprobs.size(1);
  decoder.expand(beam);
  auto beam_seq = torch::zeros({batch_size, beam, 0}, long_opts);
  auto beam_seq_logprobs = torch::zeros({batch_size, beam, 0, V}, logprobs.options());
  auto beam_logprobs_sum = torch::zeros({batch_size, beam}, logprobs.options());
  std::vector<std::vector<Beam>> done(batch_size);
  auto batch_offsets = torch::arange(batch_size, long_opts).unsqueeze(-1);

  for (int64_t t = 0; t < T; ++t) {
    // beam_step (caption_model.py): rows of logprobs are (study, beam) at t > 0, (study) at t = 0.
    auto lp = logprobs.reshape({batch_size, -1, V});
    auto sums = t == 0 ? beam_logprobs_sum.narrow(1, 0, 1) : beam_logprobs_sum;
    auto candidates = sums.unsqueeze(-1) + lp;
    auto [ys, ix] = torch::sort(candidates.reshape({batch_size, -1}), -1, /*descending=*/true);
    ys = ys.narrow(1, 0, beam);
    ix = ix.narrow(1, 0, beam);
    auto beam_ix = ix.div(V, "floor");
    auto selected = ix.remainder(V);
    if (t > 0) {
      beam_seq = beam_seq.gather(1, beam_ix.unsqueeze(-1).expand_as(beam_seq));
      beam_seq_logprobs = beam_seq_logprobs.gather(
          1, beam_ix.unsqueeze(-1).unsqueeze(-1).expand_as(beam_seq_logprobs));
    }
    beam_seq = torch::cat({beam_seq, selected.unsqueeze(-1)}, -1);
    beam_logprobs_sum = sums.gather(1, beam_ix) + lp.reshape({batch_size, -1}).gather(1, ix);
    auto beam_logprobs = lp.gather(1, beam_ix.unsqueeze(-1).expand({-1, -1, V}));
    beam_seq_logprobs = torch::cat({beam_seq_logprobs, beam_logprobs.unsqueeze(2)}, 2);
    // The decoder rows after expand() are (study, beam); at t = 0 every beam of a study holds the
    // same state, so only later steps need a reorder.
    if (t > 0) {
      auto rows = (beam_ix + batch_offsets * beam).reshape(-1);
      decoder.reorder(rows);
    }

    auto last = beam_seq.select(2, t);
    auto is_end = last.eq(options.eos());
    if (t == T - 1) is_end.fill_(true);
    auto is_end_cpu = is_end.cpu();
    auto sums_cpu = beam_logprobs_sum.to(torch::kCPU, torch::kDouble);
    for (int64_t b = 0; b < batch_size; ++b) {
      for (int64_t v = 0; v < beam; ++v) {
        if (!is_end_cpu[b][v].item<bool>()) continue;
        Beam fb;
        fb.seq = beam_seq[b][v].clone();
        fb.logps = beam_seq_logprobs[b][v].clone();
        fb.logprob_sum = sums_cpu[b][v].item<double>();
        done[b].push_back(std::move(fb));
      }
    }
    // Upstream keeps finished beams alive with their sum lowered by 1000.
    beam_logprobs_sum = beam_logprobs_sum - is_end.to(beam_logprobs_sum.dtype()) * 1000;
    if (t == T - 1) break;  // upstream computes one more step whose result is never used
    logprobs = decoder.step(last.reshape(-1));
  }

  BeamSearchResult result;
  result.seq = torch::zeros({batch_size, T}, long_opts);
  result.seq_logprobs = torch::zeros({batch_size, T, V}, logprobs.options());
  for (int64_t b = 0; b < batch_size; ++b) {
    auto& beams = done[b];
    // Python's sorted() is stable: equal sums keep their order of completion.
    std::stable_sort(beams.begin(), beams.end(),
                     [](const Beam& x, const Beam& y) { return x.logprob_sum > y.logprob_sum; });
    if (static_cast<int64_t>(beams.size()) > beam) beams.resize(beam);
    const auto len = beams[0].seq.size(0);
    result.seq[b].narrow(0, 0, len).copy_(beams[0].seq);
    result.seq_logprobs[b].narrow(0, 0, len).copy_(beams[0].logps);
  }
  result.beams = std::move(done);
  return result;
}

}  // namespace ihn_toolkit::nn

// ---------------------------------------------------------------------------------------------
// Training helpers (training.hpp)

namespace ihn_toolkit::nn {

torch::Tensor compute_loss(const torch::Tensor& logprobs, const torch::Tensor& reports_ids,
                           const torch::Tensor& reports_masks) {
  const auto T = logprobs.size(1);
  auto target = reports_ids.narrow(1, 1, T);
  auto mask = reports_masks.narrow(1, 1, T).to(logprobs.dtype());
  auto nll = -logprobs.gather(2, target.unsqueeze(2)).squeeze(2) * mask;
  return nll.sum() / mask.sum();
}

torch::Tensor masked_mean(const torch::Tensor& x, const torch::Tensor& mask) {
  auto m = mask.to(x.dtype()).unsqueeze(-1);
  return (x * m).sum(1) / m.sum(1).clamp_min(1);
}

torch::Tensor decoder_input_mask(const torch::Tensor& reports_ids,
                                 const torch::Tensor& reports_masks) {
  const auto T = reports_ids.size(1) - 1;
  if (reports_masks.defined()) return reports_masks.narrow(1, 0, T);
  auto m = reports_ids.narrow(1, 0, T).gt(0);
  m.select(1, 0).fill_(true);
  return m;
}

torch::OrderedDict<std::string, torch::Tensor> unique_named_parameters(
    const torch::nn::Module& module) {
  torch::OrderedDict<std::string, torch::Tensor> unique;
  std::set<const c10::TensorImpl*> seen;
  for (const auto& p : module.named_parameters(/*recurse=*/true))
    if (seen.insert(p.value().unsafeGetTensorImpl()).second) unique.insert(p.key(), p.value());
  return unique;
}

std::vector<torch::Tensor> unique_parameters(const torch::nn::Module& module) {
  return unique_named_parameters(module).values();
}

}  // namespace ihn_toolkit::nn

// ---------------------------------------------------------------------------------------------
// Multi-view visual features (multiview.hpp)

namespace ihn_toolkit::nn {

std::pair<torch::Tensor, torch::Tensor> multiview_features(VisualExtractorImpl& extractor,
                                                           const torch::Tensor& images,
                                                           const std::string& who) {
  if (images.dim() == 4) {
    auto f = extractor.forward(images);
    return {f.patch, f.avg};
  }
  if (images.dim() != 5)
    throw std::invalid_argument(who + ": images must be (B, views, 3, H, W) or (B, 3, H, W), got " +
                                c10::str(images.sizes()));
  std::vector<torch::Tensor> patches, avgs;
  for (int64_t v = 0; v < images.size(1); ++v) {
    auto f = extractor.forward(images.select(1, v));
    patches.push_back(f.patch);
    avgs.push_back(f.avg);
  }
  return {torch::cat(patches, 1), torch::cat(avgs, 1)};
}

}  // namespace ihn_toolkit::nn
