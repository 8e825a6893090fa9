// What a training step costs in each ihn mode, R2Gen or R2GenCMN at its small config
// (Options::small: ResNet-18 on 128², d_model 256, 2 layers), batch 16, in one process with the
// steps interleaved so that machine noise hits every arm alike:
//   off          one pass, compute_loss (the model's own step)
//   paper        one pass + the library's feature-space max step (ihn::HardNegativeAugmenter at
//                its defaults, K 4, 5 ascent steps, a full bank of 2,069 reports)
//   official     the released recipe as `ihn train --ihn official` runs it: a second pass over the
//                negative pairs, two projection heads, official_total_loss (official_step<>)
//   official_1v  the same with one view per study, the release's IU X-Ray protocol (the other
//                arms feed two views)
// Every step includes zero_grad, backward, clip_grad_value_(0.1) and Adam (amsgrad).
//
//   bench_official [WARMUP REPS] [THREADS] [r2gen|cmn]
// Prints one JSON line: median/min/max/all seconds per arm and the ratios of medians to `off`.
#include <torch/torch.h>

#include <ihn/augmenter.hpp>
#include <ihn/official.hpp>

#include "nn/fused_adam.hpp"
#include "train/models.hpp"
#include "train/official_step.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

namespace tr = ihn_toolkit::train;

namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double median(std::vector<double> t) {
  std::sort(t.begin(), t.end());
  return t.size() % 2 ? t[t.size() / 2] : 0.5 * (t[t.size() / 2 - 1] + t[t.size() / 2]);
}

std::string json_times(const std::vector<double>& t) {
  std::string all;
  for (size_t i = 0; i < t.size(); ++i) all += (i ? ", " : "") + std::to_string(t[i]);
  return "{\"median\": " + std::to_string(median(t)) +
         ", \"min\": " + std::to_string(*std::min_element(t.begin(), t.end())) +
         ", \"max\": " + std::to_string(*std::max_element(t.begin(), t.end())) + ", \"all\": [" +
         all + "]}";
}

