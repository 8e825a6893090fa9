// R2Gen port: the model (r2gen.hpp) and its incremental decoder, one translation unit.
#include "r2gen.hpp"

#include "nn/generator.hpp"

#include <cmath>
#include <stdexcept>
#include <string>

namespace ihn_examples::r2gen {

R2GenOptions R2GenOptions::small(int64_t vocab_size) {
  return R2GenOptions(vocab_size)
      .visual_depth(18)
      .d_model(256)
      .d_ff(256)
      .num_heads(4)
      .num_layers(2)
      .rm_num_slots(3)
      .rm_num_heads(4)
      .rm_d_model(256);
}

// ---------------------------------------------------------------------------------------------
// Relational memory and MCLN

RelationalMemoryImpl::RelationalMemoryImpl(int64_t num_slots_, int64_t d_model_, int64_t num_heads)
    : num_slots(num_slots_),
      d_model(d_model_),
      attn(register_module(
          "attn", nn::MultiHeadedAttention(nn::MultiHeadedAttentionOptions(num_heads, d_model_)))),
      mlp(register_module(
          "mlp", torch::nn::Sequential(nn::Linear(d_model_, d_model_), torch::nn::ReLU(),
                                       nn::Linear(d_model_, d_model_), torch::nn::ReLU()))),
      W(register_module("W", nn::Linear(d_model_, 2 * d_model_))),
      U(register_module("U", nn::Linear(d_model_, 2 * d_model_))) {}

torch::Tensor RelationalMemoryImpl::init_memory(int64_t batch_size,
                                                const torch::TensorOptions& options) const {
  auto memory = torch::zeros({batch_size, num_slots, d_model}, options);
  const auto diag = std::min(num_slots, d_model);
  memory.narrow(2, 0, diag)
      .narrow(1, 0, diag)
      .copy_(torch::eye(diag, options).unsqueeze(0).expand({batch_size, diag, diag}));
  return memory.reshape({batch_size, num_slots * d_model});
}

RelationalMemoryImpl::Projections RelationalMemoryImpl::projections() {
  // The official step runs seven small GEMMs on a few rows each; stacked weights make them two:
  // the memory's query/key/value, and the input row's key/value/gates (which, not depending on
  // the memory, are computed for all positions at once in forward). Same products, fewer calls.
  auto weight = [&](int i) { return attn->linears[i]->as<nn::Linear>()->weight; };
  auto bias = [&](int i) { return attn->linears[i]->as<nn::Linear>()->bias; };
  return {torch::cat({weight(0), weight(1), weight(2)}), torch::cat({bias(0), bias(1), bias(2)}),
          torch::cat({weight(1), weight(2), W->weight}), torch::cat({bias(1), bias(2), W->bias})};
}

torch::Tensor RelationalMemoryImpl::input_projection(const Projections& p,
                                                     const torch::Tensor& input) {
  return nn::linear(input, p.input_weight, p.input_bias);
}

torch::Tensor RelationalMemoryImpl::forward_step(const torch::Tensor& input,
                                                 const torch::Tensor& memory_flat) {
  const auto p = projections();
  return forward_step(p, input_projection(p, input), memory_flat);
}

torch::Tensor RelationalMemoryImpl::forward_step(const Projections& p,
                                                 const torch::Tensor& projected_input,
                                                 const torch::Tensor& memory_flat) {
  auto* out = attn->linears[3]->as<nn::Linear>();
  auto* mlp_in = mlp->ptr(0)->as<nn::Linear>();
  auto* mlp_out = mlp->ptr(2)->as<nn::Linear>();
  const StepLinears linears{
      [&](const torch::Tensor& x) { return nn::linear(x, p.memory_weight, p.memory_bias); },
      [&](const torch::Tensor& x) { return out->forward(x); },
      [&](const torch::Tensor& x) { return mlp_in->forward(x); },
      [&](const torch::Tensor& x) { return mlp_out->forward(x); },
      [&](const torch::Tensor& x) { return U->forward(x); }};
  return step(linears, projected_input, memory_flat);
}

torch::Tensor RelationalMemoryImpl::step(const StepLinears& linears,
                                         const torch::Tensor& projected_input,
                                         const torch::Tensor& memory_flat) {
  auto memory = memory_flat.reshape({-1, num_slots, d_model});
  // kv = cat(memory, input): project the memory rows here, the input row was projected before.
  auto qkv = linears.qkv(memory).split(d_model, 2);
  auto in = projected_input.split_with_sizes({d_model, d_model, 2 * d_model}, 1);
  auto k = torch::cat({qkv[1], in[0].unsqueeze(1)}, 1);
  auto v = torch::cat({qkv[2], in[1].unsqueeze(1)}, 1);
  auto heads = attn->attend(attn->split_heads(qkv[0]), attn->split_heads(k), attn->split_heads(v));
  auto next = memory + linears.attention_out(attn->concat_heads(heads));
  next = next + torch::relu(linears.mlp_out(torch::relu(linears.mlp_in(next))));
  auto gates = in[2].unsqueeze(1) + linears.gate(torch::tanh(memory));
  auto parts = gates.split(d_model, 2);
  auto input_gate = torch::sigmoid(parts[0]);
  auto forget_gate = torch::sigmoid(parts[1]);
  next = input_gate * torch::tanh(next) + forget_gate * memory;
  return next.reshape({-1, num_slots * d_model});
}

torch::Tensor RelationalMemoryImpl::forward(const torch::Tensor& inputs, torch::Tensor memory) {
  const auto p = projections();
  // unbind, not select per step: its backward stacks the T gradients once instead of writing
  // each into a zeroed (B, T, 4d) tensor.
  const auto projected = input_projection(p, inputs).unbind(1);
  // The five per-step layers as nn::SharedWeightLinear: in training their weights' gradients are
  // one product over all T steps (and without grad mode they are plain products).
  auto linear_of = [](torch::nn::Module& m) {
    auto* l = m.as<nn::Linear>();
    return nn::SharedWeightLinear(l->weight, l->bias);
  };
  const auto qkv = nn::SharedWeightLinear(p.memory_weight, p.memory_bias);
  const auto out = linear_of(*attn->linears[3]), mlp_in = linear_of(*mlp->ptr(0)),
             mlp_out = linear_of(*mlp->ptr(2)), gate = linear_of(*U);
  const StepLinears linears{qkv, out, mlp_in, mlp_out, gate};
  std::vector<torch::Tensor> outputs;
  outputs.reserve(projected.size());
  for (const auto& projected_input : projected) {
    memory = step(linears, projected_input, memory);
    outputs.push_back(memory);
  }
  return torch::stack(outputs, 1);
}

namespace {
// Linear -> ReLU -> Linear with xavier-uniform weights and bias 0.1, as ConditionalLayerNorm's
// constructor does (the transformer builder then re-draws the weights, xavier again).
torch::nn::Sequential mcln_mlp(int64_t in, int64_t hidden, int64_t out_in, int64_t out) {
  torch::nn::Sequential mlp(nn::Linear(in, hidden), torch::nn::ReLU(), nn::Linear(out_in, out));
  torch::NoGradGuard no_grad;
  for (auto& p : mlp->named_parameters()) {
    if (p.value().dim() > 1)
      torch::nn::init::xavier_uniform_(p.value());
    else
      p.value().fill_(0.1);
  }
  return mlp;
}
}  // namespace

ConditionalLayerNormImpl::ConditionalLayerNormImpl(int64_t d_model, int64_t rm_num_slots,
                                                   int64_t rm_d_model, double eps_)
    : gamma(register_parameter("gamma", torch::ones({d_model}))),
      beta(register_parameter("beta", torch::zeros({d_model}))),
      // Upstream: mlp_gamma's second Linear is (rm_d_model -> rm_d_model), mlp_beta's is
      // (d_model -> d_model); they only agree when rm_d_model == d_model.
      mlp_gamma(register_module(
          "mlp_gamma", mcln_mlp(rm_num_slots * rm_d_model, d_model, rm_d_model, rm_d_model))),
      mlp_beta(register_module("mlp_beta",
                               mcln_mlp(rm_num_slots * rm_d_model, d_model, d_model, d_model))),
      eps(eps_) {}

torch::Tensor ConditionalLayerNormImpl::forward(const torch::Tensor& x,
                                                const torch::Tensor& memory) {
  auto hidden = [&](torch::nn::Sequential& mlp) {
    return torch::relu(mlp->ptr(0)->as<nn::Linear>()->forward(memory));
  };
  return forward_hidden(x, hidden(mlp_gamma), hidden(mlp_beta));
}

torch::Tensor ConditionalLayerNormImpl::forward_hidden(const torch::Tensor& x,
                                                       const torch::Tensor& gamma_hidden,
                                                       const torch::Tensor& beta_hidden) {
  auto [centered, denom] = nn::layer_norm_parts(x, eps);
  auto gamma_hat = gamma + mlp_gamma->ptr(2)->as<nn::Linear>()->forward(gamma_hidden);
  auto beta_hat = beta + mlp_beta->ptr(2)->as<nn::Linear>()->forward(beta_hidden);
  return gamma_hat * centered / denom + beta_hat;
}

ConditionalSublayerConnectionImpl::ConditionalSublayerConnectionImpl(int64_t d_model,
                                                                     double dropout_,
                                                                     int64_t rm_num_slots,
                                                                     int64_t rm_d_model)
    : norm(register_module("norm", ConditionalLayerNorm(d_model, rm_num_slots, rm_d_model))),
      dropout(dropout_) {}

// ---------------------------------------------------------------------------------------------
// Encoder / decoder stacks

namespace {
nn::MultiHeadedAttention make_attention(const R2GenOptions& o) {
  return nn::MultiHeadedAttention(nn::MultiHeadedAttentionOptions(o.num_heads(), o.d_model())
                                      .dropout(o.dropout())
                                      .masked_fill(-1e9));
}
nn::PositionwiseFeedForward make_ff(const R2GenOptions& o) {
  return nn::PositionwiseFeedForward(o.d_model(), o.d_ff(), o.dropout());
}
}  // namespace

DecoderLayerImpl::DecoderLayerImpl(const R2GenOptions& o)
    : self_attn(register_module("self_attn", make_attention(o))),
      src_attn(register_module("src_attn", make_attention(o))),
      feed_forward(register_module("feed_forward", make_ff(o))),
      sublayer(register_module("sublayer", torch::nn::ModuleList())) {
  for (int i = 0; i < 3; ++i)
    sublayer->push_back(
        ConditionalSublayerConnection(o.d_model(), o.dropout(), o.rm_num_slots(), o.rm_d_model()));
}

ConditionalSublayerConnection DecoderLayerImpl::sub(int64_t i) {
  return ConditionalSublayerConnection(
      std::dynamic_pointer_cast<ConditionalSublayerConnectionImpl>(sublayer->ptr(i)));
}

torch::Tensor DecoderLayerImpl::forward(const torch::Tensor& x, const torch::Tensor& hidden_states,
                                        const torch::Tensor& src_mask,
                                        const torch::Tensor& tgt_mask,
                                        at::ArrayRef<torch::Tensor> mcln_hidden) {
  const bool train = is_training();
  auto residual = [&](int64_t i, const torch::Tensor& in, auto&& f) {
    auto s = sub(i);
    auto n = s->norm->forward_hidden(in, mcln_hidden[2 * i], mcln_hidden[2 * i + 1]);
    return in + nn::dropout(f(n), s->dropout, train);
  };
  auto y = residual(0, x, [&](const torch::Tensor& n) { return self_attn(n, n, n, tgt_mask); });
  y = residual(1, y, [&](const torch::Tensor& n) {
    return src_attn(n, hidden_states, hidden_states, src_mask);
  });
  return residual(2, y, [&](const torch::Tensor& n) { return feed_forward(n); });
}

DecoderImpl::DecoderImpl(const R2GenOptions& o)
    : layers(register_module("layers", torch::nn::ModuleList())),
      norm(register_module("norm", nn::LayerNorm(o.d_model()))) {
  for (int64_t i = 0; i < o.num_layers(); ++i) layers->push_back(DecoderLayer(o));
}

torch::Tensor DecoderImpl::forward(torch::Tensor x, const torch::Tensor& hidden_states,
                                   const torch::Tensor& src_mask, const torch::Tensor& tgt_mask,
                                   const torch::Tensor& memory) {
  const auto hidden = mcln_hidden(memory);
  const at::ArrayRef<torch::Tensor> all(hidden);
  for (size_t l = 0; l < layers->size(); ++l)
    x = layers[l]->as<DecoderLayerImpl>()->forward(x, hidden_states, src_mask, tgt_mask,
                                                   all.slice(6 * l, 6));
  return norm(x);
}

std::vector<torch::Tensor> DecoderImpl::mcln_hidden(const torch::Tensor& memory) {
  return mcln_hidden(memory, mcln_stack());
}

std::vector<torch::Tensor> DecoderImpl::mcln_hidden(const torch::Tensor& memory,
                                                    const MclnStack& stack) {
  const auto hidden = torch::relu(nn::linear(memory, stack.weight, stack.bias));
  return hidden.split_with_sizes(stack.sizes, -1);
}

DecoderImpl::MclnStack DecoderImpl::mcln_stack() {
  // All 2 x 3 x layers MLPs of the conditional layer norms read the same memory: their first
  // Linear is one GEMM with the weights stacked (the same products in one call, and in backward
  // one product gives the memory's summed gradient instead of 2 x 3 x layers added up).
  std::vector<torch::Tensor> weights, biases;
  for (const auto& layer : *layers) {
    for (int64_t i = 0; i < 3; ++i) {
      auto& norm = *layer->as<DecoderLayerImpl>()->sub(i)->norm;
      for (auto* mlp : {&norm.mlp_gamma, &norm.mlp_beta}) {
        auto* first = (*mlp)->ptr(0)->as<nn::Linear>();
        weights.push_back(first->weight);
        biases.push_back(first->bias);
      }
    }
  }
  std::vector<int64_t> sizes;
  for (const auto& w : weights) sizes.push_back(w.size(0));
  return {torch::cat(weights), torch::cat(biases), sizes};
}

TransformerImpl::TransformerImpl(const R2GenOptions& o)
    : encoder(register_module(
          "encoder", nn::Encoder(nn::TransformerStackOptions(o.d_model(), o.d_ff(), o.num_heads(),
                                                             o.num_layers())
                                     .dropout(o.dropout())
                                     .masked_fill(-1e9)))),
      decoder(register_module("decoder", Decoder(o))),
      embeddings(nn::Embeddings(o.d_model(), o.vocab_size() + 1)),
      position(nn::PositionalEncoding(o.d_model(), o.dropout(), o.max_positions())),
      tgt_embed(register_module("tgt_embed", torch::nn::Sequential(embeddings, position))),
      rm(register_module("rm",
                         RelationalMemory(o.rm_num_slots(), o.rm_d_model(), o.rm_num_heads()))) {
  // make_model: xavier-uniform on every parameter with dim > 1 (rm, encoder, decoder, lut).
  torch::NoGradGuard no_grad;
  for (auto& p : parameters())
    if (p.dim() > 1) torch::nn::init::xavier_uniform_(p);
}

torch::Tensor TransformerImpl::embed(const torch::Tensor& tokens, int64_t offset) {
  return position->forward(embeddings->forward(tokens), offset);
}

// ---------------------------------------------------------------------------------------------
// EncoderDecoder

EncoderDecoderImpl::EncoderDecoderImpl(const R2GenOptions& o)
    : options(o),
      att_embed(register_module(
          "att_embed", torch::nn::Sequential(nn::Linear(o.d_vf(), o.d_model()), torch::nn::ReLU(),
                                             nn::Dropout(o.drop_prob_lm())))),
      model(register_module("model", Transformer(o))),
      logit(register_module("logit", nn::Linear(o.d_model(), o.vocab_size() + 1))) {
  if (o.rm_d_model() != o.d_model())
    throw std::invalid_argument("R2Gen: rm_d_model (" + std::to_string(o.rm_d_model()) +
                                ") must equal d_model (" + std::to_string(o.d_model()) +
                                "): the memory is fed the d_model-sized token embeddings");
}

std::pair<torch::Tensor, torch::Tensor> EncoderDecoderImpl::encode(const torch::Tensor& att_feats) {
  if (att_feats.dim() != 3 || att_feats.size(2) != options.d_vf())
    throw std::invalid_argument("R2Gen: att_feats must be (B, S, " +
                                std::to_string(options.d_vf()) + "), got " +
                                c10::str(att_feats.sizes()));
  auto embedded = att_embed->forward(att_feats);
  // All visual tokens are valid (att_masks is None upstream), so no source mask.
  auto memory = model->encoder(embedded, torch::Tensor());
  return {embedded, memory};
}

EncoderDecoderOutput EncoderDecoderImpl::forward(const torch::Tensor& att_feats,
                                                 const torch::Tensor& reports_ids) {
  if (reports_ids.dim() != 2 || reports_ids.size(1) < 2)
    throw std::invalid_argument("R2Gen: reports_ids must be (B, T) with T >= 2, got " +
                                c10::str(reports_ids.sizes()));
  EncoderDecoderOutput out;
  std::tie(out.att_embed_out, out.encoder_out) = encode(att_feats);
  auto seq = reports_ids.narrow(1, 0, reports_ids.size(1) - 1);
  // seq_mask = (seq > 0) with position 0 (BOS = 0) kept, AND the subsequent mask.
  auto seq_mask = seq.gt(0);
  seq_mask.select(1, 0).fill_(true);
  auto tgt_mask =
      seq_mask.unsqueeze(-2).logical_and(nn::subsequent_mask(seq.size(1), seq.device()));
  // Upstream embeds the target twice (once for the memory, once for the decoder), so in training
  // the two see independent dropout masks.
  auto rm_in = model->embed(seq);
  out.rm_memory = model->rm(rm_in, model->rm->init_memory(seq.size(0), out.encoder_out.options()));
  out.decoder_in = model->embed(seq);
  out.decoder_out =
      model->decoder(out.decoder_in, out.encoder_out, torch::Tensor(), tgt_mask, out.rm_memory);
  out.logprobs = torch::log_softmax(logit(out.decoder_out), -1, torch::kFloat);
  return out;
}

torch::Tensor EncoderDecoderImpl::text_only_decoder_states(const torch::Tensor& reports_ids) {
  auto seq = reports_ids.narrow(1, 0, reports_ids.size(1) - 1);
  auto seq_mask = seq.gt(0);
  seq_mask.select(1, 0).fill_(true);
  auto tgt_mask =
      seq_mask.unsqueeze(-2).logical_and(nn::subsequent_mask(seq.size(1), seq.device()));
  const auto float_options = logit->weight.options();
  auto rm_memory = model->rm(model->embed(seq), model->rm->init_memory(seq.size(0), float_options));
  auto no_image = torch::zeros({seq.size(0), 1, options.d_model()}, float_options);
  return model->decoder(model->embed(seq), no_image, torch::Tensor(), tgt_mask, rm_memory);
}

namespace {

/// R2Gen's incremental decoder: caches the relational memory and, per layer, the self-attention
/// keys/values of earlier positions and the cross-attention keys/values of the visual memory.
class R2GenStepper final : public nn::IncrementalDecoder {
 public:
  R2GenStepper(EncoderDecoderImpl& ed, const torch::Tensor& encoder_out) : ed_(ed) {
    auto& tf = *ed_.model;
    rm_state_ = tf.rm->init_memory(encoder_out.size(0), encoder_out.options());
    // The stacked weights, once per decode rather than once per step (they do not change).
    rm_projections_ = tf.rm->projections();
    mcln_stack_ = tf.decoder->mcln_stack();
    for (const auto& layer_ptr : *tf.decoder->layers) {
      auto* layer = layer_ptr->as<DecoderLayerImpl>();
      cross_k_.push_back(layer->src_attn->project(1, encoder_out));
      cross_v_.push_back(layer->src_attn->project(2, encoder_out));
      self_k_.emplace_back();
      self_v_.emplace_back();
    }
  }

