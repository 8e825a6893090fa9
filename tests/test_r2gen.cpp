// The R2Gen port: parity with the official code's outputs (fixtures/r2gen_tiny, tagged [shared]),
// the deterministic weight fill, incremental decoding against full re-decoding, the
// hard-negative features, and the .pth checkpoint reader.
//
// Tolerances (fixtures/README.md, "Caveats"): the reference itself moves by 9e-7 (visual
// features, values up to 3.4) and 1.7e-6 (log-probs) between float32 and float64, so a float32
// port with a different summation order gets visual features atol 1e-3, log-probs and decoder
// intermediates atol 1e-4, losses rtol 1e-5, gradient norms rtol 1e-3; token ids exactly (the
// smallest greedy margin is 0.0196, far above the float32 noise).
#include "fixture_checks.hpp"

#include <ihn/io/pth.hpp>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "nn/deterministic_fill.hpp"
#include "nn/fused_adam.hpp"
#include "nn/linear.hpp"
#include "r2gen.hpp"

using ihn_examples::r2gen::compute_loss;
using ihn_examples::r2gen::R2GenModel;
using ihn_examples::r2gen::R2GenOptions;
namespace enn = ihn_examples::nn;
using ihn_test::at_key;
using ihn_test::grad_norm_matches;
using ihn_test::load_pt;
using ihn_test::max_abs_diff;

namespace {

/// The tiny config of fixtures/r2gen_tiny/config.json.
R2GenOptions tiny_options() {
  return R2GenOptions(760)
      .visual_depth(101)
      .d_model(64)
      .d_ff(128)
      .num_heads(4)
      .num_layers(2)
      .rm_num_slots(3)
      .rm_num_heads(4)
      .rm_d_model(64);
}

/// Built once: the filled tiny model, the fixture's inputs and outputs.
ihn_test::TinyFixture<R2GenModel>& fixture() {
  static ihn_test::TinyFixture<R2GenModel> fx("r2gen_tiny", tiny_options());
  return fx;
}

}  // namespace

TEST_CASE("r2gen: state_dict keys and the deterministic fill match the fixture per key",
          "[r2gen][shared]") {
  auto& fx = fixture();
  std::ifstream f(fx.dir / "weights_fill.json");
  auto json = nlohmann::json::parse(f);
  const auto& keys = json.at("keys");
  REQUIRE(keys.size() == 678);
  REQUIRE(fx.filled.size() == keys.size());
  for (size_t k = 0; k < keys.size(); ++k) {
    const auto& ref = keys[k];
    const auto& got = fx.filled[k];
    INFO("k=" << k << " key " << got.key);
    REQUIRE(got.key == ref.at("key").get<std::string>());
    CHECK(got.rule == ref.at("rule").get<std::string>());
    // rtol 1e-12: the same float32 values summed in the same order (README: worst 6e-14).
    const double c = ref.at("checksum").get<double>(), w = ref.at("wchecksum").get<double>();
    CHECK(std::abs(got.checksum - c) <= 1e-12 * std::max(1.0, std::abs(c)));
    CHECK(std::abs(got.wchecksum - w) <= 1e-12 * std::max(1.0, std::abs(w)));
  }
  // The integer buffers the fill skips are exactly the fixture's num_batches_tracked list.
  std::set<std::string> skipped;
  for (const auto& b : fx.model->named_buffers())
    if (!b.value().is_floating_point()) skipped.insert(b.key());
  std::set<std::string> ref_skipped;
  for (const auto& s : json.at("skipped_integer_keys")) ref_skipped.insert(s.get<std::string>());
  CHECK(skipped == ref_skipped);
}

TEST_CASE("r2gen: generated images match the fixture's checksums", "[r2gen][shared]") {
  auto& fx = fixture();
  auto flat = fx.images.flatten().to(torch::kDouble);
  const double sum = flat.sum().item<double>();
  auto weights = torch::arange(flat.numel(), torch::kLong).remainder(97).add(1).to(torch::kDouble);
  const double wsum = (flat * weights).sum().item<double>();
  CHECK(std::abs(sum - fx.inputs.at("images_sum").toDouble()) < 1e-6 * std::abs(sum) + 1e-6);
  CHECK(std::abs(wsum - fx.inputs.at("images_wsum").toDouble()) < 1e-9 * std::abs(wsum) + 1e-6);
  CHECK(torch::equal(fx.images.flatten().narrow(0, 0, 64), at_key(fx.inputs, "images_head")));
}

TEST_CASE("r2gen: visual extractor matches (atol 1e-3)", "[r2gen][shared]") {
  auto& fx = fixture();
  torch::NoGradGuard no_grad;
  auto v0 = fx.model->visual_extractor(fx.x.select(1, 0));
  auto v1 = fx.model->visual_extractor(fx.x.select(1, 1));
  // Rule B: values up to ~3.4, float32 vs float64 of the reference differs by 9e-7.
  CHECK(max_abs_diff(v0.patch, at_key(fx.outputs, "ve_patch_feats_view0")) < 1e-3);
  CHECK(max_abs_diff(v0.avg, at_key(fx.outputs, "ve_avg_feats_view0")) < 1e-3);
  CHECK(max_abs_diff(v1.avg, at_key(fx.outputs, "ve_avg_feats_view1")) < 1e-3);
  // The two studies differ by up to 7.8e-3, so this also catches a batch mix-up.
  CHECK(max_abs_diff(v0.patch[0], v0.patch[1]) > 1e-3);
}

TEST_CASE("r2gen: teacher-forced log-probs, intermediates and loss match", "[r2gen][shared]") {
  auto& fx = fixture();
  torch::NoGradGuard no_grad;
  auto ids = fx.in("reports_ids"), masks = fx.in("reports_masks");
  auto out = fx.model->forward(fx.x, ids, masks);
  CHECK(max_abs_diff(out.details.att_embed_out, at_key(fx.outputs, "tf_att_embed_out")) < 1e-4);
  CHECK(max_abs_diff(out.details.encoder_out, at_key(fx.outputs, "tf_encoder_out")) < 1e-4);
  CHECK(max_abs_diff(out.details.rm_memory, at_key(fx.outputs, "tf_rm_memory")) < 1e-4);
  CHECK(max_abs_diff(out.details.decoder_in, at_key(fx.outputs, "tf_decoder_in")) < 1e-4);
  CHECK(max_abs_diff(out.details.decoder_out, at_key(fx.outputs, "tf_decoder_out")) < 1e-4);
  CHECK(max_abs_diff(out.logprobs, at_key(fx.outputs, "tf_logprobs")) < 1e-4);
  const double loss = compute_loss(out.logprobs, ids, masks).item<double>();
  const double ref = fx.outputs.at("tf_loss_float").toDouble();
  CHECK(std::abs(loss - ref) <= 1e-5 * std::abs(ref));
  // Features for the hard-negative library: masked means of the same pass.
  CHECK(out.image_features.sizes() == torch::IntArrayRef({2, 64}));
  CHECK(torch::allclose(out.image_features.cpu(), at_key(fx.outputs, "tf_encoder_out").mean(1),
                        1e-5, 1e-5));
  auto m = masks.cpu().narrow(1, 0, ids.size(1) - 1).unsqueeze(-1);
  auto ref_report = (at_key(fx.outputs, "tf_decoder_out") * m).sum(1) / m.sum(1);
  CHECK(torch::allclose(out.report_features.cpu(), ref_report, 1e-4, 1e-4));
}

