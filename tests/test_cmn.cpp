// The R2GenCMN port: parity with the official code's outputs (the shared suite of
// fixture_checks.hpp on fixtures/cmn_tiny, tagged [shared]; tolerances there) with the aliased
// memory-attention keys, the index-gather top-k against upstream's expanded form, the
// de-duplicated parameter list, incremental decoding, and the hard-negative features.
#include "fixture_checks.hpp"

#include <nlohmann/json.hpp>

#include <cmath>
#include <set>

#include "cmn.hpp"
#include "nn/deterministic_fill.hpp"

using ihn_examples::cmn::CMNBatch;
using ihn_examples::cmn::CMNModel;
using ihn_examples::cmn::CMNOptions;
using ihn_examples::cmn::compute_loss;
namespace enn = ihn_toolkit::nn;
using ihn_test::arg;
using ihn_test::max_abs_diff;

namespace {

/// The R2GenCMN side of the shared parity suite: the model from the fixture's official arguments
/// (R2GenCMN's parse_agrs names), and which intermediates of a teacher-forced pass outputs.pt
/// holds.
struct CMNPort {
  using Model = CMNModel;
  static constexpr const char* fixture = "cmn_tiny";
  static CMNOptions options(const nlohmann::json& args, int64_t vocab_size) {
    CMNOptions options(vocab_size);
    return ihn_test::transformer_args(options, args)
        .topk(arg(args, "topk"))
        .cmm_size(arg(args, "cmm_size"))
        .cmm_dim(arg(args, "cmm_dim"));
  }
  static std::vector<std::pair<std::string, torch::Tensor>> intermediates(
      const ihn_examples::cmn::CMNOutput& out) {
    const auto& d = out.details;
    return {{"tf_att_embed_out", d.att_embed_out},
            {"tf_encoder_in", d.encoder_in},
            {"tf_encoder_out", d.encoder_out},
            {"tf_decoder_in", d.decoder_in},
            {"tf_decoder_out", d.decoder_out}};
  }
};

/// Built once: the filled model of fixtures/cmn_tiny, its inputs and outputs.
ihn_test::ParityFixture<CMNPort>& fixture() {
  static ihn_test::ParityFixture<CMNPort> fx;
  return fx;
}

}  // namespace

TEST_CASE("cmn: state_dict keys, aliases, the deterministic fill and the parameter count match",
          "[cmn][shared]") {
  ihn_test::check_fill_matches_fixture(fixture());
}

TEST_CASE("cmn: generated images match the fixture's checksums", "[cmn][shared]") {
  ihn_test::check_images_match_fixture(fixture());
}

TEST_CASE("cmn: visual extractor matches (atol 1e-3)", "[cmn][shared]") {
  ihn_test::check_visual_features_match_fixture(fixture());
}

TEST_CASE("cmn: teacher-forced log-probs, intermediates and loss match", "[cmn][shared]") {
  auto& fx = fixture();
  const auto out = ihn_test::check_teacher_forcing_matches_fixture<CMNPort>(fx);
  // The memory response is a real part of encoder_in (not ~0): encoder_in differs from
  // att_embed_out + pe by far more than the tolerance.
  const auto tokens = out.details.att_embed_out.size(1);
  auto pe = fx.model->encoder_decoder->model->src_position->pe.narrow(1, 0, tokens);
  CHECK(max_abs_diff(out.details.encoder_in, out.details.att_embed_out + pe) > 1e-2);
}

TEST_CASE("cmn: bf16 autocast (fp16 on CUDA) stays within bf16 rounding of float32",
          "[cmn][shared][precision]") {
  ihn_test::check_reduced_precision_forward(fixture());
}

TEST_CASE("cmn: padded teacher-forced batch matches", "[cmn][shared]") {
  ihn_test::check_padded_batch_matches_fixture(fixture());
}

