// The visual extractor alone: ResNet forward + backward in training mode over the two views of a
// batch of 16 IU X-Ray studies (nn::multiview_features, per-view batch statistics), random
// weights, as in an R2Gen / R2GenCMN training step. This is the part of the step that runs the
// same oneDNN kernels as the official code; the benchmark compares the two memory layouts
// (docs/performance.md, "Channels-last").
//
//   bench_resnet LAYOUT [THREADS] [STEPS] [DEPTH] [SIZE] [profile] [convs]
//     LAYOUT  nhwc (the ports' default on the CPU) | nchw
//     THREADS intra-op threads (2); STEPS timed steps after one warm-up (3)
//     DEPTH   101 (paper) | 18 (small); SIZE 224 | 128
//     profile one more step under the autograd profiler: self CPU time per op
//     convs   the same convolutions, pooling and residual adds without the batch norms and
//             ReLUs: the difference to a full run is what those cost (docs/performance.md)
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

namespace enn = ihn_toolkit::nn;

int main(int argc, char** argv) {
  enn::keep_freed_memory();
  if (argc < 2) {
    std::cerr
        << "usage: bench_resnet nhwc|nchw [THREADS] [STEPS] [DEPTH] [SIZE] [profile] [convs]\n";
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
  bool profile = false, convs_only = false;
  for (int i = 6; i < argc; ++i) {
    profile = profile || std::string(argv[i]) == "profile";
    convs_only = convs_only || std::string(argv[i]) == "convs";
  }
  torch::set_num_threads(threads);
  torch::manual_seed(9233);

  enn::VisualExtractor extractor(enn::VisualExtractorOptions().depth(depth));
  extractor->train();
  if (layout == "nhwc") enn::to_channels_last(*extractor);
  const auto images = torch::randn({16, 2, 3, size, size});
  // The trunk's convolutions, max pool and residual adds alone (children 0, 3 and the stages).
  auto convs = [&](const torch::Tensor& view) {
    auto& trunk = *extractor->model;
    auto* stem = trunk.ptr(0)->as<torch::nn::Conv2dImpl>();
    auto x = stem->forward(view.contiguous(stem->weight.suggest_memory_format()));
    x = trunk.ptr(3)->as<torch::nn::MaxPool2dImpl>()->forward(x);
    for (size_t s = 4; s < trunk.size(); ++s) {
      for (auto& child : trunk.ptr(s)->children()) {
        auto& b = *child->as<enn::ResNetBlockImpl>();
        auto out = b.conv2(b.conv1(x));
        if (b.bottleneck) out = b.conv3(out);
        x = out +
            (b.downsample ? b.downsample->ptr(0)->as<torch::nn::Conv2dImpl>()->forward(x) : x);
      }
    }
    return x;
  };
  auto step = [&] {
    for (auto& p : extractor->parameters()) p.mutable_grad().reset();
    if (convs_only) {
      torch::Tensor total;
      for (int64_t v = 0; v < images.size(1); ++v) {
        auto map = convs(images.select(1, v));
        total = v == 0 ? map.pow(2).mean() : total + map.pow(2).mean();
      }
      total.backward();
      return;
    }
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
      "\"threads\": %d, \"parts\": \"%s\", \"median\": %f, \"all\": [%s]}\n",
      layout.c_str(), static_cast<long>(depth), static_cast<long>(size), threads,
      convs_only ? "convs" : "all", sorted[sorted.size() / 2], all.c_str());
  return 0;
}
