// R2GenCMN port timings, the counterpart of shared/baselines/bench_train.py and bench_decode.py
// for arch cmn: one training step as the official R2GenCMN trainer's loop body (forward,
// compute_loss, zero_grad, backward, Adam amsgrad with betas (0.9, 0.98), eps 1e-9 and the two
// learning-rate groups; no gradient clipping, unlike R2Gen) and one beam-3 / greedy decode of a
// batch of 16 IU X-Ray studies (two views), random weights. Also the peak resident memory of
// training steps, so the index-gather top-k and upstream's expanded form (TOPK naive) can be
// compared process against process.
//
//   bench_cmn CFG WHAT [WARMUP REPS] [THREADS] [MALLOC] [TOPK] [LAYOUT] [fp32|bf16] [cpu|cuda]
//     CFG    small (ResNet-18 128², d_model 256, 2 layers, top-16 of 512 slots) |
//            paper (ResNet-101 224², 512, 3 layers, top-32 of 2048 slots)
//     WHAT   train | beam | greedy
//     MALLOC glibc (default: glibc's defaults, as the Python baseline) | keep (mallopt: never
//            mmap, never trim, as the baseline's MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_ run)
//     TOPK   gather (default, the port) | naive (upstream's expanded gather)
//     LAYOUT nhwc (default on the CPU, as `ihn train` there: the ResNet channels-last) | nchw
//            (the default on CUDA, as `ihn train --device cuda`)
//     bf16   the forward pass and loss (training) or the whole decode under bf16 autocast, as
//            `ihn train --precision bf16` (nn/precision.hpp); fp32 (default) as before
//     cuda   model, inputs and optimiser on the GPU, the device synchronised before every clock
//            read (bench_device.hpp); an error when CUDA is not available. cpu is the default.
//     The precision and device words may stand anywhere after THREADS; the line printed for an
//     fp32 CPU run is as before, others add "precision" and "device" fields.
// Prints one JSON line (median and all repetitions in seconds; peak RSS in MiB from
// getrusage after building the model and after the timed work; CPU seconds (user + system) per
// timed repetition; the first step's loss and a
// checksum of its log-probs, equal for gather and naive up to float32 rounding).
#include <malloc.h>
#include <sys/resource.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "bench_batch.hpp"
#include "bench_device.hpp"
#include "cmn.hpp"
#include "nn/fused_adam.hpp"
#include "nn/precision.hpp"

namespace cmn = ihn_examples::cmn;

namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

/// User + system CPU seconds of this process so far. On a shared machine the wall time of a
/// 2-thread run depends on the other jobs; the CPU time much less (both are reported).
double cpu_seconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         1e-6 * static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

double maxrss_mib() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_maxrss) / 1024.0;  // Linux: KiB
}