TEST_CASE("cmn: gradient norms match by name (rtol 1e-3)", "[cmn][shared]") {
  const auto norms = ihn_test::check_grad_norms_match_fixture(fixture());
  // The memory matrix and the memory attention do receive gradient.
  CHECK(norms.at("encoder_decoder.memory_matrix") > 0);
  CHECK(norms.at("encoder_decoder.cmn.linears.1.weight") > 0);
}

TEST_CASE("cmn: greedy decoding with and without trigram blocking matches", "[cmn][shared]") {
  ihn_test::check_greedy_matches_fixture(fixture());
}

TEST_CASE("cmn: beam search matches ids, lengths and scores", "[cmn][shared]") {
  ihn_test::check_beam_matches_fixture(fixture());
}

TEST_CASE("cmn: original sin/cos positional tables (alt_pe outputs)", "[cmn][shared]") {
  ihn_test::check_original_positional_tables_match_fixture(fixture());
}

// ---------------------------------------------------------------------------------------------
// Without the fixtures: properties of the port.

namespace {
CMNOptions small_test_options(int64_t vocab = 30) {
  return CMNOptions(vocab)
      .visual_depth(18)
      .d_model(32)
      .d_ff(48)
      .num_heads(4)
      .num_layers(2)
      .topk(6)
      .cmm_size(40)
      .cmm_dim(32)
      .max_positions(64);
}

CMNModel small_random_model(bool naive = false, int64_t vocab = 30) {
  torch::manual_seed(7);
  auto model = CMNModel(small_test_options(vocab).naive_topk(naive));
  // Rule B gives a sharper, image-dependent model than the default init (CPU-cheap check).
  enn::deterministic_fill(*model, enn::FillRuleset::B);
  model->eval();
  return model;
}
}  // namespace

TEST_CASE("cmn: index-gather top-k equals upstream's expanded form, outputs and gradients",
          "[cmn]") {
  auto gather = small_random_model(false);
  auto naive = small_random_model(true);
  auto images = torch::rand({3, 2, 3, 64, 64});
  auto ids =
      torch::tensor({{0, 5, 6, 7, 9, 0}, {0, 8, 9, 0, 0, 0}, {0, 3, 3, 4, 0, 0}}, torch::kLong);
  auto masks = (ids > 0).to(torch::kFloat);
  masks.select(1, 0).fill_(1);
  masks.index_put_({0, 5}, 1);
  masks.index_put_({1, 3}, 1);
  masks.index_put_({2, 4}, 1);
  auto run = [&](CMNModel& m) {
    m->zero_grad();
    auto out = m->forward(images, ids, masks);
    compute_loss(out.logprobs, ids, masks).backward();
    return out;
  };
  auto a = run(gather), b = run(naive);
  CHECK(max_abs_diff(a.details.encoder_in, b.details.encoder_in) < 1e-5);
  CHECK(max_abs_diff(a.details.decoder_in, b.details.decoder_in) < 1e-5);
  CHECK(max_abs_diff(a.logprobs, b.logprobs) < 1e-5);
  auto pa = gather->unique_named_parameters(), pb = naive->unique_named_parameters();
  REQUIRE(pa.size() == pb.size());
  int compared = 0;
  for (const auto& p : pa) {
    INFO(p.key());
    const auto& ga = p.value().grad();
    const auto& gb = pb[p.key()].grad();
    REQUIRE(ga.defined() == gb.defined());
    if (!ga.defined()) continue;
    // Same arithmetic, different grouping of the sums: relative to the gradient's scale, with a
    // floor for the key bias, whose gradient is zero up to rounding (a bias shared by all keys
    // shifts every score of a query equally, and softmax ignores that).
    const double scale = gb.abs().max().item<double>();
    CHECK(max_abs_diff(ga, gb) <= 1e-4 * scale + 1e-8);
    ++compared;
  }
  CHECK(compared == static_cast<int>(pa.size()));
  CHECK(gather->encoder_decoder->memory_matrix.grad().abs().sum().item<double>() > 0);
  // Decoding through either form gives the same ids.
  auto ga = gather->greedy(images, enn::GreedyOptions().max_length(10));
  auto gb = naive->greedy(images, enn::GreedyOptions().max_length(10));
  CHECK(torch::equal(ga.seq, gb.seq));
}

