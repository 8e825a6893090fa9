// Building blocks of the "Annotated Transformer" as R2Gen and R2GenCMN use them, written once
// for both ports: the custom LayerNorm (unbiased std, eps added to the std), multi-head
// attention with a configurable masked-score fill (-1e9 in R2Gen, -inf in CMN), the position-wise
// feed-forward block, token embeddings scaled by sqrt(d_model), the sinusoidal positional
// encoding stored as buffer `pe`, the pre-norm residual connection, and the encoder / plain
// decoder stacks built from them (R2Gen's encoder, R2GenCMN's encoder and decoder). Member names
// equal the Python attribute names so that `named_parameters()` gives the official state_dict
// keys; the LayerNorm's two parameters are `gamma`/`beta` in R2Gen and `a_2`/`b_2` in R2GenCMN.
//
// Attention also exposes its pieces (project / attend / merge) so that incremental decoders can
// cache the key/value projections of earlier positions instead of re-running the prefix.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <limits>
#include <string>

#include "dropout.hpp"
#include "linear.hpp"

namespace ihn_toolkit::nn {

/// State_dict names of the LayerNorm scale and shift: R2Gen calls them gamma/beta, R2GenCMN (the
/// Annotated Transformer's names) a_2/b_2. The C++ members are `gamma`/`beta` either way.
struct LayerNormNames {
  std::string weight = "gamma";
  std::string bias = "beta";
  static LayerNormNames annotated() { return {"a_2", "b_2"}; }
};

/// gamma * (x - mean) / (std + eps) + beta, std unbiased: this is NOT torch::nn::LayerNorm.
struct LayerNormImpl : torch::nn::Module {
  explicit LayerNormImpl(int64_t features, double eps = 1e-6, const LayerNormNames& names = {});
  torch::Tensor forward(const torch::Tensor& x);

  torch::Tensor gamma, beta;
  double eps;
};
TORCH_MODULE(LayerNorm);

/// The normalised input (x - mean) / (std + eps) pieces, shared with the conditional LayerNorm.
/// Returns {x - mean, std + eps} so callers keep Python's operation order for bitwise-close
/// results.
std::pair<torch::Tensor, torch::Tensor> layer_norm_parts(const torch::Tensor& x, double eps);

struct MultiHeadedAttentionOptions {
  MultiHeadedAttentionOptions(int64_t heads, int64_t d_model) : heads_(heads), d_model_(d_model) {}
  TORCH_ARG(int64_t, heads);
  TORCH_ARG(int64_t, d_model);
  TORCH_ARG(double, dropout) = 0.1;
  /// Score written where the mask is 0: R2Gen uses -1e9, R2GenCMN -inf.
  TORCH_ARG(double, masked_fill) = -1e9;
};

struct MultiHeadedAttentionImpl : torch::nn::Module {
  explicit MultiHeadedAttentionImpl(const MultiHeadedAttentionOptions& options);

  /// query (B, Lq, d), key/value (B, Lk, d); mask broadcastable to (B, Lq, Lk) (0 = masked) or
  /// undefined.
  torch::Tensor forward(const torch::Tensor& query, const torch::Tensor& key,
                        const torch::Tensor& value, const torch::Tensor& mask = {});

  /// linears[i](x) split into heads: (B, L, d) -> (B, h, L, d_k).
  torch::Tensor project(int64_t i, const torch::Tensor& x);
  /// An already projected (B, L, d) -> (B, h, L, d_k).
  torch::Tensor split_heads(const torch::Tensor& y) const;
  /// Scaled dot-product attention on projected heads; mask (B, Lq, Lk) or undefined. On the CPU,
  /// heads with at most kFewPairs query-key pairs use a broadcast product instead of bmm.
  static constexpr int64_t kFewPairs = 64;
  torch::Tensor attend(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                       const torch::Tensor& mask = {});
  /// (B, h, L, d_k) -> the heads side by side, (B, L, d).
  torch::Tensor concat_heads(const torch::Tensor& heads) const;
  /// linears[3] of concat_heads(heads).
  torch::Tensor merge(const torch::Tensor& heads);

  MultiHeadedAttentionOptions options;
  int64_t d_k;
  torch::nn::ModuleList linears;
};
TORCH_MODULE(MultiHeadedAttention);

struct PositionwiseFeedForwardImpl : torch::nn::Module {
  PositionwiseFeedForwardImpl(int64_t d_model, int64_t d_ff, double dropout = 0.1);
  torch::Tensor forward(const torch::Tensor& x);

