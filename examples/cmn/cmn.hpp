// R2GenCMN (Chen et al., ACL 2021, "Cross-modal Memory Networks for Radiology Report Generation")
// ported to LibTorch from cuhksz-nlp/R2GenCMN @852512d. The same visual extractor, attention,
// LayerNorm, positional encoding and decoding machinery as the R2Gen port (toolkit/nn),
// plus the cross-modal memory: a learned (cmm_size x cmm_dim) matrix
// `encoder_decoder.memory_matrix` that the embedded visual tokens and the target embeddings both
// query with multi-head attention keeping only the top-k memory slots per head (softmax over those
// k); the response is added to the query. Visual tokens then get the positional encoding; the
// decoder is a plain pre-norm Transformer decoder.
//
// Names equal the official state_dict keys, including upstream's double registration of the
// memory attention (`encoder_decoder.cmn.*` and `encoder_decoder.model.cmn.*` are the same
// tensors). LibTorch's Module::parameters() lists such tensors twice: give an optimiser
// `unique_parameters()` (or nn::unique_parameters(module)), never parameters().
//
// Differences from upstream (outputs equal within float32 rounding, see docs/cmn.md):
//  * Top-k retrieval gathers the selected value rows by index from the (heads, slots, d_k)
//    projection of the memory, which is computed once per pass (upstream projects the
//    batch-expanded memory and gathers from a (B, heads, L, slots, d_k) expanded view, whose
//    backward allocates that whole tensor). `naive_topk(true)` runs upstream's form.
//  * Decoding is incremental: per-layer keys/values are cached, the memory projection is computed
//    once per decode, and each step queries the memory for the new token only (upstream
//    re-embeds and re-queries the whole prefix every step).
//  * The dropout rate of all attention blocks is `dropout` (upstream hard-codes 0.1 in the
//    attention and memory modules, the same value at the default).
//
// Use:
//   auto model = CMNModel(CMNOptions(/*vocab_size=*/760));                // paper config
//   torch::optim::Adam adam(model->unique_parameters(), ...);
//   auto out = model->forward(images, reports_ids, reports_masks);
//   auto loss = compute_loss(out.logprobs, reports_ids, reports_masks);
//   auto best = model->beam_search(images, BeamSearchOptions().max_length(60));
#pragma once

#include <torch/torch.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "nn/decoding.hpp"
#include "nn/resnet.hpp"
#include "nn/training.hpp"
#include "nn/transformer.hpp"

namespace ihn_examples {
namespace nn = ihn_toolkit::nn;  // the toolkit's blocks the ports are built from
}  // namespace ihn_examples

namespace ihn_examples::cmn {

using nn::BeamSearchOptions;
using nn::BeamSearchResult;
using nn::compute_loss;
using nn::GreedyOptions;
using nn::GreedyResult;
using nn::masked_mean;

/// The official argument names and defaults (R2GenCMN main.py); vocab_size = tokenizer size
/// without the 0 id (the logit layer has vocab_size + 1 outputs).
struct CMNOptions {
  explicit CMNOptions(int64_t vocab_size) : vocab_size_(vocab_size) {}
  /// Channels of the visual features, from the ResNet depth (2048 or 512).
  int64_t d_vf() const { return nn::resnet_out_channels(visual_depth_); }
  /// The benchmark's small CPU config (baselines/pcommon.py): ResNet-18, d_model 256, 2 layers,
  /// top-16 of a 512 x 256 memory.
  static CMNOptions small(int64_t vocab_size);

