// The core library: alignment loss, schedules, peers, the max step, the augmenter and its
// state, the callback, encoder traits, and the official-compatible mode (fixture ithn_loss).
#include <caffe2/serialize/inline_container.h>  // writes zips for the reader tests

#include "test_common.hpp"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iterator>
#include <set>

namespace {

at::Tensor random_features(int64_t rows, int64_t dim, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  return at::randn({rows, dim}, gen, at::TensorOptions().dtype(at::kFloat));
}

c10::Dict<c10::IValue, c10::IValue> load_pt(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in.good());
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return torch::pickle_load(bytes).toGenericDict();
}

// Brute-force per-sample InfoNCE in double, straight from the definition in docs/method.md.
std::vector<double> reference_info_nce(const at::Tensor& images, const at::Tensor& reports,
                                       const at::Tensor& negatives, double temperature) {
  auto z = ihn::l2_normalize(images.to(at::kDouble));
  auto u = ihn::l2_normalize(reports.to(at::kDouble));
  auto n = negatives.defined() ? ihn::l2_normalize(negatives.to(at::kDouble)) : at::Tensor();
  const int64_t batch = z.size(0);
  std::vector<double> out;
  for (int64_t i = 0; i < batch; ++i) {
    std::vector<double> row, col;
    for (int64_t j = 0; j < batch; ++j) {
      row.push_back(z[i].dot(u[j]).item<double>() / temperature);
      col.push_back(u[i].dot(z[j]).item<double>() / temperature);
    }
    if (n.defined())
      for (int64_t k = 0; k < n.size(1); ++k)
        row.push_back(z[i].dot(n[i][k]).item<double>() / temperature);
    auto lse = [](const std::vector<double>& v) {
      double m = *std::max_element(v.begin(), v.end()), s = 0;
      for (double x : v) s += std::exp(x - m);
      return m + std::log(s);
    };
    const double positive = z[i].dot(u[i]).item<double>() / temperature;
    out.push_back(0.5 * ((lse(row) - positive) + (lse(col) - positive)));
  }
  return out;
}

// A user's toy model: the features come from its own members (the encoder_traits default).
struct ToyBatch {
  at::Tensor images, reports;
};
struct ToyModelImpl : torch::nn::Module {
  ToyModelImpl()
      : image_encoder(register_module("image_encoder", torch::nn::Linear(12, 8))),
        report_encoder(register_module("report_encoder", torch::nn::Linear(10, 8))) {}
  at::Tensor image_features(const ToyBatch& b) { return image_encoder(b.images); }
  at::Tensor report_features(const ToyBatch& b) { return report_encoder(b.reports); }
  torch::nn::Linear image_encoder, report_encoder;
};
TORCH_MODULE(ToyModel);

struct NoFeatures {};

}  // namespace

TEST_CASE("version macros agree with the version string", "[version]") {
  const std::string expected = std::to_string(IHN_VERSION_MAJOR) + "." +
                               std::to_string(IHN_VERSION_MINOR) + "." +
                               std::to_string(IHN_VERSION_PATCH);
  CHECK(expected == ihn::version_string);
}

TEST_CASE("encoder_traits finds members through objects and module holders", "[traits]") {
  STATIC_REQUIRE(ihn::has_encoder_features_v<ToyModel, ToyBatch>);
  STATIC_REQUIRE(ihn::has_encoder_features_v<ToyModelImpl, ToyBatch>);
  STATIC_REQUIRE_FALSE(ihn::has_encoder_features_v<NoFeatures, ToyBatch>);
  ToyModel model;
  ToyBatch batch{random_features(3, 12, 1), random_features(3, 10, 2)};
  auto via_traits = ihn::encoder_traits<ToyModel>::image_features(model, batch);
  CHECK(torch::equal(via_traits, model->image_encoder(batch.images)));
  CHECK(ihn::encoder_traits<ToyModel>::report_features(model, batch).sizes() ==
        at::IntArrayRef({3, 8}));
}

TEST_CASE("masked_mean ignores padding", "[features]") {
  auto hidden = random_features(2 * 5, 4, 3).view({2, 5, 4});
  auto mask = torch::tensor({{1, 1, 1, 0, 0}, {1, 1, 1, 1, 1}}, at::kLong);
  auto mean = ihn::masked_mean(hidden, mask);
  CHECK(torch::allclose(mean[0], hidden[0].narrow(0, 0, 3).mean(0)));
  CHECK(torch::allclose(mean[1], hidden[1].mean(0)));
  auto changed = hidden.clone();
  changed[0].narrow(0, 3, 2).fill_(1e6);  // padding values must not matter
  CHECK(torch::equal(ihn::masked_mean(changed, mask), mean));
  auto empty = ihn::masked_mean(hidden, torch::zeros({2, 5}));
  CHECK(torch::equal(empty, torch::zeros({2, 4})));
  CHECK_THROWS_WITH(ihn::masked_mean(hidden, torch::ones({2, 4})),
                    Catch::Contains("does not match hidden states"));
}

TEST_CASE("hardness schedules", "[schedule]") {
  ihn::HardnessSchedule exponential = ihn::ExponentialHardness{0.01};
  CHECK(ihn::schedule_lambda(exponential, 1, 0) == Approx(std::exp(-0.01)).epsilon(1e-15));
  CHECK(ihn::schedule_hardness(exponential, 100, 0) == Approx(1 - std::exp(-1.0)));
  ihn::HardnessSchedule linear = ihn::LinearHardness{10, ihn::ScheduleUnit::step};
  CHECK(ihn::schedule_hardness(linear, 1, 5) == Approx(0.5));
  CHECK(ihn::schedule_hardness(linear, 1, 50) == 1.0);
  ihn::HardnessSchedule cosine = ihn::CosineHardness{10};
  double previous = -1;
  for (int epoch = 0; epoch <= 12; ++epoch) {  // monotone, 0 → 1
    const double h = ihn::schedule_hardness(cosine, epoch, 0);
    CHECK(h >= previous);
    previous = h;
  }
  CHECK(previous == Approx(1.0));
  CHECK(ihn::schedule_hardness(ihn::ConstantHardness{0.25}, 7, 7) == Approx(0.75));
  CHECK_THROWS_WITH(ihn::validate_schedule(ihn::LinearHardness{0}), Catch::Contains("ramp"));
  CHECK_THROWS_WITH(ihn::validate_schedule(ihn::ExponentialHardness{-1}), Catch::Contains("alpha"));
  CHECK(ihn::describe(exponential) == "exponential(alpha=0.010000 per epoch)");
}

