// R2GenCMN port: the model (cmn.hpp) and its incremental decoder, one translation unit.
#include "cmn.hpp"

#include "nn/generator.hpp"

#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

#include "nn/multiview.hpp"

namespace ihn_examples::cmn {

CMNOptions CMNOptions::small(int64_t vocab_size) {
  return CMNOptions(vocab_size)
      .visual_depth(18)
      .d_model(256)
      .d_ff(256)
      .num_heads(4)
      .num_layers(2)
      .topk(16)
      .cmm_size(512)
      .cmm_dim(256);
}

// ---------------------------------------------------------------------------------------------
// Cross-modal memory

MultiThreadMemoryImpl::MultiThreadMemoryImpl(int64_t heads_, int64_t d_model_, int64_t topk_,
                                             double dropout_, bool naive_topk_)
    : heads(heads_),
      d_model(d_model_),
      d_k(d_model_ / heads_),
      topk(topk_),
      dropout(dropout_),
      naive_topk(naive_topk_),
      linears(register_module("linears", torch::nn::ModuleList())) {
  if (heads <= 0 || d_model % heads != 0)
    throw std::invalid_argument("MultiThreadMemory: d_model " + std::to_string(d_model) +
                                " is not divisible by heads " + std::to_string(heads));
  if (topk <= 0) throw std::invalid_argument("MultiThreadMemory: topk must be positive");
  for (int i = 0; i < 4; ++i) linears->push_back(nn::Linear(d_model, d_model));
}

namespace {
torch::Tensor linear(torch::nn::ModuleList& linears, int64_t i, const torch::Tensor& x) {
  return linears[i]->as<nn::Linear>()->forward(x);
}
void check_memory(const torch::Tensor& memory, int64_t d_model, int64_t topk) {
  if (memory.dim() != 2 || memory.size(1) != d_model)
    throw std::invalid_argument("MultiThreadMemory: memory must be (slots, " +
                                std::to_string(d_model) + "), got " + c10::str(memory.sizes()));
  if (memory.size(0) < topk)
    throw std::invalid_argument("MultiThreadMemory: topk " + std::to_string(topk) +
                                " exceeds the " + std::to_string(memory.size(0)) + " memory slots");
}
}  // namespace

MemoryKeysValues MultiThreadMemoryImpl::project_memory(const torch::Tensor& memory) {
  check_memory(memory, d_model, topk);
  const auto slots = memory.size(0);
  auto split = [&](const torch::Tensor& x) {
    return x.view({slots, heads, d_k}).transpose(0, 1).contiguous();  // (h, slots, d_k)
  };
  return {split(linear(linears, 1, memory)), split(linear(linears, 2, memory))};
}

torch::Tensor MultiThreadMemoryImpl::respond(const torch::Tensor& query,
                                             const MemoryKeysValues& kv) {
  if (query.dim() != 3 || query.size(2) != d_model)
    throw std::invalid_argument("MultiThreadMemory: query must be (B, L, " +
                                std::to_string(d_model) + "), got " + c10::str(query.sizes()));
  const auto B = query.size(0), L = query.size(1), slots = kv.keys.size(1);
  // Heads first, batch and positions merged: one (B*L, d_k) x (d_k, slots) product per head
  // against the batch-independent keys.
  auto q = linear(linears, 0, query).view({B, L, heads, d_k}).permute({2, 0, 1, 3});
  q = q.reshape({heads, B * L, d_k});
  auto scores = torch::bmm(q, kv.keys.transpose(1, 2)) / std::sqrt(static_cast<double>(d_k));
  auto [selected_scores, idx] = scores.topk(topk, -1);  // (h, B*L, k)
  auto p = torch::softmax(selected_scores, -1);
  p = nn::dropout(p, dropout, is_training());
  // Row idx of head h is row h*slots + idx of the flattened (h*slots, d_k) values: gather only
  // the k selected rows; backward scatters into (h*slots, d_k).
  auto offsets = torch::arange(heads, idx.options()).mul_(slots).view({heads, 1, 1});
  auto selected = kv.values.reshape({heads * slots, d_k})
                      .index_select(0, (idx + offsets).reshape(-1))
                      .view({heads, B * L, topk, d_k});
  auto x = torch::matmul(p.unsqueeze(2), selected).squeeze(2);  // (h, B*L, d_k)
  x = x.view({heads, B, L, d_k}).permute({1, 2, 0, 3}).reshape({B, L, heads * d_k});
  return linear(linears, 3, x);
}

torch::Tensor MultiThreadMemoryImpl::respond_naive(const torch::Tensor& query,
                                                   const torch::Tensor& memory) {
  check_memory(memory, d_model, topk);
  if (query.dim() != 3 || query.size(2) != d_model)
    throw std::invalid_argument("MultiThreadMemory: query must be (B, L, " +
                                std::to_string(d_model) + "), got " + c10::str(query.sizes()));
  const auto B = query.size(0), L = query.size(1), slots = memory.size(0);
  auto expanded = memory.unsqueeze(0).expand({B, slots, d_model});
  auto heads_of = [&](int64_t i, const torch::Tensor& x) {
    return linear(linears, i, x).view({B, -1, heads, d_k}).transpose(1, 2);
  };
  auto q = heads_of(0, query), k = heads_of(1, expanded), v = heads_of(2, expanded);
  auto scores = torch::matmul(q, k.transpose(-2, -1)) / std::sqrt(static_cast<double>(d_k));
  auto [selected_scores, idx] = scores.topk(topk);  // (B, h, L, k)
  auto dummy_value = v.unsqueeze(2).expand({B, heads, L, slots, d_k});
  auto dummy_idx = idx.unsqueeze(-1).expand({B, heads, L, topk, d_k});
  auto selected = torch::gather(dummy_value, 3, dummy_idx);
  auto p = torch::softmax(selected_scores, -1);
  p = nn::dropout(p, dropout, is_training());
  auto x = torch::matmul(p.unsqueeze(3), selected).squeeze(3);  // (B, h, L, d_k)
  x = x.transpose(1, 2).contiguous().view({B, -1, heads * d_k});
  return linear(linears, 3, x);
}

torch::Tensor MultiThreadMemoryImpl::forward(const torch::Tensor& query,
                                             const torch::Tensor& memory) {
  return naive_topk ? respond_naive(query, memory) : respond(query, project_memory(memory));
}

// ---------------------------------------------------------------------------------------------
// Transformer and EncoderDecoder

namespace {
nn::TransformerStackOptions stack_options(const CMNOptions& o) {
  return nn::TransformerStackOptions(o.d_model(), o.d_ff(), o.num_heads(), o.num_layers())
      .dropout(o.dropout())
      .masked_fill(-std::numeric_limits<double>::infinity())  // base_cmn.py: float('-inf')
      .norm_names(nn::LayerNormNames::annotated());
}
}  // namespace

TransformerImpl::TransformerImpl(const CMNOptions& o, MultiThreadMemory cmn_)
    : encoder(register_module("encoder", nn::Encoder(stack_options(o)))),
      decoder(register_module("decoder", nn::Decoder(stack_options(o)))),
      src_position(nn::PositionalEncoding(o.d_model(), o.dropout(), o.max_positions())),
      src_embed(register_module("src_embed", torch::nn::Sequential(src_position))),
      embeddings(nn::Embeddings(o.d_model(), o.vocab_size() + 1)),
      position(nn::PositionalEncoding(o.d_model(), o.dropout(), o.max_positions())),
      tgt_embed(register_module("tgt_embed", torch::nn::Sequential(embeddings, position))),
      cmn(register_module("cmn", std::move(cmn_))) {
  // make_model: xavier-uniform on every parameter with dim > 1 (including the memory attention).
  torch::NoGradGuard no_grad;
  for (auto& p : parameters())
    if (p.dim() > 1) torch::nn::init::xavier_uniform_(p);
}

torch::Tensor TransformerImpl::embed(const torch::Tensor& tokens, int64_t offset) {
  return position->forward(embeddings->forward(tokens), offset);
}

EncoderDecoderImpl::EncoderDecoderImpl(const CMNOptions& o)
    : options(o),
      att_embed(register_module(
          "att_embed", torch::nn::Sequential(nn::Linear(o.d_vf(), o.d_model()), torch::nn::ReLU(),
                                             nn::Dropout(o.drop_prob_lm())))),
      // Registered here first, then again inside `model`: the first name is the one
      // unique_named_parameters() (and Python's named_parameters()) keeps.
      cmn(register_module("cmn", MultiThreadMemory(o.num_heads(), o.d_model(), o.topk(),
                                                   o.dropout(), o.naive_topk()))),
      model(register_module("model", Transformer(o, cmn))),
      logit(register_module("logit", nn::Linear(o.d_model(), o.vocab_size() + 1))),
      memory_matrix(
          register_parameter("memory_matrix", torch::empty({o.cmm_size(), o.cmm_dim()}))) {
  if (o.cmm_dim() != o.d_model())
    throw std::invalid_argument("R2GenCMN: cmm_dim (" + std::to_string(o.cmm_dim()) +
                                ") must equal d_model (" + std::to_string(o.d_model()) +
                                "): the memory goes through d_model x d_model projections");
  if (o.topk() > o.cmm_size())
    throw std::invalid_argument("R2GenCMN: topk (" + std::to_string(o.topk()) +
                                ") exceeds cmm_size (" + std::to_string(o.cmm_size()) + ")");
  torch::NoGradGuard no_grad;
  memory_matrix.normal_(0.0, 1.0 / static_cast<double>(o.cmm_dim()));
}

torch::Tensor EncoderDecoderImpl::memory_response(const torch::Tensor& query,
                                                  const MemoryKeysValues& kv) {
  return options.naive_topk() ? cmn->respond_naive(query, memory_matrix) : cmn->respond(query, kv);
}

void EncoderDecoderImpl::encode_into(const torch::Tensor& att_feats, const MemoryKeysValues& kv,
                                     EncoderDecoderOutput& out) {
  if (att_feats.dim() != 3 || att_feats.size(2) != options.d_vf())
    throw std::invalid_argument("R2GenCMN: att_feats must be (B, S, " +
                                std::to_string(options.d_vf()) + "), got " +
                                c10::str(att_feats.sizes()));
  out.att_embed_out = att_embed->forward(att_feats);
  auto with_memory = out.att_embed_out + memory_response(out.att_embed_out, kv);
  out.encoder_in = model->src_position->forward(with_memory);
  // All visual tokens are valid (att_masks is all ones upstream), so no source mask.
  out.encoder_out = model->encoder(out.encoder_in, torch::Tensor());
}

std::pair<torch::Tensor, torch::Tensor> EncoderDecoderImpl::encode(const torch::Tensor& att_feats) {
  EncoderDecoderOutput out;
  MemoryKeysValues kv;
  if (!options.naive_topk()) kv = cmn->project_memory(memory_matrix);
  encode_into(att_feats, kv, out);
  return {out.att_embed_out, out.encoder_out};
}

EncoderDecoderOutput EncoderDecoderImpl::forward(const torch::Tensor& att_feats,
                                                 const torch::Tensor& reports_ids) {
  if (reports_ids.dim() != 2 || reports_ids.size(1) < 2)
    throw std::invalid_argument("R2GenCMN: reports_ids must be (B, T) with T >= 2, got " +
                                c10::str(reports_ids.sizes()));
  if (att_feats.dim() == 3 && reports_ids.size(0) != att_feats.size(0))
    throw std::invalid_argument("R2GenCMN: " + std::to_string(reports_ids.size(0)) +
                                " reports for " + std::to_string(att_feats.size(0)) + " images");
  EncoderDecoderOutput out;
  // The memory's keys/values serve both the visual and the textual queries of this pass.
  MemoryKeysValues kv;
  if (!options.naive_topk()) kv = cmn->project_memory(memory_matrix);
  encode_into(att_feats, kv, out);
  auto seq = reports_ids.narrow(1, 0, reports_ids.size(1) - 1);
  // seq_mask = (seq > 0) with position 0 (BOS = 0) kept, AND the subsequent mask.
  auto seq_mask = seq.gt(0);
  seq_mask.select(1, 0).fill_(true);
  auto tgt_mask =
      seq_mask.unsqueeze(-2).logical_and(nn::subsequent_mask(seq.size(1), seq.device()));
  auto embedded = model->embed(seq);
  out.decoder_in = embedded + memory_response(embedded, kv);
  out.decoder_out = model->decoder(out.decoder_in, out.encoder_out, torch::Tensor(), tgt_mask);
  out.logprobs = torch::log_softmax(logit(out.decoder_out), -1, torch::kFloat);
  return out;
}

namespace {

/// R2GenCMN's incremental decoder: caches the memory's key/value projections (once per decode),
/// and per layer the self-attention keys/values of earlier positions and the cross-attention
/// keys/values of the encoder output. A step embeds and queries the memory for the new token only
/// (the response of a position depends on that position alone).
class CMNStepper final : public nn::IncrementalDecoder {
 public:
  CMNStepper(EncoderDecoderImpl& ed, const torch::Tensor& encoder_out) : ed_(ed) {
    if (!ed_.options.naive_topk()) kv_ = ed_.cmn->project_memory(ed_.memory_matrix);
    for (const auto& layer_ptr : *ed_.model->decoder->layers) {
      auto* layer = layer_ptr->as<nn::DecoderLayerImpl>();
      cross_k_.push_back(layer->src_attn->project(1, encoder_out));
      cross_v_.push_back(layer->src_attn->project(2, encoder_out));
      self_k_.emplace_back();
      self_v_.emplace_back();
    }
  }