  TORCH_ARG(int64_t, vocab_size);
  /// ResNet depth of the visual extractor (101 upstream); d_vf follows from it (2048 or 512).
  TORCH_ARG(int64_t, visual_depth) = 101;
  TORCH_ARG(int64_t, d_model) = 512;
  TORCH_ARG(int64_t, d_ff) = 512;
  TORCH_ARG(int64_t, num_heads) = 8;
  TORCH_ARG(int64_t, num_layers) = 3;
  TORCH_ARG(double, dropout) = 0.1;
  /// Dropout after att_embed's ReLU.
  TORCH_ARG(double, drop_prob_lm) = 0.5;
  /// Memory slots kept per head and query.
  TORCH_ARG(int64_t, topk) = 32;
  /// Memory matrix rows (slots) and columns; cmm_dim must equal d_model (the memory is fed to
  /// d_model x d_model projections).
  TORCH_ARG(int64_t, cmm_size) = 2048;
  TORCH_ARG(int64_t, cmm_dim) = 512;
  /// Length of the positional-encoding tables `pe` (state_dict buffers, 5000 upstream).
  TORCH_ARG(int64_t, max_positions) = 5000;
  /// Upstream's top-k retrieval (gather from the batch-expanded memory); for comparisons only.
  TORCH_ARG(bool, naive_topk) = false;
};

/// The memory's key and value projections split into heads, (heads, slots, d_k) each. They do
/// not depend on the batch, so one pass (or one decode) computes them once.
struct MemoryKeysValues {
  torch::Tensor keys, values;
};

/// `MultiThreadMemory`: multi-head attention of queries over the memory slots, keeping the top-k
/// scores per head and query. Parameters `linears.0..3` (query, key, value, output).
struct MultiThreadMemoryImpl : torch::nn::Module {
  MultiThreadMemoryImpl(int64_t heads, int64_t d_model, int64_t topk, double dropout = 0.1,
                        bool naive_topk = false);
  /// query (B, L, d), memory (slots, d) -> response (B, L, d).
  torch::Tensor forward(const torch::Tensor& query, const torch::Tensor& memory);
  /// linears[1] and linears[2] of the memory (slots, d), split into heads.
  MemoryKeysValues project_memory(const torch::Tensor& memory);
  /// The response to query (B, L, d) from projected memory: scores over all slots, top-k per head,
  /// softmax over the k, then the k selected value rows gathered by index (no expanded tensor).
  torch::Tensor respond(const torch::Tensor& query, const MemoryKeysValues& kv);
  /// Upstream's form: projections of the batch-expanded memory, values gathered from a
  /// (B, heads, L, slots, d_k) expanded view. Same result; backward allocates that tensor.
  torch::Tensor respond_naive(const torch::Tensor& query, const torch::Tensor& memory);

  int64_t heads, d_model, d_k, topk;
  double dropout;
  bool naive_topk;
  torch::nn::ModuleList linears;
};
TORCH_MODULE(MultiThreadMemory);

/// `encoder_decoder.model`: encoder, decoder, src_embed (PositionalEncoding), tgt_embed
/// (Embeddings, PositionalEncoding) and `cmn`, the same module as `encoder_decoder.cmn`.
struct TransformerImpl : torch::nn::Module {
  TransformerImpl(const CMNOptions& o, MultiThreadMemory cmn);
  nn::Encoder encoder;
  nn::Decoder decoder;
  nn::PositionalEncoding src_position;  // src_embed.0
  torch::nn::Sequential src_embed;
  nn::Embeddings embeddings;        // tgt_embed.0
  nn::PositionalEncoding position;  // tgt_embed.1
  torch::nn::Sequential tgt_embed;
  MultiThreadMemory cmn;
  /// Embeddings * sqrt(d) + pe[offset...] (then dropout): (B, L) -> (B, L, d).
  torch::Tensor embed(const torch::Tensor& tokens, int64_t offset = 0);
};
TORCH_MODULE(Transformer);

/// Intermediate tensors of one teacher-forced pass (names as in the fixture).
struct EncoderDecoderOutput {
  torch::Tensor logprobs;       ///< (B, T-1, V+1) log_softmax
  torch::Tensor att_embed_out;  ///< (B, S, d) att_embed(att_feats)
  torch::Tensor encoder_in;     ///< (B, S, d) att_embed_out + memory response + pe
  torch::Tensor encoder_out;    ///< (B, S, d) after the final norm
  torch::Tensor decoder_in;     ///< (B, T-1, d) embeddings * sqrt(d) + pe + memory response
  torch::Tensor decoder_out;    ///< (B, T-1, d) after the final norm
};

struct EncoderDecoderImpl : torch::nn::Module {
  explicit EncoderDecoderImpl(const CMNOptions& o);
  /// att_feats (B, S, d_vf) -> {att_embed output, encoder output}.
  std::pair<torch::Tensor, torch::Tensor> encode(const torch::Tensor& att_feats);
  /// Teacher forcing on reports_ids (B, T): input reports_ids[:, :-1].
  EncoderDecoderOutput forward(const torch::Tensor& att_feats, const torch::Tensor& reports_ids);
  /// An incremental decoder over the encoder output `encoder_out` (B, S, d).
  std::unique_ptr<nn::IncrementalDecoder> make_decoder(const torch::Tensor& encoder_out);
  /// The memory response to query (B, L, d): cmn->respond or, with naive_topk, respond_naive.
  /// kv: project_memory(memory_matrix), unused by the naive form.
  torch::Tensor memory_response(const torch::Tensor& query, const MemoryKeysValues& kv);