TEST_CASE("cmn: the memory attention keeps only the top-k slots per head", "[cmn]") {
  // Reference: plain multi-head attention over all slots with every score below the k-th largest
  // (per head and query) masked out.
  torch::manual_seed(3);
  const int64_t heads = 4, d = 16, slots = 10;
  auto memory = torch::randn({slots, d});
  auto query = torch::randn({2, 5, d});
  for (int64_t k : {slots, int64_t{3}}) {
    INFO("topk " << k);
    ihn_examples::cmn::MultiThreadMemory cmn(heads, d, k, /*dropout=*/0.0);
    cmn->eval();
    auto lin = [&](int64_t i, const torch::Tensor& x) {
      return cmn->linears[i]->as<torch::nn::Linear>()->forward(x);
    };
    auto split = [&](const torch::Tensor& x) {
      return x.view({x.size(0), -1, heads, d / heads}).transpose(1, 2);
    };
    torch::NoGradGuard no_grad;
    auto q = split(lin(0, query));
    auto kk = split(lin(1, memory.unsqueeze(0))), v = split(lin(2, memory.unsqueeze(0)));
    auto scores =
        torch::matmul(q, kk.transpose(-2, -1)) / std::sqrt(static_cast<double>(d / heads));
    auto kth = std::get<0>(scores.topk(k, -1)).narrow(-1, k - 1, 1);
    auto p = torch::softmax(scores.masked_fill(scores < kth, -INFINITY), -1);
    auto ref = lin(3, torch::matmul(p, v).transpose(1, 2).reshape({2, 5, d}));
    CHECK(max_abs_diff(cmn->forward(query, memory), ref) < 1e-5);
    // Dropping slots changes the response (else the test would not see top-k at all).
    if (k < slots) {
      auto full =
          lin(3, torch::matmul(torch::softmax(scores, -1), v).transpose(1, 2).reshape({2, 5, d}));
      CHECK(max_abs_diff(full, ref) > 1e-3);
    }
  }
}

TEST_CASE("cmn: aliased memory attention, de-duplicated parameters for optimisers", "[cmn]") {
  auto model = CMNModel(small_test_options());
  auto all = model->named_parameters();
  auto unique = model->unique_named_parameters();
  // Both official names exist and are the same tensors; parameters() lists them twice.
  CHECK(all.size() == unique.size() + 8);
  CHECK(model->parameters().size() == all.size());
  CHECK(model->unique_parameters().size() == unique.size());
  for (const char* name : {"linears.0.weight", "linears.3.bias"}) {
    const std::string a = std::string("encoder_decoder.cmn.") + name;
    const std::string b = std::string("encoder_decoder.model.cmn.") + name;
    REQUIRE(all.contains(a));
    REQUIRE(all.contains(b));
    CHECK(all[a].unsafeGetTensorImpl() == all[b].unsafeGetTensorImpl());
    CHECK(unique.contains(a));  // the first name, as Python's named_parameters()
    CHECK_FALSE(unique.contains(b));
  }
  std::set<const c10::TensorImpl*> impls;
  for (const auto& p : unique) impls.insert(p.value().unsafeGetTensorImpl());
  CHECK(impls.size() == unique.size());

  // Why it matters: Adam's first step moves every parameter by ~lr (m / sqrt(v) = sign(g)); with
  // parameters() the shared tensors are stepped twice.
  auto images = torch::rand({2, 2, 3, 64, 64});
  auto ids = torch::tensor({{0, 5, 6, 7, 0}, {0, 8, 9, 0, 0}}, torch::kLong);
  auto masks = torch::tensor({{1, 1, 1, 1, 1}, {1, 1, 1, 1, 0}}, torch::kFloat);
  const double lr = 1e-3;
  auto max_step = [&](bool deduplicated) {
    torch::manual_seed(11);
    auto m = CMNModel(small_test_options());
    m->eval();
    auto shared = m->encoder_decoder->cmn->linears[0]->as<torch::nn::Linear>()->weight;
    auto before = shared.detach().clone();
    auto chosen = deduplicated ? m->unique_parameters() : m->parameters();
    torch::optim::Adam adam(chosen, torch::optim::AdamOptions(lr));
    auto out = m->forward(images, ids, masks);
    compute_loss(out.logprobs, ids, masks).backward();
    adam.step();
    return (shared.detach() - before).abs().max().item<double>();
  };
  const double once = max_step(true);
  const double twice = max_step(false);
  CHECK(once <= lr * 1.01);
  CHECK(once >= lr * 0.5);
  CHECK(twice > lr * 1.5);
}

