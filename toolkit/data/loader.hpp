// R2Gen's datasets and collate on LibTorch's data API: ReportDataset (a torch::data Dataset of
// studies -> images [views, 3, H, W] + truncated ids), collate_reports (pad ids to the longest
// with 0, float masks, as R2DataLoader.collate_fn), and make_report_loader (batches, workers,
// shuffling from a seed).
//
// Augmentation is reproducible with any number of workers: each sample's crop/flip come from
// an engine seeded by sample_seed(seed, epoch, index), never from shared state, and shuffling
// uses a permutation drawn from (seed, epoch). Images come from files under an image root, or
// from memory (the synthetic data set).
#pragma once

#include "data/annotation.hpp"
#include "data/image.hpp"
#include "data/tokenizer.hpp"

#include <torch/data.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace ihn_toolkit::data {

/// One study as R2Gen's __getitem__ returns it (seq_length = ids.size()).
struct ReportExample {
  std::string id;
  at::Tensor images;  ///< float [views, 3, H, W]; IU X-Ray views = 2, MIMIC-CXR 1
  std::vector<int64_t> ids;
};

/// A collated batch, as R2DataLoader.collate_fn returns it.
struct ReportBatch {
  std::vector<std::string> ids;
  at::Tensor images;         ///< float [B, views, 3, H, W]
  at::Tensor reports_ids;    ///< int64 [B, longest], padded with 0
  at::Tensor reports_masks;  ///< float [B, longest], 1 over each report's ids
};

ReportBatch collate_reports(std::vector<ReportExample> examples);

struct ReportDatasetOptions {
  Dataset dataset = Dataset::iu_xray;
  std::string image_root;      ///< image_paths are relative to it (unused for in-memory images)
  size_t max_seq_length = 60;  ///< R2Gen: IU X-Ray 60, MIMIC-CXR 100
  TransformOptions transform;  ///< r2gen_train() for the train split, r2gen_eval() otherwise
  uint64_t seed = 0;           ///< augmentation seed
  int64_t epoch = 0;           ///< mixed into each sample's augmentation seed
};

/// Images of a study kept in memory instead of files (image_paths ignored), one per view.
using InMemoryImages = std::vector<std::vector<Image>>;

class ReportDataset : public torch::data::datasets::Dataset<ReportDataset, ReportExample> {
 public:
  /// Encodes every report once (truncated to max_seq_length), as R2Gen's BaseDataset.
  ReportDataset(std::vector<Study> studies, const Tokenizer& tokenizer,
                ReportDatasetOptions options);
  /// Studies whose images are in memory (`images[i]` belongs to `studies[i]`).
  ReportDataset(std::vector<Study> studies, InMemoryImages images, const Tokenizer& tokenizer,
                ReportDatasetOptions options);

  ReportExample get(size_t index) override { return example(index); }
  /// get() for const datasets (torch's get is non-const; loading changes no state here).
  ReportExample example(size_t index) const;
  torch::optional<size_t> size() const override { return shared_->studies.size(); }

  /// A copy for another epoch (shares studies, ids and images; changes the augmentation).
  ReportDataset with_epoch(int64_t epoch) const;
  /// A copy with another image transform (shares studies, ids and images).
  ReportDataset with_transform(const TransformOptions& transform) const;
  const ReportDatasetOptions& options() const { return options_; }
  const Study& study(size_t index) const { return shared_->studies.at(index); }
  const std::vector<int64_t>& ids(size_t index) const { return shared_->ids.at(index); }

 private:
  struct Shared {
    std::vector<Study> studies;
    std::vector<std::vector<int64_t>> ids;
    InMemoryImages images;
  };
  std::shared_ptr<const Shared> shared_;
  ReportDatasetOptions options_;
};

/// collate_reports as a torch::data batch transform.
struct CollateReports
    : torch::data::transforms::BatchTransform<std::vector<ReportExample>, ReportBatch> {
  ReportBatch apply_batch(std::vector<ReportExample> examples) override {
    return collate_reports(std::move(examples));
  }
};

/// Shuffled order drawn from (seed, epoch) with our own engine, so the order does not depend on
/// torch's global generator; sequential when shuffle is false.
/// Data-parallel runs: this process's part of each batch (training: a slice of every global
/// batch; decoding: a contiguous block of the split).
struct Shard {
  size_t rank = 0, world_size = 1;
};

class SeededSampler : public torch::data::samplers::Sampler<> {
 public:
  /// With a shard of world_size > 1: shuffled, next(G) returns this rank's slice of the next
  /// global batch of G (the global order is the one-process order, so results do not depend
  /// on the number of ranks; a final global batch smaller than world_size is dropped, as no
  /// rank may go without); not shuffled, this rank's contiguous block in order.
  SeededSampler(size_t size, bool shuffle, uint64_t seed, int64_t epoch, Shard shard = {});
  void reset(torch::optional<size_t> new_size = torch::nullopt) override;
  torch::optional<std::vector<size_t>> next(size_t batch_size) override;
  void save(torch::serialize::OutputArchive& archive) const override;
  void load(torch::serialize::InputArchive& archive) override;

 private:
  std::vector<size_t> order_;
  /// The data set's size: reset() without a size (LibTorch's loaders call it so at every
  /// iteration) starts from it, not from order_, which a decoding shard has cut to its block.
  size_t size_ = 0;
  size_t position_ = 0;
  bool shuffle_;
  uint64_t seed_;
  int64_t epoch_;
  Shard shard_;
};

/// Global batches of `batch_size` a sharded training epoch over `size` studies takes (the
/// one-process count, less a final batch smaller than world_size).
size_t sharded_batches(size_t size, size_t batch_size, size_t world_size);

struct ReportLoaderOptions {
  size_t batch_size = 16;
  size_t workers = 0;  ///< 0 = load in the calling thread
  bool shuffle = false;
  bool drop_last = false;
  Shard shard;  ///< data-parallel runs: this rank's part (see SeededSampler)
};

using ReportLoader = torch::data::StatelessDataLoader<
    torch::data::datasets::MapDataset<ReportDataset, CollateReports>, SeededSampler>;

/// Everything an R2Gen-style run needs from one annotation: the tokenizer (train split,
/// threshold) and the three datasets (train transform on train, eval transform on val/test).
struct R2GenData {
  Tokenizer tokenizer;
  ReportDataset train, val, test;
};

struct R2GenDataOptions {
  int threshold = 3;           ///< R2Gen: IU X-Ray 3, MIMIC-CXR 10
  size_t max_seq_length = 60;  ///< R2Gen: IU X-Ray 60, MIMIC-CXR 100
  uint64_t seed = 0;           ///< augmentation and shuffling
  TransformOptions train_transform = TransformOptions::r2gen_train();
  TransformOptions eval_transform = TransformOptions::r2gen_eval();
};

/// From a loaded annotation whose images live under `image_root`.
R2GenData make_r2gen_data(const Annotation& annotation, const std::string& image_root,
                          const R2GenDataOptions& options = {});
/// From studies with in-memory images (e.g. the synthetic set: studies_of_split and
/// images_of_split); `images` maps split name -> images in the order of that split's studies.
R2GenData make_r2gen_data(const Annotation& annotation,
                          const std::map<std::string, InMemoryImages>& images,
                          const R2GenDataOptions& options = {});

/// A loader over `dataset` (its epoch and seed decide order and augmentation). Batches arrive
/// in sampler order whatever the number of workers (LibTorch enforces ordering by default).
std::unique_ptr<ReportLoader> make_report_loader(const ReportDataset& dataset,
                                                 const ReportLoaderOptions& options);

}  // namespace ihn_toolkit::data