  torch::Tensor step(const torch::Tensor& tokens) override {
    auto& tf = *ed_.model;
    auto x = tf.embed(tokens.unsqueeze(1), position_);  // (N, 1, d)
    rm_state_ = tf.rm->forward_step(
        rm_projections_, tf.rm->input_projection(rm_projections_, x.select(1, 0)), rm_state_);
    const auto hidden = tf.decoder->mcln_hidden(rm_state_.unsqueeze(1), mcln_stack_);
    auto norm = [&](ConditionalSublayerConnection& s, size_t l, int64_t i,
                    const torch::Tensor& in) {
      return s->norm->forward_hidden(in, hidden[6 * l + 2 * i], hidden[6 * l + 2 * i + 1]);
    };
    const bool train = ed_.is_training();
    size_t l = 0;
    for (const auto& layer_ptr : *tf.decoder->layers) {
      auto* layer = layer_ptr->as<DecoderLayerImpl>();
      auto s0 = layer->sub(0), s1 = layer->sub(1), s2 = layer->sub(2);
      // Self-attention over all positions so far: no mask needed (the new row is the last one).
      auto n = norm(s0, l, 0, x);
      auto& sa = *layer->self_attn;
      auto k = sa.project(1, n), v = sa.project(2, n);
      self_k_[l] = self_k_[l].defined() ? torch::cat({self_k_[l], k}, 2) : k;
      self_v_[l] = self_v_[l].defined() ? torch::cat({self_v_[l], v}, 2) : v;
      x = x + nn::dropout(sa.merge(sa.attend(sa.project(0, n), self_k_[l], self_v_[l])),
                          s0->dropout, train);
      n = norm(s1, l, 1, x);
      auto& ca = *layer->src_attn;
      x = x + nn::dropout(ca.merge(ca.attend(ca.project(0, n), cross_k_[l], cross_v_[l])),
                          s1->dropout, train);
      x = x + nn::dropout(layer->feed_forward(norm(s2, l, 2, x)), s2->dropout, train);
      ++l;
    }
    ++position_;
    auto out = tf.decoder->norm(x).select(1, 0);
    return torch::log_softmax(ed_.logit(out), -1, torch::kFloat);
  }

