// Data-parallel training on PyTorch's own distributed engine (c10d): the torchrun environment,
// a Gloo process group (CPU tensors, and CUDA tensors where LibTorch has CUDA), an NCCL group
// for CUDA tensors where LibTorch has NCCL and each rank its own GPU, the collectives
// the trainer needs (broadcast, bucketed gradient averaging, gathering decoded reports), and the
// local launcher behind `ihn train --nproc N`. c10d itself stays inside distributed.cpp.
#pragma once

#include <ihn/collective.hpp>

#include <torch/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace ihn_toolkit::train::dist {

/// The failures of a distributed run: a peer that died or hung, a bad environment.
struct DistributedError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// torchrun's variables, as PyTorch reads them.
struct Environment {
  int64_t rank = 0, world_size = 1, local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  int64_t restart_count = 0;  ///< TORCHELASTIC_RESTART_COUNT: > 0 after an elastic restart
  bool distributed() const { return world_size > 1; }
};

/// RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT (and TORCHELASTIC_RESTART_COUNT);
/// a single process when WORLD_SIZE is unset. A malformed or inconsistent value is a
/// DistributedError naming the variable.
Environment read_environment();

/// Whether this build has c10d's Gloo backend (LibTorch built with it, gloo's headers found).
bool available();
/// Whether this build also has c10d's NCCL backend (a LibTorch with CUDA and NCCL).
bool nccl_available();

/// What carries the CUDA tensors' collectives (`--dist-backend`). Host tensors always go
/// through Gloo, as PyTorch's "cpu:gloo,cuda:nccl" does.
enum class DeviceBackend {
  automatic,  ///< NCCL when the build has it and every rank has a GPU of its own, else Gloo
  gloo,       ///< Gloo (CUDA tensors staged through the host)
  nccl,       ///< NCCL, or an error saying why not
};
/// "auto", "gloo", "nccl" (anything else: a DistributedError).
DeviceBackend parse_device_backend(const std::string& name);

/// One rank's membership of the run's process group.
class Group {
 public:
  /// Rendezvous at MASTER_ADDR:MASTER_PORT (a TCPStore; rank 0 serves it), then a Gloo group,
  /// and, as `device_backend` asks, an NCCL group for CUDA tensors. `cuda_device` is this
  /// rank's GPU (-1: the run is on the CPU); NCCL needs a GPU per rank, so it is used only when
  /// every rank has one of its own — all ranks agree on it through the Gloo group. Every Gloo
  /// collective after that fails with a DistributedError naming the peer problem when it has
  /// not completed within `timeout` (a rank that died or hangs), instead of waiting forever;
  /// NCCL's watchdog ends the process after the same timeout.
  Group(const Environment& env, std::chrono::milliseconds timeout,
        DeviceBackend device_backend = DeviceBackend::automatic, int cuda_device = -1);
  ~Group();
  Group(const Group&) = delete;
  Group& operator=(const Group&) = delete;

  int64_t rank() const;
  int64_t world_size() const;
  /// What carries this group's collectives: "gloo" or "gloo (host), nccl (cuda)".
  std::string backend_name() const;
  /// The group as the library takes it (ihn::Options::process_group).
  std::shared_ptr<ihn::Collective> collective() const;

  /// `tensors` (in place) become rank `root`'s.
  void broadcast(const std::vector<at::Tensor>& tensors, int64_t root = 0);
  /// Element-wise sum over ranks, in place (one flattened all-reduce per dtype).
  void all_reduce_sum(const std::vector<at::Tensor>& tensors);
  /// Every rank's strings, concatenated in rank order.
  std::vector<std::string> all_gather_strings(const std::vector<std::string>& local);
  /// Returns when every rank has called it.
  void barrier();

 private:
  friend class GradientAverager;
  void join_nccl(const Environment& env, std::chrono::milliseconds timeout,
                 DeviceBackend device_backend, int cuda_device);
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// Gradients averaged over ranks, as DDP's reducer does it: flattened into buckets of at most
/// `bucket_bytes`, each all-reduced asynchronously, divided by the world size and written
/// back. With `overlap`, hooks on the parameters copy each gradient into its bucket the moment
/// backward computes it, and a bucket's all-reduce starts as soon as the bucket is complete,
/// while backward goes on with the earlier layers; without, everything starts in finish().
/// Buckets follow the parameters in reverse (the order backward reaches them). Assumes every
/// rank's backward reaches the same parameters, as DDP without find_unused_parameters does.
///
///   averager.prepare();  loss.backward();  averager.finish();  // then clip, step
class GradientAverager {
 public:
  GradientAverager(Group& group, const std::vector<at::Tensor>& parameters, bool overlap = true,
                   int64_t bucket_bytes = int64_t{25} << 20);
  ~GradientAverager();
  GradientAverager(const GradientAverager&) = delete;
  GradientAverager& operator=(const GradientAverager&) = delete;

  /// Before each backward.
  void prepare();
  /// After backward: starts what backward did not (parameters without a gradient count as
  /// zeros), waits for every bucket and writes the averages into the gradients. Returns the
  /// seconds spent here: the communication backward did not hide.
  double finish();

 private:
  struct State;
  std::shared_ptr<State> state_;
};

/// A TCP port on the loopback interface that is free right now (for a local rendezvous).
int free_port();

/// `ihn train --nproc N`: runs `argv` (this program and its arguments, --nproc removed) N
/// times with torchrun's environment on this machine and waits. When a worker fails, the
/// others are stopped (SIGTERM, SIGKILL after 10 s) and the failure is returned as a message;
/// empty when all succeeded.
std::string launch_local(int nproc, const std::vector<std::string>& argv);

}  // namespace ihn_toolkit::train::dist
