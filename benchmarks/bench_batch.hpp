// The batch the baseline scripts time (shared/baselines: bench_train.py, bench_decode.py), for
// bench_r2gen and bench_cmn: 16 IU X-Ray studies of two views at `image`², and reports of
// lengths 21..60 (617 tokens, BOS 0 ... EOS 0) with random ids. The cost does not depend on
// the ids, so no tokenizer is needed. Drawn from torch's generator in a fixed order (images,
// then each report's ids), then moved to `device`.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <vector>

namespace ihn_bench {

struct BaselineBatch {
  torch::Tensor images;  ///< (16, 2, 3, image, image)
  torch::Tensor ids;     ///< (16, 60) int64
  torch::Tensor masks;   ///< (16, 60) float
};

inline BaselineBatch baseline_batch(int64_t vocab, int64_t image, const torch::Device& device) {
  const int64_t batch = 16, max_len = 60;
  auto images = torch::randn({batch, 2, 3, image, image});
  auto ids = torch::zeros({batch, max_len}, torch::kLong);
  auto masks = torch::zeros({batch, max_len});
  const std::vector<int64_t> lengths = {60, 60, 22, 35, 41, 28, 36, 45,
                                        30, 33, 38, 40, 44, 50, 25, 30};
  for (int64_t b = 0; b < batch; ++b) {
    const auto len = lengths[static_cast<size_t>(b)];
    ids[b].narrow(0, 1, len - 2).copy_(torch::randint(1, vocab + 1, {len - 2}));
    masks[b].narrow(0, 0, len).fill_(1);
  }
  return {images.to(device), ids.to(device), masks.to(device)};
}

}  // namespace ihn_bench
