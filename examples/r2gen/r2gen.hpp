// R2Gen (Chen et al., EMNLP 2020, "Generating Radiology Reports via Memory-driven Transformer")
// ported to LibTorch from cuhksz-nlp/R2Gen @5a2e63f. Module and member names follow the Python
// attributes, so `named_parameters()`/`named_buffers()` give exactly the official state_dict keys
// (`visual_extractor.model.4.0.conv1.weight`, `encoder_decoder.model.rm.W.weight`, ...) and the
// authors' checkpoints load by name (ihn::io::load_state_dict).
//
// Use:
//   auto model = R2GenModel(R2GenOptions(/*vocab_size=*/760));           // paper config
//   auto out = model->forward(images, reports_ids, reports_masks);        // training, one pass
//   auto loss = compute_loss(out.logprobs, reports_ids, reports_masks);
//   auto best = model->beam_search(images, BeamSearchOptions().max_length(60));
// `images` is (B, views, 3, H, W) (IU X-Ray: two views, tokens concatenated) or (B, 3, H, W).
// Decoding is incremental: the relational memory state and every layer's attention keys/values
// are cached, so a step costs one position (upstream re-decodes the whole prefix each step).
#pragma once

#include <torch/torch.h>

#include <functional>
#include <memory>

#include "nn/decoding.hpp"
#include "nn/multiview.hpp"
#include "nn/resnet.hpp"
#include "nn/training.hpp"
#include "nn/transformer.hpp"

namespace ihn_examples {
namespace nn = ihn_toolkit::nn;  // the toolkit's blocks the ports are built from
}  // namespace ihn_examples

namespace ihn_examples::r2gen {

using nn::BeamSearchOptions;
using nn::BeamSearchResult;
using nn::GreedyOptions;
using nn::GreedyResult;

/// The official argument names and defaults (main.py); vocab_size = tokenizer size without the
/// 0 id (the logit layer has vocab_size + 1 outputs).
struct R2GenOptions {
  explicit R2GenOptions(int64_t vocab_size) : vocab_size_(vocab_size) {}
  /// Channels of the visual features, from the ResNet depth (2048 or 512).
  int64_t d_vf() const { return nn::resnet_out_channels(visual_depth_); }
  /// The benchmark's small CPU config (baselines/pcommon.py): ResNet-18, d_model 256, 2 layers.
  static R2GenOptions small(int64_t vocab_size);

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
  TORCH_ARG(int64_t, rm_num_slots) = 3;
  TORCH_ARG(int64_t, rm_num_heads) = 8;
  TORCH_ARG(int64_t, rm_d_model) = 512;
  /// Length of the positional-encoding table `pe` (a state_dict buffer, 5000 upstream).
  TORCH_ARG(int64_t, max_positions) = 5000;
};

/// Relational memory (R2Gen §2.2): slots updated once per target position.
struct RelationalMemoryImpl : torch::nn::Module {
  RelationalMemoryImpl(int64_t num_slots, int64_t d_model, int64_t num_heads);
  /// Identity(num_slots) padded with zeros to (B, num_slots, d_model), flattened.
  torch::Tensor init_memory(int64_t batch_size, const torch::TensorOptions& options) const;
  /// input (B, d), memory (B, slots*d) -> next memory (B, slots*d).
  torch::Tensor forward_step(const torch::Tensor& input, const torch::Tensor& memory);
  /// attn's query/key/value weights stacked for the memory rows, and key/value/W for the input.
  struct Projections {
    torch::Tensor memory_weight, memory_bias, input_weight, input_bias;
  };
  Projections projections();
  /// input (..., d) -> its key, value and gate projections (..., 4d).
  static torch::Tensor input_projection(const Projections& p, const torch::Tensor& input);
  /// forward_step with the input already projected.
  torch::Tensor forward_step(const Projections& p, const torch::Tensor& projected_input,
                             const torch::Tensor& memory);
  /// The Linear layers a step applies to the memory: its query/key/value (stacked), the
  /// attention's output, the MLP's two, and the gates' U.
  struct StepLinears {
    std::function<torch::Tensor(const torch::Tensor&)> qkv, attention_out, mlp_in, mlp_out, gate;
  };
  /// One step with the given layers (forward_step's, or, in training, nn::SharedWeightLinear).
  torch::Tensor step(const StepLinears& linears, const torch::Tensor& projected_input,
                     const torch::Tensor& memory);
  /// inputs (B, T, d) -> (B, T, slots*d), one memory per position.
  torch::Tensor forward(const torch::Tensor& inputs, torch::Tensor memory);