template <class Traits>
int run(int warmup, int reps, int threads) {
  using Model = typename Traits::Model;
  torch::set_num_threads(threads);
  torch::manual_seed(9233);

  const int64_t vocab = 760, batch = 16, max_len = 60, image = 128;
  const auto options = Traits::Options::small(vocab);
  Model model(options);
  model->train();
  // 16 reports of lengths 21..60 (as bench_r2gen), and a second batch for the negative pairs.
  auto make_batch = [&](uint64_t seed) {
    torch::manual_seed(seed);
    auto ids = torch::zeros({batch, max_len}, torch::kLong);
    auto masks = torch::zeros({batch, max_len});
    std::vector<int64_t> lengths = {60, 60, 22, 35, 41, 28, 36, 45, 30, 33, 38, 40, 44, 50, 25, 30};
    std::rotate(lengths.begin(), lengths.begin() + static_cast<long>(seed % 7), lengths.end());
    for (int64_t b = 0; b < batch; ++b) {
      const auto len = lengths[static_cast<size_t>(b)];
      ids[b].narrow(0, 1, len - 2).copy_(torch::randint(1, vocab + 1, {len - 2}));
      masks[b].narrow(0, 0, len).fill_(1);
    }
    return tr::StepBatch{torch::randn({batch, 2, 3, image, image}), ids, masks};
  };
  const auto positive = make_batch(1), negative = make_batch(2);
  auto one_view = [](const tr::StepBatch& b) {
    return tr::StepBatch{b.images.narrow(1, 0, 1).contiguous(), b.ids, b.masks};
  };
  const auto positive_1v = one_view(positive), negative_1v = one_view(negative);

  tr::OfficialHeads heads2(Traits::official_image_dim(options, 2),
                           Traits::official_report_dim(options), options.d_model());
  tr::OfficialHeads heads1(Traits::official_image_dim(options, 1),
                           Traits::official_report_dim(options), options.d_model());
  auto adam = [](double lr) {
    return torch::optim::AdamOptions(lr).weight_decay(5e-5).amsgrad(true);
  };
  std::vector<torch::Tensor> ve, ed;
  std::vector<torch::Tensor> clipped;
  for (auto& [name, p] : Traits::named_parameters(model)) {
    (Traits::is_visual_parameter(name) ? ve : ed).push_back(p);
    clipped.push_back(p);  // each tensor once (CMN registers its memory under two names)
  }
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(ve, std::make_unique<torch::optim::AdamOptions>(adam(5e-5)));
  groups.emplace_back(ed, std::make_unique<torch::optim::AdamOptions>(adam(1e-4)));
  groups.emplace_back(heads2->parameters(),
                      std::make_unique<torch::optim::AdamOptions>(adam(1e-4)));
  groups.emplace_back(heads1->parameters(),
                      std::make_unique<torch::optim::AdamOptions>(adam(1e-4)));
  ihn_toolkit::nn::FusedAdam optimizer(std::move(groups), adam(1e-4));
  for (auto& p : heads2->parameters()) clipped.push_back(p);
  for (auto& p : heads1->parameters()) clipped.push_back(p);

  ihn::HardNegativeAugmenter<Model> augmenter(model, ihn::Options{});
  {
    torch::NoGradGuard no_grad;
    ihn::StateDict state = augmenter.state_dict();
    state["bank.ids"] = torch::arange(2069, torch::kLong);
    state["bank.features"] =
        torch::nn::functional::normalize(torch::randn({2069, options.d_model()}),
                                         torch::nn::functional::NormalizeFuncOptions().dim(1));
    state["bank.key_hashes"] = torch::arange(2069, torch::kLong) % 700;
    augmenter.load_state_dict(state);
  }
  const ihn::OfficialLossOptions official_options;
  const double lambda = ihn::official_lambda(official_options.alpha(), 10);

  const std::vector<std::string> arms = {"off", "paper", "official", "official_1v"};
  std::map<std::string, std::vector<double>> times;
  std::map<std::string, double> losses;
  auto step = [&](const std::string& arm, int i) {
    const double t0 = now();
    torch::Tensor loss;
    if (arm == "off" || arm == "paper") {
      auto out = model->forward(positive.images, positive.ids, positive.masks);
      loss = Traits::generation_loss(out.logprobs, positive.ids, positive.masks);
      if (arm == "paper") {
        std::vector<int64_t> sample_ids;
        for (int64_t b = 0; b < batch; ++b) sample_ids.push_back((i * batch + b * 131) % 2069);
        loss = loss + augmenter.loss(out.image_features, out.report_features, sample_ids);
      }
    } else if (arm == "official") {
      loss = tr::official_step<Traits>(model, heads2, positive, negative, lambda, official_options)
                 .loss;
    } else {
      loss = tr::official_step<Traits>(model, heads1, positive_1v, negative_1v, lambda,
                                       official_options)
                 .loss;
    }
    losses[arm] = loss.item<double>();
    ihn_toolkit::nn::clear_grads(optimizer);
    loss.backward();
    torch::nn::utils::clip_grad_value_(clipped, 0.1);
    optimizer.step();
    if (arm == "paper") augmenter.step();
    if (i >= warmup) times[arm].push_back(now() - t0);
  };
  for (int i = 0; i < warmup + reps; ++i)
    for (const auto& arm : arms) step(arm, i);

  std::string out = "RESULT {\"bench\": \"official_step\", \"model\": \"" +
                    std::string(Traits::name) +
                    "\", \"cfg\": \"small\", \"threads\": " + std::to_string(threads) +
                    ", \"batch\": 16, \"image\": 128, \"reps\": " + std::to_string(reps);
  for (const auto& arm : arms) out += ", \"" + arm + "\": " + json_times(times[arm]);
  out += ", \"ratio_to_off\": {";
  for (size_t a = 1; a < arms.size(); ++a)
    out += (a > 1 ? ", \"" : "\"") + arms[a] +
           "\": " + std::to_string(median(times[arms[a]]) / median(times["off"]));
  out += "}}";
  std::printf("%s\n", out.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const int warmup = argc > 1 ? std::stoi(argv[1]) : 2;
  const int reps = argc > 2 ? std::stoi(argv[2]) : 8;
  const int threads = argc > 3 ? std::stoi(argv[3]) : 2;
  const std::string model = argc > 4 ? argv[4] : "r2gen";
  return tr::dispatch_model(
      model, [&](auto traits) { return run<decltype(traits)>(warmup, reps, threads); });
}
