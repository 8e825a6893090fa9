// c10d behind toolkit/train/distributed.hpp: TCPStore rendezvous, ProcessGroupGloo (and
// ProcessGroupNCCL for CUDA tensors where LibTorch has it), the collectives of the trainer, and
// the local launcher.
#include "train/distributed.hpp"

#include <ATen/ATen.h>

#ifdef USE_C10D_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#endif
// IHN_C10D_NCCL: set by CMake (with USE_C10D_NCCL, which guards the header) when LibTorch has
// NCCL and the Gloo headers were found; the CPU-only LibTorch of Debian has not.
#ifdef IHN_C10D_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <fmt/core.h>

#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <map>
#include <thread>

namespace ihn_toolkit::train::dist {

namespace {

int64_t env_integer(const char* name, int64_t fallback, int64_t min, int64_t max) {
  const char* text = std::getenv(name);
  if (text == nullptr || *text == '\0') return fallback;
  char* end = nullptr;
  errno = 0;
  const long long value = std::strtoll(text, &end, 10);
  if (errno != 0 || *end != '\0' || value < min || value > max)
    throw DistributedError(fmt::format(
        "environment variable {}={}: expected an integer in [{}, {}]", name, text, min, max));
  return value;
}

bool is_loopback(const std::string& host) {
  return host == "localhost" || host.rfind("127.", 0) == 0 || host == "::1";
}

}  // namespace

DeviceBackend parse_device_backend(const std::string& name) {
  if (name == "auto") return DeviceBackend::automatic;
  if (name == "gloo") return DeviceBackend::gloo;
  if (name == "nccl") return DeviceBackend::nccl;
  throw DistributedError("--dist-backend " + name + ": expected auto, gloo or nccl");
}

bool nccl_available() {
#ifdef IHN_C10D_NCCL
  return true;
#else
  return false;
#endif
}

Environment read_environment() {
  Environment env;
  env.world_size = env_integer("WORLD_SIZE", 1, 1, 1 << 20);
  env.rank = env_integer("RANK", 0, 0, env.world_size - 1);
  env.local_rank = env_integer("LOCAL_RANK", env.rank, 0, env.world_size - 1);
  env.master_port = static_cast<int>(env_integer("MASTER_PORT", 29500, 1, 65535));
  env.restart_count = env_integer("TORCHELASTIC_RESTART_COUNT", 0, 0, 1 << 30);
  if (const char* addr = std::getenv("MASTER_ADDR"); addr != nullptr && *addr != '\0')
    env.master_addr = addr;
  if (env.world_size > 1 && std::getenv("RANK") == nullptr)
    throw DistributedError("WORLD_SIZE is " + std::to_string(env.world_size) +
                           " but RANK is not set: start the workers with torchrun or "
                           "ihn train --nproc");
  return env;
}

#ifdef USE_C10D_GLOO

bool available() {
  return true;
}

struct Group::Impl {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> gloo;  // host tensors; CUDA ones without NCCL
#ifdef IHN_C10D_NCCL
  c10::intrusive_ptr<c10d::ProcessGroupNCCL> nccl;  // CUDA tensors, when every rank has a GPU
#endif
  std::shared_ptr<ihn::Collective> collective;
  int64_t rank = 0, world = 1;

  bool on_nccl(const at::Tensor& t) const {
#ifdef IHN_C10D_NCCL
    return nccl && t.is_cuda();
#else
    static_cast<void>(t);
    return false;
#endif
  }
  c10::intrusive_ptr<c10d::Work> allreduce(std::vector<at::Tensor>& io) {
#ifdef IHN_C10D_NCCL
    if (on_nccl(io.front())) return nccl->allreduce(io);
#endif
    return gloo->allreduce(io);
  }
  c10::intrusive_ptr<c10d::Work> broadcast(std::vector<at::Tensor>& io,
                                           const c10d::BroadcastOptions& options) {
#ifdef IHN_C10D_NCCL
    if (on_nccl(io.front())) return nccl->broadcast(io, options);
#endif
    return gloo->broadcast(io, options);
  }