TEST_CASE("r2gen: padded teacher-forced batch matches", "[r2gen][shared]") {
  auto& fx = fixture();
  torch::NoGradGuard no_grad;
  auto ids = at_key(fx.outputs, "pad_reports_ids").to(fx.device),
       masks = at_key(fx.outputs, "pad_reports_masks").to(fx.device);
  REQUIRE((masks == 0).any().item<bool>());  // the batch really is padded
  auto images = fx.x.narrow(0, 0, ids.size(0));
  auto out = fx.model->forward(images, ids, masks);
  CHECK(max_abs_diff(out.logprobs, at_key(fx.outputs, "pad_tf_logprobs")) < 1e-4);
  const double loss = compute_loss(out.logprobs, ids, masks).item<double>();
  const double ref = at_key(fx.outputs, "pad_tf_loss").item<double>();
  CHECK(std::abs(loss - ref) <= 1e-5 * std::abs(ref));
  // Report features exclude padding: with every token as decoder input (one padding column
  // appended), three more padding columns change nothing.
  auto pad = [](const torch::Tensor& x, int64_t n) {
    return torch::cat({x, torch::zeros({x.size(0), n}, x.options())}, 1);
  };
  auto base = fx.model->report_features(images, pad(ids, 1), pad(masks, 1));
  auto wider = fx.model->report_features(images, pad(ids, 4), pad(masks, 4));
  CHECK(torch::allclose(wider, base, 1e-5, 1e-6));
  CHECK_FALSE(torch::allclose(base, out.report_features, 1e-5, 1e-6));  // the EOS row counts
}

TEST_CASE("r2gen: gradient norms match (rtol 1e-3; zero-gradient key biases bounded)",
          "[r2gen][shared]") {
  auto& fx = fixture();
  std::ifstream f(fx.dir / "grad_norms.json");
  auto json = nlohmann::json::parse(f);
  fx.model->zero_grad();
  auto ids = fx.in("reports_ids"), masks = fx.in("reports_masks");
  auto out = fx.model->forward(fx.x, ids, masks);
  auto loss = compute_loss(out.logprobs, ids, masks);
  loss.backward();
  std::map<std::string, double> norms;
  for (const auto& p : fx.model->named_parameters())
    if (p.value().grad().defined())
      norms[p.key()] = p.value().grad().to(torch::kDouble).norm().item<double>();
  const auto& ref = json.at("norms");
  CHECK(norms.size() == ref.size());
  int bad = 0;
  for (const auto& [name, value] : ref.items()) {
    INFO("parameter " << name);
    REQUIRE(norms.count(name) == 1);
    const double r = value.get<double>();
    const bool ok = grad_norm_matches(name, norms[name], r);
    if (!ok) ++bad;
    CHECK(ok);
  }
  CHECK(bad == 0);
  fx.model->zero_grad();
}

TEST_CASE("r2gen: greedy decoding with and without trigram blocking matches", "[r2gen][shared]") {
  auto& fx = fixture();
  ihn_test::check_greedy_matches_fixture(fx.model, fx.x, fx.outputs);
}

TEST_CASE("r2gen: beam-3 search matches ids, lengths and scores", "[r2gen][shared]") {
  auto& fx = fixture();
  ihn_test::check_beam_matches_fixture(fx.model, fx.x, fx.outputs);
}

TEST_CASE("r2gen: original sin/cos positional table (alt_pe outputs)", "[r2gen][shared]") {
  auto& fx = fixture();
  auto& pe = fx.model->encoder_decoder->model->position->pe;
  auto saved = pe.clone();
  {
    torch::NoGradGuard no_grad;
    pe.copy_(enn::PositionalEncodingImpl::table(pe.size(1), pe.size(2)));
  }
  auto ids = fx.in("reports_ids"), masks = fx.in("reports_masks");
  torch::Tensor logprobs;
  {
    torch::NoGradGuard no_grad;
    logprobs = fx.model->forward(fx.x, ids, masks).logprobs;
  }
  auto greedy = fx.model->greedy(fx.x, enn::GreedyOptions().max_length(20));
  auto beam = fx.model->beam_search(fx.x, enn::BeamSearchOptions().max_length(20));
  {
    torch::NoGradGuard no_grad;
    pe.copy_(saved);
  }
  CHECK(max_abs_diff(logprobs, at_key(fx.outputs, "alt_pe_tf_logprobs")) < 1e-4);
  CHECK(torch::equal(greedy.seq.cpu(), at_key(fx.outputs, "alt_pe_greedy_seq")));
  CHECK(torch::equal(beam.seq.cpu(), at_key(fx.outputs, "alt_pe_beam_seq")));
  auto sums = at_key(fx.outputs, "alt_pe_beam_all_logprob_sum");
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t j = 0; j < 3; ++j)
      CHECK(std::abs(beam.beams[b][j].logprob_sum - sums[b][j].item<double>()) < 1e-4);
}

// ---------------------------------------------------------------------------------------------
// Without the fixtures: properties of the port.

namespace {
R2GenModel small_random_model(int64_t vocab = 30) {
  torch::manual_seed(7);
  auto model = R2GenModel(R2GenOptions(vocab)
                              .visual_depth(18)
                              .d_model(32)
                              .d_ff(48)
                              .num_heads(4)
                              .num_layers(2)
                              .rm_num_heads(2)
                              .rm_d_model(32)
                              .max_positions(64));
  // Rule B gives a sharper, image-dependent model than the default init (CPU-cheap check).
  enn::deterministic_fill(*model, enn::FillRuleset::B);
  model->eval();
  return model;
}
}  // namespace