TEST_CASE("AlignmentLoss equals the definition", "[loss]") {
  auto images = random_features(5, 16, 10);
  auto reports = random_features(5, 16, 11);
  auto negatives = random_features(5 * 3, 16, 12).view({5, 3, 16});
  ihn::AlignmentLoss loss(ihn::AlignmentLossOptions{}.temperature(0.1));
  auto per_sample = loss.per_sample(images, reports, negatives);
  auto expected = reference_info_nce(images, reports, negatives, 0.1);
  for (int64_t i = 0; i < 5; ++i)  // float32 arithmetic against double: 1e-4 relative
    CHECK(per_sample[i].item<double>() == Approx(expected[static_cast<size_t>(i)]).epsilon(1e-4));

  SECTION("masked negatives and same-report columns drop out") {
    auto mask = torch::ones({5, 3}, at::kBool);
    mask[2][1] = false;
    auto masked = loss.per_sample(images, reports, negatives, mask);
    auto without = reference_info_nce(images, reports,
                                      negatives.index({2})
                                          .index_select(0, torch::tensor({0, 2}))
                                          .unsqueeze(0)
                                          .expand({5, 2, 16})
                                          .contiguous(),
                                      0.1);
    CHECK(masked[2].item<double>() == Approx(without[2]).epsilon(1e-4));
    auto same = torch::zeros({5, 5}, at::kBool);
    same[0][1] = same[1][0] = true;
    auto with_same = loss.per_sample(images, reports, {}, {}, same);
    auto plain = loss.per_sample(images, reports);
    CHECK(with_same[0].item<double>() < plain[0].item<double>());  // one negative fewer
    CHECK(with_same[3].item<double>() == Approx(plain[3].item<double>()));
  }
  SECTION("B = 1 without negatives gives 0") {
    auto single = loss(images.narrow(0, 0, 1), reports.narrow(0, 0, 1));
    CHECK(single.item<double>() == Approx(0.0).margin(1e-7));
  }
  SECTION("hinge") {
    ihn::AlignmentLoss hinge(
        ihn::AlignmentLossOptions{}.kind(ihn::AlignmentKind::hinge).hinge_margin(0.2));
    auto z = ihn::l2_normalize(images), u = ihn::l2_normalize(reports);
    auto n = ihn::l2_normalize(negatives);
    double expected0 = 0, reverse0 = 0;
    const double pos = z[0].dot(u[0]).item<double>();
    for (int j = 1; j < 5; ++j) {
      expected0 += std::max(0.0, 0.2 - pos + z[0].dot(u[j]).item<double>());
      reverse0 += std::max(0.0, 0.2 - pos + u[0].dot(z[j]).item<double>());
    }
    for (int k = 0; k < 3; ++k)
      expected0 += std::max(0.0, 0.2 - pos + z[0].dot(n[0][k]).item<double>());
    CHECK(hinge.per_sample(images, reports, negatives)[0].item<double>() ==
          Approx(0.5 * (expected0 + reverse0)).epsilon(1e-5));
  }
  CHECK_THROWS_WITH(loss(images, reports.narrow(0, 0, 4)), Catch::Contains("same shape"));
  CHECK_THROWS_WITH(ihn::AlignmentLoss(ihn::AlignmentLossOptions{}.temperature(0)),
                    Catch::Contains("temperature"));
}

TEST_CASE("closest peers equal a brute-force search and skip same-key reports", "[peers]") {
  const int64_t n = 60, dim = 8, k = 4;
  auto features = random_features(n, dim, 21);
  std::vector<int64_t> ids(n), keys(n);
  for (int64_t i = 0; i < n; ++i) {
    ids[static_cast<size_t>(i)] = 1000 + i;
    keys[static_cast<size_t>(i)] = i % 3 == 0 ? 7 : i;  // a third share one "normal" report
  }
  ihn::FeatureBank bank;
  bank.update(torch::tensor(ids), features, torch::tensor(keys));
  auto queries = features.narrow(0, 0, 10);
  auto query_ids = torch::tensor(ids).narrow(0, 0, 10);
  auto query_keys = torch::tensor(keys).narrow(0, 0, 10);
  auto peers = ihn::closest_peers_in_bank(bank, queries, query_ids, query_keys, k);
  auto unit = ihn::l2_normalize(features);
  for (int64_t q = 0; q < 10; ++q) {
    std::vector<std::pair<double, int64_t>> brute;
    for (int64_t j = 0; j < n; ++j) {
      if (j == q || keys[static_cast<size_t>(j)] == keys[static_cast<size_t>(q)]) continue;
      brute.emplace_back(unit[q].dot(unit[j]).item<double>(), ids[static_cast<size_t>(j)]);
    }
    std::sort(brute.rbegin(), brute.rend());
    for (int64_t s = 0; s < k; ++s) {
      CHECK(peers.mask[q][s].item<bool>());
      CHECK(peers.peer_ids[q][s].item<int64_t>() == brute[static_cast<size_t>(s)].second);
      CHECK(peers.similarity[q][s].item<double>() ==
            Approx(brute[static_cast<size_t>(s)].first).epsilon(1e-5));
      const int64_t peer_row = peers.peer_ids[q][s].item<int64_t>() - 1000;
      CHECK(keys[static_cast<size_t>(peer_row)] != keys[static_cast<size_t>(q)]);
      CHECK(torch::allclose(peers.features[q][s], unit[peer_row]));
    }
  }
  SECTION("in-batch peers exclude self and same key; too few peers leave slots unused") {
    auto batch_keys = torch::tensor({5, 5, 6}, at::kLong);
    auto in_batch = ihn::closest_peers_in_batch(features.narrow(0, 0, 3), batch_keys, 2);
    CHECK(in_batch.mask[0][0].item<bool>());
    CHECK(in_batch.peer_ids[0][0].item<int64_t>() == 2);  // 1 shares the key of 0
    CHECK_FALSE(in_batch.mask[0][1].item<bool>());
    CHECK(in_batch.peer_ids[0][1].item<int64_t>() == -1);
    CHECK(in_batch.peer_ids[2].sum().item<int64_t>() == 1);  // peers 0 and 1
  }
}

