// Cost of ihn's augmenter: one HardNegativeAugmenter::loss (bank refresh, closest peers, the
// max step, the min-step term) plus its backward, at the paper's sizes (B 16, D 512, K 4,
// a bank of 2,069 = IU X-Ray's training set, 5 ascent steps), and how it scales with each.
// Threads are set explicitly (default 2, the machines here; first argument overrides).
//   build/bin/bench_augmenter [threads] [repeats] [mimic] [cpu|cuda]
// `mimic`: a bank and negatives store of MIMIC-CXR's 270,000 training reports, float32
// against compact storage, with the memory each holds. `cuda`: the features, the bank and the
// negatives on the GPU (as in a run with --device cuda), the device synchronised before every
// clock read; the RSS column is then the host's only.
#include <ihn/ihn.hpp>

#include "bench_device.hpp"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

namespace {

struct NoModel {};

struct Config {
  int64_t batch = 16, dim = 512, k = 4, bank = 2069, steps = 5;
  ihn::Storage storage = ihn::Storage::float32;
  bool full_store = false;  // every id visited once: the negatives store is full too
  torch::Device device = torch::kCPU;
};

struct Timing {
  double ms = 0;             // median loss() + backward
  double memory_mb = 0;      // the augmenter's own tensors (memory_bytes)
  double rss_growth_mb = 0;  // process RSS after the timed calls minus before the augmenter
};

long rss_kb() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::atol(line.c_str() + 6);
  return 0;
}

// Median milliseconds of one loss()+backward after the bank is full.
Timing time_config(const Config& c, int repeats) {
  const long rss_before = rss_kb();
  NoModel model;
  ihn::HardNegativeAugmenter<NoModel> augmenter(
      model, ihn::Options{}.negatives_per_sample(c.k).ascent_steps(c.steps).storage(c.storage));
  auto gen = at::detail::createCPUGenerator(7);
  std::vector<std::string> keys;
  for (int64_t i = 0; i < c.bank; ++i) keys.push_back(std::to_string(i % 700));
  {  // a full bank, as after the first epoch
    ihn::StateDict state = augmenter.state_dict();
    std::vector<int64_t> hashes;
    for (const auto& key : keys) hashes.push_back(ihn::detail::fnv1a64(key));
    state["bank.ids"] = at::arange(c.bank, at::kLong);
    state["bank.features"] = ihn::l2_normalize(at::randn({c.bank, c.dim}, gen, at::kFloat));
    state["bank.key_hashes"] = at::tensor(hashes, at::kLong);
    if (c.full_store) {
      state["negatives.values"] = ihn::l2_normalize(at::randn({c.bank, c.k, c.dim}, gen));
      state["negatives.peer_ids"] = at::randint(c.bank, {c.bank, c.k}, gen, at::kLong);
    }
    augmenter.load_state_dict(state, c.device);
  }
  std::vector<double> ms;
  for (int r = 0; r < repeats; ++r) {
    std::vector<int64_t> ids(static_cast<size_t>(c.batch));
    std::vector<std::string> batch_keys;
    for (int64_t i = 0; i < c.batch; ++i) {
      ids[static_cast<size_t>(i)] = (r * c.batch + i * 37) % c.bank;
      batch_keys.push_back(keys[static_cast<size_t>(ids[static_cast<size_t>(i)])]);
    }
    auto images = at::randn({c.batch, c.dim}, gen, at::kFloat).to(c.device).requires_grad_(true);
    auto reports = at::randn({c.batch, c.dim}, gen, at::kFloat).to(c.device).requires_grad_(true);
    ihn_bench::synchronize(c.device);
    const auto t0 = std::chrono::steady_clock::now();
    auto loss = augmenter.loss(images, reports, ids, batch_keys);
    loss.backward();
    augmenter.step();
    ihn_bench::synchronize(c.device);
    const auto t1 = std::chrono::steady_clock::now();
    ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
  }
  std::nth_element(ms.begin(), ms.begin() + static_cast<long>(ms.size() / 2), ms.end());
  Timing out;
  out.ms = ms[ms.size() / 2];
  out.memory_mb = static_cast<double>(augmenter.memory_bytes()) / 1e6;
  out.rss_growth_mb = static_cast<double>(rss_kb() - rss_before) / 1e3;
  return out;
}

// MIMIC-CXR's training set (about 270,000 reports) in the bank and in the negatives store,
// float32 against compact storage, next to the IU X-Ray-sized bank of the same run.
int mimic_scale(int repeats, torch::Device device) {
  Config iu;
  iu.full_store = true;
  iu.device = device;
  const Timing base = time_config(iu, repeats);
  std::printf("%-40s %9.3f ms  %8.1f MB held\n", "IU X-Ray bank (2,069), float32", base.ms,
              base.memory_mb);
  for (auto storage : {ihn::Storage::float32, ihn::Storage::compact}) {
    Config c;
    c.bank = 270000;
    c.full_store = true;
    c.storage = storage;
    c.device = device;
    const Timing t = time_config(c, repeats);
    const std::string label = std::string("MIMIC-CXR bank (270,000), ") + ihn::to_string(storage);
    std::printf("%-40s %9.3f ms  %8.1f MB held  (RSS +%.0f MB)\n", label.c_str(), t.ms, t.memory_mb,
                t.rss_growth_mb);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 2;
  const int repeats = argc > 2 ? std::atoi(argv[2]) : 30;
  bool mimic = false;
  torch::Device device = torch::kCPU;
  for (int a = 3; a < argc; ++a) {
    const std::string word = argv[a];
    try {
      if (word == "mimic")
        mimic = true;
      else
        device = ihn_bench::parse_device(word);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "bench_augmenter: %s\n", e.what());
      return 2;
    }
  }
  at::set_num_threads(threads);
  std::printf("ihn augmenter: loss() + backward, median of %d, %d intra-op threads, %s\n", repeats,
              threads, device.str().c_str());
  if (mimic) return mimic_scale(repeats, device);
  Config paper;
  paper.device = device;
  const double base = time_config(paper, repeats).ms;
  std::printf("%-34s %9.3f ms  (1.00x)\n", "paper: B16 D512 K4 bank2069 steps5", base);
  auto row = [&](const char* label, Config c) {
    const double t = time_config(c, repeats).ms;
    std::printf("%-34s %9.3f ms  (%.2fx)\n", label, t, t / base);
  };
  Config c;
  c = paper;
  c.batch = 64;
  row("B 64", c);
  c = paper;
  c.k = 16;
  row("K 16", c);
  c = paper;
  c.k = 1;
  row("K 1", c);
  c = paper;
  c.dim = 2048;
  row("D 2048", c);
  c = paper;
  c.bank = 50000;
  row("bank 50,000", c);
  c = paper;
  c.steps = 0;
  row("0 ascent steps (peers only)", c);
  c = paper;
  c.steps = 20;
  row("20 ascent steps", c);
  return 0;
}