  // Runs a collective; a peer that died or timed out becomes a DistributedError.
  template <class Launch>
  void run(const char* what, Launch&& launch) {
    try {
      launch()->wait();
    } catch (const std::exception& e) {
      throw DistributedError(fmt::format(
          "rank {}: {} across {} ranks failed: {} (another rank stopped, crashed or hangs; see "
          "its output)",
          rank, what, world, e.what()));
    }
  }
};

namespace {

// Flattens same-dtype tensors into one buffer (Gloo reduces one tensor per call).
std::map<at::ScalarType, std::vector<at::Tensor>> by_dtype(const std::vector<at::Tensor>& ts) {
  std::map<at::ScalarType, std::vector<at::Tensor>> groups;
  for (const auto& t : ts) groups[t.scalar_type()].push_back(t);
  return groups;
}

at::Tensor flatten(const std::vector<at::Tensor>& ts) {
  std::vector<at::Tensor> flat;
  for (const auto& t : ts) flat.push_back(t.reshape({-1}));
  return at::cat(flat);
}

void unflatten(const at::Tensor& buffer, const std::vector<at::Tensor>& ts) {
  int64_t offset = 0;
  for (const auto& t : ts) {
    t.copy_(buffer.narrow(0, offset, t.numel()).view_as(t));
    offset += t.numel();
  }
}

/// The library's collectives on the group that carries each tensor's device.
class DeviceCollective final : public ihn::Collective {
 public:
  DeviceCollective(std::shared_ptr<ihn::Collective> host, std::shared_ptr<ihn::Collective> cuda)
      : host_(std::move(host)), cuda_(std::move(cuda)) {}
  int64_t rank() const override { return host_->rank(); }
  int64_t world_size() const override { return host_->world_size(); }
  std::vector<at::Tensor> all_gather(const at::Tensor& tensor) override {
    return (cuda_ && tensor.is_cuda() ? cuda_ : host_)->all_gather(tensor);
  }

 private:
  std::shared_ptr<ihn::Collective> host_, cuda_;
};

/// Whether this rank can take part in an NCCL group: empty if so, else why not.
std::string nccl_obstacle(const Environment& env, int cuda_device) {
  if (!nccl_available())
    return "this build of ihn has no NCCL (a LibTorch with CUDA and NCCL is needed)";
  if (cuda_device < 0) return "the run is on the CPU (--device cuda for NCCL)";
#ifdef IHN_C10D_NCCL
  const int64_t gpus = c10::cuda::device_count();
  if (env.local_rank >= gpus)
    return fmt::format(
        "local rank {} has no GPU of its own ({} on its machine): NCCL needs one "
        "per rank",
        env.local_rank, gpus);
#else
  static_cast<void>(env);
#endif
  return "";
}

}  // namespace

Group::Group(const Environment& env, std::chrono::milliseconds timeout,
             DeviceBackend device_backend, int cuda_device)
    : impl_(std::make_unique<Impl>()) {
  impl_->rank = env.rank;
  impl_->world = env.world_size;
  try {
    c10d::TCPStoreOptions store_options;
    store_options.port = static_cast<std::uint16_t>(env.master_port);
    store_options.isServer = env.rank == 0;
    store_options.numWorkers = static_cast<std::size_t>(env.world_size);
    store_options.waitWorkers = true;
    store_options.timeout = timeout;
    impl_->store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, store_options);
    auto options = c10d::ProcessGroupGloo::Options::create(timeout);
    if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME"); ifname && *ifname)
      options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
    else if (is_loopback(env.master_addr))
      options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
    else
      options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    impl_->gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(impl_->store, env.rank,
                                                              env.world_size, options);
  } catch (const std::exception& e) {
    throw DistributedError(fmt::format(
        "rank {}: cannot join the process group at {}:{} ({} ranks) within {} s: {}", env.rank,
        env.master_addr, env.master_port, env.world_size, timeout.count() / 1000, e.what()));
  }
  impl_->collective = ihn::process_group(impl_->gloo);
  if (device_backend != DeviceBackend::gloo) join_nccl(env, timeout, device_backend, cuda_device);
}

