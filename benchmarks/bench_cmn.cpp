// R2GenCMN port timings, the counterpart of shared/baselines/bench_train.py and bench_decode.py
// for arch cmn: one training step as the official R2GenCMN trainer's loop body (forward,
// compute_loss, zero_grad, backward, Adam amsgrad with betas (0.9, 0.98), eps 1e-9 and the two
// learning-rate groups; no gradient clipping, unlike R2Gen) and one beam-3 / greedy decode of a
// batch of 16 IU X-Ray studies (two views), random weights. Also the peak resident memory of
// training steps, so the index-gather top-k and upstream's expanded form (TOPK naive) can be
// compared process against process.
//
//   bench_cmn CFG WHAT [WARMUP REPS] [THREADS] [MALLOC] [TOPK] [LAYOUT]
//     CFG    small (ResNet-18 128², d_model 256, 2 layers, top-16 of 512 slots) |
//            paper (ResNet-101 224², 512, 3 layers, top-32 of 2048 slots)
//     WHAT   train | beam | greedy
//     MALLOC glibc (default: glibc's defaults, as the Python baseline) | keep (mallopt: never
//            mmap, never trim, as the baseline's MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_ run)
//     TOPK   gather (default, the port) | naive (upstream's expanded gather)
//     LAYOUT nhwc (default, as `ihn train` on the CPU: the ResNet channels-last) | nchw
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

#include "cmn.hpp"
#include "nn/fused_adam.hpp"

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
                 "[glibc|keep] [gather|naive]\n";
    return 2;
  }
  const std::string cfg = argv[1], what = argv[2];
  const int warmup = argc > 3 ? std::stoi(argv[3]) : 2;
  const int reps = argc > 4 ? std::stoi(argv[4]) : 5;
  const int threads = argc > 5 ? std::stoi(argv[5]) : 2;
  const std::string malloc_mode = argc > 6 ? argv[6] : "glibc";
  const std::string topk_mode = argc > 7 ? argv[7] : "gather";
  const std::string layout = argc > 8 ? argv[8] : "nhwc";
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

  auto images = torch::randn({batch, 2, 3, image, image});
  // 16 reports of lengths 21..60 (sum 617 as in the baseline batch), BOS 0 ... EOS 0.
  auto ids = torch::zeros({batch, max_len}, torch::kLong);
  auto masks = torch::zeros({batch, max_len});
  std::vector<int64_t> lengths = {60, 60, 22, 35, 41, 28, 36, 45, 30, 33, 38, 40, 44, 50, 25, 30};
  for (int64_t b = 0; b < batch; ++b) {
    const auto len = lengths[b];
    ids[b].narrow(0, 1, len - 2).copy_(torch::randint(1, vocab + 1, {len - 2}));
    masks[b].narrow(0, 0, len).fill_(1);
  }
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
      const double t0 = now(), c0 = cpu_seconds();
      auto out = model->forward(images, ids, masks);
      auto loss = cmn::compute_loss(out.logprobs, ids, masks);
      const double loss_value = loss.item<double>();
      if (i == 0) {
        first_loss = loss_value;
        first_logprob_sum = out.logprobs.detach().to(torch::kDouble).sum().item<double>();
      }
      ihn_toolkit::nn::clear_grads(optimizer);  // the port's zero_grad (nn/training.hpp)
      loss.backward();
      optimizer.step();
      if (i >= warmup) {
        times.push_back(now() - t0);
        timed_cpu += cpu_seconds() - c0;
      }
    }
  } else if (what == "beam" || what == "greedy") {
    model->eval();
    for (int i = 0; i < warmup + reps; ++i) {
      const double t0 = now(), c0 = cpu_seconds();
      torch::Tensor seq;
      if (what == "beam")
        seq = model->beam_search(images, cmn::BeamSearchOptions().beam_size(3).max_length(max_len))
                  .seq;
      else
        seq = model->greedy(images, cmn::GreedyOptions().max_length(max_len)).seq;
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
  std::printf(
      "RESULT {\"bench\": \"%s\", \"impl\": \"cpp\", \"arch\": \"cmn\", \"cfg\": \"%s\", "
      "\"topk\": \"%s\", \"layout\": \"%s\", \"threads\": %d, \"malloc\": \"%s\", \"warmup\": %d, "
      "\"reps\": %d, "
      "\"batch\": %ld, \"image\": %ld, \"first_loss\": %.7f, \"first_logprob_sum\": %.3f, "
      "\"max_generated_len\": %ld, \"maxrss_after_build_mib\": %.1f, \"maxrss_mib\": %.1f, "
      "\"cpu_seconds_per_rep\": %.3f, \"seconds\": %s}\n",
      what.c_str(), cfg.c_str(), topk_mode.c_str(), layout.c_str(), threads, malloc_mode.c_str(),
      warmup, reps, static_cast<long>(batch), static_cast<long>(image), first_loss,
      first_logprob_sum, static_cast<long>(generated), rss_built, maxrss_mib(),
      reps > 0 ? timed_cpu / reps : 0.0, json_times(times).c_str());
  return 0;
}
