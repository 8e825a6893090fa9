// R2Gen port timings, the counterpart of shared/baselines/bench_train.py and bench_decode.py:
// one training step as the official trainer's loop body (forward, compute_loss, zero_grad,
// backward, clip_grad_value_(0.1), Adam amsgrad with the two learning-rate groups) and one
// beam-3 / greedy decode of a batch of 16 IU X-Ray studies (two views), random weights.
//
//   bench_r2gen CFG WHAT [WARMUP REPS] [THREADS] [nhwc|nchw] [fp32|bf16] [cpu|cuda] [profile]
//               [phases]
//     CFG   small (ResNet-18 128², d_model 256, 2 layers) | paper (ResNet-101 224², 512, 3 layers)
//     WHAT  train | beam | greedy | ihn_share (plain and ihn training steps interleaved in one
//           process, and the augmenter's own time inside the ihn step: its share of a step)
//     nhwc  (default on the CPU, as `ihn train` there) the ResNet's convolution weights
//           channels-last (nn::to_channels_last); nchw keeps LibTorch's default layout (the
//           default on CUDA, as `ihn train --device cuda`)
//     bf16  the forward pass (training) or the whole decode under bf16 autocast, as
//           `ihn train --precision bf16` (nn/precision.hpp); fp32 (default) as before
//     cuda  model, inputs and optimiser on the GPU, the device synchronised before every clock
//           read (bench_device.hpp); an error when CUDA is not available. cpu is the default
//           (the output line then has no "device" field, as before)
//     phases  (train) print each step's forward / backward / clip / Adam seconds
//     profile  (train) run one more step under LibTorch's autograd profiler and print the ops
//           with the most self CPU time (as bench_train.py's `profile` mode does for Python)
// malloc: like the ihn tool, the benchmark calls nn::keep_freed_memory() first (glibc keeps
// freed buffers instead of unmapping them: the baseline README's MALLOC_MMAP_MAX_=0
// MALLOC_TRIM_THRESHOLD_ experiment); IHN_SYSTEM_MALLOC=1 runs with glibc's defaults instead.
// Prints one JSON line per run (median and all repetitions, seconds; minor page faults and CPU
// seconds per timed step). The reports are random
// ids with the baseline batch's shape (16 x 60, 617 mask tokens): the cost does not depend on
// the ids, and the tokenizer is not needed.
#include <sys/resource.h>
#include <torch/csrc/autograd/profiler.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include <ihn/augmenter.hpp>

#include "bench_batch.hpp"
#include "bench_device.hpp"
#include "bench_profile.hpp"
#include "nn/allocator.hpp"
#include "nn/fused_adam.hpp"
#include "nn/precision.hpp"
#include "r2gen.hpp"

namespace r2 = ihn_examples::r2gen;

namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string json_times(const std::vector<double>& t) {
  auto s = t;
  std::sort(s.begin(), s.end());
  const double median =
      s.size() % 2 ? s[s.size() / 2] : 0.5 * (s[s.size() / 2 - 1] + s[s.size() / 2]);
  std::string all;
  for (size_t i = 0; i < t.size(); ++i) all += (i ? ", " : "") + std::to_string(t[i]);
  return "{\"median\": " + std::to_string(median) + ", \"min\": " + std::to_string(s.front()) +
         ", \"max\": " + std::to_string(s.back()) + ", \"all\": [" + all + "]}";
}

struct Usage {
  long minor_faults;
  double cpu_seconds;
};

Usage usage() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  auto secs = [](const timeval& t) { return t.tv_sec + 1e-6 * t.tv_usec; };
  return {ru.ru_minflt, secs(ru.ru_utime) + secs(ru.ru_stime)};
}

}  // namespace