void Group::join_nccl(const Environment& env, std::chrono::milliseconds timeout,
                      DeviceBackend device_backend, int cuda_device) {
  // Every rank must take the same backend: each says whether it can, and NCCL is used only if
  // all can (a machine with more ranks than GPUs makes the whole run use Gloo).
  const std::string obstacle = nccl_obstacle(env, cuda_device);
  auto able = at::full({1}, obstacle.empty() ? 1.0 : 0.0, at::kDouble);
  all_reduce_sum({able});
  const bool all_able = able.item<double>() == static_cast<double>(env.world_size);
  if (!all_able) {
    if (device_backend == DeviceBackend::nccl)
      throw DistributedError(fmt::format(
          "rank {}: --dist-backend nccl: {} (--dist-backend gloo or auto runs on Gloo)", env.rank,
          obstacle.empty() ? "another rank cannot join an NCCL group (see its error)" : obstacle));
    return;
  }
#ifdef IHN_C10D_NCCL
  // A hung or dead peer: NCCL's watchdog ends the process after `timeout` instead of letting
  // the stream wait forever (the launcher or torchrun then reports the rank). The user's own
  // setting wins.
  ::setenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1", 0);
  ::setenv("NCCL_ASYNC_ERROR_HANDLING", "1", 0);  // its name before PyTorch 2.2
  try {
    c10::cuda::set_device(static_cast<c10::DeviceIndex>(cuda_device));
    auto options = c10d::ProcessGroupNCCL::Options::create();
    options->timeout = timeout;
    impl_->nccl = c10::make_intrusive<c10d::ProcessGroupNCCL>(
        c10::make_intrusive<c10d::PrefixStore>("nccl", impl_->store), env.rank, env.world_size,
        options);
  } catch (const std::exception& e) {
    throw DistributedError(fmt::format("rank {}: cannot create the NCCL group on cuda:{}: {}",
                                       env.rank, cuda_device, e.what()));
  }
  impl_->collective =
      std::make_shared<DeviceCollective>(impl_->collective, ihn::process_group(impl_->nccl));
#else
  static_cast<void>(timeout);
#endif
}

std::string Group::backend_name() const {
#ifdef IHN_C10D_NCCL
  if (impl_->nccl) return "gloo (host), nccl (cuda)";
#endif
  return "gloo";
}

Group::~Group() = default;

int64_t Group::rank() const {
  return impl_->rank;
}
int64_t Group::world_size() const {
  return impl_->world;
}
std::shared_ptr<ihn::Collective> Group::collective() const {
  return impl_->collective;
}

void Group::broadcast(const std::vector<at::Tensor>& tensors, int64_t root) {
  for (auto& [dtype, ts] : by_dtype(tensors)) {
    std::vector<at::Tensor> buffer{flatten(ts)};
    c10d::BroadcastOptions options;
    options.rootRank = root;
    impl_->run("broadcast", [&] { return impl_->broadcast(buffer, options); });
    unflatten(buffer[0], ts);
  }
}

void Group::all_reduce_sum(const std::vector<at::Tensor>& tensors) {
  for (auto& [dtype, ts] : by_dtype(tensors)) {
    std::vector<at::Tensor> buffer{flatten(ts)};
    impl_->run("all-reduce", [&] { return impl_->allreduce(buffer); });
    unflatten(buffer[0], ts);
  }
}

struct GradientAverager::State {
  struct Bucket {
    std::vector<at::Tensor> params;
    std::vector<int64_t> offsets;
    std::vector<bool> ready;
    int64_t pending = 0;
    at::Tensor buffer;
    std::vector<at::Tensor> io;  // {buffer}: Gloo's argument
    c10::intrusive_ptr<c10d::Work> work;
  };
  Group::Impl* group = nullptr;
  std::vector<Bucket> buckets;
  std::vector<std::pair<at::Tensor, unsigned>> hooks;  // (parameter, handle)
  std::string error;  // a launch that failed inside a hook (reported by finish)