TEST_CASE("cmn: incremental decoding equals teacher forcing on the decoded prefix", "[cmn]") {
  auto model = small_random_model();
  auto images = torch::rand({3, 2, 3, 64, 64});
  auto greedy = model->greedy(images, enn::GreedyOptions().max_length(12).block_trigrams(false));
  auto ids = torch::cat({torch::zeros({3, 1}, torch::kLong), greedy.seq}, 1);
  torch::NoGradGuard no_grad;
  auto tf = model->forward(images, ids).logprobs;  // (3, 12, V+1)
  int checked = 0;
  for (int64_t b = 0; b < 3; ++b) {
    for (int64_t t = 0; t < 12; ++t) {
      if (greedy.seq_logprobs[b][t].abs().sum().item<double>() == 0) break;  // finished row
      INFO("study " << b << " step " << t);
      CHECK(max_abs_diff(greedy.seq_logprobs[b][t], tf[b][t]) < 1e-4);
      ++checked;
    }
  }
  CHECK(checked >= 3);
  // Beam 1 is greedy without blocking; beams come sorted by score.
  auto b1 = model->beam_search(images, enn::BeamSearchOptions().beam_size(1).max_length(12));
  CHECK(torch::equal(b1.seq, greedy.seq));
  auto b3 = model->beam_search(images, enn::BeamSearchOptions().beam_size(3).max_length(12));
  for (const auto& beams : b3.beams)
    for (size_t j = 1; j < beams.size(); ++j)
      CHECK(beams[j - 1].logprob_sum >= beams[j].logprob_sum);
}