std::string json_times(const std::vector<double>& t) {
  if (t.empty()) return "null";
  auto s = t;
  std::sort(s.begin(), s.end());
  const double median =
      s.size() % 2 ? s[s.size() / 2] : 0.5 * (s[s.size() / 2 - 1] + s[s.size() / 2]);
  std::string all;
  for (size_t i = 0; i < t.size(); ++i) all += (i ? ", " : "") + std::to_string(t[i]);
  return "{\"median\": " + std::to_string(median) + ", \"min\": " + std::to_string(s.front()) +
         ", \"max\": " + std::to_string(s.back()) + ", \"all\": [" + all + "]}";
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: bench_cmn small|paper train|beam|greedy [WARMUP REPS] [THREADS] "
                 "[glibc|keep] [gather|naive] [nhwc|nchw] [fp32|bf16] [cpu|cuda]\n";
    return 2;
  }
  const std::string cfg = argv[1], what = argv[2];
  const int warmup = argc > 3 ? std::stoi(argv[3]) : 2;
  const int reps = argc > 4 ? std::stoi(argv[4]) : 5;
  const int threads = argc > 5 ? std::stoi(argv[5]) : 2;
  // After THREADS: MALLOC TOPK LAYOUT in this order, with the precision and device words
  // anywhere among them.
  std::vector<std::string> positional;
  std::string device_name = "cpu";
  auto precision = ihn_toolkit::nn::Precision::fp32;
  for (int a = 6; a < argc; ++a) {
    const std::string word = argv[a];
    if (ihn_bench::is_device_flag(word))
      device_name = word;
    else if (word == "fp32" || word == "bf16")
      precision = ihn_toolkit::nn::parse_precision(word);
    else
      positional.push_back(word);
  }
  if (positional.size() > 3) {
    std::cerr << "bench_cmn: unexpected argument " << positional[3] << "\n";
    return 2;
  }
  torch::Device device(torch::kCPU);
  try {
    device = ihn_bench::parse_device(device_name);
  } catch (const std::exception& e) {
    std::cerr << "bench_cmn: " << e.what() << "\n";
    return 2;
  }
  const auto sync = [&] { ihn_bench::synchronize(device); };
  const std::string malloc_mode = positional.size() > 0 ? positional[0] : "glibc";
  const std::string topk_mode = positional.size() > 1 ? positional[1] : "gather";
  const std::string layout = positional.size() > 2 ? positional[2]
                             : device.is_cuda()    ? "nchw"  // as `ihn train --device cuda`
                                                   : "nhwc";
  if (layout != "nhwc" && layout != "nchw") {
    std::cerr << "bench_cmn: LAYOUT must be nhwc or nchw, got " << layout << "\n";
    return 2;
  }
  if (cfg != "small" && cfg != "paper") {
    std::cerr << "bench_cmn: CFG must be small or paper, got " << cfg << "\n";
    return 2;
  }
  if (topk_mode != "gather" && topk_mode != "naive") {
    std::cerr << "bench_cmn: TOPK must be gather or naive, got " << topk_mode << "\n";
    return 2;
  }
  if (malloc_mode == "keep") {
    mallopt(M_MMAP_MAX, 0);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
  }
  torch::set_num_threads(threads);
  torch::manual_seed(9233);

  const int64_t vocab = 760, batch = 16, max_len = 60;
  auto options = cfg == "paper" ? cmn::CMNOptions(vocab) : cmn::CMNOptions::small(vocab);
  options.naive_topk(topk_mode == "naive");
  const int64_t image = cfg == "paper" ? 224 : 128;
  cmn::CMNModel model(options);
  if (layout == "nhwc") ihn_toolkit::nn::to_channels_last(*model->visual_extractor);
  model->to(device);  // before the optimiser is built: its parameters are the device's

  const auto input = ihn_bench::baseline_batch(vocab, image, device);
  const auto &images = input.images, &ids = input.ids, &masks = input.masks;
  const double rss_built = maxrss_mib();

  std::vector<double> times;
  double timed_cpu = 0;  // CPU seconds of the timed repetitions
  int64_t generated = 0;
  double first_loss = 0, first_logprob_sum = 0;
  if (what == "train") {
    model->train();
    // Official build_optimizer (R2GenCMN): Adam, amsgrad, weight decay 5e-5, betas (0.9, 0.98),
    // eps 1e-9, lr_ve 5e-5 / lr_ed 7e-4. The shared memory attention goes in once.
    std::vector<torch::Tensor> ve = model->visual_extractor->parameters();
    std::vector<torch::Tensor> ed = ihn_toolkit::nn::unique_parameters(*model->encoder_decoder);
    auto adam = [](double lr) {
      return torch::optim::AdamOptions(lr)
          .betas({0.9, 0.98})
          .eps(1e-9)
          .weight_decay(5e-5)
          .amsgrad(true);
    };
    std::vector<torch::optim::OptimizerParamGroup> groups;
    groups.emplace_back(ve, std::make_unique<torch::optim::AdamOptions>(adam(5e-5)));
    groups.emplace_back(ed, std::make_unique<torch::optim::AdamOptions>(adam(7e-4)));
    ihn_toolkit::nn::FusedAdam optimizer(std::move(groups), adam(7e-4));  // the port's Adam
    for (int i = 0; i < warmup + reps; ++i) {
      sync();
      const double t0 = now(), c0 = cpu_seconds();
      auto [out, loss] = [&] {
        const ihn_toolkit::nn::AutocastGuard autocast(precision, device.type());
        auto o = model->forward(images, ids, masks);
        auto l = cmn::compute_loss(o.logprobs, ids, masks);
        return std::make_pair(o, l);
      }();
      const double loss_value = loss.item<double>();
      if (i == 0) {
        first_loss = loss_value;
        first_logprob_sum = out.logprobs.detach().to(torch::kDouble).sum().item<double>();
      }
      ihn_toolkit::nn::clear_grads(optimizer);  // the port's zero_grad (nn/training.hpp)
      loss.backward();
      optimizer.step();
      sync();
      if (i >= warmup) {
        times.push_back(now() - t0);
        timed_cpu += cpu_seconds() - c0;
      }
    }
  } else if (what == "beam" || what == "greedy") {
    model->eval();
    for (int i = 0; i < warmup + reps; ++i) {
      sync();
      const double t0 = now(), c0 = cpu_seconds();
      torch::Tensor seq;
      const ihn_toolkit::nn::AutocastGuard autocast(precision, device.type());
      if (what == "beam")
        seq = model->beam_search(images, cmn::BeamSearchOptions().beam_size(3).max_length(max_len))
                  .seq;
      else
        seq = model->greedy(images, cmn::GreedyOptions().max_length(max_len)).seq;
      sync();
      if (i >= warmup) {
        times.push_back(now() - t0);
        timed_cpu += cpu_seconds() - c0;
      }
      generated = seq.ne(0).sum(1).max().item<int64_t>();
    }
  } else {
    std::cerr << "bench_cmn: unknown WHAT " << what << "\n";
    return 2;
  }
  // The line of an fp32 CPU run is as before; others name their precision and device.
  std::string extra_fields;
  if (precision != ihn_toolkit::nn::Precision::fp32)
    extra_fields +=
        std::string("\"precision\": \"") + ihn_toolkit::nn::to_string(precision) + "\", ";
  if (device.is_cuda()) extra_fields += "\"device\": \"cuda\", ";
  std::printf(
      "RESULT {\"bench\": \"%s\", \"impl\": \"cpp\", \"arch\": \"cmn\", \"cfg\": \"%s\", "
      "\"topk\": \"%s\", \"layout\": \"%s\", \"threads\": %d, \"malloc\": \"%s\", \"warmup\": %d, "
      "\"reps\": %d, "
      "\"batch\": %ld, \"image\": %ld, \"first_loss\": %.7f, \"first_logprob_sum\": %.3f, "
      "\"max_generated_len\": %ld, \"maxrss_after_build_mib\": %.1f, \"maxrss_mib\": %.1f, "
      "\"cpu_seconds_per_rep\": %.3f, %s\"seconds\": %s}\n",
      what.c_str(), cfg.c_str(), topk_mode.c_str(), layout.c_str(), threads, malloc_mode.c_str(),
      warmup, reps, static_cast<long>(batch), static_cast<long>(image), first_loss,
      first_logprob_sum, static_cast<long>(generated), rss_built, maxrss_mib(),
      reps > 0 ? timed_cpu / reps : 0.0, extra_fields.c_str(), json_times(times).c_str());
  return 0;
}
