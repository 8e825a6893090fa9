// What the R2Gen and R2GenCMN parity tests read and check the same way: the fixtures' pickled
// dicts, and the decoding outputs (greedy with and without trigram blocking, beam-3), whose keys
// and tolerances are the same in fixtures/r2gen_tiny and fixtures/cmn_tiny. Include after
// test_common.hpp.
#pragma once

#include "test_common.hpp"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "nn/decoding.hpp"
#include "nn/deterministic_fill.hpp"

namespace ihn_test {

using PickledDict = c10::Dict<c10::IValue, c10::IValue>;

/// A fixture's inputs.pt / outputs.pt (torch.save of a dict, read with torch::pickle_load).
inline PickledDict load_pt(const std::filesystem::path& path) {
  std::ifstream f(path, std::ios::binary);
  REQUIRE(f.good());
  std::vector<char> buf((std::istreambuf_iterator<char>(f)), {});
  return torch::pickle_load(buf).toGenericDict();
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

/// images.flatten()[i] = float32(0.5 * sin(0.011 * i)), shape [2, 2, 3, 224, 224]: both
/// fixtures' input images, generated rather than stored.
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

inline torch::Tensor fixture_images() {
  auto images = torch::empty({2, 2, 3, 224, 224}, torch::kFloat);
  float* p = images.data_ptr<float>();
  for (int64_t i = 0; i < images.numel(); ++i)
    p[i] = static_cast<float>(0.5 * std::sin(0.011 * static_cast<double>(i) + 0.0));
  return images;
}

/// A tiny model filled with the fixtures' rule B, in eval mode (the fixtures ran everything in
/// eval()), on test_device(), with the fixture's inputs and outputs; built once per test binary
/// by the caller. `images` stay on the CPU (checksums); `x` and in() are the model's inputs.
template <class Model>
struct TinyFixture {
  template <class Options>
  TinyFixture(const std::string& name, const Options& options)
      : dir(fixtures_dir() / name),
        model(options),
        inputs(load_pt(dir / "inputs.pt")),
        outputs(load_pt(dir / "outputs.pt")),
        images(fixture_images()),
        device(test_device()) {
    torch::set_num_threads(2);
    filled = ihn_examples::nn::deterministic_fill(*model, ihn_examples::nn::FillRuleset::B);
    model->eval();
    model->to(device);
    x = images.to(device);
  }
  /// inputs[key] on the model's device.
  torch::Tensor in(const std::string& key) const { return at_key(inputs, key).to(device); }
  std::filesystem::path dir;
  Model model;
  std::vector<ihn_examples::nn::FilledEntry> filled;
  PickledDict inputs, outputs;
  torch::Tensor images;
  torch::Device device;
  torch::Tensor x;
};

/// Greedy ids exactly and the stored log-prob rows (atol 1e-4, as teacher forcing), with and
/// without trigram blocking, for reports of up to 20 tokens.
template <class Model>
void check_greedy_matches_fixture(Model& model, const torch::Tensor& images,
                                  const PickledDict& outputs) {
  namespace enn = ihn_examples::nn;
  auto on = model->greedy(images, enn::GreedyOptions().max_length(20).block_trigrams(true));
  CHECK(torch::equal(on.seq.cpu(), at_key(outputs, "greedy_seq")));
  CHECK(max_abs_diff(on.seq_logprobs, at_key(outputs, "greedy_seq_logprobs")) < 1e-4);
  auto off = model->greedy(images, enn::GreedyOptions().max_length(20).block_trigrams(false));
  CHECK(torch::equal(off.seq.cpu(), at_key(outputs, "greedy_notrigram_seq")));
  CHECK(max_abs_diff(off.seq_logprobs, at_key(outputs, "greedy_notrigram_seq_logprobs")) < 1e-4);
  // The fixture is only a test of blocking if blocking changes the output.
  CHECK_FALSE(torch::equal(on.seq, off.seq));
}

/// Beam-3 search: the best beam's ids and log-prob rows, and every final beam's ids, length and
/// scores, for a batch of two studies.
template <class Model>
void check_beam_matches_fixture(Model& model, const torch::Tensor& images,
                                const PickledDict& outputs) {
  namespace enn = ihn_examples::nn;
  auto res = model->beam_search(images, enn::BeamSearchOptions().beam_size(3).max_length(20));
  CHECK(torch::equal(res.seq.cpu(), at_key(outputs, "beam_seq")));
  CHECK(max_abs_diff(res.seq_logprobs, at_key(outputs, "beam_seq_logprobs")) < 1e-4);
  auto all_seq = at_key(outputs, "beam_all_seq");
  auto all_len = at_key(outputs, "beam_all_len");
  auto all_sum = at_key(outputs, "beam_all_logprob_sum");
  auto all_unaug = at_key(outputs, "beam_all_unaug_logprob_sum");
  REQUIRE(res.beams.size() == 2);
  for (int64_t b = 0; b < 2; ++b) {
    REQUIRE(res.beams[b].size() == 3);
    for (int64_t j = 0; j < 3; ++j) {
      INFO("study " << b << " beam " << j);
      const auto& beam = res.beams[b][j];
      const auto len = all_len[b][j].template item<int64_t>();
      REQUIRE(beam.seq.size(0) == len);
      CHECK(torch::equal(beam.seq.cpu(), all_seq[b][j].narrow(0, 0, len)));
      // Sums of up to 20 float32 log-probs: atol 1e-4 as the log-probs themselves.
      CHECK(std::abs(beam.logprob_sum - all_sum[b][j].template item<double>()) < 1e-4);
      // Upstream's 'unaug_p' sums the beam's whole (len, V+1) log-prob table: every row of every
      // final beam at once (~1.5e4 float32 terms of ~-7, so rtol 1e-5).
      const double unaug = beam.logps.to(torch::kDouble).sum().template item<double>();
      const double ref_unaug = all_unaug[b][j].template item<double>();
      CHECK(std::abs(unaug - ref_unaug) <= 1e-5 * std::abs(ref_unaug));
    }
  }
  // The best beam's score recomputed from its own log-prob rows (in double by the fixture).
  const auto best = at_key(outputs, "beam_best_seq_logprob");
  for (int64_t b = 0; b < 2; ++b)
    CHECK(std::abs(res.beams[b][0].logprob_sum - best[b].template item<double>()) < 1e-4);
}

}  // namespace ihn_test
