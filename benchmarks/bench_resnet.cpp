// The visual extractor alone: ResNet forward + backward in training mode over the two views of a
// batch of 16 IU X-Ray studies (nn::multiview_features, per-view batch statistics), random
// weights, as in an R2Gen / R2GenCMN training step. This is the part of the step that runs the
// same oneDNN kernels as the official code; the benchmark compares the two memory layouts
// (docs/performance.md, "Channels-last").
//
//   bench_resnet LAYOUT [THREADS] [STEPS] [DEPTH] [SIZE] [profile]
//     LAYOUT  nhwc (the ports' default on the CPU) | nchw
//     THREADS intra-op threads (2); STEPS timed steps after one warm-up (3)
//     DEPTH   101 (paper) | 18 (small); SIZE 224 | 128
//     profile one more step under the autograd profiler: self CPU time per op
// Prints one RESULT line (seconds per step: median and all).
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "bench_profile.hpp"
#include "nn/allocator.hpp"
#include "nn/multiview.hpp"
#include "nn/resnet.hpp"

namespace enn = ihn_examples::nn;

int main(int argc, char** argv) {
  enn::keep_freed_memory();
  if (argc < 2) {
    std::cerr << "usage: bench_resnet nhwc|nchw [THREADS] [STEPS] [DEPTH] [SIZE] [profile]\n";
    return 2;
  }
  const std::string layout = argv[1];
  if (layout != "nhwc" && layout != "nchw") {
    std::cerr << "bench_resnet: LAYOUT must be nhwc or nchw, got " << layout << "\n";
    return 2;
  }
  const int threads = argc > 2 ? std::stoi(argv[2]) : 2;
  const int steps = argc > 3 ? std::stoi(argv[3]) : 3;
  const int64_t depth = argc > 4 ? std::stoi(argv[4]) : 101;
  const int64_t size = argc > 5 ? std::stoi(argv[5]) : 224;
  const bool profile = argc > 6 && std::string(argv[6]) == "profile";
  torch::set_num_threads(threads);
  torch::manual_seed(9233);

  enn::VisualExtractor extractor(enn::VisualExtractorOptions().depth(depth));
  extractor->train();
  if (layout == "nhwc") enn::to_channels_last(*extractor);
  const auto images = torch::randn({16, 2, 3, size, size});
  auto step = [&] {
    for (auto& p : extractor->parameters()) p.mutable_grad().reset();
    auto [att_feats, fc_feats] = enn::multiview_features(*extractor, images, "bench_resnet");
    (att_feats.pow(2).sum() + fc_feats.sum()).backward();
  };
  step();  // warm-up
  std::vector<double> times;
  for (int i = 0; i < steps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    step();
    times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  if (profile) ihn_bench::profile_once(step);
  auto sorted = times;
  std::sort(sorted.begin(), sorted.end());
  std::string all;
  for (size_t i = 0; i < times.size(); ++i) all += (i ? ", " : "") + std::to_string(times[i]);
  std::printf(
      "RESULT {\"bench\": \"resnet\", \"layout\": \"%s\", \"depth\": %ld, \"image\": %ld, "
      "\"threads\": %d, \"median\": %f, \"all\": [%s]}\n",
      layout.c_str(), static_cast<long>(depth), static_cast<long>(size), threads,
      sorted[sorted.size() / 2], all.c_str());
  return 0;
}
