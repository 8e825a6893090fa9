// One parity suite for both ports (R2Gen, R2GenCMN) against the official code's golden outputs
// (fixtures/r2gen_tiny, fixtures/cmn_tiny, documented in fixtures/README.md). Every size, count
// and option comes from the fixture itself: the model from config.json's `args` (the vocabulary
// from the logit width of outputs.pt), the images from `images_formula` and inputs.pt's
// `images_shape`, the decoding lengths and beam size from `args`, the key, alias and parameter
// counts from config.json; so any fixture of the documented format runs unchanged (point
// IHN_FIXTURES_DIR at a folder holding r2gen_tiny/ and cmn_tiny/ to run another one).
//
// A port supplies a small traits struct:
//   struct Port {
//     using Model = ...;                                   // R2GenModel, CMNModel
//     static constexpr const char* fixture = "r2gen_tiny";  // folder under fixtures/
//     static Options options(const nlohmann::json& args, int64_t vocab_size);
//     static std::vector<std::pair<std::string, torch::Tensor>> intermediates(const Output&);
//   };
// and calls the check_* functions from its TEST_CASEs. Include after test_common.hpp.
//
// Tolerances (fixtures/README.md, "Caveats"): the reference itself moves by < 1e-6 (visual
// features, values up to ~3) and ~2e-6 (log-probs) between float32 and float64, so a float32
// port with a different summation order gets visual features atol 1e-3, log-probs and the
// models' intermediates atol 1e-4, losses rtol 1e-5, gradient norms rtol 1e-3; token ids exactly
// (the fixtures record their smallest greedy top1-top2 margin, ~5e-3 and up, in config.json).
#pragma once

#include "test_common.hpp"

#include "nn/precision.hpp"

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <regex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "nn/decoding.hpp"
#include "nn/deterministic_fill.hpp"
#include "nn/training.hpp"
#include "nn/transformer.hpp"

namespace ihn_test {

using PickledDict = c10::Dict<c10::IValue, c10::IValue>;

/// A fixture's inputs.pt / outputs.pt (torch.save of a dict, read with torch::pickle_load).
inline PickledDict load_pt(const std::filesystem::path& path) {
  std::ifstream f(path, std::ios::binary);
  INFO(path);
  REQUIRE(f.good());
  std::vector<char> buf((std::istreambuf_iterator<char>(f)), {});
  return torch::pickle_load(buf).toGenericDict();
}

inline nlohmann::json load_json(const std::filesystem::path& path) {
  std::ifstream f(path);
  INFO(path);
  REQUIRE(f.good());
  return nlohmann::json::parse(f);
}

inline torch::Tensor at_key(const PickledDict& d, const std::string& key) {
  return d.at(key).toTensor();
}

/// Compared on the CPU in double, wherever either side lives.
inline double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  REQUIRE(a.sizes() == b.sizes());
  return (a.to(torch::kCPU, torch::kDouble) - b.to(torch::kCPU, torch::kDouble))
      .abs()
      .max()
      .item<double>();
}

/// sum_i v_i and sum_i v_i * ((i mod 97) + 1) in double, as the fixtures' checksums.
inline std::pair<double, double> checksums(const torch::Tensor& t) {
  auto flat = t.detach().flatten().to(torch::kCPU, torch::kDouble).contiguous();
  auto weights = torch::arange(flat.numel(), torch::kLong).remainder(97).add(1).to(torch::kDouble);
  return {flat.sum().item<double>(), (flat * weights).sum().item<double>()};
}

/// An integer argument of the official run (config.json `args`).
inline int64_t arg(const nlohmann::json& args, const std::string& name) {
  INFO("config.json args." << name);
  REQUIRE(args.contains(name));
  return args.at(name).get<int64_t>();
}

/// `visual_extractor` "resnetN" -> N.
/// The transformer options both ports share, from the official arguments (parse_agrs names).
template <class Options>
Options& transformer_args(Options& options, const nlohmann::json& args) {
  return options.d_model(arg(args, "d_model"))
      .d_ff(arg(args, "d_ff"))
      .num_heads(arg(args, "num_heads"))
      .num_layers(arg(args, "num_layers"))
      .dropout(args.at("dropout").get<double>())
      .drop_prob_lm(args.at("drop_prob_lm").get<double>());
}