int main(int argc, char** argv) {
  const bool kept_freed_memory = ihn_toolkit::nn::keep_freed_memory();
  if (argc < 3) {
    std::cerr << "usage: bench_r2gen small|paper train|beam|greedy|ihn_share [WARMUP REPS] "
                 "[THREADS] [nhwc|nchw] [fp32|bf16] [cpu|cuda] [profile] [phases]\n";
    return 2;
  }
  const std::string cfg = argv[1], what = argv[2];
  const int warmup = argc > 3 ? std::stoi(argv[3]) : 2;
  const int reps = argc > 4 ? std::stoi(argv[4]) : 5;
  const int threads = argc > 5 ? std::stoi(argv[5]) : 2;
  bool channels_last = true;  // as `ihn train` on the CPU
  bool layout_given = false;
  bool profile = false, phases = false;
  std::string device_name = "cpu";
  auto precision = ihn_toolkit::nn::Precision::fp32;
  for (int a = 6; a < argc; ++a) {
    const std::string flag = argv[a];
    if (flag == "nhwc" || flag == "nchw") {
      channels_last = flag == "nhwc";
      layout_given = true;
    } else if (ihn_bench::is_device_flag(flag)) {
      device_name = flag;
    } else if (flag == "fp32" || flag == "bf16") {
      precision = ihn_toolkit::nn::parse_precision(flag);
    } else if (flag == "profile") {
      profile = true;
    } else if (flag == "phases") {
      phases = true;
    } else {
      std::cerr << "bench_r2gen: unknown option " << flag << "\n";
      return 2;
    }
  }
  torch::Device device(torch::kCPU);
  try {
    device = ihn_bench::parse_device(device_name);
  } catch (const std::exception& e) {
    std::cerr << "bench_r2gen: " << e.what() << "\n";
    return 2;
  }
  if (device.is_cuda() && !layout_given) channels_last = false;  // as `ihn train --device cuda`
  const auto sync = [&] { ihn_bench::synchronize(device); };
  torch::set_num_threads(threads);
  torch::manual_seed(9233);

  const int64_t vocab = 760, batch = 16, max_len = 60;
  auto options = cfg == "paper" ? r2::R2GenOptions(vocab) : r2::R2GenOptions::small(vocab);
  const int64_t image = cfg == "paper" ? 224 : 128;
  r2::R2GenModel model(options);
  if (channels_last) ihn_toolkit::nn::to_channels_last(*model->visual_extractor);
  model->to(device);  // before the optimiser is built: its parameters are the device's

  const auto input = ihn_bench::baseline_batch(vocab, image, device);
  const auto &images = input.images, &ids = input.ids, &masks = input.masks;

  std::vector<double> times;
  Usage timed_start{}, timed_end{};
  int64_t generated = 0;
  double last_loss = 0;
  std::vector<double> ihn_times, augmenter_times;
  if (what == "train" || what == "ihn_share") {
    model->train();
    std::vector<torch::Tensor> ve, ed;
    for (auto& p : model->visual_extractor->parameters()) ve.push_back(p);
    for (auto& p : model->encoder_decoder->parameters()) ed.push_back(p);
    // Official build_optimizer: Adam, amsgrad, weight decay 5e-5, lr_ve 5e-5 / lr_ed 1e-4.
    std::vector<torch::optim::OptimizerParamGroup> groups;
    groups.emplace_back(ve, std::make_unique<torch::optim::AdamOptions>(
                                torch::optim::AdamOptions(5e-5).weight_decay(5e-5).amsgrad(true)));
    groups.emplace_back(ed, std::make_unique<torch::optim::AdamOptions>(
                                torch::optim::AdamOptions(1e-4).weight_decay(5e-5).amsgrad(true)));
    ihn_toolkit::nn::FusedAdam optimizer(
        std::move(groups),  // the port's Adam
        torch::optim::AdamOptions(1e-4).weight_decay(5e-5).amsgrad(true));
    auto params = model->parameters();
    // ihn at its defaults (K 4, 5 ascent steps) with a full bank of IU X-Ray's 2,069 training
    // reports, filled before timing as after the first epoch.
    ihn::HardNegativeAugmenter<r2::R2GenModel> augmenter(model, ihn::Options{});
    if (what == "ihn_share") {
      torch::NoGradGuard no_grad;
      ihn::StateDict state = augmenter.state_dict();
      state["bank.ids"] = torch::arange(2069, torch::kLong);
      state["bank.features"] =
          torch::nn::functional::normalize(torch::randn({2069, options.d_model()}),
                                           torch::nn::functional::NormalizeFuncOptions().dim(1));
      state["bank.key_hashes"] = torch::arange(2069, torch::kLong) % 700;
      augmenter.load_state_dict(state, device);
    }
    auto step = [&](bool with_ihn, int i) {
      sync();
      const double t0 = now();
      auto [out, loss] = [&] {
        const ihn_toolkit::nn::AutocastGuard autocast(precision, device.type());
        auto o = model->forward(images, ids, masks);
        auto l = r2::compute_loss(o.logprobs, ids, masks);
        return std::make_pair(o, l);
      }();
      if (with_ihn) {
        const double a0 = now();
        std::vector<int64_t> sample_ids;
        for (int64_t b = 0; b < batch; ++b) sample_ids.push_back((i * batch + b * 131) % 2069);
        loss = loss + augmenter.loss(out.image_features, out.report_features, sample_ids);
        if (phases || i >= warmup) sync();
        if (i >= warmup) augmenter_times.push_back(now() - a0);
      }
      last_loss = loss.item<double>();
      const double f1 = now();
      ihn_toolkit::nn::clear_grads(optimizer);  // the port's zero_grad (nn/training.hpp)
      loss.backward();
      if (phases) sync();
      const double b1 = now();
      torch::nn::utils::clip_grad_value_(params, 0.1);
      if (phases) sync();
      const double c1 = now();
      optimizer.step();
      if (phases) sync();
      if (phases)
        std::printf("PHASES step %d forward %.3f backward %.3f clip %.3f adam %.3f\n", i, f1 - t0,
                    b1 - f1, c1 - b1, now() - c1);
      if (with_ihn) augmenter.step();
      sync();
      if (i >= warmup) (with_ihn ? ihn_times : times).push_back(now() - t0);
    };
    for (int i = 0; i < warmup + reps; ++i) {
      if (i == warmup) timed_start = usage();
      step(false, i);
      if (what == "ihn_share") step(true, i);
    }
    timed_end = usage();
    if (profile) ihn_bench::profile_once([&] { step(false, warmup + reps); });
  } else if (what == "beam" || what == "greedy") {
    model->eval();
    for (int i = 0; i < warmup + reps; ++i) {
      if (i == warmup) timed_start = usage();
      sync();
      const double t0 = now();
      torch::Tensor seq;
      const ihn_toolkit::nn::AutocastGuard autocast(precision, device.type());
      if (what == "beam")
        seq = model->beam_search(images, r2::BeamSearchOptions().beam_size(3).max_length(max_len))
                  .seq;
      else
        seq = model->greedy(images, r2::GreedyOptions().max_length(max_len)).seq;
      sync();
      if (i >= warmup) times.push_back(now() - t0);
      generated = seq.ne(0).sum(1).max().item<int64_t>();
    }
    timed_end = usage();
  } else {
    std::cerr << "unknown WHAT " << what << "\n";
    return 2;
  }
  if (what == "ihn_share") {
    std::printf(
        "RESULT {\"bench\": \"ihn_share\", \"cfg\": \"%s\", \"threads\": %d, "
        "\"plain_step\": %s, \"ihn_step\": %s, \"augmenter\": %s}\n",
        cfg.c_str(), threads, json_times(times).c_str(), json_times(ihn_times).c_str(),
        json_times(augmenter_times).c_str());
    return 0;
  }
  const double per_rep = 1.0 / std::max(reps, 1);
  // The CPU line is as before; a CUDA run says so.
  const std::string device_field = device.is_cuda() ? "\"device\": \"cuda\", " : "";
  std::printf(
      "RESULT {\"bench\": \"%s\", \"impl\": \"cpp\", \"arch\": \"r2gen\", \"cfg\": \"%s\", "
      "\"threads\": %d, \"precision\": \"%s\", \"malloc\": \"%s\", \"channels_last\": %s, "
      "\"warmup\": %d, "
      "\"reps\": %d, \"batch\": %ld, \"image\": %ld, \"loss\": %.6f, "
      "\"max_generated_len\": %ld, \"minflt_per_rep\": %.0f, \"cpu_s_per_rep\": %.3f, "
      "%s\"seconds\": %s}\n",
      what.c_str(), cfg.c_str(), threads, ihn_toolkit::nn::to_string(precision),
      kept_freed_memory ? "keep" : "glibc", channels_last ? "true" : "false", warmup, reps,
      static_cast<long>(batch), static_cast<long>(image), last_loss, static_cast<long>(generated),
      (timed_end.minor_faults - timed_start.minor_faults) * per_rep,
      (timed_end.cpu_seconds - timed_start.cpu_seconds) * per_rep, device_field.c_str(),
      json_times(times).c_str());
  return 0;
}