TEST_CASE("compact storage: the same peers wherever bfloat16 cannot tell them apart",
          "[peers][storage]") {
  const int64_t n = 3000, dim = 64, k = 4, queries = 24;
  // Clustered features, as reports are: many peers within a few hundredths of each other.
  auto centres = random_features(30, dim, 31);
  auto features =
      centres.index_select(0, at::arange(n, at::kLong) % 30) + 0.35 * random_features(n, dim, 32);
  std::vector<int64_t> ids(n), keys(n);
  for (int64_t i = 0; i < n; ++i) {
    ids[static_cast<size_t>(i)] = 5000 + i;
    keys[static_cast<size_t>(i)] = i % 7 == 0 ? 1 : i;
  }
  ihn::FeatureBank exact, compact(ihn::Storage::compact);
  exact.update(torch::tensor(ids), features, torch::tensor(keys));
  compact.update(torch::tensor(ids), features, torch::tensor(keys));
  CHECK(compact.features().scalar_type() == at::kBFloat16);
  CHECK(compact.memory_bytes() < exact.memory_bytes() * 3 / 5);
  auto q = features.narrow(0, 0, queries);
  auto q_ids = torch::tensor(ids).narrow(0, 0, queries);
  auto q_keys = torch::tensor(keys).narrow(0, 0, queries);
  auto a = ihn::closest_peers_in_bank(exact, q, q_ids, q_keys, k);
  auto b = ihn::closest_peers_in_bank(compact, q, q_ids, q_keys, k);
  // The exact similarities of every peer compact chose, against its own stored values.
  auto stored = compact.similarity(ihn::l2_normalize(q));
  const double tol = compact.similarity_tolerance();
  int64_t separated = 0;
  for (int64_t i = 0; i < queries; ++i) {
    // Ranks whose exact similarity is further than the tolerance (plus bfloat16's storage
    // rounding, 2^-8) from every other candidate must be chosen identically.
    auto row = a.similarity[i];
    for (int64_t s = 0; s < k; ++s) {
      CHECK(b.mask[i][s].item<bool>());
      const int64_t row_b = compact.row_of(b.peer_ids[i][s].item<int64_t>());
      CHECK(b.similarity[i][s].item<double>() ==
            Approx(stored[i][row_b].item<double>()).margin(1e-5));
      CHECK(keys[static_cast<size_t>(row_b)] != keys[static_cast<size_t>(i)]);
      const double gap_above = s == 0 ? 1.0 : row[s - 1].item<double>() - row[s].item<double>();
      const double gap_below = s + 1 < k ? row[s].item<double>() - row[s + 1].item<double>() : 1.0;
      if (std::min(gap_above, gap_below) > tol + 1.0 / 128) {
        ++separated;
        CHECK(b.peer_ids[i][s].item<int64_t>() == a.peer_ids[i][s].item<int64_t>());
      }
      // Never worse than the tolerance allows: a compact peer is as close as the exact one
      // up to the two roundings.
      CHECK(b.similarity[i][s].item<double>() >= row[s].item<double>() - tol - 1.0 / 128);
    }
  }
  CHECK(separated > 0);  // the check above ran

  SECTION("negatives as int8: within 1/254 of each vector's largest component, state exact") {
    ihn::NegativeStore store(ihn::Storage::compact);
    auto negatives = ihn::l2_normalize(random_features(10 * k, dim, 40).view({10, k, dim}));
    auto rows = at::arange(10, at::kLong);
    store.reserve(10, k, negatives);
    store.put(rows, negatives, at::full({10, k}, 3, at::kLong));
    auto back = store.negatives(rows);
    auto bound = negatives.abs().amax(-1, true) / 254.0 + 1e-7;
    CHECK(((back - negatives).abs() <= bound).all().item<bool>());
    ihn::NegativeStore reloaded(ihn::Storage::compact);
    reloaded.load_state_dict(store.state_dict(10), at::kCPU);
    CHECK(torch::equal(reloaded.negatives(rows), back));
    CHECK(torch::equal(reloaded.peers(rows), store.peers(rows)));
    ihn::NegativeStore widened;  // a compact state loads into float32 storage, and back
    widened.load_state_dict(store.state_dict(10), at::kCPU);
    CHECK(torch::equal(widened.negatives(rows), back));
    ihn::NegativeStore exact_store;
    exact_store.reserve(10, k, negatives);
    exact_store.put(rows, negatives, store.peers(rows));
    CHECK(store.memory_bytes() * 3 < exact_store.memory_bytes());
    ihn::NegativeStore narrowed(ihn::Storage::compact);
    narrowed.load_state_dict(exact_store.state_dict(10), at::kCPU);
    CHECK(torch::equal(narrowed.negatives(rows), back));
  }
}