inline int64_t resnet_depth(const nlohmann::json& args) {
  const auto name = args.at("visual_extractor").get<std::string>();
  std::smatch m;
  INFO("config.json args.visual_extractor = " << name);
  REQUIRE(std::regex_match(name, m, std::regex("resnet([0-9]+)")));
  return std::stoll(m[1]);
}

/// The fixture's input images, generated rather than stored: config.json's `images_formula`
/// ("images.flatten()[i] = float32(A * sin(F * i + P))", float64 math) over inputs.pt's
/// `images_shape`.
inline torch::Tensor fixture_images(const nlohmann::json& config, const PickledDict& inputs) {
  const auto formula = config.at("images_formula").get<std::string>();
  const std::string number = "([-+0-9.eE]+)";
  std::smatch m;
  INFO("config.json images_formula = " << formula);
  REQUIRE(std::regex_search(formula, m,
                            std::regex("float32\\(" + number + " \\* sin\\(" + number +
                                       " \\* i \\+ " + number + "\\)\\)")));
  const double amplitude = std::stod(m[1]), frequency = std::stod(m[2]), phase = std::stod(m[3]);
  std::vector<int64_t> shape;
  for (const auto& d : inputs.at("images_shape").toList()) shape.push_back(d.get().toInt());
  REQUIRE(shape.size() == 5);  // (B, views, 3, H, W)
  auto images = torch::empty(shape, torch::kFloat);
  float* p = images.data_ptr<float>();
  for (int64_t i = 0; i < images.numel(); ++i)
    p[i] = static_cast<float>(amplitude * std::sin(frequency * static_cast<double>(i) + phase));
  return images;
}

/// A key projection's bias (`linears.1.bias` of every attention, the relational/cross-modal
/// memory's included) shifts all scores of a query equally, which softmax and top-k ignore: its
/// gradient is zero, and both sides hold rounding noise (1e-10 .. 2.4e-9 upstream) whose value
/// depends on the summation order of the attention products.
inline bool is_key_bias(const std::string& name) {
  const std::string suffix = "linears.1.bias";
  return name.size() >= suffix.size() &&
         name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
}

/// A parameter's gradient norm against the fixture's: rtol 1e-3; a key bias's both below 1e-7.
inline bool grad_norm_matches(const std::string& name, double ours, double ref) {
  return is_key_bias(name) ? (ours < 1e-7 && ref < 1e-7)
                           : std::abs(ours - ref) <= 1e-3 * std::abs(ref) + 1e-9;
}

/// Where the model fixtures are read: IHN_FIXTURES_DIR when set (another fixture of the
/// documented format, e.g. one of a different configuration, without reconfiguring), else
/// fixtures_dir().
inline std::filesystem::path model_fixtures_dir() {
  const char* dir = std::getenv("IHN_FIXTURES_DIR");
  return dir != nullptr && *dir != '\0' ? std::filesystem::path(dir) : fixtures_dir();
}

/// The model a fixture describes, filled with its rule B, in eval mode (the fixtures ran
/// everything in eval()), on test_device(), with the fixture's config, inputs and outputs; built
/// once per test binary by the caller. `images` stay on the CPU (checksums); `x` and in() are the
/// model's inputs.
template <class Port>
struct ParityFixture {
  using Model = typename Port::Model;
  ParityFixture()
      : dir(model_fixtures_dir() / Port::fixture),
        config(load_json(dir / "config.json")),
        args(config.at("args")),
        inputs(load_pt(dir / "inputs.pt")),
        outputs(load_pt(dir / "outputs.pt")),
        // The logit layer has vocab_size + 1 outputs (id 0 is BOS/EOS/pad).
        vocab_size(at_key(outputs, "tf_logprobs").size(-1) - 1),
        model(checked_options(args, vocab_size)),
        images(fixture_images(config, inputs)),
        device(test_device()) {
    torch::set_num_threads(2);
    filled = ihn_toolkit::nn::deterministic_fill(*model, ihn_toolkit::nn::FillRuleset::B);
    model->eval();
    model->to(device);
    x = images.to(device);
  }
  /// inputs[key] on the model's device.
  torch::Tensor in(const std::string& key) const { return at_key(inputs, key).to(device); }
  int64_t batch_size() const { return images.size(0); }
  /// R2Gen's max_seq_length: the decoded length of greedy and beam search.
  int64_t max_length() const { return arg(args, "max_seq_length"); }
  int64_t beam_size() const { return arg(args, "beam_size"); }
  int64_t d_model() const { return arg(args, "d_model"); }