  void launch(Bucket& b) {
    try {
      b.work = group->allreduce(b.io);
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
};

GradientAverager::GradientAverager(Group& group, const std::vector<at::Tensor>& parameters,
                                   bool overlap, int64_t bucket_bytes)
    : state_(std::make_shared<State>()) {
  state_->group = group.impl_.get();
  int64_t bytes = 0;
  for (auto it = parameters.rbegin(); it != parameters.rend(); ++it) {
    const auto& p = *it;
    if (!p.requires_grad()) continue;
    const int64_t size = p.numel() * static_cast<int64_t>(p.element_size());
    auto& buckets = state_->buckets;
    if (buckets.empty() || bytes + size > bucket_bytes ||
        buckets.back().params.front().scalar_type() != p.scalar_type() ||
        buckets.back().params.front().device() != p.device()) {
      buckets.emplace_back();
      bytes = 0;
    }
    auto& b = buckets.back();
    b.offsets.push_back(b.params.empty() ? 0 : b.offsets.back() + b.params.back().numel());
    b.params.push_back(p);
    bytes += size;
  }
  for (size_t bi = 0; bi < state_->buckets.size(); ++bi) {
    auto& b = state_->buckets[bi];
    b.buffer = at::zeros({b.offsets.back() + b.params.back().numel()}, b.params.front().options());
    b.io = {b.buffer};
    b.ready.assign(b.params.size(), false);
    for (size_t pi = 0; overlap && pi < b.params.size(); ++pi) {
      std::weak_ptr<State> weak = state_;
      auto hook = [weak, bi, pi](const at::Tensor& grad) {
        auto state = weak.lock();
        if (!state) return;
        auto& bucket = state->buckets[bi];
        if (bucket.ready[pi]) return;  // a second backward without prepare(): left to finish()
        bucket.buffer.narrow(0, bucket.offsets[pi], grad.numel()).copy_(grad.reshape({-1}));
        bucket.ready[pi] = true;
        if (--bucket.pending == 0) state->launch(bucket);
      };
      auto param = b.params[pi];
      state_->hooks.emplace_back(param, param.register_hook(hook));
    }
  }
}

GradientAverager::~GradientAverager() {
  for (auto& [param, handle] : state_->hooks) param.remove_hook(handle);
}

void GradientAverager::prepare() {
  state_->error.clear();
  for (auto& b : state_->buckets) {
    b.ready.assign(b.params.size(), false);
    b.pending = static_cast<int64_t>(b.params.size());
    b.work.reset();
  }
}

double GradientAverager::finish() {
  const auto t0 = std::chrono::steady_clock::now();
  auto& impl = *state_->group;
  for (auto& b : state_->buckets) {
    if (b.work) continue;
    for (size_t pi = 0; pi < b.params.size(); ++pi) {
      if (b.ready[pi]) continue;
      auto slot = b.buffer.narrow(0, b.offsets[pi], b.params[pi].numel());
      const auto& grad = b.params[pi].grad();
      grad.defined() ? slot.copy_(grad.reshape({-1})) : slot.zero_();
    }
    state_->launch(b);
  }
  if (!state_->error.empty())
    throw DistributedError(
        fmt::format("rank {}: gradient all-reduce failed: {}", impl.rank, state_->error));
  const double scale = 1.0 / static_cast<double>(impl.world);
  for (auto& b : state_->buckets) {
    impl.run("gradient all-reduce", [&] { return b.work; });
    b.buffer.mul_(scale);
    for (size_t pi = 0; pi < b.params.size(); ++pi) {
      auto& grad = b.params[pi].mutable_grad();
      if (!grad.defined()) continue;
      grad.copy_(b.buffer.narrow(0, b.offsets[pi], grad.numel()).view_as(grad));
    }
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::vector<std::string> Group::all_gather_strings(const std::vector<std::string>& local) {
  std::vector<int64_t> lengths;
  std::string joined;
  for (const auto& s : local) {
    lengths.push_back(static_cast<int64_t>(s.size()));
    joined += s;
  }
  auto all_lengths =
      ihn::detail::gather_rows(*impl_->collective, at::tensor(lengths, at::kLong)).contiguous();
  auto bytes = at::empty({static_cast<int64_t>(joined.size())}, at::kByte);
  if (!joined.empty()) std::memcpy(bytes.data_ptr<uint8_t>(), joined.data(), joined.size());
  auto all_bytes = ihn::detail::gather_rows(*impl_->collective, bytes).contiguous();
  std::vector<std::string> out;
  const char* p = reinterpret_cast<const char*>(all_bytes.data_ptr<uint8_t>());
  for (int64_t i = 0; i < all_lengths.numel(); ++i) {
    const auto n = static_cast<size_t>(all_lengths.data_ptr<int64_t>()[i]);
    out.emplace_back(p, n);
    p += n;
  }
  return out;
}

void Group::barrier() {
  impl_->run("barrier", [&] { return impl_->gloo->barrier(); });
}

#else  // no Gloo in this build

bool available() {
  return false;
}

struct Group::Impl {};

Group::Group(const Environment&, std::chrono::milliseconds, DeviceBackend, int) {
  throw DistributedError(
      "this build of ihn has no distributed backend (c10d Gloo): install libgloo-dev and "
      "rebuild, or train in one process");
}
Group::~Group() = default;
int64_t Group::rank() const {
  return 0;
}
int64_t Group::world_size() const {
  return 1;
}
std::string Group::backend_name() const {
  return "none";
}
void Group::join_nccl(const Environment&, std::chrono::milliseconds, DeviceBackend, int) {}
std::shared_ptr<ihn::Collective> Group::collective() const {
  return nullptr;
}
void Group::broadcast(const std::vector<at::Tensor>&, int64_t) {}
void Group::all_reduce_sum(const std::vector<at::Tensor>&) {}
std::vector<std::string> Group::all_gather_strings(const std::vector<std::string>& local) {
  return local;
}
void Group::barrier() {}

struct GradientAverager::State {};
GradientAverager::GradientAverager(Group&, const std::vector<at::Tensor>&, bool, int64_t) {}
GradientAverager::~GradientAverager() = default;
void GradientAverager::prepare() {}
double GradientAverager::finish() {
  return 0;
}

#endif

int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw DistributedError(std::string("socket(): ") + std::strerror(errno));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    ::close(fd);
    throw DistributedError(std::string("cannot find a free port: ") + std::strerror(errno));
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

namespace {

std::string describe_exit(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    const int sig = WTERMSIG(status);
    return fmt::format("was killed by signal {} ({})", sig, ::strsignal(sig));
  }
  return "stopped";
}

[[noreturn]] void exec_worker(const std::vector<std::string>& argv, int rank, int nproc, int port) {
#ifdef __linux__
  ::prctl(PR_SET_PDEATHSIG, SIGTERM);  // the launcher killed: its workers stop too
#endif
  ::setenv("RANK", std::to_string(rank).c_str(), 1);
  ::setenv("LOCAL_RANK", std::to_string(rank).c_str(), 1);
  ::setenv("WORLD_SIZE", std::to_string(nproc).c_str(), 1);
  ::setenv("LOCAL_WORLD_SIZE", std::to_string(nproc).c_str(), 1);
  ::setenv("MASTER_ADDR", "127.0.0.1", 1);
  ::setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  ::execv("/proc/self/exe", args.data());
  std::fprintf(stderr, "ihn: cannot start worker %d: %s\n", rank, std::strerror(errno));
  ::_exit(127);
}

}  // namespace

std::string launch_local(int nproc, const std::vector<std::string>& argv) {
  if (!available())
    throw DistributedError(
        "--nproc: this build of ihn has no distributed backend (c10d Gloo): install "
        "libgloo-dev and rebuild");
  const char* preset_port = std::getenv("MASTER_PORT");
  const int port = preset_port && *preset_port
                       ? static_cast<int>(env_integer("MASTER_PORT", 29500, 1, 65535))
                       : free_port();
  std::fflush(stdout);
  std::fflush(stderr);
  std::map<pid_t, int> rank_of;
  for (int r = 0; r < nproc; ++r) {
    const pid_t pid = ::fork();
    if (pid < 0) throw DistributedError(std::string("fork(): ") + std::strerror(errno));
    if (pid == 0) exec_worker(argv, r, nproc, port);
    rank_of[pid] = r;
  }
  // Ctrl-C reaches the workers directly (same process group); the launcher waits for them.
  ::signal(SIGINT, SIG_IGN);
  std::string failure;
  auto deadline = std::chrono::steady_clock::time_point::max();
  while (!rank_of.empty()) {
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, failure.empty() ? 0 : WNOHANG);
    if (pid < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (pid == 0) {  // a failure happened; the others are being stopped
      if (std::chrono::steady_clock::now() > deadline)
        for (const auto& [p, r] : rank_of) ::kill(p, SIGKILL);
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      continue;
    }
    const int rank = rank_of[pid];
    rank_of.erase(pid);
    const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (!ok && failure.empty()) {
      failure = fmt::format("rank {} {}", rank, describe_exit(status));
      if (!rank_of.empty()) failure += "; stopped the other ranks";
      for (const auto& [p, r] : rank_of) ::kill(p, SIGTERM);
      deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    }
  }
  ::signal(SIGINT, SIG_DFL);
  return failure;
}

}  // namespace ihn_toolkit::train::dist