TEST_CASE("reserve() preallocates without changing a single result", "[augmenter][storage]") {
  ToyModel model;
  const auto storage = GENERATE(ihn::Storage::float32, ihn::Storage::compact);
  auto options = ihn::Options{}.negatives_per_sample(2).seed(3).storage(storage);
  ihn::HardNegativeAugmenter<ToyModel> grown(model, options), reserved(model, options);
  reserved.reserve(40);
  CHECK(reserved.bank().size() == 0);
  int64_t held = 0;
  for (int64_t b = 0; b < 12; ++b) {
    auto z = random_features(4, 8, 700 + static_cast<uint64_t>(b));
    auto u = random_features(4, 8, 800 + static_cast<uint64_t>(b));
    std::vector<int64_t> ids;
    for (int64_t i = 0; i < 4; ++i) ids.push_back((b * 4 + i) % 40);
    CHECK(torch::equal(grown.loss(z, u, ids), reserved.loss(z, u, ids)));
    CHECK(torch::equal(grown.last_negatives(), reserved.last_negatives()));
    if (b == 0) {  // the first call allocated room for 40 ids, 4 of them in use
      held = reserved.memory_bytes() - 4 * ihn::FeatureBank::index_entry_bytes;
      CHECK(held >= 40 * 8 * (storage == ihn::Storage::compact ? 2 : 4));
    }
  }
  // Nothing reallocated: only the id index grew, by one entry per id.
  CHECK(reserved.memory_bytes() == held + 40 * ihn::FeatureBank::index_entry_bytes);
}

TEST_CASE("the max step: monotone, inside the trust region, behind the margin", "[max_step]") {
  const double radius = 0.6, margin = 0.05;
  for (uint64_t trial = 0; trial < 20; ++trial) {
    const int64_t batch = 6, k = 3, dim = 16;
    auto images = random_features(batch, dim, 100 + trial);
    // Reports correlated with the images, as after some training.
    auto reports = images + 0.8 * random_features(batch, dim, 200 + trial);
    auto anchors =
        ihn::l2_normalize(random_features(batch * k, dim, 300 + trial).view({batch, k, dim}));
    auto mask = torch::ones({batch, k}, at::kBool);
    mask[0][2] = false;
    ihn::AlignmentLoss loss(ihn::AlignmentLossOptions{}.temperature(0.1));
    auto result = ihn::maximise_negatives(
        loss, images, reports, anchors, anchors, mask, {},
        ihn::MaxStepOptions{}.steps(8).step_size(0.3).radius(radius).margin(margin));
    CHECK((result.loss_after >= result.loss_before).all().item<bool>());
    CHECK((result.loss_after > result.loss_before).any().item<bool>());
    auto z = ihn::l2_normalize(images), u = ihn::l2_normalize(reports);
    auto limit = (z * u).sum(-1) - margin;
    auto centres =
        ihn::enforce_margin(anchors, z.unsqueeze(1), limit.view({-1, 1, 1}), u.unsqueeze(1));
    auto cos_to_image = at::einsum("bd,bkd->bk", {z, result.negatives});
    auto cos_to_centre = (result.negatives * centres).sum(-1);
    // float32 rounding of normalisations: 1e-5 on cosines.
    CHECK((cos_to_image <= limit.unsqueeze(1) + 1e-5).all().item<bool>());
    CHECK((cos_to_centre >= 1 - 0.5 * radius * radius - 1e-5).all().item<bool>());
    CHECK((result.negatives.norm(2, -1) - 1).abs().max().item<double>() < 1e-5);
    // An unused slot stays at its centre (which the max step renormalises once more).
    CHECK(torch::allclose(result.negatives[0][2], centres[0][2], 0, 1e-6));
  }
}

TEST_CASE("the augmenter adds no parameters and never touches the network", "[augmenter]") {
  torch::manual_seed(0);
  ToyModel model;
  torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(1e-3));
  const auto parameters_before = model->parameters().size();
  ihn::HardNegativeAugmenter<ToyModel> augmenter(
      model, ihn::Options{}.negatives_per_sample(2).ascent_steps(3));
  CHECK(model->parameters().size() == parameters_before);
  CHECK(model->buffers().empty());
  CHECK(optimizer.param_groups().size() == 1);
  CHECK(optimizer.param_groups()[0].params().size() == parameters_before);

  ToyBatch batch{random_features(6, 12, 31), random_features(6, 10, 32)};
  // Give every parameter a gradient, then check the max step changes neither value nor grad.
  (model->image_features(batch).sum() + model->report_features(batch).sum()).backward();
  std::vector<at::Tensor> values, grads;
  for (auto& p : model->parameters()) {
    values.push_back(p.detach().clone());
    grads.push_back(p.grad().clone());
  }
  auto term = augmenter.loss_for(batch, {0, 1, 2, 3, 4, 5});
  for (size_t i = 0; i < values.size(); ++i) {
    CHECK(torch::equal(model->parameters()[i], values[i]));
    CHECK(torch::equal(model->parameters()[i].grad(), grads[i]));
  }
  CHECK(model->parameters().size() == parameters_before);

  SECTION("the min-step term sends gradient to the network, none to the negatives") {
    CHECK_FALSE(augmenter.last_negatives().requires_grad());
    model->zero_grad();
    term.backward();
    CHECK(model->image_encoder->weight.grad().abs().sum().item<double>() > 0);
    CHECK(model->report_encoder->weight.grad().abs().sum().item<double>() > 0);
    CHECK_FALSE(augmenter.last_negatives().grad().defined());
    // The same term from the same (constant) negatives, recomputed by hand.
    model->zero_grad();
    auto z = model->image_features(batch), u = model->report_features(batch);
    auto again = ihn::AlignmentLoss(ihn::AlignmentLossOptions{}.temperature(0.07))(
                     z, u, augmenter.last_negatives(), augmenter.last_negative_mask()) *
                 0.1;
    CHECK(again.item<double>() == Approx(term.item<double>()).epsilon(1e-6));
  }
}

