// R2Gen datasets, collate and the seeded loader (see loader.hpp).
#include "data/loader.hpp"

#include <algorithm>
#include <filesystem>
#include <numeric>
#include <stdexcept>
#include <string>

namespace ihn_toolkit::data {

ReportBatch collate_reports(std::vector<ReportExample> examples) {
  if (examples.empty()) throw std::invalid_argument("collate_reports: empty batch");
  ReportBatch batch;
  std::vector<at::Tensor> images;
  size_t longest = 0;
  for (const auto& example : examples) longest = std::max(longest, example.ids.size());
  const auto count = static_cast<int64_t>(examples.size());
  batch.reports_ids = at::zeros({count, static_cast<int64_t>(longest)}, at::kLong);
  batch.reports_masks = at::zeros({count, static_cast<int64_t>(longest)}, at::kFloat);
  auto ids = batch.reports_ids.accessor<int64_t, 2>();
  auto masks = batch.reports_masks.accessor<float, 2>();
  for (int64_t i = 0; i < count; ++i) {
    auto& example = examples[static_cast<size_t>(i)];
    for (size_t t = 0; t < example.ids.size(); ++t) {
      ids[i][static_cast<int64_t>(t)] = example.ids[t];
      masks[i][static_cast<int64_t>(t)] = 1.0f;
    }
    batch.ids.push_back(std::move(example.id));
    images.push_back(std::move(example.images));
  }
  batch.images = at::stack(images, 0);
  return batch;
}

ReportDataset::ReportDataset(std::vector<Study> studies, const Tokenizer& tokenizer,
                             ReportDatasetOptions options)
    : ReportDataset(std::move(studies), InMemoryImages{}, tokenizer, std::move(options)) {}

ReportDataset::ReportDataset(std::vector<Study> studies, InMemoryImages images,
                             const Tokenizer& tokenizer, ReportDatasetOptions options)
    : options_(std::move(options)) {
  auto shared = std::make_shared<Shared>();
  if (!images.empty() && images.size() != studies.size())
    throw std::invalid_argument("ReportDataset: " + std::to_string(images.size()) +
                                " in-memory image sets for " + std::to_string(studies.size()) +
                                " studies (one per study expected)");
  const size_t views = required_views(options_.dataset);
  for (size_t i = 0; i < studies.size(); ++i) {
    const size_t available = images.empty() ? studies[i].image_paths.size() : images[i].size();
    if (available < views)
      throw std::invalid_argument(
          "ReportDataset: study " + studies[i].id + " has " + std::to_string(available) +
          " image(s), " + dataset_name(options_.dataset) + " needs " + std::to_string(views));
    shared->ids.push_back(tokenizer.encode(studies[i].report, options_.max_seq_length));
  }
  shared->studies = std::move(studies);
  shared->images = std::move(images);
  shared_ = std::move(shared);
}

ReportExample ReportDataset::example(size_t index) const {
  const auto& study = shared_->studies.at(index);
  const size_t views = required_views(options_.dataset);
  const ImageTransform transform(options_.transform);
  // One engine per sample, seeded from (seed, epoch, index): independent of which worker
  // runs it and of the order samples are loaded in.
  std::mt19937_64 rng(sample_seed(options_.seed, options_.epoch, index));
  std::vector<at::Tensor> tensors;
  for (size_t v = 0; v < views; ++v) {
    if (!shared_->images.empty()) {
      tensors.push_back(transform(shared_->images[index][v], rng));
    } else {
      const auto path = std::filesystem::path(options_.image_root) / study.image_paths[v];
      tensors.push_back(transform(load_image(path.string()), rng));
    }
  }
  return ReportExample{study.id, at::stack(tensors, 0), shared_->ids[index]};
}

ReportDataset ReportDataset::with_epoch(int64_t epoch) const {
  ReportDataset copy = *this;
  copy.options_.epoch = epoch;
  return copy;
}

ReportDataset ReportDataset::with_transform(const TransformOptions& transform) const {
  ReportDataset copy = *this;
  copy.options_.transform = transform;
  return copy;
}

SeededSampler::SeededSampler(size_t size, bool shuffle, uint64_t seed, int64_t epoch, Shard shard)
    : shuffle_(shuffle), seed_(seed), epoch_(epoch), shard_(shard) {
  if (shard_.world_size == 0 || shard_.rank >= shard_.world_size)
    throw std::invalid_argument("SeededSampler: rank " + std::to_string(shard_.rank) + " of " +
                                std::to_string(shard_.world_size));
  reset(size);
}

size_t sharded_batches(size_t size, size_t batch_size, size_t world_size) {
  const size_t full = size / batch_size, rest = size % batch_size;
  return full + (rest > 0 && (world_size <= 1 || rest >= world_size) ? 1 : 0);
}

void SeededSampler::reset(torch::optional<size_t> new_size) {
  if (new_size) size_ = *new_size;
  const size_t size = size_;
  order_.resize(size);
  std::iota(order_.begin(), order_.end(), size_t{0});
  if (shuffle_) {
    // A different stream from the augmentation's (index = max), Fisher-Yates by hand because
    // std::shuffle's algorithm differs between standard libraries.
    std::mt19937_64 rng(sample_seed(seed_, epoch_, ~uint64_t{0}));
    for (size_t i = size; i > 1; --i) {
      const size_t j = std::uniform_int_distribution<size_t>(0, i - 1)(rng);
      std::swap(order_[i - 1], order_[j]);
    }
  }
  position_ = 0;
  if (shard_.world_size > 1 && !shuffle_) {  // decoding: this rank's block, in order
    const size_t lo = size * shard_.rank / shard_.world_size;
    const size_t hi = size * (shard_.rank + 1) / shard_.world_size;
    order_ = std::vector<size_t>(order_.begin() + static_cast<std::ptrdiff_t>(lo),
                                 order_.begin() + static_cast<std::ptrdiff_t>(hi));
  }
}

torch::optional<std::vector<size_t>> SeededSampler::next(size_t batch_size) {
  if (shard_.world_size > 1 && shuffle_) {
    // This rank's slice of the next global batch; the batch is split as evenly as it goes.
    const size_t left = order_.size() - std::min(position_, order_.size());
    const size_t global = std::min(batch_size, left);
    if (global == 0 || global < shard_.world_size) return torch::nullopt;
    const size_t lo = position_ + global * shard_.rank / shard_.world_size;
    const size_t hi = position_ + global * (shard_.rank + 1) / shard_.world_size;
    position_ += global;
    return std::vector<size_t>(order_.begin() + static_cast<std::ptrdiff_t>(lo),
                               order_.begin() + static_cast<std::ptrdiff_t>(hi));
  }
  if (position_ >= order_.size()) return torch::nullopt;
  const size_t end = std::min(order_.size(), position_ + batch_size);
  std::vector<size_t> indices(order_.begin() + static_cast<std::ptrdiff_t>(position_),
                              order_.begin() + static_cast<std::ptrdiff_t>(end));
  position_ = end;
  return indices;
}

void SeededSampler::save(torch::serialize::OutputArchive& archive) const {
  archive.write("position", at::tensor(static_cast<int64_t>(position_)), true);
}

void SeededSampler::load(torch::serialize::InputArchive& archive) {
  at::Tensor position;
  archive.read("position", position, true);
  position_ = static_cast<size_t>(position.item<int64_t>());
}

namespace {
R2GenData build_r2gen_data(const Annotation& annotation, const std::string& image_root,
                           const std::map<std::string, InMemoryImages>* images,
                           const R2GenDataOptions& options) {
  auto tokenizer =
      Tokenizer::build(annotation.train_reports(), annotation.dataset, options.threshold);
  auto make = [&](const std::string& split, const TransformOptions& transform) {
    ReportDatasetOptions dataset_options;
    dataset_options.dataset = annotation.dataset;
    dataset_options.image_root = image_root;
    dataset_options.max_seq_length = options.max_seq_length;
    dataset_options.transform = transform;
    dataset_options.seed = options.seed;
    if (images == nullptr)
      return ReportDataset(annotation.split(split), tokenizer, dataset_options);
    auto it = images->find(split);
    if (it == images->end())
      throw std::invalid_argument("make_r2gen_data: no in-memory images for split '" + split + "'");
    return ReportDataset(annotation.split(split), it->second, tokenizer, dataset_options);
  };
  auto train = make("train", options.train_transform);
  auto val = make("val", options.eval_transform);
  auto test = make("test", options.eval_transform);
  return R2GenData{std::move(tokenizer), std::move(train), std::move(val), std::move(test)};
}
}  // namespace

R2GenData make_r2gen_data(const Annotation& annotation, const std::string& image_root,
                          const R2GenDataOptions& options) {
  return build_r2gen_data(annotation, image_root, nullptr, options);
}

R2GenData make_r2gen_data(const Annotation& annotation,
                          const std::map<std::string, InMemoryImages>& images,
                          const R2GenDataOptions& options) {
  return build_r2gen_data(annotation, "", &images, options);
}

std::unique_ptr<ReportLoader> make_report_loader(const ReportDataset& dataset,
                                                 const ReportLoaderOptions& options) {
  const size_t size = *dataset.size();
  SeededSampler sampler(size, options.shuffle, dataset.options().seed, dataset.options().epoch,
                        options.shard);
  ReportDataset copy = dataset;  // shares the studies; the loader owns its dataset
  return std::make_unique<ReportLoader>(std::move(copy).map(CollateReports()), std::move(sampler),
                                        torch::data::DataLoaderOptions()
                                            .batch_size(options.batch_size)
                                            .workers(options.workers)
                                            .drop_last(options.drop_last)
                                            .enforce_ordering(true));
}

}  // namespace ihn_toolkit::data