  CMNOptions options;
  torch::nn::Sequential att_embed;
  MultiThreadMemory cmn;
  Transformer model;
  nn::Linear logit;
  torch::Tensor memory_matrix;  ///< (cmm_size, cmm_dim), normal(0, 1/cmm_dim) as upstream

 private:
  /// att_embed, memory response, pe, encoder: fills att_embed_out, encoder_in, encoder_out.
  void encode_into(const torch::Tensor& att_feats, const MemoryKeysValues& kv,
                   EncoderDecoderOutput& out);
};
TORCH_MODULE(EncoderDecoder);

/// Everything a training step and the hard-negative library need, from one pass.
struct CMNOutput {
  torch::Tensor logprobs;         ///< (B, T-1, V+1): input of compute_loss
  torch::Tensor image_features;   ///< (B, d_model): mean of the encoder output over visual tokens
  torch::Tensor report_features;  ///< (B, d_model): masked mean of the final decoder states
  torch::Tensor fc_feats;         ///< (B, views*C): averaged conv5 maps (unused by the decoder)
  torch::Tensor att_feats;        ///< (B, views*h*w, C): patch tokens
  EncoderDecoderOutput details;   ///< intermediates (fixture parity, analysis)
};

/// One batch as the data loader yields it (the same fields as r2gen::R2GenBatch); the
/// one-argument overloads below take it, so ihn::encoder_traits finds the features.
struct CMNBatch {
  torch::Tensor images;         ///< (B, views, 3, H, W) or (B, 3, H, W)
  torch::Tensor reports_ids;    ///< (B, T) int64
  torch::Tensor reports_masks;  ///< (B, T) float, may be undefined
};

struct CMNModelImpl : torch::nn::Module {
  explicit CMNModelImpl(const CMNOptions& options);

  /// Teacher-forced pass. images (B, views, 3, H, W) or (B, 3, H, W); reports_ids (B, T) int64
  /// starting with BOS 0; reports_masks (B, T) float (1 = kept token) or undefined (then
  /// ids > 0, position 0 kept, is used for the report features).
  CMNOutput forward(const torch::Tensor& images, const torch::Tensor& reports_ids,
                    const torch::Tensor& reports_masks = {});

  /// (att_feats (B, views*h*w, C), fc_feats (B, views*C)): every view through the same ResNet.
  std::pair<torch::Tensor, torch::Tensor> visual_features(const torch::Tensor& images);
  /// Hard-negative encoder interface (ihn::encoder_traits): (B, d_model), no extra weights.
  torch::Tensor image_features(const torch::Tensor& images);
  torch::Tensor report_features(const torch::Tensor& images, const torch::Tensor& reports_ids,
                                const torch::Tensor& reports_masks = {});
  CMNOutput forward(const CMNBatch& batch) {
    return forward(batch.images, batch.reports_ids, batch.reports_masks);
  }
  torch::Tensor image_features(const CMNBatch& batch) { return image_features(batch.images); }
  torch::Tensor report_features(const CMNBatch& batch) {
    return report_features(batch.images, batch.reports_ids, batch.reports_masks);
  }

  /// Incremental decoder for a batch of images (encodes them once).
  std::unique_ptr<nn::IncrementalDecoder> make_decoder(const torch::Tensor& images);
  GreedyResult greedy(const torch::Tensor& images, const GreedyOptions& options = {});
  BeamSearchResult beam_search(const torch::Tensor& images, const BeamSearchOptions& options = {});

  /// named_parameters() with the memory attention listed once, under `encoder_decoder.cmn.*`
  /// (as Python's named_parameters()); parameters() lists its 8 tensors twice. For optimisers.
  torch::OrderedDict<std::string, torch::Tensor> unique_named_parameters() const;
  std::vector<torch::Tensor> unique_parameters() const;

  CMNOptions options;
  nn::VisualExtractor visual_extractor;
  EncoderDecoder encoder_decoder;
};
TORCH_MODULE(CMNModel);

}  // namespace ihn_examples::cmn