TEST_CASE("r2gen: incremental decoding equals teacher forcing on the decoded prefix", "[r2gen]") {
  auto model = small_random_model();
  auto images = torch::rand({3, 2, 3, 64, 64});
  auto greedy = model->greedy(images, enn::GreedyOptions().max_length(12).block_trigrams(false));
  // Teacher-force [BOS, seq...]: the log-probs at every position must equal the cached steps'.
  auto ids = torch::cat({torch::zeros({3, 1}, torch::kLong), greedy.seq}, 1);
  torch::NoGradGuard no_grad;
  auto tf = model->forward(images, ids).logprobs;  // (3, 12, V+1)
  auto seq_logprobs = greedy.seq_logprobs;
  for (int64_t b = 0; b < 3; ++b) {
    for (int64_t t = 0; t < 12; ++t) {
      if (seq_logprobs[b][t].abs().sum().item<double>() == 0) break;  // finished row
      INFO("study " << b << " step " << t);
      CHECK(max_abs_diff(seq_logprobs[b][t], tf[b][t]) < 1e-4);
    }
  }
}

TEST_CASE("r2gen: beam search keeps the best beam first and agrees with beam scores", "[r2gen]") {
  auto model = small_random_model();
  auto images = torch::rand({2, 2, 3, 64, 64});
  auto res = model->beam_search(images, enn::BeamSearchOptions().beam_size(3).max_length(10));
  for (const auto& beams : res.beams) {
    REQUIRE(beams.size() == 3);
    for (size_t j = 1; j < beams.size(); ++j)
      CHECK(beams[j - 1].logprob_sum >= beams[j].logprob_sum);
    // A beam's score is the sum of its chosen tokens' log-probs (no penalty for unfinished beams
    // that never were lowered by 1000).
    const auto& best = beams[0];
    auto chosen = best.logps.gather(1, best.seq.unsqueeze(1)).sum().item<double>();
    if (best.logprob_sum > -999) CHECK(std::abs(chosen - best.logprob_sum) < 1e-4);
  }
  // Beam 1 is greedy without blocking.
  auto b1 = model->beam_search(images, enn::BeamSearchOptions().beam_size(1).max_length(10));
  auto g = model->greedy(images, enn::GreedyOptions().max_length(10).block_trigrams(false));
  CHECK(torch::equal(b1.seq, g.seq));
}

TEST_CASE("r2gen: parameter names are the official state_dict keys", "[r2gen]") {
  auto model = R2GenModel(R2GenOptions::small(50));
  std::set<std::string> names;
  for (const auto& p : model->named_parameters()) names.insert(p.key());
  for (const auto& b : model->named_buffers()) names.insert(b.key());
  for (const char* key :
       {"visual_extractor.model.0.weight", "visual_extractor.model.1.running_var",
        "visual_extractor.model.4.0.conv1.weight", "visual_extractor.model.5.0.downsample.1.weight",
        "encoder_decoder.att_embed.0.weight", "encoder_decoder.logit.bias",
        "encoder_decoder.model.encoder.layers.1.sublayer.1.norm.gamma",
        "encoder_decoder.model.decoder.layers.0.sublayer.2.norm.mlp_beta.2.weight",
        "encoder_decoder.model.decoder.layers.1.src_attn.linears.3.bias",
        "encoder_decoder.model.decoder.norm.beta", "encoder_decoder.model.rm.attn.linears.0.weight",
        "encoder_decoder.model.rm.mlp.2.bias", "encoder_decoder.model.rm.U.weight",
        "encoder_decoder.model.tgt_embed.0.lut.weight", "encoder_decoder.model.tgt_embed.1.pe"}) {
    INFO(key);
    CHECK(names.count(key) == 1);
  }
  // ResNet-18 has BasicBlocks: no conv3.
  CHECK(names.count("visual_extractor.model.4.0.conv3.weight") == 0);
}

TEST_CASE("r2gen: training mode, features and errors", "[r2gen]") {
  auto model = small_random_model();
  auto images = torch::rand({2, 2, 3, 64, 64});
  auto ids = torch::tensor({{0, 5, 6, 7, 0}, {0, 8, 9, 0, 0}}, torch::kLong);
  auto masks = torch::tensor({{1, 1, 1, 1, 1}, {1, 1, 1, 1, 0}}, torch::kFloat);
  auto feats = model->image_features(images);
  CHECK(feats.sizes() == torch::IntArrayRef({2, 32}));
  auto out = model->forward(images, ids, masks);
  CHECK(torch::allclose(out.image_features, feats, 1e-5, 1e-6));
  CHECK(
      torch::allclose(model->report_features(images, ids, masks), out.report_features, 1e-5, 1e-6));
  // The one-argument batch overloads that ihn::encoder_traits calls.
  const ihn_examples::r2gen::R2GenBatch batch{images, ids, masks};
  CHECK(torch::allclose(model->image_features(batch), feats, 1e-5, 1e-6));
  CHECK(torch::allclose(model->report_features(batch), out.report_features, 1e-5, 1e-6));
  // Single-view (MIMIC-CXR) input gives half the visual tokens.
  auto single = model->forward(images.select(1, 0), ids, masks);
  CHECK(single.att_feats.size(1) * 2 == out.att_feats.size(1));
  // Dropout is active in training mode and a loss step changes the output.
  model->train();
  auto a = model->forward(images, ids, masks).logprobs;
  auto b = model->forward(images, ids, masks).logprobs;
  CHECK_FALSE(torch::allclose(a, b));
  model->eval();
  CHECK_THROWS_AS(model->forward(torch::rand({2, 3, 64}), ids, masks), std::invalid_argument);
  CHECK_THROWS_AS(model->forward(images, ids.narrow(1, 0, 1), masks), std::invalid_argument);
  CHECK_THROWS_AS(R2GenModel(R2GenOptions(10).visual_depth(42)), std::invalid_argument);
  CHECK_THROWS_AS(R2GenModel(R2GenOptions(10).d_model(64).rm_d_model(32)), std::invalid_argument);
}

// ---------------------------------------------------------------------------------------------
// ihn::io: .pth checkpoints