TEST_CASE("augmenter edge cases", "[augmenter]") {
  ToyModel model;
  auto images = random_features(4, 8, 41), reports = random_features(4, 8, 42);
  SECTION("B = 1 without ids: no peers, loss 0") {
    ihn::HardNegativeAugmenter<ToyModel> augmenter(model);
    auto term = augmenter.loss(images.narrow(0, 0, 1), reports.narrow(0, 0, 1));
    CHECK(term.item<double>() == Approx(0).margin(1e-7));
    CHECK(augmenter.last_stats().used_negatives == 0);
  }
  SECTION("K = 0 is plain in-batch alignment") {
    ihn::HardNegativeAugmenter<ToyModel> augmenter(
        model, ihn::Options{}.negatives_per_sample(0).weight(1));
    auto term = augmenter.loss(images, reports, {1, 2, 3, 4});
    CHECK(term.item<double>() ==
          Approx(ihn::AlignmentLoss{}(images, reports).item<double>()).epsilon(1e-6));
  }
  SECTION("zero-norm features stay finite") {
    ihn::HardNegativeAugmenter<ToyModel> augmenter(model);
    auto zero_images = images.clone();
    zero_images[1].zero_();
    auto zero_reports = reports.clone();
    zero_reports[2].zero_();
    auto term = augmenter.loss(zero_images, zero_reports, {1, 2, 3, 4});
    CHECK(std::isfinite(term.item<double>()));
    CHECK(at::isfinite(augmenter.last_negatives()).all().item<bool>());
  }
  SECTION("a negative identical to the positive is pushed behind the margin") {
    ihn::HardNegativeAugmenter<ToyModel> augmenter(
        model, ihn::Options{}.negatives_per_sample(1).margin(0.1).ascent_steps(4));
    auto twin_reports = reports.clone();
    twin_reports[1] = twin_reports[0];  // same features, different report keys
    augmenter.loss(images, twin_reports, {}, {"a", "b", "c", "d"});
    auto z = ihn::l2_normalize(images), u = ihn::l2_normalize(twin_reports);
    auto cos_negative = at::einsum("bd,bkd->bk", {z, augmenter.last_negatives()}).squeeze(1);
    auto cos_positive = (z * u).sum(-1);
    CHECK((cos_negative <= cos_positive - 0.1 + 1e-5).all().item<bool>());
  }
  SECTION("same-key samples are never negatives") {
    ihn::HardNegativeAugmenter<ToyModel> augmenter(model, ihn::Options{}.negatives_per_sample(3));
    augmenter.loss(images, reports, {}, {"normal", "normal", "normal", "effusion"});
    auto mask = augmenter.last_negative_mask();
    for (int i = 0; i < 3; ++i) {  // each normal study has only the effusion one
      CHECK(mask[i].sum().item<int64_t>() == 1);
    }
    CHECK(mask[3].sum().item<int64_t>() == 3);
  }
  SECTION("NaN and Inf are reported") {
    ihn::HardNegativeAugmenter<ToyModel> augmenter(model);
    auto bad = images.clone();
    bad[2][3] = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_WITH(augmenter.loss(bad, reports),
                      Catch::Contains("image features contains NaN") && Catch::Contains("row 2"));
    auto inf = reports.clone();
    inf[0][0] = std::numeric_limits<float>::infinity();
    CHECK_THROWS_WITH(augmenter.loss(images, inf), Catch::Contains("report features contains Inf"));
  }
  SECTION("wrong shapes and counts are reported") {
    ihn::HardNegativeAugmenter<ToyModel> augmenter(model);
    CHECK_THROWS_WITH(augmenter.loss(images, reports, {1, 2}),
                      Catch::Contains("2 ids for a batch of 4"));
    CHECK_THROWS_WITH(augmenter.loss(images, random_features(4, 6, 1)),
                      Catch::Contains("differ in shape"));
    CHECK_THROWS_WITH(ihn::HardNegativeAugmenter<ToyModel>(model, ihn::Options{}.margin(0)),
                      Catch::Contains("margin"));
  }
}

TEST_CASE("negatives get harder as the schedule advances", "[augmenter]") {
  ToyModel model;
  auto images = random_features(8, 16, 51);
  auto reports = images + 0.5 * random_features(8, 16, 52);
  std::vector<int64_t> ids{0, 1, 2, 3, 4, 5, 6, 7};
  auto options = ihn::Options{}
                     .negatives_per_sample(2)
                     .schedule(ihn::LinearHardness{10, ihn::ScheduleUnit::epoch})
                     .min_radius(0.0)
                     .max_radius(1.2)
                     .keep_negatives(false);
  ihn::HardNegativeAugmenter<ToyModel> early(model, options), late(model, options);
  early.set_epoch(0);
  late.set_epoch(10);
  early.loss(images, reports, ids);
  late.loss(images, reports, ids);
  CHECK(early.last_stats().radius == 0.0);
  CHECK(late.last_stats().negative_similarity > early.last_stats().negative_similarity + 0.05);
  CHECK(late.last_stats().loss_after_max > early.last_stats().loss_after_max);
}

TEST_CASE("save, load, continue: identical negatives and losses", "[state]") {
  ToyModel model;
  const auto storage = GENERATE(ihn::Storage::float32, ihn::Storage::compact);
  INFO("storage " << ihn::to_string(storage));
  auto options = ihn::Options{}.negatives_per_sample(3).candidate_pool(5).seed(7).storage(storage);
  auto make_batch = [](int64_t b) {
    return std::pair{random_features(4, 8, 500 + 2 * static_cast<uint64_t>(b)),
                     random_features(4, 8, 501 + 2 * static_cast<uint64_t>(b))};
  };
  auto ids_of = [](int64_t b) {
    std::vector<int64_t> ids;
    for (int64_t i = 0; i < 4; ++i) ids.push_back((b * 4 + i) % 12);
    return ids;
  };
  ihn::HardNegativeAugmenter<ToyModel> first(model, options);
  for (int64_t b = 0; b < 5; ++b) {
    auto [z, u] = make_batch(b);
    first.loss(z, u, ids_of(b));
    first.step();
  }
  auto path = ihn_test::scratch_dir("augmenter_state") / "ihn.state";
  ihn::save_state(first.state_dict(), path);
  ihn::HardNegativeAugmenter<ToyModel> resumed(model, options);
  resumed.load_state_dict(ihn::load_state(path));
  CHECK(resumed.global_step() == 5);
  for (int64_t b = 5; b < 10; ++b) {
    auto [z, u] = make_batch(b);
    auto a = first.loss(z, u, ids_of(b));
    auto c = resumed.loss(z, u, ids_of(b));
    CHECK(torch::equal(a, c));
    CHECK(torch::equal(first.last_negatives(), resumed.last_negatives()));
    first.step();
    resumed.step();
  }
  SECTION("a truncated state file is named in the error") {
    std::filesystem::resize_file(path, std::filesystem::file_size(path) / 2);
    CHECK_THROWS_WITH(ihn::load_state(path),
                      Catch::Contains("ihn.state") && Catch::Contains("truncated or corrupt"));
  }
  SECTION("a state saved with another K is refused") {
    ihn::HardNegativeAugmenter<ToyModel> other(model, ihn::Options{}.negatives_per_sample(2));
    CHECK_THROWS_WITH(other.load_state_dict(first.state_dict()),
                      Catch::Contains("negatives_per_sample 3"));
  }
}