  Linear w_1, w_2;
  double dropout;
};
TORCH_MODULE(PositionwiseFeedForward);

/// lut(x) * sqrt(d_model).
struct EmbeddingsImpl : torch::nn::Module {
  EmbeddingsImpl(int64_t d_model, int64_t vocab);
  torch::Tensor forward(const torch::Tensor& x);

  torch::nn::Embedding lut;
  int64_t d_model;
};
TORCH_MODULE(Embeddings);

/// x + pe[:, offset:offset+L], then dropout. `pe` is a registered buffer (1, max_len, d_model):
/// it is part of the official state_dict, so a checkpoint (or the fixture fill) may overwrite it.
struct PositionalEncodingImpl : torch::nn::Module {
  PositionalEncodingImpl(int64_t d_model, double dropout, int64_t max_len = 5000);
  torch::Tensor forward(const torch::Tensor& x, int64_t offset = 0);
  /// The original sin/cos table (what the constructor stores in `pe`).
  static torch::Tensor table(int64_t max_len, int64_t d_model);

  torch::Tensor pe;
  double dropout;
};
TORCH_MODULE(PositionalEncoding);

/// Pre-norm residual: x + dropout(sublayer(norm(x))).
struct SublayerConnectionImpl : torch::nn::Module {
  SublayerConnectionImpl(int64_t d_model, double dropout, const LayerNormNames& names = {});
  torch::Tensor forward(const torch::Tensor& x,
                        const std::function<torch::Tensor(const torch::Tensor&)>& sublayer);

  LayerNorm norm;
  double dropout;
};
TORCH_MODULE(SublayerConnection);

/// Sizes of the Annotated Transformer's encoder and decoder stacks.
struct TransformerStackOptions {
  TransformerStackOptions(int64_t d_model, int64_t d_ff, int64_t heads, int64_t layers)
      : d_model_(d_model), d_ff_(d_ff), heads_(heads), layers_(layers) {}
  TORCH_ARG(int64_t, d_model);
  TORCH_ARG(int64_t, d_ff);
  TORCH_ARG(int64_t, heads);
  TORCH_ARG(int64_t, layers);
  TORCH_ARG(double, dropout) = 0.1;
  /// Attention score where the mask is 0 (MultiHeadedAttentionOptions::masked_fill).
  TORCH_ARG(double, masked_fill) = -1e9;
  TORCH_ARG(LayerNormNames, norm_names) = {};
};

/// Pre-norm encoder layer: self-attention, then the feed-forward block, each in a
/// SublayerConnection (`sublayer.0`, `sublayer.1`).
struct EncoderLayerImpl : torch::nn::Module {
  explicit EncoderLayerImpl(const TransformerStackOptions& o);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& mask);
  MultiHeadedAttention self_attn;
  PositionwiseFeedForward feed_forward;
  torch::nn::ModuleList sublayer;
};
TORCH_MODULE(EncoderLayer);

/// `layers.N` then the final LayerNorm `norm`.
struct EncoderImpl : torch::nn::Module {
  explicit EncoderImpl(const TransformerStackOptions& o);
  torch::Tensor forward(torch::Tensor x, const torch::Tensor& mask);
  torch::nn::ModuleList layers;
  LayerNorm norm;
};
TORCH_MODULE(Encoder);

/// Plain pre-norm decoder layer (self-attention, source attention, feed-forward, each in a
/// SublayerConnection). R2Gen's layer differs (memory-conditioned norms) and has its own.
struct DecoderLayerImpl : torch::nn::Module {
  explicit DecoderLayerImpl(const TransformerStackOptions& o);
  /// Teacher forcing over all positions; memory (B, S, d) is the encoder output.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& memory,
                        const torch::Tensor& src_mask, const torch::Tensor& tgt_mask);
  /// sublayer[i] as its module type.
  SublayerConnectionImpl& sub(int64_t i);
  MultiHeadedAttention self_attn, src_attn;
  PositionwiseFeedForward feed_forward;
  torch::nn::ModuleList sublayer;
};
TORCH_MODULE(DecoderLayer);

struct DecoderImpl : torch::nn::Module {
  explicit DecoderImpl(const TransformerStackOptions& o);
  torch::Tensor forward(torch::Tensor x, const torch::Tensor& memory, const torch::Tensor& src_mask,
                        const torch::Tensor& tgt_mask);
  torch::nn::ModuleList layers;
  LayerNorm norm;
};
TORCH_MODULE(Decoder);

/// Annotated-Transformer subsequent mask, (1, size, size) bool, true on and below the diagonal.
torch::Tensor subsequent_mask(int64_t size, const torch::Device& device);

}  // namespace ihn_toolkit::nn