TEST_CASE("cmn: names, features, encoder_traits, training mode and errors", "[cmn]") {
  auto model = small_random_model();
  std::set<std::string> names;
  for (const auto& p : model->named_parameters()) names.insert(p.key());
  for (const auto& b : model->named_buffers()) names.insert(b.key());
  for (const char* key :
       {"visual_extractor.model.0.weight", "encoder_decoder.att_embed.0.weight",
        "encoder_decoder.memory_matrix", "encoder_decoder.cmn.linears.2.bias",
        "encoder_decoder.model.cmn.linears.2.bias", "encoder_decoder.logit.weight",
        "encoder_decoder.model.encoder.layers.1.sublayer.1.norm.a_2",
        "encoder_decoder.model.decoder.layers.0.sublayer.2.norm.b_2",
        "encoder_decoder.model.decoder.layers.1.src_attn.linears.3.weight",
        "encoder_decoder.model.decoder.norm.a_2", "encoder_decoder.model.src_embed.0.pe",
        "encoder_decoder.model.tgt_embed.0.lut.weight", "encoder_decoder.model.tgt_embed.1.pe"}) {
    INFO(key);
    CHECK(names.count(key) == 1);
  }
  auto images = torch::rand({2, 2, 3, 64, 64});
  auto ids = torch::tensor({{0, 5, 6, 7, 0}, {0, 8, 9, 0, 0}}, torch::kLong);
  auto masks = torch::tensor({{1, 1, 1, 1, 1}, {1, 1, 1, 1, 0}}, torch::kFloat);
  auto feats = model->image_features(images);
  CHECK(feats.sizes() == torch::IntArrayRef({2, 32}));
  auto out = model->forward(images, ids, masks);
  CHECK(torch::allclose(out.image_features, feats, 1e-5, 1e-6));
  CHECK(
      torch::allclose(model->report_features(images, ids, masks), out.report_features, 1e-5, 1e-6));
  // What the hard-negative augmenter calls.
  const CMNBatch batch{images, ids, masks};
  CHECK(torch::allclose(ihn::encoder_traits<CMNModel>::image_features(model, batch), feats, 1e-5,
                        1e-6));
  CHECK(torch::allclose(ihn::encoder_traits<CMNModel>::report_features(model, batch),
                        out.report_features, 1e-5, 1e-6));
  // Padding after the EOS does not change the report features.
  auto pad = [](const torch::Tensor& x, int64_t n) {
    return torch::cat({x, torch::zeros({x.size(0), n}, x.options())}, 1);
  };
  CHECK(torch::allclose(model->report_features(images, pad(ids, 3), pad(masks, 3)),
                        model->report_features(images, pad(ids, 1), pad(masks, 1)), 1e-5, 1e-6));
  // Single-view (MIMIC-CXR) input gives half the visual tokens.
  auto single = model->forward(images.select(1, 0), ids, masks);
  CHECK(single.att_feats.size(1) * 2 == out.att_feats.size(1));
  // Dropout is active in training mode.
  model->train();
  auto a = model->forward(images, ids, masks).logprobs;
  auto b = model->forward(images, ids, masks).logprobs;
  CHECK_FALSE(torch::allclose(a, b));
  model->eval();
  CHECK_THROWS_AS(model->forward(torch::rand({2, 3, 64}), ids, masks), std::invalid_argument);
  CHECK_THROWS_AS(model->forward(images, ids.narrow(1, 0, 1), masks), std::invalid_argument);
  CHECK_THROWS_AS(model->forward(images, ids.narrow(0, 0, 1), masks), std::invalid_argument);
  CHECK_THROWS_AS(model->encoder_decoder->encode(torch::rand({2, 5, 7})), std::invalid_argument);
  CHECK_THROWS_AS(CMNModel(CMNOptions(10).cmm_dim(64).d_model(32)), std::invalid_argument);
  CHECK_THROWS_AS(CMNModel(small_test_options().topk(41)), std::invalid_argument);
  CHECK_THROWS_AS(CMNModel(small_test_options().visual_depth(42)), std::invalid_argument);
  CHECK_THROWS_AS(CMNModel(small_test_options().num_heads(5)), std::invalid_argument);
}

TEST_CASE("cmn: parameter counts equal the official models' (small and paper configs)", "[cmn]") {
  // n_params / n_params_ve / n_params_ed that shared/baselines recorded for the official
  // BaseCMNModel with vocabulary 760 (shared tensors counted once, as Python does).
  auto count = [](const std::vector<torch::Tensor>& params) {
    int64_t n = 0;
    for (const auto& p : params) n += p.numel();
    return n;
  };
  auto small = CMNModel(CMNOptions::small(760));
  CHECK(count(enn::unique_parameters(*small->visual_extractor)) == 11176512);
  CHECK(count(enn::unique_parameters(*small->encoder_decoder)) == 3027449);
  CHECK(count(small->unique_parameters()) == 14203961);
  auto paper = CMNModel(CMNOptions(760));
  CHECK(count(enn::unique_parameters(*paper->encoder_decoder)) == 16553209);
  CHECK(count(paper->unique_parameters()) == 59053369);
  // Upstream's initialisation of the memory: normal(0, 1/cmm_dim).
  const double std = paper->encoder_decoder->memory_matrix.std().item<double>();
  CHECK(std::abs(std - 1.0 / 512) < 0.05 / 512);
}