namespace {

/// A module with what checkpoints hold: Linear, BatchNorm (with its int64 counter), a nested
/// Sequential, a buffer, a double parameter and a non-contiguous (transposed) buffer.
struct PthProbeImpl : torch::nn::Module {
  explicit PthProbeImpl(int64_t out = 5)
      : fc(register_module("fc", torch::nn::Linear(4, 3))),
        bn(register_module("bn", torch::nn::BatchNorm1d(3))),
        seq(register_module("seq", torch::nn::Sequential(torch::nn::Linear(3, 2), torch::nn::ReLU(),
                                                         torch::nn::Linear(2, out)))),
        pe(register_buffer("pe", torch::zeros({1, 3, 4}))),
        scale(register_parameter("scale", torch::zeros({2}, torch::kDouble))),
        tr(register_buffer("tr", torch::zeros({3, 2}))) {}
  torch::nn::Linear fc;
  torch::nn::BatchNorm1d bn;
  torch::nn::Sequential seq;
  torch::Tensor pe, scale, tr;
};
TORCH_MODULE(PthProbe);

const char* kMakeCheckpoints = R"PY(
import collections, sys, torch, torch.nn as nn
out = sys.argv[1]
torch.manual_seed(1234)
class Probe(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.bn = nn.BatchNorm1d(3)
        self.seq = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 5))
        self.register_buffer('pe', torch.randn(1, 3, 4))
        self.scale = nn.Parameter(torch.randn(2, dtype=torch.float64))
        self.register_buffer('tr', torch.randn(2, 3).t())   # a non-contiguous view
m = Probe()
m.train()
opt = torch.optim.Adam(m.parameters(), lr=1e-3, amsgrad=True)
for _ in range(2):   # moves BN statistics and fills the optimiser state with tensors
    loss = m.seq(m.bn(m.fc(torch.randn(8, 4)))).pow(2).sum() + m.scale.sum()
    opt.zero_grad(); loss.backward(); opt.step()
sd = m.state_dict()
assert isinstance(sd, collections.OrderedDict) and not sd['tr'].is_contiguous()
ckpt = {'epoch': 7, 'state_dict': sd, 'optimizer': opt.state_dict(), 'monitor_best': 0.125}
torch.save(ckpt, out + '/zip.pth')
torch.save(ckpt, out + '/legacy.pth', _use_new_zipfile_serialization=False)
torch.save({'state_dict': collections.OrderedDict(('module.' + k, v) for k, v in sd.items())},
           out + '/dataparallel.pth')
torch.save({k: v.clone().contiguous() for k, v in sd.items()}, out + '/expected.pt')
)PY";

void check_probe_equals(PthProbe& probe, const c10::Dict<c10::IValue, c10::IValue>& expected) {
  size_t n = 0;
  for (const auto& p : probe->named_parameters()) {
    INFO(p.key());
    CHECK(torch::equal(p.value(), expected.at(p.key()).toTensor()));
    ++n;
  }
  for (const auto& b : probe->named_buffers()) {
    INFO(b.key());
    CHECK(torch::equal(b.value(), expected.at(b.key()).toTensor()));
    ++n;
  }
  CHECK(n == expected.size());
}

}  // namespace

TEST_CASE("io: checkpoints written by Python torch.save load by name, zip and legacy", "[io]") {
  if (!ihn_test::python_available("torch")) return;
  auto dir = ihn_test::scratch_dir("pth");
  { std::ofstream(dir / "make.py") << kMakeCheckpoints; }
  const auto cmd = ihn_test::python() + " " + (dir / "make.py").string() + " " + dir.string();
  REQUIRE(std::system(cmd.c_str()) == 0);
  auto expected = load_pt(dir / "expected.pt");
  for (const char* file : {"zip.pth", "legacy.pth", "dataparallel.pth"}) {
    INFO(file);
    PthProbe probe;
    auto report = ihn::io::load_pth(*probe, (dir / file).string());
    CHECK(report.ok());
    CHECK(report.loaded == expected.size());
    check_probe_equals(probe, expected);
  }
  // The other entries of the official checkpoint layout.
  for (const char* file : {"zip.pth", "legacy.pth"}) {
    INFO(file);
    auto ckpt = ihn::io::read_pth((dir / file).string());
    CHECK(ckpt->at("epoch").as_int() == 7);
    CHECK(ckpt->at("monitor_best").as_double() == 0.125);
    const auto& opt = ckpt->at("optimizer");
    REQUIRE(opt.contains("state"));
    REQUIRE(opt.contains("param_groups"));
    // Adam (amsgrad) state per parameter: step, exp_avg, exp_avg_sq, max_exp_avg_sq.
    CHECK(opt.at("state").entries.size() == PthProbe()->parameters().size());
  }
}

TEST_CASE("io: mismatches are reported by name; strict mode throws", "[io]") {
  // Written by LibTorch itself (torch::pickle_save, the zip format torch.load reads), so this
  // runs without Python too.
  auto dir = ihn_test::scratch_dir("pth_mismatch");
  torch::manual_seed(3);
  PthProbe source;
  c10::Dict<std::string, torch::Tensor> dict;
  for (const auto& p : source->named_parameters()) dict.insert(p.key(), p.value().detach());
  for (const auto& b : source->named_buffers()) dict.insert(b.key(), b.value());
  dict.insert("extra.weight", torch::ones({2}));
  REQUIRE(dict.erase("pe") == 1);
  {
    auto bytes = torch::pickle_save(dict);
    std::ofstream(dir / "ckpt.pth", std::ios::binary).write(bytes.data(), bytes.size());
  }
  const auto path = (dir / "ckpt.pth").string();
  PthProbe wrong_shape(/*out=*/6);  // seq.2 is (6, 2) here, (5, 2) in the file
  try {
    ihn::io::load_pth(*wrong_shape, path);
    FAIL("strict load did not throw");
  } catch (const ihn::io::pth_error& e) {
    const std::string what = e.what();
    CHECK(what.find("seq.2.weight") != std::string::npos);
    CHECK(what.find("extra.weight") != std::string::npos);
    CHECK(what.find("pe") != std::string::npos);
    CHECK(what.find(path) != std::string::npos);
  }
  auto report = ihn::io::load_pth(*wrong_shape, path, ihn::io::LoadOptions().strict(false));
  CHECK(report.missing == std::vector<std::string>{"pe"});
  CHECK(report.unexpected == std::vector<std::string>{"extra.weight"});
  REQUIRE(report.mismatched.size() == 2);  // seq.2.weight and seq.2.bias
  CHECK(report.mismatched[0].found == std::vector<int64_t>{5, 2});
  // Everything else was copied, values included.
  CHECK(torch::equal(wrong_shape->fc->weight, source->fc->weight));
  CHECK(torch::equal(wrong_shape->bn->running_var, source->bn->running_var));
  CHECK(torch::equal(wrong_shape->scale, source->scale));
  CHECK(wrong_shape->pe.abs().sum().item<double>() == 0);  // missing: left as constructed
  CHECK_THROWS_AS(ihn::io::read_pth((dir / "missing.pth").string()), ihn::io::pth_error);
}