  std::filesystem::path dir;
  nlohmann::json config, args;
  PickledDict inputs, outputs;
  int64_t vocab_size;
  Model model;
  std::vector<ihn_toolkit::nn::FilledEntry> filled;
  torch::Tensor images;
  torch::Device device;
  torch::Tensor x;

 private:
  static auto checked_options(const nlohmann::json& args, int64_t vocab_size) {
    auto options = Port::options(args, vocab_size);
    options.visual_depth(resnet_depth(args));
    // d_vf is not an option of the ports: it follows from the ResNet depth.
    REQUIRE(options.d_vf() == arg(args, "d_vf"));
    return options;
  }
};

/// Every filled key in sorted order with its rule and the checksums of its final tensor (an
/// aliased key holds what its later alias wrote, and both names are one storage); the skipped
/// integer buffers; the key, alias and parameter counts config.json records.
template <class Fixture>
void check_fill_matches_fixture(Fixture& fx) {
  const auto json = load_json(fx.dir / "weights_fill.json");
  const auto& keys = json.at("keys");
  REQUIRE(keys.size() == fx.config.at("n_fill_keys").template get<size_t>());
  REQUIRE(fx.filled.size() == keys.size());
  std::map<std::string, torch::Tensor> tensors;
  for (const auto& p : fx.model->named_parameters()) tensors[p.key()] = p.value();
  for (const auto& b : fx.model->named_buffers()) tensors[b.key()] = b.value();
  size_t aliased = 0;
  for (size_t k = 0; k < keys.size(); ++k) {
    const auto& ref = keys[k];
    const auto& got = fx.filled[k];
    INFO("k=" << k << " key " << got.key);
    REQUIRE(got.key == ref.at("key").template get<std::string>());
    CHECK(got.rule == ref.at("rule").template get<std::string>());
    REQUIRE(tensors.count(got.key) == 1);
    const auto [sum, wsum] = checksums(tensors[got.key]);
    // rtol 1e-12: the same float32 values summed in double (README: worst 6e-14).
    const double c = ref.at("checksum").template get<double>();
    const double w = ref.at("wchecksum").template get<double>();
    CHECK(std::abs(sum - c) <= 1e-12 * std::max(1.0, std::abs(c)));
    CHECK(std::abs(wsum - w) <= 1e-12 * std::max(1.0, std::abs(w)));
    if (ref.contains("aliases")) {
      ++aliased;
      for (const auto& alias : ref.at("aliases")) {
        // The same storage under both names, not two copies.
        REQUIRE(tensors.count(alias.template get<std::string>()) == 1);
        CHECK(tensors[alias.template get<std::string>()].data_ptr() == tensors[got.key].data_ptr());
      }
    } else {
      // Unaliased keys keep what the fill wrote at their own k.
      CHECK(std::abs(got.checksum - c) <= 1e-12 * std::max(1.0, std::abs(c)));
      CHECK(std::abs(got.wchecksum - w) <= 1e-12 * std::max(1.0, std::abs(w)));
    }
  }
  CHECK(aliased == fx.config.at("aliased_state_dict_keys").size());
  // The integer buffers the fill skips are exactly the fixture's num_batches_tracked list.
  std::set<std::string> skipped, ref_skipped;
  for (const auto& b : fx.model->named_buffers())
    if (!b.value().is_floating_point()) skipped.insert(b.key());
  for (const auto& s : json.at("skipped_integer_keys"))
    ref_skipped.insert(s.template get<std::string>());
  CHECK(skipped == ref_skipped);
  // Python's parameter count (shared tensors once).
  int64_t n = 0;
  for (const auto& p : ihn_toolkit::nn::unique_parameters(*fx.model)) n += p.numel();
  CHECK(n == fx.config.at("n_params").template get<int64_t>());
}

/// The generated images against inputs.pt's checksums and first and last 64 values.
template <class Fixture>
void check_images_match_fixture(const Fixture& fx) {
  const auto [sum, wsum] = checksums(fx.images);
  CHECK(std::abs(sum - fx.inputs.at("images_sum").toDouble()) < 1e-6 * std::abs(sum) + 1e-6);
  CHECK(std::abs(wsum - fx.inputs.at("images_wsum").toDouble()) < 1e-9 * std::abs(wsum) + 1e-6);
  const auto head = at_key(fx.inputs, "images_head"), tail = at_key(fx.inputs, "images_tail");
  const auto flat = fx.images.flatten();
  CHECK(torch::equal(flat.narrow(0, 0, head.numel()), head));
  CHECK(torch::equal(flat.narrow(0, flat.numel() - tail.numel(), tail.numel()), tail));
}