  int64_t num_slots, d_model;
  nn::MultiHeadedAttention attn;
  torch::nn::Sequential mlp;
  nn::Linear W, U;
};
TORCH_MODULE(RelationalMemory);

/// Memory-driven conditional LayerNorm (MCLN): gamma/beta shifted by MLPs of the memory.
struct ConditionalLayerNormImpl : torch::nn::Module {
  ConditionalLayerNormImpl(int64_t d_model, int64_t rm_num_slots, int64_t rm_d_model,
                           double eps = 1e-6);
  /// x (B, T, d), memory (B, T, slots*rm_d).
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& memory);
  /// The same with mlp_gamma's and mlp_beta's first Linear + ReLU already applied to the memory
  /// (DecoderImpl::mcln_hidden computes them for all the decoder's norms at once).
  torch::Tensor forward_hidden(const torch::Tensor& x, const torch::Tensor& gamma_hidden,
                               const torch::Tensor& beta_hidden);

  torch::Tensor gamma, beta;
  torch::nn::Sequential mlp_gamma, mlp_beta;
  double eps;
};
TORCH_MODULE(ConditionalLayerNorm);

struct ConditionalSublayerConnectionImpl : torch::nn::Module {
  ConditionalSublayerConnectionImpl(int64_t d_model, double dropout, int64_t rm_num_slots,
                                    int64_t rm_d_model);
  ConditionalLayerNorm norm;
  double dropout;
};
TORCH_MODULE(ConditionalSublayerConnection);

struct DecoderLayerImpl : torch::nn::Module {
  DecoderLayerImpl(const R2GenOptions& o);
  /// Teacher forcing over all positions. mcln_hidden: this layer's six entries of
  /// DecoderImpl::mcln_hidden (sublayer i: gamma 2i, beta 2i + 1).
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& hidden_states,
                        const torch::Tensor& src_mask, const torch::Tensor& tgt_mask,
                        at::ArrayRef<torch::Tensor> mcln_hidden);
  ConditionalSublayerConnection sub(int64_t i);
  nn::MultiHeadedAttention self_attn, src_attn;
  nn::PositionwiseFeedForward feed_forward;
  torch::nn::ModuleList sublayer;
};
TORCH_MODULE(DecoderLayer);

struct DecoderImpl : torch::nn::Module {
  DecoderImpl(const R2GenOptions& o);
  torch::Tensor forward(torch::Tensor x, const torch::Tensor& hidden_states,
                        const torch::Tensor& src_mask, const torch::Tensor& tgt_mask,
                        const torch::Tensor& memory);
  /// memory (B, T, slots*d) -> relu(first Linear) of every conditional layer norm's MLP, in the
  /// order layer, sublayer, (gamma, beta): 6 per layer.
  std::vector<torch::Tensor> mcln_hidden(const torch::Tensor& memory);
  /// Those first Linear layers stacked: weight (sum of hidden sizes, slots*d), bias, sizes.
  struct MclnStack {
    torch::Tensor weight, bias;
    std::vector<int64_t> sizes;
  };
  MclnStack mcln_stack();
  /// mcln_hidden with the stack built once by the caller (incremental decoding).
  std::vector<torch::Tensor> mcln_hidden(const torch::Tensor& memory, const MclnStack& stack);
  torch::nn::ModuleList layers;
  nn::LayerNorm norm;
};
TORCH_MODULE(Decoder);

/// `encoder_decoder.model`: encoder, decoder, tgt_embed (Embeddings, PositionalEncoding), rm.
/// src_embed is the identity in R2Gen (no positional encoding on visual tokens).
struct TransformerImpl : torch::nn::Module {
  TransformerImpl(const R2GenOptions& o);
  nn::Encoder encoder;  // the Annotated Transformer encoder shared with R2GenCMN
  Decoder decoder;
  nn::Embeddings embeddings;        // tgt_embed.0
  nn::PositionalEncoding position;  // tgt_embed.1
  torch::nn::Sequential tgt_embed;
  RelationalMemory rm;
  torch::Tensor embed(const torch::Tensor& tokens, int64_t offset = 0);
};
TORCH_MODULE(Transformer);

/// Intermediate tensors of one teacher-forced pass (names as in the fixture).
struct EncoderDecoderOutput {
  torch::Tensor logprobs;       ///< (B, T-1, V+1) log_softmax
  torch::Tensor att_embed_out;  ///< (B, S, d)
  torch::Tensor encoder_out;    ///< (B, S, d) after the final norm
  torch::Tensor rm_memory;      ///< (B, T-1, slots*rm_d)
  torch::Tensor decoder_in;     ///< (B, T-1, d) embeddings * sqrt(d) + pe
  torch::Tensor decoder_out;    ///< (B, T-1, d) after the final norm
};