TEST_CASE("io: the unpickler reads an OrderedDict with BUILD state and memo references", "[io]") {
  // protocol 2: {'epoch': 3, 'sd': OrderedDict([('a', 1.5), ('b', [True, None])]), 'again': <memo>}
  const unsigned char bytes[] = {
      128, 2,   125, 113, 0,   40,  88,  5,   0,   0,   0,   101, 112, 111, 99,  104, 113,
      1,   75,  3,   88,  2,   0,   0,   0,   115, 100, 113, 2,   99,  99,  111, 108, 108,
      101, 99,  116, 105, 111, 110, 115, 10,  79,  114, 100, 101, 114, 101, 100, 68,  105,
      99,  116, 10,  113, 3,   41,  82,  113, 4,   40,  88,  1,   0,   0,   0,   97,  113,
      5,   71,  63,  248, 0,   0,   0,   0,   0,   0,   88,  1,   0,   0,   0,   98,  113,
      6,   93,  113, 7,   40,  136, 78,  101, 117, 125, 113, 8,   88,  9,   0,   0,   0,
      95,  109, 101, 116, 97,  100, 97,  116, 97,  113, 9,   125, 113, 10,  115, 98,  88,
      5,   0,   0,   0,   97,  103, 97,  105, 110, 113, 11,  104, 4,   117, 46};
  const std::string p(reinterpret_cast<const char*>(bytes), sizeof(bytes));
  ihn::io::detail::Unpickler u(p.data(), p.size(),
                               [](const ihn::io::PyObjectPtr&) -> ihn::io::PyObjectPtr {
                                 throw ihn::io::pth_error("no storages here");
                               });
  size_t pos = 0;
  auto root = u.load(pos);
  CHECK(pos == p.size());
  CHECK(root->at("epoch").as_int() == 3);
  const auto& sd = root->at("sd");
  REQUIRE(sd.entries.size() == 2);
  CHECK(sd.at("a").as_double() == 1.5);
  REQUIRE(sd.at("b").items.size() == 2);
  CHECK(sd.at("b").items[0]->boolean);
  CHECK(&root->at("again") == &sd);  // BINGET returns the same object
  std::string truncated = p.substr(0, p.size() - 5);
  size_t pos2 = 0;
  ihn::io::detail::Unpickler u2(truncated.data(), truncated.size(), nullptr);
  CHECK_THROWS_AS(u2.load(pos2), ihn::io::pth_error);
}

TEST_CASE("r2gen: parameter counts equal the official models' (small and paper configs)",
          "[r2gen]") {
  // n_params / n_params_ve / n_params_ed that shared/baselines recorded for the official
  // R2GenModel with vocabulary 760 (results-2026-11-27.jsonl); written here so the test needs
  // no shared folder.
  auto count = [](const torch::nn::Module& m) {
    int64_t n = 0;
    for (const auto& p : m.parameters()) n += p.numel();
    return n;
  };
  auto small = R2GenModel(R2GenOptions::small(760));
  CHECK(count(*small->visual_extractor) == 11176512);
  CHECK(count(*small->encoder_decoder) == 6443001);
  CHECK(count(*small) == 17619513);
  auto paper = R2GenModel(R2GenOptions(760));
  CHECK(count(*paper->visual_extractor) == 42500160);
  CHECK(count(*paper->encoder_decoder) == 35973369);
  CHECK(count(*paper) == 78473529);
}

TEST_CASE("visual extractor: channels-last weights give the same features and gradients",
          "[r2gen]") {
  // nn::to_channels_last only changes the layout, and the in-place ReLU / residual add must keep
  // autograd valid: train mode (batch statistics), forward and backward against a plain copy.
  // Tolerances: the two layouts run different oneDNN kernels (other summation orders) in
  // float32 through 8 blocks of conv + batch norm; features up to ~5 agree to 1e-4 absolute,
  // and every gradient to 1e-3 of its norm (batch-norm backward amplifies the rounding).
  torch::manual_seed(5);
  enn::VisualExtractor plain(enn::VisualExtractorOptions().depth(18));
  enn::VisualExtractor nhwc(enn::VisualExtractorOptions().depth(18));
  {
    torch::NoGradGuard no_grad;
    auto src = plain->named_parameters();
    for (auto& p : nhwc->named_parameters()) p.value().copy_(src[p.key()]);
    auto src_buffers = plain->named_buffers();
    for (auto& b : nhwc->named_buffers()) b.value().copy_(src_buffers[b.key()]);
  }
  enn::to_channels_last(*nhwc);
  const auto& w = nhwc->named_parameters()["model.0.weight"];
  REQUIRE(w.is_contiguous(at::MemoryFormat::ChannelsLast));
  REQUIRE_FALSE(w.is_contiguous());
  plain->train();
  nhwc->train();
  auto images = torch::randn({4, 2, 3, 64, 64}).select(1, 1);  // a view, as R2Gen passes
  auto a = plain(images), b = nhwc(images);
  CHECK(b.patch.sizes() == a.patch.sizes());
  CHECK(torch::allclose(b.patch, a.patch, 1e-4, 1e-4));
  CHECK(torch::allclose(b.avg, a.avg, 1e-4, 1e-4));
  CHECK(a.patch.abs().max().item<double>() > 0.1);  // not a degenerate all-zero map
  auto weights = torch::randn(a.patch.sizes());
  ((a.patch * weights).sum() + a.avg.pow(2).sum()).backward();
  ((b.patch * weights).sum() + b.avg.pow(2).sum()).backward();
  auto grads = plain->named_parameters();
  int64_t compared = 0;
  for (auto& p : nhwc->named_parameters()) {
    const auto& ref = grads[p.key()].grad();
    REQUIRE(ref.defined());
    REQUIRE(p.value().grad().defined());
    const double scale = ref.norm().item<double>();
    REQUIRE(scale > 0);
    INFO(p.key());
    CHECK((p.value().grad() - ref).norm().item<double>() <= 1e-3 * scale);
    ++compared;
  }
  CHECK(compared == 60);  // 20 convolutions, 20 batch norms (weight and bias)
  // Running statistics advance identically.
  auto buffers = plain->named_buffers();
  for (auto& b2 : nhwc->named_buffers()) {
    INFO(b2.key());
    CHECK(torch::allclose(b2.value().to(torch::kDouble), buffers[b2.key()].to(torch::kDouble), 1e-4,
                          1e-5));
  }
}