TEST_CASE("the augmenter on the test device computes what it computes on the CPU",
          "[augmenter][device]") {
  // IHN_TEST_DEVICE (default cpu, where this checks that equal seeds give equal runs): the
  // feature bank, the peer search and the loss on that device against a CPU run on the same
  // features, to float32 rounding of sums in another order (1e-5). The max step accepts an
  // ascent step when the loss does not drop, a comparison that rounding can flip for a step
  // that changes little (seen on a GPU: one flip in 24 samples), so with ascent steps the device
  // run is checked for what any run must give: unit negatives, and on a first visit no lower
  // loss than its peers'.
  const auto device = ihn_test::test_device();
  ToyModel model;
  const auto peers_only = ihn::Options{}.negatives_per_sample(3).ascent_steps(0).seed(11);
  const auto ascent = ihn::Options{}.negatives_per_sample(3).ascent_steps(3).seed(11);
  ihn::HardNegativeAugmenter<ToyModel> cpu(model, peers_only), other(model, peers_only),
      harder(model, ascent);
  for (int64_t b = 0; b < 4; ++b) {
    INFO("batch " << b);
    const auto z = random_features(6, 8, 700 + 2 * static_cast<uint64_t>(b));
    const auto u = random_features(6, 8, 701 + 2 * static_cast<uint64_t>(b));
    std::vector<int64_t> ids;
    for (int64_t i = 0; i < 6; ++i) ids.push_back((b * 6 + i) % 15);
    const auto a = cpu.loss(z, u, ids);
    const auto d = other.loss(z.to(device), u.to(device), ids);
    CHECK(d.device() == device);
    CHECK(d.item<double>() == Approx(a.item<double>()).epsilon(1e-5));
    CHECK(other.last_negatives().device() == device);
    const auto gap = (other.last_negatives().cpu() - cpu.last_negatives()).abs().max();
    CHECK(gap.item<double>() < 1e-5);
    const auto h = harder.loss(z.to(device), u.to(device), ids);
    CHECK(h.device() == device);
    // On a first visit the ascent starts from the peers and never lowers the loss (later visits
    // start from the previous negatives).
    if (b < 2) CHECK(h.item<double>() >= d.item<double>() - 1e-6);
    const auto norms = harder.last_negatives().norm(2, -1).cpu();
    CHECK(torch::allclose(norms, torch::ones_like(norms), 0, 1e-5));
    cpu.step();
    other.step();
    harder.step();
  }
}

TEST_CASE("HardNegativeCallback drives the augmenter from trainer hooks", "[hooks]") {
  ToyModel model;
  ihn::HardNegativeCallback<ToyModel> callback(model, ihn::Options{}.negatives_per_sample(2));
  ihn::Callback& hooks = callback;
  ToyBatch batch{random_features(4, 12, 61), random_features(4, 10, 62)};
  hooks.on_train_epoch_start(3);
  ihn::BatchContext context;
  context.image_features = model->image_features(batch);
  context.report_features = model->report_features(batch);
  context.ids = {0, 1, 2, 3};
  context.loss = torch::tensor(2.0);
  hooks.on_before_backward(context);
  CHECK(context.loss.item<double>() > 2.0);
  CHECK(context.logs.count("ihn/alignment") == 1);
  hooks.on_train_batch_end(context);
  CHECK(callback.augmenter().global_step() == 1);
  CHECK(callback.augmenter().epoch() == 3);
  ihn::StateDict state;
  hooks.on_save_checkpoint(state);
  CHECK(state.count("ihn.clock") == 1);
  ihn::HardNegativeCallback<ToyModel> restored(model, ihn::Options{}.negatives_per_sample(2));
  restored.on_load_checkpoint(state);
  CHECK(restored.augmenter().global_step() == 1);
  CHECK(restored.augmenter().bank().size() == 4);
}