  void expand(int64_t n) override {
    auto rep = [n](torch::Tensor& t) {
      if (t.defined()) t = t.repeat_interleave(n, 0);
    };
    rep(rm_state_);
    for (auto& t : self_k_) rep(t);
    for (auto& t : self_v_) rep(t);
    for (auto& t : cross_k_) rep(t);
    for (auto& t : cross_v_) rep(t);
  }

  void reorder(const torch::Tensor& rows) override {
    // The visual keys/values are identical for all beams of a study: only the per-step state moves.
    auto sel = [&rows](torch::Tensor& t) {
      if (t.defined()) t = t.index_select(0, rows);
    };
    sel(rm_state_);
    for (auto& t : self_k_) sel(t);
    for (auto& t : self_v_) sel(t);
  }

 private:
  EncoderDecoderImpl& ed_;
  torch::Tensor rm_state_;
  RelationalMemoryImpl::Projections rm_projections_;
  DecoderImpl::MclnStack mcln_stack_;
  std::vector<torch::Tensor> self_k_, self_v_, cross_k_, cross_v_;
  int64_t position_ = 0;
};

}  // namespace

std::unique_ptr<nn::IncrementalDecoder> EncoderDecoderImpl::make_decoder(
    const torch::Tensor& encoder_out) {
  return std::make_unique<R2GenStepper>(*this, encoder_out);
}

// ---------------------------------------------------------------------------------------------
// R2GenModel

R2GenModelImpl::R2GenModelImpl(const R2GenOptions& o)
    : options(o),
      visual_extractor(register_module(
          "visual_extractor",
          nn::VisualExtractor(nn::VisualExtractorOptions().depth(o.visual_depth())))),
      encoder_decoder(register_module("encoder_decoder", EncoderDecoder(o))) {}

std::pair<torch::Tensor, torch::Tensor> R2GenModelImpl::visual_features(
    const torch::Tensor& images) {
  return nn::multiview_features(*visual_extractor, images, "R2Gen");
}

R2GenOutput R2GenModelImpl::forward(const torch::Tensor& images, const torch::Tensor& reports_ids,
                                    const torch::Tensor& reports_masks) {
  return nn::generator_forward<R2GenOutput>(*this, images, reports_ids, reports_masks);
}

torch::Tensor R2GenModelImpl::image_features(const torch::Tensor& images) {
  return nn::generator_image_features(*this, images);
}

torch::Tensor R2GenModelImpl::report_features(const torch::Tensor& images,
                                              const torch::Tensor& reports_ids,
                                              const torch::Tensor& reports_masks) {
  return forward(images, reports_ids, reports_masks).report_features;
}

std::unique_ptr<nn::IncrementalDecoder> R2GenModelImpl::make_decoder(const torch::Tensor& images) {
  return nn::generator_decoder(*this, images);
}

GreedyResult R2GenModelImpl::greedy(const torch::Tensor& images, const GreedyOptions& options_) {
  return nn::generator_greedy(*this, images, options_);
}

BeamSearchResult R2GenModelImpl::beam_search(const torch::Tensor& images,
                                             const BeamSearchOptions& options_) {
  return nn::generator_beam_search(*this, images, options_);
}

}  // namespace ihn_examples::r2gen