  torch::Tensor step(const torch::Tensor& tokens) override {
    auto& tf = *ed_.model;
    auto x = tf.embed(tokens.unsqueeze(1), position_);  // (N, 1, d)
    x = x + ed_.memory_response(x, kv_);
    const bool train = ed_.is_training();
    size_t l = 0;
    for (const auto& layer_ptr : *tf.decoder->layers) {
      auto* layer = layer_ptr->as<nn::DecoderLayerImpl>();
      auto &s0 = layer->sub(0), &s1 = layer->sub(1), &s2 = layer->sub(2);
      // Self-attention over all positions so far: no mask needed (the new row is the last one).
      auto n = s0.norm(x);
      auto& sa = *layer->self_attn;
      auto k = sa.project(1, n), v = sa.project(2, n);
      self_k_[l] = self_k_[l].defined() ? torch::cat({self_k_[l], k}, 2) : k;
      self_v_[l] = self_v_[l].defined() ? torch::cat({self_v_[l], v}, 2) : v;
      x = x + nn::dropout(sa.merge(sa.attend(sa.project(0, n), self_k_[l], self_v_[l])), s0.dropout,
                          train);
      n = s1.norm(x);
      auto& ca = *layer->src_attn;
      x = x + nn::dropout(ca.merge(ca.attend(ca.project(0, n), cross_k_[l], cross_v_[l])),
                          s1.dropout, train);
      x = x + nn::dropout(layer->feed_forward(s2.norm(x)), s2.dropout, train);
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
    for (auto& t : self_k_) rep(t);
    for (auto& t : self_v_) rep(t);
    for (auto& t : cross_k_) rep(t);
    for (auto& t : cross_v_) rep(t);
  }

  void reorder(const torch::Tensor& rows) override {
    // The visual keys/values are identical for all beams of a study and the memory projection
    // is shared by all rows: only the self-attention caches move.
    auto sel = [&rows](torch::Tensor& t) {
      if (t.defined()) t = t.index_select(0, rows);
    };
    for (auto& t : self_k_) sel(t);
    for (auto& t : self_v_) sel(t);
  }

 private:
  EncoderDecoderImpl& ed_;
  MemoryKeysValues kv_;
  std::vector<torch::Tensor> self_k_, self_v_, cross_k_, cross_v_;
  int64_t position_ = 0;
};

}  // namespace

std::unique_ptr<nn::IncrementalDecoder> EncoderDecoderImpl::make_decoder(
    const torch::Tensor& encoder_out) {
  return std::make_unique<CMNStepper>(*this, encoder_out);
}

// ---------------------------------------------------------------------------------------------
// CMNModel

CMNModelImpl::CMNModelImpl(const CMNOptions& o)
    : options(o),
      visual_extractor(register_module(
          "visual_extractor",
          nn::VisualExtractor(nn::VisualExtractorOptions().depth(o.visual_depth())))),
      encoder_decoder(register_module("encoder_decoder", EncoderDecoder(o))) {}

std::pair<torch::Tensor, torch::Tensor> CMNModelImpl::visual_features(const torch::Tensor& images) {
  return nn::multiview_features(*visual_extractor, images, "R2GenCMN");
}

CMNOutput CMNModelImpl::forward(const torch::Tensor& images, const torch::Tensor& reports_ids,
                                const torch::Tensor& reports_masks) {
  return nn::generator_forward<CMNOutput>(*this, images, reports_ids, reports_masks);
}

torch::Tensor CMNModelImpl::image_features(const torch::Tensor& images) {
  return nn::generator_image_features(*this, images);
}

torch::Tensor CMNModelImpl::report_features(const torch::Tensor& images,
                                            const torch::Tensor& reports_ids,
                                            const torch::Tensor& reports_masks) {
  return forward(images, reports_ids, reports_masks).report_features;
}

std::unique_ptr<nn::IncrementalDecoder> CMNModelImpl::make_decoder(const torch::Tensor& images) {
  return nn::generator_decoder(*this, images);
}

GreedyResult CMNModelImpl::greedy(const torch::Tensor& images, const GreedyOptions& options_) {
  return nn::generator_greedy(*this, images, options_);
}

BeamSearchResult CMNModelImpl::beam_search(const torch::Tensor& images,
                                           const BeamSearchOptions& options_) {
  return nn::generator_beam_search(*this, images, options_);
}

torch::OrderedDict<std::string, torch::Tensor> CMNModelImpl::unique_named_parameters() const {
  return nn::unique_named_parameters(*this);
}

std::vector<torch::Tensor> CMNModelImpl::unique_parameters() const {
  return nn::unique_parameters(*this);
}

}  // namespace ihn_examples::cmn