TEST_CASE("attention: few query-key pairs use a broadcast product equal to bmm", "[r2gen]") {
  // The relational memory's 3 x 4 heads and a decoding step's 1 x T take the broadcast path
  // (Lq * Lk <= kFewPairs); it must give bmm's values and gradients up to float32 rounding of
  // the d_k-term sums (d_k 16 here: a few ulps of O(1) values, so 1e-6).
  torch::manual_seed(11);
  enn::MultiHeadedAttention mha(enn::MultiHeadedAttentionOptions(4, 64).dropout(0.0));
  for (const auto& [lq, lk] : std::vector<std::pair<int64_t, int64_t>>{{3, 4}, {1, 60}, {8, 8}}) {
    INFO("Lq " << lq << " Lk " << lk);
    REQUIRE(lq * lk <= enn::MultiHeadedAttentionImpl::kFewPairs);
    auto q = torch::randn({2, 4, lq, 16}, torch::requires_grad());
    auto k = torch::randn({2, 4, lk, 16}, torch::requires_grad());
    auto v = torch::randn({2, 4, lk, 16}, torch::requires_grad());
    auto mask = torch::rand({2, lq, lk}) > 0.3;
    mask.select(2, 0).fill_(true);  // every query sees a key
    for (const bool masked : {false, true}) {
      auto out = mha->attend(q, k, v, masked ? mask : torch::Tensor());
      auto scores = torch::matmul(q, k.transpose(-2, -1)) / 4.0;
      if (masked) scores = scores.masked_fill(mask.unsqueeze(1).logical_not(), -1e9);
      auto ref = torch::matmul(torch::softmax(scores, -1), v);
      CHECK(max_abs_diff(out, ref) < 1e-6);
      auto w = torch::randn(ref.sizes());
      auto g = torch::autograd::grad({(out * w).sum()}, {q, k, v});
      auto g_ref = torch::autograd::grad({(ref * w).sum()}, {q, k, v});
      for (size_t i = 0; i < g.size(); ++i) CHECK(max_abs_diff(g[i], g_ref[i]) < 1e-6);
    }
  }
}

TEST_CASE("linear: oneDNN's sgemm path equals at::linear, values and gradients", "[r2gen]") {
#if IHN_EXPECT_DNNL
  REQUIRE(enn::linear_uses_dnnl());  // the build found oneDNN: the fast path must be in use
#endif
  // Sums of K products of O(1) values: float32 rounding of different summation orders is a few
  // ulps times sqrt(K) (K <= 300 here), far below 1e-4 on results of size ~sqrt(K).
  torch::manual_seed(5);
  struct Case {
    std::vector<int64_t> x_sizes;
    int64_t out;
    bool bias, transposed_input;
  };
  for (const auto& c : std::vector<Case>{{{7, 33}, 20, true, false},
                                         {{2, 59, 64}, 96, true, false},
                                         {{3, 5, 300}, 17, false, false},
                                         {{4, 6, 48}, 48, true, true},
                                         {{48}, 12, true, false}}) {
    INFO("x " << c10::IntArrayRef(c.x_sizes) << " out " << c.out << " bias " << c.bias);
    auto x = torch::randn(c.x_sizes);
    if (c.transposed_input) x = x.transpose(0, 1).contiguous().transpose(0, 1);  // strided
    x.requires_grad_(true);
    auto w = torch::randn({c.out, c.x_sizes.back()}, torch::requires_grad());
    auto b = c.bias ? torch::randn({c.out}, torch::requires_grad()) : torch::Tensor();
    auto y = enn::linear(x, w, b);
    auto ref = torch::nn::functional::linear(x, w, b);
    REQUIRE(y.sizes() == ref.sizes());
    CHECK(max_abs_diff(y, ref) < 1e-4);
    auto up = torch::randn(ref.sizes());
    std::vector<torch::Tensor> inputs{x, w};
    if (c.bias) inputs.push_back(b);
    auto g = torch::autograd::grad({(y * up).sum()}, inputs);
    auto g_ref = torch::autograd::grad({(ref * up).sum()}, inputs);
    for (size_t i = 0; i < g.size(); ++i) {
      INFO("gradient " << i);
      REQUIRE(g[i].sizes() == g_ref[i].sizes());
      // Sums of up to 300 products of O(1) values, results of size ~10-20: 1e-3 is ~1e-4 of them.
      CHECK(max_abs_diff(g[i], g_ref[i]) < 1e-3);
    }
  }
  {  // Inference (no_grad) is LibTorch's own product, bit for bit.
    torch::NoGradGuard no_grad;
    auto x = torch::randn({6, 40}), w = torch::randn({24, 40}), b = torch::randn({24});
    CHECK(torch::equal(enn::linear(x, w, b), torch::nn::functional::linear(x, w, b)));
  }
  // Only the inputs that need a gradient get one; a frozen weight is left alone.
  auto x = torch::randn({5, 8}, torch::requires_grad());
  auto w = torch::randn({3, 8});
  auto gx = torch::autograd::grad({enn::linear(x, w, torch::zeros({3})).sum()}, {x})[0];
  CHECK(max_abs_diff(gx, w.sum(0).expand({5, 8})) < 1e-5);
  // SharedWeightLinear through a 4-step recurrence: the weight's and bias's gradients (one
  // product over all steps) and the state's equal per-step Linear layers'; a second backward
  // over the retained graph gives them again; without grad mode it is a plain product.
  {
    auto weight = torch::randn({8, 8}, torch::requires_grad());
    auto bias = torch::randn({8}, torch::requires_grad());
    auto h0 = torch::randn({3, 8}, torch::requires_grad());
    auto run = [&](bool shared) {
      const enn::SharedWeightLinear layer(weight, bias);
      auto h = h0;
      for (int t = 0; t < 4; ++t)
        h = torch::tanh(shared ? layer(h) : torch::nn::functional::linear(h, weight, bias));
      return h.pow(2).sum();
    };
    auto loss = run(true);
    auto g = torch::autograd::grad({loss}, {weight, bias, h0}, {}, /*retain_graph=*/true);
    // A backward that wants only the state's gradient leaves nothing behind for the next one.
    torch::autograd::grad({loss}, {h0}, {}, /*retain_graph=*/true);
    auto again = torch::autograd::grad({loss}, {weight, bias, h0});
    auto ref = torch::autograd::grad({run(false)}, {weight, bias, h0});
    for (size_t i = 0; i < 3; ++i) {
      INFO("shared-weight gradient " << i);
      CHECK(max_abs_diff(g[i], ref[i]) < 1e-5);
      CHECK(max_abs_diff(again[i], g[i]) == 0);
    }
    torch::NoGradGuard no_grad;
    CHECK(torch::equal(enn::SharedWeightLinear(weight, bias)(h0),
                       torch::nn::functional::linear(h0, weight, bias)));
  }
  // The module is torch::nn::Linear's: same names, same initialisation from the same seed.
  torch::manual_seed(3);
  enn::Linear mine(16, 4);
  torch::manual_seed(3);
  torch::nn::Linear theirs(16, 4);
  CHECK(torch::equal(mine->weight, theirs->weight));
  CHECK(torch::equal(mine->bias, theirs->bias));
  CHECK(mine->named_parameters().keys() == theirs->named_parameters().keys());
}

