// Data-parallel training: what ihn needs from a process group, and how it uses it.
//
// Given a process group (Options::process_group, AlignmentLossOptions::process_group), ihn
// works on the global batch: every rank gathers every rank's features, ids and report keys,
// so the feature bank holds the whole data set on every rank (identically), peers come from
// all of it, and the alignment loss is the global batch's — with gradients flowing to each
// rank's own features only, as distributed contrastive losses do. The returned term's value
// is the global loss; its gradient is scaled by the world size so that averaging gradients
// across ranks (what DDP does) yields the gradient of the global-batch loss: 2 ranks x
// batch 8 train exactly as 1 rank x batch 16.
//
// The library does not depend on c10d: `ihn::process_group(pg)` adapts any c10d process group
// (LibTorch 1.13's c10d::ProcessGroup, 2.x's ProcessGroup or a Backend such as
// ProcessGroupGloo / ProcessGroupNCCL) — anything with getRank(), getSize() and
// allgather(outputs, inputs) — and a user may implement Collective over any transport.
#pragma once

#include <ihn/detail/checks.hpp>

#include <torch/types.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace ihn {
inline namespace v0 {

/// The collective operations ihn uses. Every rank must call them in the same order.
class Collective {
 public:
  virtual ~Collective() = default;
  virtual int64_t rank() const = 0;
  virtual int64_t world_size() const = 0;
  /// Every rank's `tensor` (the same shape and dtype on every rank), in rank order.
  virtual std::vector<at::Tensor> all_gather(const at::Tensor& tensor) = 0;
};

namespace detail {

template <class Group>
class ProcessGroupCollective final : public Collective {
 public:
  explicit ProcessGroupCollective(c10::intrusive_ptr<Group> group) : group_(std::move(group)) {}
  int64_t rank() const override { return group_->getRank(); }
  int64_t world_size() const override { return group_->getSize(); }
  std::vector<at::Tensor> all_gather(const at::Tensor& tensor) override {
    std::vector<at::Tensor> input{tensor.contiguous()};
    std::vector<std::vector<at::Tensor>> output(1);
    for (int64_t r = 0; r < world_size(); ++r) output[0].push_back(at::empty_like(input[0]));
    group_->allgather(output, input)->wait();
    return output[0];
  }

 private:
  c10::intrusive_ptr<Group> group_;
};

}  // namespace detail

/// A Collective over a c10d process group or backend (see the header comment).
template <class Group>
std::shared_ptr<Collective> process_group(c10::intrusive_ptr<Group> group) {
  if (!group) detail::fail("ihn::process_group", "null process group");
  return std::make_shared<detail::ProcessGroupCollective<Group>>(std::move(group));
}

namespace detail {

/// How a global batch is split over the ranks: each rank's row count (ranks may differ) and
/// where this rank's rows start. One all-gather; every tensor of the batch then reuses it.
struct RowLayout {
  std::vector<int64_t> counts;
  int64_t offset = 0;
  int64_t widest() const { return *std::max_element(counts.begin(), counts.end()); }
};

inline RowLayout row_layout(Collective& group, int64_t local_rows, at::Device device) {
  const auto sizes =
      group.all_gather(at::tensor(std::vector<int64_t>{local_rows}, at::kLong).to(device));
  RowLayout layout;
  for (const auto& s : sizes) layout.counts.push_back(s.cpu().item<int64_t>());
  for (int64_t r = 0; r < group.rank(); ++r) layout.offset += layout.counts[static_cast<size_t>(r)];
  return layout;
}

/// Rows of every rank's `local` (its layout.counts[rank] x ...), concatenated in rank order.
/// Detached; every rank gets the same tensor.
inline at::Tensor gather_rows(Collective& group, const at::Tensor& local, const RowLayout& layout) {
  auto padded = local.detach();
  if (local.size(0) < layout.widest()) {
    auto shape = local.sizes().vec();
    shape[0] = layout.widest() - local.size(0);
    padded = at::cat({padded, at::zeros(shape, local.options())});
  }
  auto parts = group.all_gather(padded);
  for (size_t r = 0; r < parts.size(); ++r) parts[r] = parts[r].narrow(0, 0, layout.counts[r]);
  return at::cat(parts);
}

/// The same for a tensor whose row counts are not known yet (two all-gathers).
inline at::Tensor gather_rows(Collective& group, const at::Tensor& local) {
  return gather_rows(group, local, row_layout(group, local.size(0), local.device()));
}

/// The global batch with this rank's rows replaced by `local` itself, so gradients reach it.
inline at::Tensor with_local_rows(const at::Tensor& global, const at::Tensor& local,
                                  int64_t offset) {
  const int64_t n = local.size(0), total = global.size(0);
  return at::cat(
      {global.narrow(0, 0, offset), local, global.narrow(0, offset + n, total - offset - n)});
}

/// `loss`'s value with its gradient multiplied by `factor`.
inline at::Tensor scale_gradient(const at::Tensor& loss, double factor) {
  if (factor == 1.0) return loss;
  return factor * loss - (factor - 1.0) * loss.detach();
}

}  // namespace detail
}  // namespace v0
}  // namespace ihn