/// Per view: the patch tokens of view 0 and the averaged conv5 map of views 0 and 1 (atol 1e-3).
template <class Fixture>
void check_visual_features_match_fixture(Fixture& fx) {
  torch::NoGradGuard no_grad;
  auto [att, fc] = fx.model->visual_features(fx.x);
  const auto ref_patch = at_key(fx.outputs, "ve_patch_feats_view0");
  const int64_t patches = ref_patch.size(1), d_vf = arg(fx.args, "d_vf");
  auto patch0 = att.narrow(1, 0, patches);
  CHECK(max_abs_diff(patch0, ref_patch) < 1e-3);
  CHECK(max_abs_diff(fc.narrow(1, 0, d_vf), at_key(fx.outputs, "ve_avg_feats_view0")) < 1e-3);
  CHECK(max_abs_diff(fc.narrow(1, d_vf, d_vf), at_key(fx.outputs, "ve_avg_feats_view1")) < 1e-3);
  // Where the fixture's studies differ by more than the tolerance, a batch mix-up is caught:
  // ours must differ as much.
  if (fx.batch_size() >= 2) {
    const double ref_spread = max_abs_diff(ref_patch[0], ref_patch[1]);
    if (ref_spread > 2e-3)
      CHECK(max_abs_diff(patch0[0], patch0[1]) > ref_spread - 1e-3);
    else
      WARN(fx.dir << ": the studies' visual features differ by only " << ref_spread
                  << ", so a batch mix-up would go unnoticed");
  }
}

/// Teacher forcing on inputs.pt's reports: the port's intermediates (outputs.pt key, ours) and
/// the log-probs (atol 1e-4), the loss (rtol 1e-5), and the hard-negative features (means of the
/// same pass, atol `feature_tol`). Returns the output for port-specific checks.
template <class Port, class Fixture>
auto check_teacher_forcing_matches_fixture(Fixture& fx, double feature_tol = 1e-4) {
  torch::NoGradGuard no_grad;
  auto ids = fx.in("reports_ids"), masks = fx.in("reports_masks");
  auto out = fx.model->forward(fx.x, ids, masks);
  for (const auto& [key, ours] : Port::intermediates(out)) {
    INFO(key);
    CHECK(max_abs_diff(ours, at_key(fx.outputs, key)) < 1e-4);
  }
  CHECK(max_abs_diff(out.logprobs, at_key(fx.outputs, "tf_logprobs")) < 1e-4);
  const double loss =
      ihn_toolkit::nn::compute_loss(out.logprobs, ids, masks).template item<double>();
  const double ref = fx.outputs.at("tf_loss_float").toDouble();
  CHECK(std::abs(loss - ref) <= 1e-5 * std::abs(ref));
  CHECK(out.image_features.sizes() == torch::IntArrayRef({fx.batch_size(), fx.d_model()}));
  CHECK(torch::allclose(out.image_features.cpu(), at_key(fx.outputs, "tf_encoder_out").mean(1),
                        feature_tol, feature_tol));
  auto m = masks.cpu().narrow(1, 0, ids.size(1) - 1).unsqueeze(-1);
  auto ref_report = (at_key(fx.outputs, "tf_decoder_out") * m).sum(1) / m.sum(1);
  CHECK(torch::allclose(out.report_features.cpu(), ref_report, 1e-4, 1e-4));
  return out;
}