TEST_CASE("official-compatible mode reproduces the released ITHN loss", "[official][shared]") {
  // Fixture ithn_loss: the released code's tensors (float32). 1e-6 absolute on losses and
  // 1e-5 on intermediates: the same float32 operations in the same order, so the only
  // differences are BLAS summation order (observed < 1e-6).
  auto data = load_pt(ihn_test::fixtures_dir() / "ithn_loss" / "ithn.pt");
  auto get = [&](const std::string& key) { return data.at(key).toTensor(); };
  auto z = get("z"), u = get("u"), z_neg = get("z_neg"), u_neg = get("u_neg");
  // The release's projection with identity weights is a row L2 normalisation of the raw input.
  CHECK(torch::allclose(ihn::l2_normalize(get("raw_z")), z, 0, 1e-6));
  auto lambdas = get("lambdas");
  for (int64_t l = 0; l < lambdas.size(0); ++l) {
    const std::string p = "l" + std::to_string(l) + "_";
    const double lambda = data.at(p + "lambda").toDouble();
    CHECK(lambda == lambdas[l].item<double>());
    auto legacy = ihn::official_loss_terms(z, u, z_neg, u_neg, get("temp_1"), get("temp_3"), lambda,
                                           /*legacy_batch_mixing=*/true);
    CHECK(torch::allclose(legacy.projection, get(p + "p"), 0, 1e-5));
    CHECK(torch::allclose(legacy.harder_negatives, get(p + "h_neg"), 0, 1e-5));
    CHECK(torch::allclose(legacy.similarity, get(p + "S_fin"), 0, 1e-5));
    CHECK(legacy.l_cp.item<double>() == Approx(get(p + "l_cp").item<double>()).margin(1e-6));
    CHECK(legacy.l_cs.item<double>() == Approx(get(p + "l_cs").item<double>()).margin(1e-6));
    auto total = ihn::official_total_loss(torch::tensor(2.0f), legacy);
    CHECK(total.item<double>() == Approx(get(p + "total").item<double>()).margin(1e-6));

    auto corrected = ihn::official_loss_terms(z, u, z_neg, u_neg, get("temp_1"), get("temp_3"),
                                              lambda, /*legacy_batch_mixing=*/false);
    CHECK(torch::allclose(corrected.projection, get(p + "corr_p"), 0, 1e-5));
    CHECK(torch::allclose(corrected.similarity, get(p + "corr_S_fin"), 0, 1e-5));
    CHECK(corrected.l_cp.item<double>() ==
          Approx(get(p + "corr_l_cp").item<double>()).margin(1e-6));
    CHECK(ihn::official_total_loss(torch::tensor(2.0f), corrected).item<double>() ==
          Approx(get(p + "corr_total").item<double>()).margin(1e-6));
  }
  CHECK(ihn::official_lambda(0.01, 1) == lambdas[0].item<double>());
}

TEST_CASE("official projection heads use the released parameter names", "[official]") {
  ihn::OfficialProjection head(2048, 512);
  auto names = head->named_parameters().keys();
  REQUIRE(names.size() == 1);
  CHECK(names[0] == "linear1.weight");
  auto out = head->forward(random_features(3, 2048, 71));
  CHECK(torch::allclose(out.norm(2, 1), torch::ones({3}), 0, 1e-5));
}

// ---- Checkpoint readers as untrusted input (issue 13, items 3 and 8; docs/reliability.md) ----

namespace {

/// A zip as torch.save writes it (miniz, CRCs right) around the given records.
void write_zip(const std::filesystem::path& path,
               const std::vector<std::pair<std::string, std::string>>& records) {
  caffe2::serialize::PyTorchStreamWriter writer(path.string());
  for (const auto& [name, bytes] : records) writer.writeRecord(name, bytes.data(), bytes.size());
  writer.writeEndOfFile();
}

/// Every record of a zip, relative to its archive folder, CRCs checked.
std::vector<std::pair<std::string, std::string>> read_zip_records(const std::filesystem::path& p) {
  ihn::io::ZipReader zip(ihn::io::ByteSource::file(p.string()));
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& e : zip.entries()) {
    const auto relative = e.name.substr(zip.archive_name().size() + 1);
    out.emplace_back(relative, zip.read(relative, 1u << 30));
  }
  return out;
}

std::string zip_name(const std::filesystem::path& path, const std::string& record) {
  return ihn::io::ZipReader(ihn::io::ByteSource::file(path.string())).entry(record).name;
}

std::string file_bytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void write_bytes(const std::filesystem::path& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

}  // namespace

TEST_CASE("state files: a self-referencing or deeply nested pickle is an error, not a crash",
          "[state][io]") {
  const auto dir = ihn_test::scratch_dir("hostile_pickles");
  SECTION("a list that contains itself") {
    // PROTO 2, EMPTY_LIST, BINPUT 0, BINGET 0, APPEND, STOP: 9 bytes.
    write_zip(dir / "cycle.pt", {{"data.pkl", std::string("\x80\x02]q\x00h\x00"
                                                          "a.",
                                                          9)}});
    CHECK_THROWS_WITH(ihn::load_state(dir / "cycle.pt"),
                      Catch::Contains("cycle.pt") && Catch::Contains("contains itself"));
    CHECK_THROWS_AS(ihn::io::read_pth((dir / "cycle.pt").string()), ihn::io::pth_error);
  }
  SECTION("100k nested lists") {
    const size_t depth = 100000;
    std::string pickle = "\x80\x02" + std::string(depth, ']') + std::string(depth - 1, 'a') + ".";
    write_zip(dir / "nested.pt", {{"data.pkl", pickle}});
    CHECK_THROWS_WITH(ihn::load_state(dir / "nested.pt"),
                      Catch::Contains("nested.pt") && Catch::Contains("nested more than 1000"));
  }
  SECTION("a graph of shared lists (2^60 paths) is walked once per list") {
    // L0 = [], L(i+1) = [L(i), L(i)]: each list memoised and fetched twice.
    std::string pickle("\x80\x02(]q\x00", 6);
    for (int i = 0; i < 60; ++i) {
      pickle += "](h" + std::string(1, static_cast<char>(i)) + "h" +
                std::string(1, static_cast<char>(i)) + "eq" +
                std::string(1, static_cast<char>(i + 1));
    }
    pickle += "l.";  // the 61 lists, in one list
    write_zip(dir / "laughs.pt", {{"data.pkl", pickle}});
    CHECK_THROWS_WITH(ihn::load_state(dir / "laughs.pt"), Catch::Contains("dict of tensors"));
  }
}