TEST_CASE("dropout: hashed CPU masks drop at rate p, scale, and backward reuses the mask",
          "[r2gen]") {
  torch::manual_seed(21);
  const int64_t n = 1 << 20;
  for (const double p : {0.1, 0.5}) {
    INFO("p " << p);
    auto x = (torch::rand({n}) + 0.5).requires_grad_(true);  // no zeros of its own
    auto y = enn::dropout(x, p, true);
    const auto kept = y.ne(0);
    // Each element is an independent draw: the dropped share is within 5 standard deviations of
    // p (sd = sqrt(p (1-p) / n) <= 5e-4), and so is the share of kept pairs at a distance of
    // 1, 59 (a report's positions), 256 (a d_model row) and 4096 of (1-p)².
    const double dropped = 1.0 - kept.to(torch::kDouble).mean().item<double>();
    CHECK(std::abs(dropped - p) < 5 * std::sqrt(p * (1 - p) / n));
    const double q = (1 - p) * (1 - p);
    for (const int64_t lag : {1, 59, 256, 4096}) {
      INFO("lag " << lag);
      const double pairs = (kept.narrow(0, 0, n - lag) & kept.narrow(0, lag, n - lag))
                               .to(torch::kDouble)
                               .mean()
                               .item<double>();
      CHECK(std::abs(pairs - q) < 5 * std::sqrt(q * (1 - q) / static_cast<double>(n - lag)));
    }
    // Kept elements are scaled as torch::dropout scales them.
    const auto scale = static_cast<float>(1.0 / (1.0 - p));
    CHECK(torch::equal(y.masked_select(kept), x.detach().masked_select(kept) * scale));
    // Backward: the upstream gradient through the same mask and scale.
    auto up = torch::randn({n});
    auto g = torch::autograd::grad({(y * up).sum()}, {x})[0];
    CHECK(torch::equal(g, torch::where(kept, up * scale, torch::zeros({n}))));
    // The next call draws a new mask.
    CHECK_FALSE(torch::equal(enn::dropout(x, p, true).ne(0), kept));
  }
  // The mask is a function of the seed alone, whatever the thread count.
  const auto threads = torch::get_num_threads();
  torch::set_num_threads(1);
  const auto one = enn::dropout_mask(12345, 300000, 0.1);
  torch::set_num_threads(2);
  const auto two = enn::dropout_mask(12345, 300000, 0.1);
  torch::set_num_threads(threads);
  CHECK(torch::equal(one, two));
  CHECK_FALSE(torch::equal(one, enn::dropout_mask(12346, 300000, 0.1)));
  // Eval mode and p = 0 return the input; other dtypes take torch::dropout.
  auto x = torch::randn({64});
  CHECK(enn::dropout(x, 0.1, false).is_same(x));
  CHECK(enn::dropout(x, 0.0, true).is_same(x));
  const auto d = enn::dropout(x.to(torch::kDouble), 0.5, true);
  CHECK(d.scalar_type() == torch::kDouble);
  CHECK(d.ne(0).sum().item<int64_t>() < 64);
}

TEST_CASE("r2gen: stacked projections equal the official per-module computation", "[r2gen]") {
  // The relational memory runs its seven per-step Linear layers as two stacked GEMMs and the
  // decoder runs the first Linear of all conditional layer norms' MLPs as one; a wrong order in
  // a stack would swap weights, so check against the upstream formulation written out here.
  torch::manual_seed(12);
  R2GenModel model(tiny_options());
  model->eval();  // no dropout (the memory's attention has its own), the same values both ways
  auto& tf = *model->encoder_decoder->model;
  auto& rm = *tf.rm;
  auto linear = [](enn::MultiHeadedAttentionImpl& a, int i) {
    return a.linears[i]->as<torch::nn::Linear>();
  };
  const int64_t B = 3, T = 5, d = 64;
  auto inputs = torch::randn({B, T, d}, torch::requires_grad());
  auto memory = rm.init_memory(B, inputs.options().requires_grad(false));
  // Upstream RelationalMemory.forward_step, position by position.
  std::vector<torch::Tensor> ref_steps;
  auto mem = memory;
  for (int64_t t = 0; t < T; ++t) {
    auto m = mem.reshape({B, 3, d});
    auto input = inputs.select(1, t);
    auto kv = torch::cat({m, input.unsqueeze(1)}, 1);
    auto& a = *rm.attn;
    auto next = m + linear(a, 3)->forward(a.attend(a.split_heads(linear(a, 0)->forward(m)),
                                                   a.split_heads(linear(a, 1)->forward(kv)),
                                                   a.split_heads(linear(a, 2)->forward(kv)))
                                              .transpose(1, 2)
                                              .reshape({B, 3, d}));
    next = next + rm.mlp->forward(next);
    auto gates = rm.W(input.unsqueeze(1)) + rm.U(torch::tanh(m));
    auto parts = gates.split(d, 2);
    next = torch::sigmoid(parts[0]) * torch::tanh(next) + torch::sigmoid(parts[1]) * m;
    mem = next.reshape({B, 3 * d});
    ref_steps.push_back(mem);
  }
  auto ref = torch::stack(ref_steps, 1);
  auto out = rm.forward(inputs, memory);
  CHECK(max_abs_diff(out, ref) < 1e-5);
  // Gradients of every memory parameter (the stacks' backward splits them back).
  auto w = torch::randn(ref.sizes());
  auto params = rm.parameters();
  auto g = torch::autograd::grad({(out * w).sum()}, params, {}, /*retain_graph=*/true);
  auto g_ref = torch::autograd::grad({(ref * w).sum()}, params, {}, true, false, true);
  REQUIRE(g.size() == g_ref.size());
  for (size_t i = 0; i < g.size(); ++i) {
    INFO("relational memory parameter " << i);
    if (!g_ref[i].defined()) continue;  // upstream gives the key bias no graph path at all
    // Float32 rounding of other GEMM groupings summed over batch and steps: seen up to 4e-7 of
    // the largest gradient entry (9e-6 at 23); a wrong slice of a stack would be O(1).
    CHECK(max_abs_diff(g[i], g_ref[i]) < 1e-6 * (1.0 + g_ref[i].abs().max().item<double>()));
  }

  // Conditional layer norms: the decoder's stacked hidden layer against mlp_gamma / mlp_beta.
  auto x = torch::randn({B, T, d});
  auto hidden = tf.decoder->mcln_hidden(out);
  REQUIRE(hidden.size() == 6 * 2);  // 2 layers x 3 sublayers x (gamma, beta)
  for (size_t l = 0; l < 2; ++l) {
    for (int64_t i = 0; i < 3; ++i) {
      INFO("layer " << l << " sublayer " << i);
      auto& norm =
          *tf.decoder->layers[l]->as<ihn_examples::r2gen::DecoderLayerImpl>()->sub(i)->norm;
      auto [centered, denom] = enn::layer_norm_parts(x, norm.eps);
      auto expected = (norm.gamma + norm.mlp_gamma->forward(out)) * centered / denom + norm.beta +
                      norm.mlp_beta->forward(out);
      auto got = norm.forward_hidden(x, hidden[6 * l + 2 * i], hidden[6 * l + 2 * i + 1]);
      CHECK(max_abs_diff(got, expected) < 1e-5);
      CHECK(max_abs_diff(norm.forward(x, out), expected) < 1e-5);
    }
  }
}