/// Teacher forcing under autocast in reduced precision — bf16 on the CPU, fp16 on CUDA, as
/// `ihn train --precision` runs the forward pass — against the fixture's float32 outputs.
///
/// Tolerance: bf16 keeps 8 significant bits, so each convolution and matrix product rounds its
/// inputs by up to u = 2^-9 ≈ 0.2 % (oneDNN and cuBLAS accumulate in float32). The roundings of
/// independent inputs have random signs and partly cancel in every sum, and the loss — a mean of
/// log-probs over the report's tokens (log-softmax in float32) — averages them again: its
/// relative error must stay below one u (measured on the fixtures: R2Gen 1.9e-4, CMN 5e-6), the
/// log-probs within 0.1 in the mean over tokens, and it must differ from float32's at all
/// (autocast really ran).
template <class Fixture>
void check_reduced_precision_forward(Fixture& fx) {
  namespace nn = ihn_toolkit::nn;
  torch::NoGradGuard no_grad;
  const auto precision = fx.device.is_cuda() ? nn::Precision::fp16 : nn::Precision::bf16;
  auto ids = fx.in("reports_ids"), masks = fx.in("reports_masks");
  auto out = [&] {
    const nn::AutocastGuard autocast(precision, fx.device.type());
    return fx.model->forward(fx.x, ids, masks);
  }();
  CHECK(out.logprobs.scalar_type() == torch::kFloat);  // log-softmax runs in float32
  const double loss =
      ihn_toolkit::nn::compute_loss(out.logprobs, ids, masks).template item<double>();
  const double ref = fx.outputs.at("tf_loss_float").toDouble();
  const double relative = std::abs(loss - ref) / std::abs(ref);
  INFO("loss " << loss << " in " << nn::to_string(precision) << ", float32 " << ref);
  CHECK(relative <= std::pow(2.0, -9));
  CHECK(relative > 0);
  const auto m = masks.cpu().narrow(1, 1, ids.size(1) - 1).unsqueeze(-1);
  const auto token_diff =
      ((out.logprobs.cpu() - at_key(fx.outputs, "tf_logprobs")).abs() * m).sum() /
      (m.sum() * out.logprobs.size(-1));
  CHECK(token_diff.template item<double>() < 0.1);
  // Outside the guard the forward pass is float32 again (within the parity tolerance of
  // check_teacher_forcing_matches_fixture), and the weights never left float32.
  CHECK(max_abs_diff(fx.model->forward(fx.x, ids, masks).logprobs,
                     at_key(fx.outputs, "tf_logprobs")) < 1e-4);
  for (const auto& p : fx.model->parameters()) CHECK(p.scalar_type() == torch::kFloat);
}

/// The padded teacher-forced batch (pad_*): log-probs and loss; report features ignore padding
/// after the EOS but count the EOS row.
template <class Fixture>
void check_padded_batch_matches_fixture(Fixture& fx) {
  torch::NoGradGuard no_grad;
  auto ids = at_key(fx.outputs, "pad_reports_ids").to(fx.device);
  auto masks = at_key(fx.outputs, "pad_reports_masks").to(fx.device);
  REQUIRE((masks == 0).any().template item<bool>());  // the batch really is padded
  auto images = fx.x.narrow(0, 0, ids.size(0));
  auto out = fx.model->forward(images, ids, masks);
  CHECK(max_abs_diff(out.logprobs, at_key(fx.outputs, "pad_tf_logprobs")) < 1e-4);
  const double loss =
      ihn_toolkit::nn::compute_loss(out.logprobs, ids, masks).template item<double>();
  const double ref = at_key(fx.outputs, "pad_tf_loss").template item<double>();
  CHECK(std::abs(loss - ref) <= 1e-5 * std::abs(ref));
  // With every token as decoder input (one padding column appended), three more padding columns
  // change nothing.
  auto pad = [](const torch::Tensor& t, int64_t n) {
    return torch::cat({t, torch::zeros({t.size(0), n}, t.options())}, 1);
  };
  auto base = fx.model->report_features(images, pad(ids, 1), pad(masks, 1));
  auto wider = fx.model->report_features(images, pad(ids, 4), pad(masks, 4));
  CHECK(torch::allclose(wider, base, 1e-5, 1e-6));
  CHECK_FALSE(torch::allclose(base, out.report_features, 1e-5, 1e-6));  // the EOS row counts
}