TEST_CASE("state files: declared sizes, views and CRCs are checked before use", "[state][io]") {
  const auto dir = ihn_test::scratch_dir("hostile_checkpoints");
  ihn::StateDict state;
  state["w"] = torch::arange(15, torch::kFloat).reshape({3, 5});
  state["big"] = torch::arange(1000, torch::kFloat);
  ihn::save_state(state, dir / "good.pt");
  const auto good = ihn::load_state(dir / "good.pt");
  REQUIRE(good.size() == 2);
  CHECK(torch::equal(good.at("w"), state["w"]));
  CHECK(torch::equal(good.at("big"), state["big"]));
  auto records = read_zip_records(dir / "good.pt");
  auto pkl = std::find_if(records.begin(), records.end(),
                          [](const auto& r) { return r.first == "data.pkl"; });
  REQUIRE(pkl != records.end());
  auto& pickle = pkl->second;

  SECTION("a stride changed by one is refused, not read out of bounds") {
    // w's strides (5, 1): MARK, BININT1 5, BININT1 1, TUPLE. Stride 5 -> 6 reads element 16 of 15.
    const std::string strides("(K\x05K\x01t", 6);
    const auto at = pickle.find(strides);
    REQUIRE(at != std::string::npos);
    pickle[at + 2] = 6;
    write_zip(dir / "stride.pt", records);
    CHECK_THROWS_WITH(
        ihn::load_state(dir / "stride.pt"),
        Catch::Contains("stride.pt") && Catch::Contains("reads past the end of its storage"));
  }
  SECTION("a storage declaring more elements than its record holds") {
    const std::string numel("M\xe8\x03tQ", 5);  // BININT2 1000 ends big's persistent id
    const auto at = pickle.find(numel);
    REQUIRE(at != std::string::npos);
    pickle[at + 2] = '\x7f';  // 0x7fe8 elements
    write_zip(dir / "numel.pt", records);
    CHECK_THROWS_WITH(ihn::load_state(dir / "numel.pt"),
                      Catch::Contains("numel.pt") && Catch::Contains("holds 4000 bytes"));
  }
  SECTION("32 overwritten weight bytes fail the CRC-32 check, naming file and record") {
    ihn::io::ZipReader zip(ihn::io::ByteSource::file((dir / "good.pt").string()));
    const ihn::io::ZipEntry* big = nullptr;
    for (const auto& e : zip.entries())
      if (e.size == 4000) big = &e;
    REQUIRE(big != nullptr);
    auto bytes = file_bytes(dir / "good.pt");
    for (size_t i = 0; i < 32; ++i) bytes[big->data_offset + 1000 + i] = '\x42';
    write_bytes(dir / "flipped.pt", bytes);
    CHECK_THROWS_WITH(ihn::load_state(dir / "flipped.pt"), Catch::Contains("flipped.pt") &&
                                                               Catch::Contains(big->name) &&
                                                               Catch::Contains("CRC-32"));
  }
  SECTION("a data.pkl declaring 3 GiB is refused before anything is read") {
    auto bytes = file_bytes(dir / "good.pt");
    // The central directory entry of data.pkl: sizes at +20 (compressed) and +24 (plain).
    size_t at = 0;
    for (size_t p = bytes.find(std::string("PK\x01\x02", 4)); p != std::string::npos;
         p = bytes.find(std::string("PK\x01\x02", 4), p + 1)) {
      const size_t name_len = static_cast<uint8_t>(bytes[p + 28]);
      if (bytes.compare(p + 46, name_len, zip_name(dir / "good.pt", "data.pkl")) == 0) at = p;
    }
    REQUIRE(at != 0);
    for (size_t field : {20, 24}) bytes.replace(at + field, 4, std::string("\x00\x00\x00\xc0", 4));
    write_bytes(dir / "inflated.pt", bytes);
    CHECK_THROWS_WITH(ihn::load_state(dir / "inflated.pt"),
                      Catch::Contains("inflated.pt") && Catch::Contains("3221225472 bytes"));
  }
  SECTION("a truncated file says so") {
    auto bytes = file_bytes(dir / "good.pt");
    write_bytes(dir / "cut.pt", bytes.substr(0, bytes.size() - 100));
    CHECK_THROWS_WITH(ihn::load_state(dir / "cut.pt"),
                      Catch::Contains("cut.pt") && Catch::Contains("truncated or corrupt"));
  }
}

TEST_CASE("schedules: parse_schedule reads what to_string writes, and names bad text", "[core]") {
  for (const ihn::HardnessSchedule s :
       {ihn::HardnessSchedule{ihn::ExponentialHardness{0.01}},
        ihn::HardnessSchedule{ihn::ExponentialHardness{0.1, ihn::ScheduleUnit::step}},
        ihn::HardnessSchedule{ihn::LinearHardness{37.5}},
        ihn::HardnessSchedule{ihn::CosineHardness{1e4, ihn::ScheduleUnit::step}},
        ihn::HardnessSchedule{ihn::ConstantHardness{1.0 / 3.0}}}) {
    const auto text = ihn::to_string(s);
    INFO(text);
    const auto back = ihn::parse_schedule(text);
    REQUIRE(back.index() == s.index());
    REQUIRE(ihn::schedule_unit(back) == ihn::schedule_unit(s));
    for (int64_t epoch : {1, 7, 100})
      REQUIRE(ihn::schedule_lambda(back, epoch, epoch * 13) ==
              ihn::schedule_lambda(s, epoch, epoch * 13));
  }
  REQUIRE(ihn::to_string(ihn::parse_schedule("exp:0.01")) == "exp:0.01");
  // The shortest text that reads back: config files show what the user typed.
  REQUIRE(ihn::to_string(ihn::parse_schedule("exp:0.1")) == "exp:0.1");
  REQUIRE(ihn::to_string(ihn::ConstantHardness{1.0 / 3.0}) == "const:0.3333333333333333");
  REQUIRE(ihn::schedule_unit(ihn::parse_schedule("linear:10/epoch")) == ihn::ScheduleUnit::epoch);
  for (const char* bad : {"exp", "exp:", "exp:0.01x", "exp:-1", "linear:0", "const:2", "sigmoid:3",
                          "exp:0.1/fortnight", "exp:nan", "linear:inf"}) {
    INFO(bad);
    REQUIRE_THROWS_WITH(ihn::parse_schedule(bad), Catch::Contains(std::string("'") + bad + "'") &&
                                                      Catch::Contains("exp:ALPHA"));
  }
}
