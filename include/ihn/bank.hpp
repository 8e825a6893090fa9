// What the augmenter remembers about the training set between visits: every report's
// feature (the bank peers are drawn from) and every sample's K negatives (where the next
// visit's max step starts). Both grow with the data set: at MIMIC-CXR's 270,000 training
// reports, D 512 and K 4 they are 0.55 GB and 2.2 GB in float32. Storage::compact keeps the
// bank in bfloat16 and the negatives as int8 with one scale per vector (0.28 + 0.56 GB);
// docs/method.md ("Memory at scale") has the measurements and what it changes.
#pragma once

#include <ihn/detail/checks.hpp>
#include <ihn/detail/precision.hpp>
#include <ihn/features.hpp>
#include <ihn/options.hpp>
#include <ihn/state.hpp>

#include <torch/types.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace ihn {
inline namespace v0 {

namespace detail {

/// Grows `t` (rows x ...) to at least `rows` rows, keeping its first `used` rows; new rows
/// hold `fill`. Capacity grows by half at a time so that repeated inserts stay amortised
/// without doubling a multi-gigabyte store.
inline void grow_rows(at::Tensor& t, int64_t used, int64_t rows, double fill = 0.0) {
  if (t.size(0) >= rows) return;
  const int64_t capacity = std::max<int64_t>(rows, std::max<int64_t>(64, t.size(0) * 3 / 2));
  auto shape = t.sizes().vec();
  shape[0] = capacity;
  auto bigger = at::full(shape, fill, t.options());
  if (used) bigger.narrow(0, 0, used).copy_(t.narrow(0, 0, used));
  t = bigger;
}

/// q · bank^T (B x N) in the queries' dtype, exact for the stored values: a bfloat16 bank is
/// widened 16,384 rows at a time instead of all at once.
inline at::Tensor chunked_similarity(const at::Tensor& queries, const at::Tensor& bank) {
  if (bank.scalar_type() == queries.scalar_type()) return queries.matmul(bank.t());
  constexpr int64_t slab = 16384;
  const int64_t rows = bank.size(0);
  auto out = at::empty({rows, queries.size(0)}, queries.options());  // N x B: slabs contiguous
  for (int64_t start = 0; start < rows; start += slab) {
    const int64_t len = std::min(slab, rows - start);
    auto slab_out = out.narrow(0, start, len);
    at::mm_out(slab_out, bank.narrow(0, start, len).to(queries.scalar_type()), queries.t());
  }
  return out.t();
}

}  // namespace detail

/// Detached, L2-normalised report features of the training set, by the user's example id,
/// refreshed as batches pass. Each entry keeps a hash of its report key so that reports with
/// the same text are never each other's negatives.
class FeatureBank {
 public:
  explicit FeatureBank(Storage storage = Storage::float32) : storage_(storage) {}

  /// Inserts or refreshes rows. ids: B int64; features: B x D; key_hashes: B int64.
  void update(const at::Tensor& ids, const at::Tensor& features, const at::Tensor& key_hashes) {
    at::NoGradGuard no_grad;
    auto feats = l2_normalize(features.detach());
    prepare(feats);
    auto ids_cpu = ids.to(at::kCPU).to(at::kLong).contiguous();
    const int64_t* id_ptr = ids_cpu.data_ptr<int64_t>();
    std::vector<int64_t> rows(static_cast<size_t>(ids_cpu.numel()));
    std::vector<int64_t> new_ids;
    for (int64_t i = 0; i < ids_cpu.numel(); ++i) {
      auto [it, inserted] = row_of_id_.try_emplace(id_ptr[i], count_ + int64_t(new_ids.size()));
      if (inserted) new_ids.push_back(id_ptr[i]);
      rows[static_cast<size_t>(i)] = it->second;
    }
    if (!new_ids.empty()) {
      reserve(count_ + static_cast<int64_t>(new_ids.size()), feats);
      ids_.narrow(0, count_, static_cast<int64_t>(new_ids.size()))
          .copy_(at::tensor(new_ids, at::kLong));
      count_ += static_cast<int64_t>(new_ids.size());
    }
    auto row_index = at::tensor(rows, at::kLong).to(feats.device());
    features_.index_copy_(0, row_index, feats.to(features_.scalar_type()));
    keys_.index_copy_(0, row_index, key_hashes.to(feats.device()).to(at::kLong));
  }

  /// Room for `rows` entries of features like `like` (B x D: size, device, dtype) without
  /// reallocating (e.g. the training set's size): at scale this avoids the transient copies
  /// of growing.
  void reserve(int64_t rows, const at::Tensor& like) {
    prepare(like);
    detail::grow_rows(features_, count_, rows);
    detail::grow_rows(ids_, count_, rows);
    detail::grow_rows(keys_, count_, rows);
  }

  Storage storage() const { return storage_; }
  int64_t size() const { return count_; }
  /// count x D, normalised, in the storage's dtype (bfloat16 when compact).
  at::Tensor features() const { return count_ ? features_.narrow(0, 0, count_) : at::Tensor(); }
  at::Tensor ids() const { return count_ ? ids_.narrow(0, 0, count_) : at::Tensor(); }
  at::Tensor key_hashes() const { return count_ ? keys_.narrow(0, 0, count_) : at::Tensor(); }
  /// Row of an id, or -1.
  int64_t row_of(int64_t id) const {
    auto it = row_of_id_.find(id);
    return it == row_of_id_.end() ? -1 : it->second;
  }
  /// queries (B x D, float) · features^T, exact for the stored features: B x count.
  at::Tensor similarity(const at::Tensor& queries) const {
    return detail::chunked_similarity(queries, features());
  }
  /// The same computed in the storage's dtype (one bfloat16 product when compact: it reads
  /// half the bytes and runs on bfloat16 units), returned in the queries' dtype. Compact
  /// values are off by at most similarity_tolerance().
  at::Tensor approximate_similarity(const at::Tensor& queries) const {
    const auto stored = features_.scalar_type();
    if (stored == queries.scalar_type()) return similarity(queries);
    return queries.to(stored).matmul(features().t()).to(queries.scalar_type());
  }
  /// Bound on |approximate − exact| for unit vectors: the query's rounding to bfloat16
  /// (2^-9 of its norm) plus the product's (2^-9 of |s| <= 1), with a factor 2 of slack.
  double similarity_tolerance() const { return storage_ == Storage::compact ? 0.006 : 0.0; }
  /// The features of bank rows `rows` (any shape of int64) in `dtype`: rows.shape x D.
  at::Tensor gather(const at::Tensor& rows, at::ScalarType dtype) const {
    auto shape = rows.sizes().vec();
    shape.push_back(features_.size(1));
    return features_.index_select(0, rows.reshape({-1}).to(features_.device()))
        .to(dtype)
        .view(shape);
  }
  /// Estimated bytes of one id -> row entry (a hash-map node).
  static constexpr int64_t index_entry_bytes = 32;
  /// Bytes held (allocated capacity, not just the used rows).
  int64_t memory_bytes() const {
    int64_t bytes = static_cast<int64_t>(row_of_id_.size()) * index_entry_bytes;
    for (const auto* t : {&features_, &ids_, &keys_})
      if (t->defined()) bytes += t->numel() * static_cast<int64_t>(t->element_size());
    return bytes;
  }

  /// Rebuilds from saved tensors (ids count, features count x D, key hashes count); features
  /// are converted to this bank's storage.
  void assign(const at::Tensor& ids, const at::Tensor& features, const at::Tensor& key_hashes) {
    row_of_id_.clear();
    count_ = 0;
    features_ = at::Tensor();
    if (!ids.defined() || ids.numel() == 0) return;
    if (features.size(0) != ids.size(0) || key_hashes.size(0) != ids.size(0))
      detail::fail("ihn::FeatureBank::assign", "ids, features and key hashes differ in length");
    features_ = features.to(stored_dtype(features.scalar_type())).clone();
    ids_ = ids.to(at::kCPU).to(at::kLong).clone();
    keys_ = key_hashes.to(features.device()).to(at::kLong).clone();
    count_ = ids.size(0);
    auto acc = ids_.accessor<int64_t, 1>();
    for (int64_t r = 0; r < count_; ++r) {
      if (!row_of_id_.emplace(acc[r], r).second)
        detail::fail("ihn::FeatureBank::assign", "duplicate id " + std::to_string(acc[r]));
    }
  }

 private:
  at::ScalarType stored_dtype(at::ScalarType feature_dtype) const {
    return storage_ == Storage::compact ? at::kBFloat16 : feature_dtype;
  }

  // (Re)creates the storage for features like `feats`: first use, a device or dtype change.
  void prepare(const at::Tensor& feats) {
    const auto dtype = stored_dtype(feats.scalar_type());
    if (features_.defined() && features_.size(1) == feats.size(1) &&
        features_.device() == feats.device() && features_.scalar_type() == dtype)
      return;
    if (count_ > 0 && features_.size(1) != feats.size(1))
      detail::fail("ihn::FeatureBank::update", "feature size changed from " +
                                                   std::to_string(features_.size(1)) + " to " +
                                                   std::to_string(feats.size(1)));
    auto options = feats.options().dtype(dtype);
    features_ = count_ > 0 ? features_.to(options) : at::empty({0, feats.size(1)}, options);
    ids_ = count_ > 0 ? ids_ : at::empty({0}, at::kLong);
    keys_ =
        count_ > 0 ? keys_.to(feats.device()) : at::empty({0}, feats.options().dtype(at::kLong));
  }

  Storage storage_;
  at::Tensor features_, ids_, keys_;
  int64_t count_ = 0;
  std::unordered_map<int64_t, int64_t> row_of_id_;
};

/// Each bank row's K negatives as the last max step left them, and the peer ids they
/// started from (−1 = none): where the next visit of the same sample continues.
class NegativeStore {
 public:
  explicit NegativeStore(Storage storage = Storage::float32) : storage_(storage) {}

  /// Room for `rows` bank rows of K x D negatives like `like` (dtype, device).
  void reserve(int64_t rows, int64_t k, const at::Tensor& like) {
    if (peers_.defined() && peers_.size(1) != k)
      detail::fail("ihn::NegativeStore::reserve", "negatives per sample changed from " +
                                                      std::to_string(peers_.size(1)) + " to " +
                                                      std::to_string(k));
    if (peers_.defined() && peers_.device() != like.device()) *this = moved_to(like.device());
    if (!peers_.defined()) {
      const int64_t dim = like.size(-1);
      const auto value_type = storage_ == Storage::compact ? at::kChar : like.scalar_type();
      values_ = at::zeros({0, k, dim}, like.options().dtype(value_type));
      if (storage_ == Storage::compact) scales_ = at::zeros({0, k, 1}, like.options());
      peers_ = at::full({0, k}, -1, like.options().dtype(at::kLong));
    }
    detail::grow_rows(values_, rows_, rows);
    if (scales_.defined()) detail::grow_rows(scales_, rows_, rows);
    detail::grow_rows(peers_, rows_, rows, -1.0);
    rows_ = std::max(rows_, rows);
  }

  bool empty() const { return rows_ == 0; }
  int64_t rows() const { return rows_; }
  /// Peer ids (n x K) of bank rows `rows`.
  at::Tensor peers(const at::Tensor& rows) const { return peers_.index_select(0, rows); }
  /// Negatives (n x K x D, float32 or the stored float dtype) of bank rows `rows`; compact
  /// codes come back scaled, not renormalised (the max step normalises its start).
  at::Tensor negatives(const at::Tensor& rows) const {
    auto values = values_.index_select(0, rows);
    if (storage_ != Storage::compact) return values;
    return values.to(scales_.scalar_type()) * scales_.index_select(0, rows);
  }
  void put(const at::Tensor& rows, const at::Tensor& negatives, const at::Tensor& peer_ids) {
    at::NoGradGuard no_grad;
    peers_.index_copy_(0, rows, peer_ids);
    if (storage_ != Storage::compact) {
      values_.index_copy_(0, rows, negatives.to(values_.scalar_type()));
      return;
    }
    auto [codes, scales] = quantise(negatives.to(scales_.scalar_type()));
    values_.index_copy_(0, rows, codes);
    scales_.index_copy_(0, rows, scales);
  }

  int64_t memory_bytes() const {
    int64_t bytes = 0;
    for (const auto* t : {&values_, &scales_, &peers_})
      if (t->defined()) bytes += t->numel() * static_cast<int64_t>(t->element_size());
    return bytes;
  }

  /// "values" (float32) or "codes" + "scales" (compact), and "peer_ids": the first `rows`.
  StateDict state_dict(int64_t rows) const {
    StateDict state;
    if (!peers_.defined() || rows == 0) return state;
    rows = std::min(rows, rows_);
    if (storage_ == Storage::compact) {
      state["codes"] = values_.narrow(0, 0, rows).cpu().clone();
      state["scales"] = scales_.narrow(0, 0, rows).cpu().clone();
    } else {
      state["values"] = values_.narrow(0, 0, rows).cpu().clone();
    }
    state["peer_ids"] = peers_.narrow(0, 0, rows).cpu().clone();
    return state;
  }

  /// Restores either form into this store's storage, on `device`.
  void load_state_dict(const StateDict& state, at::Device device) {
    *this = NegativeStore(storage_);
    if (!state.count("peer_ids")) return;
    const std::string owner = "ihn::NegativeStore::load_state_dict";
    auto peer_ids = state.at("peer_ids").to(device).to(at::kLong);
    at::Tensor values;
    if (state.count("values")) {
      values = detail::at_least_float32(state.at("values").to(device));
    } else {
      auto codes = detail::require(state, "codes", owner).to(device);
      values = codes.to(at::kFloat) * detail::require(state, "scales", owner).to(device);
    }
    if (values.dim() != 3 || values.size(0) != peer_ids.size(0) ||
        values.size(1) != peer_ids.size(1))
      detail::fail(owner, "negatives " + detail::shape_string(values) + " and peer ids " +
                              detail::shape_string(peer_ids) + " disagree");
    reserve(values.size(0), values.size(1), values);
    put(at::arange(values.size(0), peer_ids.options()), values, peer_ids);
  }

 private:
  // int8 codes and per-vector scales: x ≈ codes · scale, |codes| <= 127.
  static std::pair<at::Tensor, at::Tensor> quantise(const at::Tensor& x) {
    auto scales = x.abs().amax(-1, true).clamp_min(1e-30) / 127.0;
    auto codes = (x / scales).round().clamp(-127, 127).to(at::kChar);
    return {codes, scales};
  }

  NegativeStore moved_to(at::Device device) const {
    NegativeStore out(storage_);
    out.rows_ = rows_;
    out.values_ = values_.to(device);
    if (scales_.defined()) out.scales_ = scales_.to(device);
    out.peers_ = peers_.to(device);
    return out;
  }

  Storage storage_;
  at::Tensor values_;  // rows x K x D: float, or int8 codes when compact
  at::Tensor scales_;  // rows x K x 1 (compact only)
  at::Tensor peers_;   // rows x K peer ids
  int64_t rows_ = 0;
};

}  // namespace v0
}  // namespace ihn