/// d tf_loss / d parameter, by name (aliased tensors once, under Python's first name): exactly
/// outputs.pt's `grad_norm_names`, each norm within rtol 1e-3 (key biases: both ~0). Returns our
/// norms by name for port-specific checks.
template <class Fixture>
std::map<std::string, double> check_grad_norms_match_fixture(Fixture& fx) {
  auto ids = fx.in("reports_ids"), masks = fx.in("reports_masks");
  auto ref_names = fx.outputs.at("grad_norm_names").toList();
  auto ref_norms = at_key(fx.outputs, "grad_norms");
  REQUIRE(static_cast<int64_t>(ref_names.size()) == ref_norms.numel());
  // grad_norms.json is the same record as a map; its loss is the teacher-forced loss.
  const auto json = load_json(fx.dir / "grad_norms.json");
  CHECK(json.at("norms").size() == ref_names.size());
  fx.model->zero_grad();
  auto out = fx.model->forward(fx.x, ids, masks);
  auto loss = ihn_toolkit::nn::compute_loss(out.logprobs, ids, masks);
  const double ref_loss = json.at("loss").template get<double>();
  CHECK(std::abs(loss.template item<double>() - ref_loss) <= 1e-5 * std::abs(ref_loss));
  loss.backward();
  std::map<std::string, double> norms;
  for (const auto& p : ihn_toolkit::nn::unique_named_parameters(*fx.model))
    if (p.value().grad().defined())
      norms[p.key()] = p.value().grad().to(torch::kDouble).norm().template item<double>();
  CHECK(norms.size() == ref_names.size());
  int bad = 0;
  double worst = 0;
  for (size_t i = 0; i < ref_names.size(); ++i) {
    const auto name = ref_names.get(i).toStringRef();
    INFO("parameter " << name);
    REQUIRE(norms.count(name) == 1);
    const double r = ref_norms[i].template item<double>();
    CHECK(std::abs(json.at("norms").at(name).template get<double>() - r) <= 1e-12 * std::abs(r));
    const bool ok = grad_norm_matches(name, norms[name], r);
    if (!ok) ++bad;
    CHECK(ok);
    if (!is_key_bias(name)) worst = std::max(worst, std::abs(norms[name] - r) / r);
  }
  CHECK(bad == 0);
  CHECK(worst < 1e-3);  // the largest relative deviation, for the record
  fx.model->zero_grad();
  return norms;
}

/// Greedy ids exactly and the stored log-prob rows (atol 1e-4, as teacher forcing), with and
/// without trigram blocking, for the fixture's max_seq_length.
template <class Fixture>
void check_greedy_matches_fixture(Fixture& fx) {
  namespace enn = ihn_toolkit::nn;
  const auto options = enn::GreedyOptions().max_length(fx.max_length());
  auto on = fx.model->greedy(fx.x, enn::GreedyOptions(options).block_trigrams(true));
  CHECK(torch::equal(on.seq.cpu(), at_key(fx.outputs, "greedy_seq")));
  CHECK(max_abs_diff(on.seq_logprobs, at_key(fx.outputs, "greedy_seq_logprobs")) < 1e-4);
  auto off = fx.model->greedy(fx.x, enn::GreedyOptions(options).block_trigrams(false));
  CHECK(torch::equal(off.seq.cpu(), at_key(fx.outputs, "greedy_notrigram_seq")));
  CHECK(max_abs_diff(off.seq_logprobs, at_key(fx.outputs, "greedy_notrigram_seq_logprobs")) < 1e-4);
  // The fixture is only a test of blocking if blocking changes the output.
  if (torch::equal(at_key(fx.outputs, "greedy_seq"), at_key(fx.outputs, "greedy_notrigram_seq")))
    WARN(fx.dir << ": trigram blocking does not change the greedy output, so it is not tested");
}