struct EncoderDecoderImpl : torch::nn::Module {
  explicit EncoderDecoderImpl(const R2GenOptions& o);
  /// att_feats (B, S, d_vf) -> {att_embed output, encoder output}.
  std::pair<torch::Tensor, torch::Tensor> encode(const torch::Tensor& att_feats);
  /// Teacher forcing on reports_ids (B, T): input reports_ids[:, :-1].
  EncoderDecoderOutput forward(const torch::Tensor& att_feats, const torch::Tensor& reports_ids);
  /// Final decoder states (B, T-1, d) of a teacher-forced pass with no image: the visual memory
  /// is a single zero token, so cross-attention returns the same vector for every report. Report
  /// features from these cannot carry the image (`ihn train --report-features text`).
  torch::Tensor text_only_decoder_states(const torch::Tensor& reports_ids);
  /// An incremental decoder over the encoder output `encoder_out` (B, S, d).
  std::unique_ptr<nn::IncrementalDecoder> make_decoder(const torch::Tensor& encoder_out);

  R2GenOptions options;
  torch::nn::Sequential att_embed;
  Transformer model;
  nn::Linear logit;
};
TORCH_MODULE(EncoderDecoder);

/// Everything a training step and the hard-negative library need, from one pass.
struct R2GenOutput {
  torch::Tensor logprobs;         ///< (B, T-1, V+1): input of compute_loss
  torch::Tensor image_features;   ///< (B, d_model): mean of the encoder output over visual tokens
  torch::Tensor report_features;  ///< (B, d_model): masked mean of the final decoder states
  torch::Tensor fc_feats;         ///< (B, views*C): averaged conv5 maps (unused by the decoder)
  torch::Tensor att_feats;        ///< (B, views*h*w, C): patch tokens
  EncoderDecoderOutput details;   ///< intermediates (fixture parity, analysis)
};

/// One batch as R2Gen's data loader yields it; the one-argument overloads below take it, so
/// ihn::encoder_traits (which calls `model->image_features(batch)`) finds the features.
struct R2GenBatch {
  torch::Tensor images;         ///< (B, views, 3, H, W) or (B, 3, H, W)
  torch::Tensor reports_ids;    ///< (B, T) int64
  torch::Tensor reports_masks;  ///< (B, T) float, may be undefined
};

struct R2GenModelImpl : torch::nn::Module {
  explicit R2GenModelImpl(const R2GenOptions& options);

  /// Teacher-forced pass. images (B, views, 3, H, W) or (B, 3, H, W); reports_ids (B, T) int64
  /// starting with BOS 0; reports_masks (B, T) float (1 = kept token) or undefined (then
  /// ids > 0, position 0 kept, is used for the report features).
  R2GenOutput forward(const torch::Tensor& images, const torch::Tensor& reports_ids,
                      const torch::Tensor& reports_masks = {});

  /// (att_feats (B, views*h*w, C), fc_feats (B, views*C)): every view through the same ResNet,
  /// one call per view as upstream (BatchNorm batch statistics per view in training mode).
  std::pair<torch::Tensor, torch::Tensor> visual_features(const torch::Tensor& images);
  /// Hard-negative encoder interface (ihn::encoder_traits): (B, d_model), no extra weights.
  torch::Tensor image_features(const torch::Tensor& images);
  torch::Tensor report_features(const torch::Tensor& images, const torch::Tensor& reports_ids,
                                const torch::Tensor& reports_masks = {});
  R2GenOutput forward(const R2GenBatch& batch) {
    return forward(batch.images, batch.reports_ids, batch.reports_masks);
  }
  torch::Tensor image_features(const R2GenBatch& batch) { return image_features(batch.images); }
  torch::Tensor report_features(const R2GenBatch& batch) {
    return report_features(batch.images, batch.reports_ids, batch.reports_masks);
  }

  /// Incremental decoder for a batch of images (encodes them once).
  std::unique_ptr<nn::IncrementalDecoder> make_decoder(const torch::Tensor& images);
  GreedyResult greedy(const torch::Tensor& images, const GreedyOptions& options = {});
  BeamSearchResult beam_search(const torch::Tensor& images, const BeamSearchOptions& options = {});

  R2GenOptions options;
  nn::VisualExtractor visual_extractor;
  EncoderDecoder encoder_decoder;
};
TORCH_MODULE(R2GenModel);

/// modules/loss.py compute_loss and the masked mean of the report features, shared with
/// R2GenCMN (nn/training.hpp).
using nn::compute_loss;
using nn::masked_mean;

}  // namespace ihn_examples::r2gen