TEST_CASE("training: clear_grads then backward gives zero_grad's Adam step exactly", "[r2gen]") {
  // Gradients set to none instead of zeroed: backward's first gradient becomes the .grad, and
  // 0 + g == g, so the step must be bit-identical.
  torch::manual_seed(13);
  auto make = [] {
    torch::manual_seed(14);
    return torch::nn::Linear(8, 4);
  };
  auto a = make(), b = make();
  torch::optim::Adam opt_a(a->parameters(), torch::optim::AdamOptions(1e-2).amsgrad(true));
  torch::optim::Adam opt_b(b->parameters(), torch::optim::AdamOptions(1e-2).amsgrad(true));
  for (int step = 0; step < 3; ++step) {
    auto x = torch::randn({5, 8});
    opt_a.zero_grad();
    a(x).pow(2).sum().backward();
    opt_a.step();
    enn::clear_grads(opt_b);
    for (const auto& p : b->parameters()) REQUIRE_FALSE(p.grad().defined());
    b(x).pow(2).sum().backward();
    opt_b.step();
  }
  for (size_t i = 0; i < a->parameters().size(); ++i)
    CHECK(torch::equal(a->parameters()[i], b->parameters()[i]));
}

TEST_CASE("training: FusedAdam steps as torch::optim::Adam and shares its state", "[r2gen]") {
  // Two parameter groups (R2Gen's lr_ve / lr_ed), weight decay, amsgrad on and off, a
  // channels-last 4-d weight (the ResNet's) and a parameter whose gradient is missing in one
  // step. The fused loop does the same float operations as ATen's kernels except that ATen
  // fuses two multiply-adds, so values agree to a few float32 ulps of the parameter (rtol 1e-6)
  // after five steps; an error in any coefficient would be far larger (lr 1e-2 moves 1e-2).
  for (const bool amsgrad : {true, false}) {
    INFO("amsgrad " << amsgrad);
    torch::manual_seed(15);
    auto conv = torch::randn({8, 4, 3, 3}).contiguous(at::MemoryFormat::ChannelsLast);
    auto weight = torch::randn({16, 128}), bias = torch::randn({16}), unused = torch::randn({4});
    std::vector<torch::Tensor> a = {conv, weight, bias, unused}, b;
    for (auto& t : a) {
      t.set_requires_grad(true);
      b.push_back(t.detach().clone(at::MemoryFormat::Preserve).set_requires_grad(true));
    }
    REQUIRE(b[0].is_contiguous(at::MemoryFormat::ChannelsLast));
    std::vector<torch::Tensor> initial;
    for (auto& t : b) initial.push_back(t.detach().clone());
    auto options = [&](double lr) {
      return torch::optim::AdamOptions(lr).weight_decay(5e-5).amsgrad(amsgrad);
    };
    auto groups = [&](std::vector<torch::Tensor>& p) {
      std::vector<torch::optim::OptimizerParamGroup> g;
      g.emplace_back(std::vector<torch::Tensor>{p[0]},
                     std::make_unique<torch::optim::AdamOptions>(options(5e-3)));
      g.emplace_back(std::vector<torch::Tensor>{p[1], p[2], p[3]},
                     std::make_unique<torch::optim::AdamOptions>(options(1e-2)));
      return g;
    };
    torch::optim::Adam reference(groups(a), options(1e-2));
    enn::FusedAdam fused(groups(b), options(1e-2));
    auto loss = [](const std::vector<torch::Tensor>& p, const torch::Tensor& x, bool use_last) {
      auto y = torch::conv2d(x, p[0]).flatten(1).matmul(p[1].t()) + p[2];
      auto l = y.pow(2).mean();
      return use_last ? l + p[3].sum() : l;
    };
    for (int step = 0; step < 5; ++step) {
      auto x = torch::randn({2, 4, 6, 6});
      const bool use_last = step != 2;  // step 3: no gradient for `unused`, both skip it
      reference.zero_grad();
      enn::clear_grads(fused);
      loss(a, x, use_last).backward();
      loss(b, x, use_last).backward();
      if (!use_last) a[3].mutable_grad().reset();
      reference.step();
      fused.step();
    }
    for (size_t i = 0; i < a.size(); ++i) {
      INFO("parameter " << i);
      CHECK(torch::allclose(b[i], a[i], 1e-6, 1e-7));
      CHECK((b[i] - initial[i]).abs().max().item<double>() > 1e-3);  // it did train
    }
    CHECK(b[0].is_contiguous(at::MemoryFormat::ChannelsLast));
    // The state is Adam's: saved from FusedAdam, it loads into torch::optim::Adam.
    std::stringstream buffer;
    torch::save(fused, buffer);
    torch::optim::Adam reloaded(groups(b), options(1e-2));
    torch::load(reloaded, buffer);
    const auto& s = static_cast<torch::optim::AdamParamState&>(*reloaded.state().begin()->second);
    CHECK(s.step() >= 4);
  }
}