/// Beam search with the fixture's beam_size and max_seq_length: the best beam's ids and
/// log-prob rows, and every final beam's ids, length and scores, for every study.
template <class Fixture>
void check_beam_matches_fixture(Fixture& fx) {
  namespace enn = ihn_toolkit::nn;
  auto res = fx.model->beam_search(
      fx.x, enn::BeamSearchOptions().beam_size(fx.beam_size()).max_length(fx.max_length()));
  CHECK(torch::equal(res.seq.cpu(), at_key(fx.outputs, "beam_seq")));
  CHECK(max_abs_diff(res.seq_logprobs, at_key(fx.outputs, "beam_seq_logprobs")) < 1e-4);
  auto all_seq = at_key(fx.outputs, "beam_all_seq");
  auto all_len = at_key(fx.outputs, "beam_all_len");
  auto all_sum = at_key(fx.outputs, "beam_all_logprob_sum");
  auto all_unaug = at_key(fx.outputs, "beam_all_unaug_logprob_sum");
  REQUIRE(all_seq.size(0) == fx.batch_size());
  REQUIRE(all_seq.size(1) == fx.beam_size());
  REQUIRE(static_cast<int64_t>(res.beams.size()) == fx.batch_size());
  for (int64_t b = 0; b < fx.batch_size(); ++b) {
    REQUIRE(static_cast<int64_t>(res.beams[b].size()) == fx.beam_size());
    for (int64_t j = 0; j < fx.beam_size(); ++j) {
      INFO("study " << b << " beam " << j);
      const auto& beam = res.beams[b][j];
      const auto len = all_len[b][j].template item<int64_t>();
      REQUIRE(beam.seq.size(0) == len);
      CHECK(torch::equal(beam.seq.cpu(), all_seq[b][j].narrow(0, 0, len)));
      // Sums of up to max_length float32 log-probs: atol 1e-4 as the log-probs themselves.
      CHECK(std::abs(beam.logprob_sum - all_sum[b][j].template item<double>()) < 1e-4);
      // Upstream's 'unaug_p' sums the beam's whole (len, V+1) log-prob table: every row of every
      // final beam at once (~1e4 float32 terms of ~-7, so rtol 1e-5).
      const double unaug = beam.logps.to(torch::kDouble).sum().template item<double>();
      const double ref_unaug = all_unaug[b][j].template item<double>();
      CHECK(std::abs(unaug - ref_unaug) <= 1e-5 * std::abs(ref_unaug));
    }
  }
  // The best beam's score recomputed from its own log-prob rows (in double by the fixture).
  const auto best = at_key(fx.outputs, "beam_best_seq_logprob");
  for (int64_t b = 0; b < fx.batch_size(); ++b)
    CHECK(std::abs(res.beams[b][0].logprob_sum - best[b].template item<double>()) < 1e-4);
}

/// The alt_pe outputs: every positional-encoding buffer (`*.pe`) set to the original sin/cos
/// table, then teacher forcing, greedy and beam search as above; the filled tables restored.
template <class Fixture>
void check_original_positional_tables_match_fixture(Fixture& fx) {
  namespace enn = ihn_toolkit::nn;
  std::vector<torch::Tensor> tables, saved;
  const std::string suffix = ".pe";
  for (const auto& b : fx.model->named_buffers())
    if (b.key().size() > suffix.size() &&
        b.key().compare(b.key().size() - suffix.size(), suffix.size(), suffix) == 0)
      tables.push_back(b.value());
  REQUIRE_FALSE(tables.empty());
  {
    torch::NoGradGuard no_grad;
    for (auto& pe : tables) {
      saved.push_back(pe.clone());
      pe.copy_(enn::PositionalEncodingImpl::table(pe.size(1), pe.size(2)));
    }
  }
  auto ids = fx.in("reports_ids"), masks = fx.in("reports_masks");
  torch::Tensor logprobs;
  {
    torch::NoGradGuard no_grad;
    logprobs = fx.model->forward(fx.x, ids, masks).logprobs;
  }
  auto greedy = fx.model->greedy(fx.x, enn::GreedyOptions().max_length(fx.max_length()));
  auto beam = fx.model->beam_search(
      fx.x, enn::BeamSearchOptions().beam_size(fx.beam_size()).max_length(fx.max_length()));
  {
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < tables.size(); ++i) tables[i].copy_(saved[i]);
  }
  CHECK(max_abs_diff(logprobs, at_key(fx.outputs, "alt_pe_tf_logprobs")) < 1e-4);
  const double loss = ihn_toolkit::nn::compute_loss(logprobs, ids, masks).template item<double>();
  const double ref = at_key(fx.outputs, "alt_pe_tf_loss").template item<double>();
  CHECK(std::abs(loss - ref) <= 1e-5 * std::abs(ref));
  CHECK(torch::equal(greedy.seq.cpu(), at_key(fx.outputs, "alt_pe_greedy_seq")));
  CHECK(torch::equal(beam.seq.cpu(), at_key(fx.outputs, "alt_pe_beam_seq")));
  auto sums = at_key(fx.outputs, "alt_pe_beam_all_logprob_sum");
  REQUIRE(sums.size(0) == fx.batch_size());
  REQUIRE(sums.size(1) == fx.beam_size());
  for (int64_t b = 0; b < fx.batch_size(); ++b)
    for (int64_t j = 0; j < fx.beam_size(); ++j)
      CHECK(std::abs(beam.beams[b][j].logprob_sum - sums[b][j].template item<double>()) < 1e-4);
}

}  // namespace ihn_test
