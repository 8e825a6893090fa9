// The trainer (train.hpp): the run folder, its lock and log, and the training loop
// (TrainingRun). What it shares with evaluation (data, checkpoints, decoding) is session.hpp;
// evaluation and generation are evaluate.cpp; the config (config.cpp) and the comparison
// (compare.cpp) need no LibTorch.
#include "train/train.hpp"

#include <torch/torch.h>

#include "train/authors_checkpoint.hpp"
#include "train/distributed.hpp"
#include "train/internal.hpp"
#include "train/session.hpp"

#include <ihn/eval.hpp>
#include <ihn/hooks.hpp>
#include <ihn/official.hpp>
#include <ihn/state.hpp>
#include <ihn/version.hpp>

#include "data/annotation.hpp"
#include "data/image.hpp"
#include "data/loader.hpp"
#include "data/negatives.hpp"
#include "data/synthetic.hpp"
#include "data/tokenizer.hpp"
#include "nn/fused_adam.hpp"
#include "nn/generator.hpp"
#include "nn/precision.hpp"
#include "train/models.hpp"
#include "train/official_step.hpp"
#include "train/pretrain.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <fmt/core.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <memory>
#include <numeric>
#include <optional>
#include <set>
#include <sstream>
#include <type_traits>
#include <unordered_map>

namespace ihn_toolkit::train {

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace session;  // NOLINT: the pieces shared with evaluate.cpp

// ------------------------------------------------------------------------------------------
// Signals

namespace {
std::atomic<bool> g_stop{false};
extern "C" void ihn_train_on_signal(int sig) {
  g_stop.store(true);
  std::signal(sig, SIG_DFL);  // a second Ctrl-C kills at once
}
}  // namespace

void install_signal_handlers() {
  std::signal(SIGINT, ihn_train_on_signal);
  std::signal(SIGTERM, ihn_train_on_signal);
}
bool stop_requested() {
  return g_stop.load();
}

// ------------------------------------------------------------------------------------------
// The run folder: one writer at a time, last.pt as the commit record, a log that matches it

namespace {

/// IHN_KILL_AT=POINT or POINT@N (the N-th time the run reaches POINT) ends the process with
/// SIGKILL there, as a power cut or the OOM killer would; tests/test_train.cpp's fault-injection
/// case uses it to kill a run around every checkpoint write. Points: "step" (after a step's log
/// line), "before_best", "between_checkpoints" (best.pt written, last.pt not yet), "after_last".
void kill_point(const char* point) {
  static const std::pair<std::string, long> target = [] {
    const char* v = std::getenv("IHN_KILL_AT");
    std::string spec = v ? v : "";
    const auto at = spec.find('@');
    if (at == std::string::npos) return std::make_pair(spec, 1L);
    return std::make_pair(spec.substr(0, at), std::strtol(spec.c_str() + at + 1, nullptr, 10));
  }();
  static long hits = 0;
  if (target.first.empty() || target.first != point) return;
  // IHN_KILL_RANK=R: in a data-parallel run only rank R dies (a crashed worker).
  if (const char* rank = std::getenv("IHN_KILL_RANK"); rank && *rank) {
    const char* mine = std::getenv("RANK");
    if (std::string(rank) != (mine ? mine : "0")) return;
  }
  if (++hits == target.second) {
    std::fflush(nullptr);
    // IHN_KILL_SIGNAL=STOP: the process hangs instead of dying (a stuck worker); TERM: it is
    // asked to stop, as by a scheduler (the run saves and ends at the next step).
    const char* signal_name = std::getenv("IHN_KILL_SIGNAL");
    const std::string how = signal_name ? signal_name : "";
    std::raise(how == "STOP" ? SIGSTOP : how == "TERM" ? SIGTERM : SIGKILL);
  }
}

/// An exclusive lock on RUN/.lock for as long as a run writes the folder: two runs on one
/// folder would share last.pt.tmp and interleave log.jsonl. flock() locks die with the process,
/// so a killed run leaves nothing to clean up; the file is kept (unlinking it would let a third
/// run lock a new inode while the second still holds the old one).
class RunFolderLock {
 public:
  explicit RunFolderLock(const fs::path& dir) {
    const fs::path path = dir / ".lock";
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0)
      throw TrainError(path.string() + ": cannot create the run folder's lock file (" +
                       std::strerror(errno) + ")");
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      const int err = errno;
      char holder[32] = {0};
      const ssize_t n = ::pread(fd_, holder, sizeof holder - 1, 0);
      ::close(fd_);
      if (err == EWOULDBLOCK)
        throw TrainError(
            dir.string() + ": another ihn train" +
            (n > 0 ? " (pid " + std::string(holder, static_cast<size_t>(n)) + ")" : std::string()) +
            " is writing this run folder; wait for it to end, or give another --out");
      throw TrainError(path.string() + ": cannot lock the run folder (" + std::strerror(err) + ")");
    }
    const std::string pid = std::to_string(::getpid());
    if (::ftruncate(fd_, 0) == 0 && ::pwrite(fd_, pid.data(), pid.size(), 0) < 0) {
      // The pid is only for the message above; the lock holds without it.
    }
  }
  RunFolderLock(const RunFolderLock&) = delete;
  RunFolderLock& operator=(const RunFolderLock&) = delete;
  ~RunFolderLock() { ::close(fd_); }

 private:
  int fd_ = -1;
};

/// Removes `*.tmp` left by a write that was killed or failed (a full disk stays full otherwise).
void remove_stale_temporaries(const fs::path& dir) {
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec))
    if (entry.path().extension() == ".tmp") fs::remove(entry.path(), ec);
}

/// The largest epoch of an "epoch" row of log.jsonl (0 when none or no file).
int64_t max_logged_epoch(const fs::path& file) {
  std::ifstream in(file);
  std::string line;
  int64_t epoch = 0;
  while (std::getline(in, line)) {
    const json row = json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (row.is_object() && row.value("type", "") == "epoch")
      epoch = std::max(epoch, row.value("epoch", int64_t{0}));
  }
  return epoch;
}

/// Keeps the rows of log.jsonl that the checkpoint being resumed has seen: steps up to its
/// global step and epochs up to its epoch. A run killed after logging steps (or an epoch) but
/// before writing last.pt repeats them when resumed; without this they would appear twice. A
/// line cut short by the kill is dropped too. Written atomically, as the checkpoints are.
void truncate_log(const fs::path& file, int64_t epoch_done, int64_t global_step) {
  std::ifstream in(file);
  if (!in) return;
  std::string kept, line;
  while (std::getline(in, line)) {
    const json row = json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (row.is_discarded() || !row.is_object()) continue;
    const std::string type = row.value("type", "");
    if (type == "step" && row.value("step", int64_t{0}) > global_step) continue;
    if (type == "epoch" && row.value("epoch", int64_t{0}) > epoch_done) continue;
    kept += line + "\n";
  }
  in.close();
  fs::path tmp = file;
  tmp += ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << kept;
    out.close();
    if (out.fail()) {
      fs::remove(tmp);
      throw TrainError("writing " + tmp.string() + " failed (disk full?)");
    }
  }
  fs::rename(tmp, file);
}

}  // namespace

// ------------------------------------------------------------------------------------------
// Training

namespace {

// The negative pair's augmentation comes from this epoch offset, so it is drawn independently
// of the crop/flip the same study gets as a positive in that epoch (the release transforms the
// negative image separately too).
constexpr int64_t kNegativeEpochOffset = 1000003;

template <class Traits>
TrainResult train_model(TrainConfig config, ihn::StateDict resume_state,
                        std::chrono::steady_clock::time_point t_start, dist::Group* group);

/// The pretrained extractor a run starts from: --visual-init, or the cached --pretrain file
/// (trained first when missing); "" = from scratch.
std::string visual_init_path(const TrainConfig& c) {
  if (!c.model.visual_init.empty()) return c.model.visual_init;
  if (!c.model.pretraining.enabled) return "";
  return ensure_pretrained(pretrain_config_for(c), pretrain_cache_path(c)).path;
}

}  // namespace

TrainResult train(TrainConfig config) {
  const auto t_start = std::chrono::steady_clock::now();
  if (config.run.out.empty()) throw TrainError("--out RUN_DIR is required");
  const fs::path out_dir = config.run.out, last_path = out_dir / "last.pt";
  const dist::Environment env = dist::read_environment();
  // torchrun --max-restarts: a restarted worker continues the run its predecessor saved.
  if (env.restart_count > 0 && fs::exists(last_path)) config.run.resume = true;
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec)
    throw TrainError(out_dir.string() + ": cannot create the run folder (" + ec.message() + ")");
  // Rank 0 is the folder's one writer; the other ranks only read last.pt.
  std::optional<RunFolderLock> lock;
  if (env.rank == 0) {
    lock.emplace(out_dir);
    remove_stale_temporaries(out_dir);
  }
  ihn::StateDict resume_state;
  if (!config.run.resume && fs::exists(last_path))
    throw TrainError(out_dir.string() +
                     " already holds a run (last.pt): continue it with --resume, or give "
                     "another --out (nothing was changed)");
  if (!config.run.resume) {
    // No last.pt. A run killed before its first last.pt committed nothing (best.pt is written
    // first, so it may be there, from epoch 1): its log rows and best.pt would mix with this
    // run's. Anything more (later epochs, test results) is a finished run whose last.pt was
    // removed by hand, and is kept.
    if (fs::exists(out_dir / "test.json") || max_logged_epoch(out_dir / "log.jsonl") > 1)
      throw TrainError(out_dir.string() +
                       " holds the results of an earlier run (test.json or epochs in log.jsonl) "
                       "but no last.pt to resume: give another --out (nothing was changed)");
    if (env.rank == 0) {
      fs::remove(out_dir / "log.jsonl", ec);
      fs::remove(out_dir / "best.pt", ec);
    }
  }
  if (config.run.resume) {
    if (!fs::exists(last_path))
      throw TrainError(last_path.string() +
                       ": nothing to resume (no last.pt; start without --resume)");
    auto ck = read_checkpoint(last_path.string());
    // The recipe comes from the checkpoint; only runtime options and the epoch budget change.
    TrainConfig merged = ck.config;
    merged.optim.epochs =
        config.optim.epochs > 0 ? config.optim.epochs : ck.config.optim.epochs;  // 0: the run's own
    merged.run.out = config.run.out;
    merged.run.device = config.run.device;
    merged.run.threads = config.run.threads;
    merged.run.dist_timeout = config.run.dist_timeout;
    merged.run.dist_backend = config.run.dist_backend;
    merged.run.quiet = config.run.quiet;
    merged.run.stop_after = config.run.stop_after;
    merged.run.plots = config.run.plots;
    merged.run.label = config.run.label;
    merged.run.resume = true;
    config = merged;
    resume_state = std::move(ck.state);
  }
  validate(config);
  std::unique_ptr<dist::Group> group;
  if (env.distributed()) {
    if (config.ihn.mode == "official")
      throw TrainError(
          "--ihn official trains in one process (the release's loss mixes the samples of one "
          "batch); use --ihn paper or off with torchrun / --nproc");
    if (config.optim.batch_size < env.world_size)
      throw TrainError(
          fmt::format("--batch-size {} is the global batch of all {} ranks: it must "
                      "be at least the number of ranks",
                      config.optim.batch_size, env.world_size));
    // One GPU per local rank, as torchrun users expect; more ranks than GPUs share them
    // round-robin (then on Gloo, which stages CUDA tensors through the host: NCCL cannot).
    int cuda_device = -1;
    if (config.run.device.rfind("cuda", 0) == 0 && torch::cuda::device_count() > 0) {
      cuda_device = static_cast<int>(env.local_rank % torch::cuda::device_count());
      config.run.device = fmt::format("cuda:{}", cuda_device);
    }
    group = std::make_unique<dist::Group>(env, std::chrono::seconds(config.run.dist_timeout),
                                          dist::parse_device_backend(config.run.dist_backend),
                                          cuda_device);
  }
  return dispatch_model(config.model.architecture, [&](auto traits) {
    return train_model<decltype(traits)>(std::move(config), std::move(resume_state), t_start,
                                         group.get());
  });
}

namespace {

/// The trainer's counters and running sums; all of it goes into the checkpoint.
struct TrainerState {
  int64_t epoch_done = 0, batch_in_epoch = 0, global_step = 0, best_epoch = 0, bad_epochs = 0;
  double best_score = -1, loss_sum = 0, loss_count = 0;
  std::vector<double> epoch_losses;
  std::map<std::string, double> log_sums;  ///< the epoch's per-step logs, summed
  double loss_scale = 1;                   ///< fp16: GradScaler's scale and its finite steps
  int64_t loss_scale_finite_steps = 0;

  void save(ihn::StateDict& s) const {
    s["trainer.loss_scale"] = scalar_tensor(loss_scale);
    s["trainer.loss_scale_finite_steps"] =
        scalar_tensor(static_cast<double>(loss_scale_finite_steps));
    s["trainer.epoch"] = scalar_tensor(static_cast<double>(epoch_done));
    s["trainer.batch"] = scalar_tensor(static_cast<double>(batch_in_epoch));
    s["trainer.global_step"] = scalar_tensor(static_cast<double>(global_step));
    s["trainer.best_epoch"] = scalar_tensor(static_cast<double>(best_epoch));
    s["trainer.bad_epochs"] = scalar_tensor(static_cast<double>(bad_epochs));
    // The best score keeps the key "trainer.best_bleu4", older than the choice of metric.
    s["trainer.best_bleu4"] = scalar_tensor(best_score);
    s["trainer.loss_sum"] = scalar_tensor(loss_sum);
    s["trainer.loss_count"] = scalar_tensor(loss_count);
    s["trainer.epoch_losses"] =
        torch::tensor(epoch_losses.empty() ? std::vector<double>{} : epoch_losses, torch::kFloat64);
    for (const auto& [k, v] : log_sums) s["trainer.logs." + k] = scalar_tensor(v);
  }

  void load(const ihn::StateDict& s, const std::string& file) {
    auto count = [&](const char* key) { return static_cast<int64_t>(tensor_scalar(s, key, file)); };
    epoch_done = count("trainer.epoch");
    batch_in_epoch = count("trainer.batch");
    global_step = count("trainer.global_step");
    best_epoch = count("trainer.best_epoch");
    bad_epochs = count("trainer.bad_epochs");
    best_score = tensor_scalar(s, "trainer.best_bleu4", file);
    loss_sum = tensor_scalar(s, "trainer.loss_sum", file);
    loss_count = tensor_scalar(s, "trainer.loss_count", file);
    auto it = s.find("trainer.epoch_losses");
    if (it == s.end()) throw TrainError(file + ": no entry 'trainer.epoch_losses'");
    const auto losses = it->second.to(torch::kFloat64).contiguous();
    epoch_losses.assign(losses.data_ptr<double>(), losses.data_ptr<double>() + losses.numel());
    for (const auto& [k, v] : ihn::sub_state(s, "trainer.logs")) log_sums[k] = v.item<double>();
    if (s.count("trainer.loss_scale")) {  // absent before mixed precision: float32 runs
      loss_scale = tensor_scalar(s, "trainer.loss_scale", file);
      loss_scale_finite_steps = count("trainer.loss_scale_finite_steps");
    }
  }

  double mean_loss() const { return loss_sum / std::max(loss_count, 1.0); }

  /// Records an epoch's validation score; true when it is the best so far.
  bool record_score(int64_t epoch, double score) {
    if (!(score > best_score)) {
      ++bad_epochs;
      return false;
    }
    best_score = score;
    best_epoch = epoch;
    bad_epochs = 0;
    return true;
  }

  /// Closes `epoch`: the sums start again for the next one.
  void close_epoch(int64_t epoch) {
    epoch_done = epoch;
    batch_in_epoch = 0;
    loss_sum = loss_count = 0;
    log_sums.clear();
  }
};

/// --ihn official: the release's heads and temperatures, its offline negatives and its λ.
struct OfficialMode {
  OfficialHeads heads{nullptr};
  std::vector<int64_t> negative_of;  ///< training index -> training index of its negative
  std::string negatives_note;
  ihn::OfficialLossOptions loss;
  double alpha = 0;
  int64_t parameters = 0;
  explicit operator bool() const { return !heads.is_empty(); }
};

template <class Traits>
OfficialMode make_official_mode(const TrainConfig& config, const typename Traits::Options& options,
                                int64_t views, const RunData& data, torch::Device device) {
  OfficialMode m;
  if (config.ihn.mode != "official") return m;
  // The heads draw from their own seed and leave torch's generator where it was, so dropout
  // sees the same draws as the run without ihn.
  at::Generator generator = at::detail::getDefaultCPUGenerator();
  const auto saved = generator.get_state();
  torch::manual_seed(config.optim.seed + 1);
  m.heads = OfficialHeads(Traits::official_image_dim(options, views),
                          Traits::official_report_dim(options), config.model.d_model);
  generator.set_state(saved);
  m.heads->to(device);
  for (const auto& p : m.heads->parameters()) m.parameters += p.numel();
  m.negative_of = official_negatives(config, data, &m.negatives_note);
  m.alpha = official_alpha_of(config.ihn.library.schedule());
  m.loss.alpha(m.alpha).legacy_batch_mixing(config.ihn.official_legacy);
  return m;
}

/// R2Gen's build_optimizer: Adam over two groups, the visual extractor (lr_ve) and the rest
/// (lr_ed); official mode's heads learn at lr_ed in a third group, as the release gives every
/// non-visual parameter. `clipped` is every trained tensor, for clipping by value.
struct Optimisation {
  std::vector<at::Tensor> clipped;
  std::unique_ptr<nn::FusedAdam> adam;  // Adam, one pass per tensor
};

template <class Traits>
Optimisation make_optimisation(typename Traits::Model& model, const TrainConfig& config,
                               const OfficialMode& official) {
  std::vector<at::Tensor> ve_params, ed_params;
  for (const auto& [name, p] : Traits::named_parameters(model))
    (Traits::is_visual_parameter(name) ? ve_params : ed_params).push_back(p);
  Optimisation o;
  o.clipped = ve_params;
  o.clipped.insert(o.clipped.end(), ed_params.begin(), ed_params.end());
  auto adam = [&](double lr) {
    return torch::optim::AdamOptions(lr)
        .betas({config.optim.adam_beta1, config.optim.adam_beta2})
        .eps(config.optim.adam_eps)
        .weight_decay(config.optim.weight_decay)
        .amsgrad(config.optim.amsgrad);
  };
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(ve_params,
                      std::make_unique<torch::optim::AdamOptions>(adam(config.optim.lr_ve)));
  groups.emplace_back(ed_params,
                      std::make_unique<torch::optim::AdamOptions>(adam(config.optim.lr_ed)));
  if (official) {
    for (const auto& p : official.heads->parameters())
      o.clipped.push_back(p);  // the release clips model.parameters(), heads included
    groups.emplace_back(official.heads->parameters(),
                        std::make_unique<torch::optim::AdamOptions>(adam(config.optim.lr_ed)));
  }
  o.adam = std::make_unique<nn::FusedAdam>(std::move(groups), adam(config.optim.lr_ed));
  return o;
}

/// StepLR per epoch, computed from the epoch so that resuming needs no scheduler object.
/// Returns the factor applied to lr_ve and lr_ed.
double set_epoch_learning_rates(nn::FusedAdam& optimizer, const TrainConfig& config,
                                int64_t epoch) {
  const double factor =
      std::pow(config.optim.lr_gamma, static_cast<double>((epoch - 1) / config.optim.lr_step));
  auto& groups = optimizer.param_groups();
  static_cast<torch::optim::AdamOptions&>(groups[0].options()).lr(config.optim.lr_ve * factor);
  for (size_t g = 1; g < groups.size(); ++g)
    static_cast<torch::optim::AdamOptions&>(groups[g].options()).lr(config.optim.lr_ed * factor);
  return factor;
}

/// --bank-storage: auto is compact from this many training reports on (MIMIC-CXR's 270,000
/// then hold 0.86 GB instead of 2.8 GB; docs/performance.md, "The augmenter at MIMIC-CXR scale").
constexpr int64_t compact_bank_from_reports = 100000;

ihn::Storage bank_storage(const TrainConfig& config, int64_t train_reports) {
  if (config.ihn.bank_storage == "compact") return ihn::Storage::compact;
  if (config.ihn.bank_storage == "float32") return ihn::Storage::float32;
  return train_reports >= compact_bank_from_reports ? ihn::Storage::compact : ihn::Storage::float32;
}

/// --ihn paper: the library's augmenter as a callback of the loop, with room for the
/// training set's reports.
template <class Model>
std::vector<std::shared_ptr<ihn::Callback>> make_callbacks(Model& model, const TrainConfig& config,
                                                           torch::Device device,
                                                           int64_t train_reports,
                                                           dist::Group* group) {
  std::vector<std::shared_ptr<ihn::Callback>> callbacks;
  if (config.ihn.mode != "paper") return callbacks;
  auto callback = std::make_shared<ihn::HardNegativeCallback<Model>>(
      model,
      // The library's options as configured, and what only the run knows.
      ihn::Options(config.ihn.library)
          .seed(config.optim.seed)
          .storage(bank_storage(config, train_reports))
          .process_group(group ? group->collective() : nullptr),
      device);
  callback->augmenter().reserve(train_reports);
  callbacks.push_back(callback);
  return callbacks;
}

/// One training run: the parts built from the config (data, model, optimiser, ihn), then a
/// loop of epochs (train_epoch, validate_epoch, commit_epoch) and the test evaluation (finish).
template <class Traits>
class TrainingRun {
 public:
  using Model = typename Traits::Model;

  TrainingRun(TrainConfig config, const ihn::StateDict& resume_state, dist::Group* group)
      : group_(group),
        config_(quiet_unless_main(std::move(config), group)),
        out_dir_(config_.run.out),
        last_path_(out_dir_ / "last.pt"),
        best_path_(out_dir_ / "best.pt"),
        device_(parse_device(config_.run.device)),
        data_(build_data(config_)),
        label_(config_.run.label.empty() ? "" : config_.run.label + " "),
        options_(Traits::options(config_.model, config_.data.max_seq_length,
                                 data_.tokenizer.vocab_size())),
        precision_(nn::parse_precision(config_.optim.precision)),
        scaler_(precision_ == nn::Precision::fp16) {
    nn::check_precision(precision_, device_);
    fs::create_directories(out_dir_ / "reports");
    for (const auto& [name, split, why] :
         {std::tuple{"train", data_.train.get(), "nothing to train on"},
          std::tuple{"val", data_.val.get(), "best.pt is selected on it"},
          std::tuple{"test", data_.test.get(), "the run ends by scoring best.pt on it"}})
      if (*split->size() == 0)
        throw TrainError(data_source(config_) + ": the " + name + " split is empty (" + why + ")");
    // Pretraining (--pretrain without a cached file) draws from torch's generator: done before
    // the seed, a run that pretrains gives the same weights as one that finds the file.
    const std::string init = config_.run.resume ? "" : shared_visual_init();
    torch::manual_seed(config_.optim.seed);
    model_ = Model(options_);
    if (!init.empty()) load_visual_init(init);
    if (config_.model.freeze_visual)
      for (auto& p : model_->visual_extractor->parameters()) p.requires_grad_(false);
    place_model(model_, config_, device_);
    official_ = make_official_mode<Traits>(config_, options_, data_.views, data_, device_);
    optimisation_ = make_optimisation<Traits>(model_, config_, official_);
    callbacks_ = make_callbacks(model_, config_, device_,
                                static_cast<int64_t>(data_.train_keys.size()), group_);
    if (config_.run.resume) {
      restore(resume_state, last_path_.string());
      scaler_.restore(state_.loss_scale, state_.loss_scale_finite_steps);
      if (main_rank()) truncate_log(out_dir_ / "log.jsonl", state_.epoch_done, state_.global_step);
    }
    if (group_) {
      synchronise_start(resume_state);
      // IHN_DIST_OVERLAP=0: all-reduce after backward instead (benchmarks/distributed.sh).
      const char* overlap = std::getenv("IHN_DIST_OVERLAP");
      averager_ = std::make_unique<dist::GradientAverager>(*group_, optimisation_.clipped,
                                                           !overlap || std::string(overlap) != "0");
    }
    if (main_rank()) {
      log_.open(out_dir_ / "log.jsonl", std::ios::app);
      if (!log_) throw TrainError("cannot write " + (out_dir_ / "log.jsonl").string());
    }
  }

  TrainResult run(std::chrono::steady_clock::time_point t_start) {
    print_header();
    if (config_.model.freeze_visual && !official_) compute_frozen_features();
    TrainResult result;
    for (auto& cb : callbacks_) cb->on_train_start();
    while (state_.epoch_done < config_.optim.epochs &&
           state_.bad_epochs < config_.optim.early_stop) {
      const int64_t epoch = state_.epoch_done + 1;
      const auto t_epoch = std::chrono::steady_clock::now();
      const EpochSteps steps = train_epoch(epoch);
      if (steps.interrupted) {
        save_interrupted(epoch);
        result.interrupted = true;
        break;
      }
      for (auto& cb : callbacks_) cb->on_train_epoch_end(epoch);
      commit_epoch(epoch, steps, validate_epoch(epoch), t_epoch);
      if (agreed_stop() || budget_spent()) {
        result.interrupted = state_.epoch_done < config_.optim.epochs;
        if (result.interrupted && !config_.run.quiet)
          fmt::print("{}stopped after epoch {}; saved {} (continue with --resume)\n", label_, epoch,
                     last_path_.string());
        break;
      }
    }
    for (auto& cb : callbacks_) cb->on_train_end();
    log_.close();
    result.epochs_done = static_cast<int>(state_.epoch_done);
    result.best_epoch = static_cast<int>(state_.best_epoch);
    result.best_val_score = state_.best_score;
    result.epoch_losses = state_.epoch_losses;
    // Every rank takes part in the test evaluation (each decodes its block); rank 0 writes.
    if (!result.interrupted && state_.best_epoch > 0) finish(result);
    result.seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
    return result;
  }

 private:
  // ---- data-parallel runs (group_ set): rank 0 prints and writes, every rank trains --------

  static TrainConfig quiet_unless_main(TrainConfig config, const dist::Group* group) {
    if (group && group->rank() != 0) {
      config.run.quiet = true;
      config.run.plots = false;
    }
    return config;
  }
  bool main_rank() const { return !group_ || group_->rank() == 0; }

  /// visual_init_path, pretraining (when the cache misses) on rank 0 only while the others
  /// wait (up to --dist-timeout; pretrain beforehand with `ihn pretrain` for longer ones).
  std::string shared_visual_init() {
    if (!group_ || (config_.model.visual_init.empty() && !config_.model.pretraining.enabled))
      return visual_init_path(config_);
    std::string path;
    if (main_rank()) path = visual_init_path(config_);
    group_->barrier();
    if (!main_rank()) path = visual_init_path(config_);
    return path;
  }
  int64_t world() const { return group_ ? group_->world_size() : 1; }

  /// The model's weights and buffers become rank 0's.
  void broadcast_weights() {
    std::vector<at::Tensor> tensors;
    for (const auto& p : model_->parameters()) tensors.push_back(p.data());
    for (const auto& b : model_->buffers()) tensors.push_back(b);
    group_->broadcast(tensors);
  }

  /// Every rank starts from rank 0's weights (as DDP broadcasts them), and each rank's dropout
  /// draws its own stream: rank r's saved one on resume, else one seeded from (seed, rank).
  void synchronise_start(const ihn::StateDict& resume_state) {
    broadcast_weights();
    if (group_->rank() == 0) return;
    const std::string key = "rng.cpu.rank" + std::to_string(group_->rank());
    const auto saved = resume_state.find(key);
    const auto world_saved = resume_state.find("trainer.world_size");
    if (saved != resume_state.end() && world_saved != resume_state.end() &&
        world_saved->second.item<double>() == static_cast<double>(world())) {
      at::Generator generator = at::detail::getDefaultCPUGenerator();  // the global one
      generator.set_state(saved->second);
    } else {
      torch::manual_seed(config_.optim.seed + 7919 * static_cast<uint64_t>(group_->rank()) +
                         104729 * static_cast<uint64_t>(state_.global_step));
    }
  }

  /// Every rank's CPU generator state (a collective: all ranks call it), for rank 0's
  /// checkpoint: a resume with the same number of ranks continues every rank's dropout.
  std::vector<at::Tensor> rank_generator_states() {
    if (!group_) return {};
    return group_->collective()->all_gather(at::detail::getDefaultCPUGenerator().get_state());
  }

  /// A stop (signal) seen by any rank stops all of them at the same step.
  bool agreed_stop() {
    if (!group_) return stop_requested();
    auto flag = torch::tensor({stop_requested() ? 1.0 : 0.0}, torch::kFloat64);
    group_->all_reduce_sum({flag});
    return flag.item<double>() > 0;
  }

  /// R2Gen's loss is a mean over the batch's tokens: each rank's share of the global batch's
  /// tokens weighs its mean, so that averaging gradients over ranks gives the global mean's.
  at::Tensor global_token_mean(const at::Tensor& local_mean, const at::Tensor& masks,
                               int64_t steps) {
    if (!group_) return local_mean;
    auto tokens = masks.narrow(1, 1, steps).sum().to(torch::kCPU, torch::kFloat64).reshape({1});
    auto total = tokens.clone();
    group_->all_reduce_sum({total});
    const double share =
        tokens.item<double>() * static_cast<double>(world()) / std::max(total.item<double>(), 1.0);
    return local_mean * share;
  }

  struct EpochSteps {
    int64_t done = 0;    ///< steps taken in this process (not those before a resume)
    double seconds = 0;  ///< of those steps
    double lr_factor = 1;
    bool interrupted = false;
  };
  struct Validation {
    std::map<std::string, double> metrics;
    double bleu4 = 0;
  };

  void load_visual_init(const std::string& init) {
    // A pretrained extractor replaces the random one before anything else draws from torch's
    // generator, so both arms of a comparison start from the same weights.
    const json info = load_pretrained_extractor(*model_->visual_extractor, init);
    if (!config_.run.quiet)
      fmt::print("{}visual extractor: {} (held-out mean AUC {:.3f}){}\n", label_, init,
                 info.at("metrics").value("mean_auc", 0.0),
                 config_.model.freeze_visual ? ", frozen" : "");
  }

  void restore(const ihn::StateDict& s, const std::string& file) {
    load_model(*model_, s, file);
    if (!s.count("optimizer"))
      throw TrainError(file + ": no optimiser state (not a training checkpoint of ihn train)");
    load_optimizer(*optimisation_.adam, tensor_bytes(s.at("optimizer")), device_);
    state_.load(s, file);
    at::Generator generator = at::detail::getDefaultCPUGenerator();  // a handle on the global one
    generator.set_state(s.at("rng.cpu"));
    if (device_.is_cuda()) {
      if (auto it = s.find("rng.cuda"); it != s.end()) {
        at::Generator cuda_generator = at::globalContext().defaultGenerator(device_);
        cuda_generator.set_state(it->second);
      } else {
        fmt::print(stderr,
                   "note: {} was written on the CPU; on the GPU the resumed run continues "
                   "correctly but not bit-identically to an uninterrupted one\n",
                   file);
      }
    }
    for (auto& cb : callbacks_) cb->on_load_checkpoint(s);
    if (official_) {
      torch::NoGradGuard no_grad;
      for (auto& p : official_.heads->named_parameters()) {
        auto it = s.find("official." + p.key());
        if (it == s.end())
          throw TrainError(file + ": no official-mode head '" + p.key() +
                           "' (the checkpoint was not written by --ihn official)");
        p.value().copy_(it->second);
      }
    }
  }

  ihn::StateDict checkpoint_state(const std::vector<at::Tensor>& rank_generators = {}) {
    ihn::StateDict s;
    if (group_) {
      s["trainer.world_size"] = scalar_tensor(static_cast<double>(world()));
      for (size_t r = 1; r < rank_generators.size(); ++r)
        s["rng.cpu.rank" + std::to_string(r)] = rank_generators[r];
    }
    put_model(s, *model_);
    s["optimizer"] = bytes_tensor(optimizer_bytes(*optimisation_.adam));
    s["config.json"] = bytes_tensor(to_json(config_).dump());
    s["vocab.json"] = bytes_tensor(data_.tokenizer.to_json());
    s["rng.cpu"] = at::detail::getDefaultCPUGenerator().get_state();
    // On a GPU, dropout draws from the device's generator: without its state a resumed run
    // would drop other units than the uninterrupted one.
    if (device_.is_cuda())
      s["rng.cuda"] = at::globalContext().defaultGenerator(device_).get_state();
    state_.save(s);
    for (const auto& cb : callbacks_) cb->on_save_checkpoint(s);
    if (official_)
      for (const auto& p : official_.heads->named_parameters())
        s["official." + p.key()] = p.value().detach();
    return s;
  }

  int64_t batches_per_epoch() const {
    return static_cast<int64_t>(ihn_toolkit::data::sharded_batches(
        *data_.train->size(), static_cast<size_t>(config_.optim.batch_size),
        static_cast<size_t>(world())));
  }
  bool budget_spent() const {
    return config_.run.stop_after > 0 && steps_this_run_ >= config_.run.stop_after;
  }

  void print_header() {
    if (config_.run.quiet) return;
    int64_t parameters = 0;
    for (const auto& [name, p] : Traits::named_parameters(model_)) parameters += p.numel();
    if (state_.epoch_done == 0 && state_.batch_in_epoch == 0)
      fmt::print(
          "{}train: {} studies ({} batches/epoch), val {}, test {}, vocabulary {}, {} "
          "parameters, ihn {}, {} epochs on {}\n",
          label_, *data_.train->size(), batches_per_epoch(), *data_.val->size(),
          *data_.test->size(), data_.tokenizer.vocab_size(), parameters, config_.ihn.mode,
          config_.optim.epochs, device_.str());
    if (group_)
      fmt::print("{}data-parallel: {} ranks, global batch {}, collectives on {}\n", label_, world(),
                 config_.optim.batch_size, group_->backend_name());
    if (official_)
      fmt::print(
          "{}ihn official: adds {} parameters (image head {}x{}, report head {}x{}, two "
          "temperatures); {} view(s); negatives {}; lambda = exp(-{:g}*epoch){}\n",
          label_, official_.parameters, config_.model.d_model,
          Traits::official_image_dim(options_, data_.views), config_.model.d_model,
          Traits::official_report_dim(options_), data_.views, official_.negatives_note,
          official_.alpha, config_.ihn.official_legacy ? ", legacy B x B batch mixing" : "");
    std::fflush(stdout);
  }

  /// --freeze-visual: the fixed extractor's output for every training study, computed once (the
  /// evaluation transform, so without crop/flip augmentation). Each step then starts at the
  /// encoder-decoder; the released recipe (--ihn official) runs its own two passes from images.
  void compute_frozen_features() {
    const auto plain = data_.train->with_transform(data_.val->options().transform);
    const int64_t n_train = static_cast<int64_t>(*data_.train->size());
    torch::NoGradGuard no_grad;
    model_->eval();
    std::vector<at::Tensor> att, fc;
    for (int64_t start = 0; start < n_train; start += 64) {
      std::vector<ihn_toolkit::data::ReportExample> examples;
      for (int64_t i = start; i < std::min(n_train, start + 64); ++i)
        examples.push_back(plain.example(static_cast<size_t>(i)));
      auto feats = model_->visual_features(
          select_views(ihn_toolkit::data::collate_reports(std::move(examples)).images, data_.views)
              .to(device_));
      att.push_back(feats.first.contiguous());
      fc.push_back(feats.second.contiguous());
    }
    frozen_att_ = torch::cat(att);
    frozen_fc_ = torch::cat(fc);
  }

  /// The loss of one batch and what the callbacks read (features, logs), in ctx.
  template <class Batch>
  void forward(ihn::BatchContext& ctx, const Batch& batch,
               const ihn_toolkit::data::ReportDataset& negative_set, double lambda) {
    const StepBatch positive{select_views(batch.images, data_.views).to(device_),
                             batch.reports_ids.to(device_), batch.reports_masks.to(device_)};
    if (official_) {
      // The release's step: the negative pairs (their images and reports, loaded like the
      // batch) through the model in a second pass, then heads and the released loss.
      std::vector<ihn_toolkit::data::ReportExample> negatives;
      for (int64_t i : ctx.ids)
        negatives.push_back(negative_set.example(
            static_cast<size_t>(official_.negative_of[static_cast<size_t>(i)])));
      auto neg = ihn_toolkit::data::collate_reports(std::move(negatives));
      const StepBatch negative{select_views(neg.images, data_.views).to(device_),
                               neg.reports_ids.to(device_), neg.reports_masks.to(device_)};
      auto r = official_step<Traits>(model_, official_.heads, positive, negative, lambda,
                                     official_.loss);
      ctx.loss = r.loss;
      ctx.logs["gen_loss"] = r.generation_loss.template item<double>();
      ctx.logs["ihn/l_cp"] = r.terms.l_cp.template item<double>();
      ctx.logs["ihn/l_cs"] = r.terms.l_cs.template item<double>();
      ctx.logs["ihn/hardness"] = 1 - lambda;
      ctx.image_features = r.image_features;
      ctx.report_features = r.report_features;
      return;
    }
    using Output = decltype(model_->forward(positive.images, positive.ids, positive.masks));
    auto out = [&]() -> Output {
      if (!frozen_att_.defined())
        return model_->forward(positive.images, positive.ids, positive.masks);
      const auto rows = torch::tensor(ctx.ids, torch::kLong).to(device_);
      return nn::generator_forward_features<Output>(*model_, frozen_att_.index_select(0, rows),
                                                    frozen_fc_.index_select(0, rows), positive.ids,
                                                    positive.masks);
    }();
    ctx.loss =
        global_token_mean(Traits::generation_loss(out.logprobs, positive.ids, positive.masks),
                          positive.masks, out.logprobs.size(1));
    ctx.logs["gen_loss"] = ctx.loss.template item<double>();
    ctx.image_features = out.image_features;
    ctx.report_features = out.report_features;
    if constexpr (std::is_same_v<Traits, R2GenTraits>) {
      if (config_.ihn.report_features == "text")
        ctx.report_features = text_report_features(model_, positive.ids, positive.masks);
    }
  }

  /// Backward, clipping and the optimiser step, with the callbacks' hooks around them.
  void step(ihn::BatchContext& ctx) {
    for (auto& cb : callbacks_) cb->on_before_backward(ctx);
    nn::clear_grads(*optimisation_.adam);
    if (averager_) averager_->prepare();
    scaler_.scale_loss(ctx.loss).backward();
    // Data-parallel: every rank then holds the global batch's gradient (fp16: an Inf on any
    // rank reaches all, so all skip the same steps). Most buckets were reduced during backward;
    // what is left is waited for here, and logged.
    if (averager_) ctx.logs["dist/allreduce_wait_seconds"] = averager_->finish();
    // fp16: true gradients before the hooks and clipping; a step with an Inf or NaN in them is
    // skipped (the scale backs off), as torch.cuda.amp does.
    const bool finite = scaler_.unscale_gradients(optimisation_.clipped);
    for (auto& cb : callbacks_) cb->on_after_backward(ctx);
    if (config_.optim.grad_clip > 0)
      torch::nn::utils::clip_grad_value_(optimisation_.clipped, config_.optim.grad_clip);
    for (auto& cb : callbacks_) cb->on_before_optimizer_step(ctx);
    if (finite) optimisation_.adam->step();
    scaler_.update(!finite);
    state_.loss_scale = scaler_.scale();
    state_.loss_scale_finite_steps = scaler_.finite_steps();
    if (scaler_.enabled()) {
      ctx.logs["loss_scale"] = scaler_.scale();
      ctx.logs["skipped_step"] = finite ? 0.0 : 1.0;
    }
    ++state_.global_step;
    for (auto& cb : callbacks_) cb->on_train_batch_end(ctx);
  }

  /// The epoch's remaining batches (those before an interruption are skipped); stops early on
  /// a signal or when --stop-after is reached.
  EpochSteps train_epoch(int64_t epoch) {
    EpochSteps r;
    r.lr_factor = set_epoch_learning_rates(*optimisation_.adam, config_, epoch);
    for (auto& cb : callbacks_) cb->on_train_epoch_start(epoch);
    model_->train();
    if (config_.model.freeze_visual) model_->visual_extractor->eval();  // running statistics fixed
    ihn_toolkit::data::ReportLoaderOptions lo;
    lo.batch_size = static_cast<size_t>(config_.optim.batch_size);  // global: all ranks together
    lo.shuffle = true;
    if (group_) lo.shard = {static_cast<size_t>(group_->rank()), static_cast<size_t>(world())};
    auto train_set = data_.train->with_epoch(epoch);
    auto negative_set = data_.train->with_epoch(epoch + kNegativeEpochOffset);
    const double lambda = ihn::official_lambda(official_.alpha, epoch);
    auto loader = ihn_toolkit::data::make_report_loader(train_set, lo);
    const int64_t skip = state_.batch_in_epoch;  // batches done before an interruption
    const auto t_steps = std::chrono::steady_clock::now();
    int64_t b = 0;
    for (auto& batch : *loader) {
      if (b++ < skip) continue;
      ihn::BatchContext ctx;
      ctx.epoch = epoch;
      ctx.global_step = state_.global_step;
      ctx.batch_index = b - 1;
      for (const auto& id : batch.ids) {
        const int64_t i = data_.train_index.at(id);
        ctx.ids.push_back(i);
        ctx.report_keys.push_back(data_.train_keys[static_cast<size_t>(i)]);
      }
      for (auto& cb : callbacks_) cb->on_train_batch_start(ctx);
      {
        // The model's forward pass in the run's precision; the hooks (ihn's loss) and the
        // backward pass run outside, in float32 (weights stay float32).
        const nn::AutocastGuard autocast(precision_, device_.type());
        forward(ctx, batch, negative_set, lambda);
      }
      step(ctx);
      const bool stop = record_step(epoch, ctx, b);
      ++r.done;
      print_progress(epoch, b, skip, t_steps);
      if (stop || budget_spent()) {
        r.interrupted = b < batches_per_epoch();
        break;
      }
    }
    if (tty()) fmt::print("\n");
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_steps).count();
    return r;
  }

  /// Logs the step; returns whether to stop (a signal seen by any rank: with several ranks the
  /// flag rides in the same all-reduce as the logged numbers, so all stop at the same step).
  bool record_step(int64_t epoch, ihn::BatchContext& ctx, int64_t batch) {
    double loss = ctx.loss.item<double>();
    bool stop = stop_requested();
    if (group_) {  // the global batch's numbers: each rank's contribution, averaged
      std::vector<double> values{stop ? 1.0 : 0.0, loss};
      for (const auto& [k, v] : ctx.logs) values.push_back(v);
      auto t = torch::tensor(values, torch::kFloat64);
      group_->all_reduce_sum({t});
      stop = t[0].item<double>() > 0;
      t.div_(static_cast<double>(world()));
      loss = t[1].item<double>();
      int64_t i = 2;
      for (auto& [k, v] : ctx.logs) v = t[i++].item<double>();
    }
    state_.loss_sum += loss;
    state_.loss_count += 1;
    for (const auto& [k, v] : ctx.logs) state_.log_sums[k] += v;
    state_.batch_in_epoch = batch;
    ++steps_this_run_;
    json row{{"type", "step"}, {"epoch", epoch}, {"step", state_.global_step}, {"loss", loss}};
    for (const auto& [k, v] : ctx.logs) row[k] = v;
    if (main_rank()) log_ << row.dump() << "\n";
    kill_point("step");
    return stop;
  }

  bool tty() const { return !config_.run.quiet && isatty(fileno(stdout)); }

  void print_progress(int64_t epoch, int64_t b, int64_t skip,
                      std::chrono::steady_clock::time_point t_steps) const {
    if (!tty()) return;
    const double el =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t_steps).count();
    const double its = static_cast<double>(b - skip) / std::max(el, 1e-9);
    const int64_t batches = batches_per_epoch(), width = 24, filled = width * b / batches;
    fmt::print("\r{}epoch {}/{} [{}{}] {}/{} loss {:.4f} {:.2f} it/s ETA {}   ", label_, epoch,
               config_.optim.epochs, std::string(static_cast<size_t>(filled), '#'),
               std::string(static_cast<size_t>(width - filled), '.'), b, batches,
               state_.mean_loss(), its, format_duration(static_cast<double>(batches - b) / its));
    std::fflush(stdout);
  }

  void save_interrupted(int64_t epoch) {
    const auto generators = rank_generator_states();
    if (!main_rank()) return;
    log_.flush();
    ihn::save_state(checkpoint_state(generators), last_path_);
    if (!config_.run.quiet)
      fmt::print("{}stopped in epoch {} after step {}; saved {} (continue with --resume)\n", label_,
                 epoch, state_.global_step, last_path_.string());
  }

  /// Beam search on the val split; the scores best.pt is selected on.
  Validation validate_epoch(int64_t epoch) {
    auto val = decode_validation();
    if (main_rank())
      write_reports(
          (out_dir_ / "reports" / ("epoch_" + std::to_string(epoch) + "_val.jsonl")).string(), val);
    const auto coco = ihn::eval::coco_scores(val.hypotheses, val.references);
    Validation v;
    auto& m = v.metrics;
    for (int k = 0; k < 4; ++k) m["val_BLEU_" + std::to_string(k + 1)] = coco.bleu[k];
    m["val_ROUGE_L"] = coco.rouge_l;
    m["val_CIDEr"] = coco.cider;
    m["val_distinct_reports"] = ihn::eval::distinctness(val.hypotheses).distinct_reports;
    const auto clinical = ihn::eval::clinical_scores(val.hypotheses, val.references);
    m["val_clinical_f1_macro"] = clinical.macro.f1;
    m["val_clinical_f1_micro"] = clinical.micro.f1;
    v.bleu4 = coco.bleu[3];
    for (auto& cb : callbacks_) cb->on_validation_epoch_end(epoch, m);
    return v;
  }

  /// The val split decoded: data-parallel, each rank its block, gathered in order on all.
  Decoded decode_validation() {
    if (!group_)
      return decode_split(model_, *data_.val, data_.tokenizer, config_, config_.eval.beam_size,
                          device_, false);
    const ihn_toolkit::data::Shard shard{static_cast<size_t>(group_->rank()),
                                         static_cast<size_t>(world())};
    auto part = decode_split(model_, *data_.val, data_.tokenizer, config_, config_.eval.beam_size,
                             device_, false, shard);
    return gather_decoded(part, false);
  }

  /// Every rank's block of a decoded split, in rank order (the split's order), on every rank;
  /// `features`: also the retrieval features (decode_split's).
  Decoded gather_decoded(const Decoded& part, bool features) {
    Decoded all;
    all.ids = group_->all_gather_strings(part.ids);
    all.hypotheses = group_->all_gather_strings(part.hypotheses);
    all.references = group_->all_gather_strings(part.references);
    if (!features) return all;
    const auto collective = group_->collective();
    const auto layout = ihn::detail::row_layout(*collective, static_cast<int64_t>(part.ids.size()),
                                                at::Device(at::kCPU));
    auto gather = [&](const std::vector<std::vector<float>>& rows) {
      // A rank with no studies still sends a (0, D) block: D is the model's width, which the
      // features of both ports have (checked against the rows a rank holds).
      const int64_t width = config_.model.d_model;
      auto local = at::empty({static_cast<int64_t>(rows.size()), width}, at::kFloat);
      for (size_t i = 0; i < rows.size(); ++i) {
        if (static_cast<int64_t>(rows[i].size()) != width)
          throw TrainError("decoded features have " + std::to_string(rows[i].size()) +
                           " columns, the model's width is " + std::to_string(width));
        std::copy(rows[i].begin(), rows[i].end(), local[static_cast<int64_t>(i)].data_ptr<float>());
      }
      const auto global = ihn::detail::gather_rows(*collective, local, layout).contiguous();
      std::vector<std::vector<float>> out;
      for (int64_t r = 0; r < global.size(0); ++r) {
        const float* row = global[r].data_ptr<float>();
        out.emplace_back(row, row + width);
      }
      return out;
    };
    all.image_features = gather(part.image_features);
    all.report_features = gather(part.report_features);
    return all;
  }

  /// The epoch's log row and checkpoints. best.pt is written first: killed between the two
  /// writes, last.pt still describes the epoch before, and resuming recomputes this epoch
  /// bit-exactly and writes both again. The other order would leave a last.pt naming a best
  /// epoch that best.pt does not hold.
  void commit_epoch(int64_t epoch, const EpochSteps& steps, const Validation& v,
                    std::chrono::steady_clock::time_point t_epoch) {
    const double mean_loss = state_.mean_loss();
    state_.epoch_losses.push_back(mean_loss);
    const double score = v.metrics.at("val_" + config_.optim.select_metric);
    const bool improved = state_.record_score(epoch, score);
    json row{{"type", "epoch"},
             {"epoch", epoch},
             {"step", state_.global_step},
             {"train_loss", mean_loss},
             {"lr_ve", config_.optim.lr_ve * steps.lr_factor},
             {"lr_ed", config_.optim.lr_ed * steps.lr_factor},
             {"train_seconds", steps.seconds},
             {"it_per_s", static_cast<double>(steps.done) / std::max(steps.seconds, 1e-9)},
             {"best_epoch", state_.best_epoch}};
    for (const auto& [k, x] : v.metrics) row[k] = x;
    for (const auto& [k, x] : state_.log_sums)
      row["train_" + k] = x / std::max(state_.loss_count, 1.0);
    state_.close_epoch(epoch);
    const auto generators = rank_generator_states();
    if (main_rank()) {
      log_ << row.dump() << "\n";
      log_.flush();
      const auto state = checkpoint_state(generators);
      kill_point("before_best");
      if (improved) ihn::save_state(state, best_path_);
      kill_point("between_checkpoints");
      ihn::save_state(state, last_path_);
      kill_point("after_last");
    }

    const double epoch_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t_epoch).count();
    seconds_per_epoch_ =
        seconds_per_epoch_ == 0 ? epoch_seconds : 0.7 * seconds_per_epoch_ + 0.3 * epoch_seconds;
    print_epoch(epoch, row, v, score, epoch_seconds);
  }

  void print_epoch(int64_t epoch, const json& row, const Validation& v, double score,
                   double epoch_seconds) const {
    if (config_.run.quiet) return;
    std::string extra;
    if (row.contains("train_ihn/alignment"))
      extra = fmt::format("  align {:.3f} hard {:.2f}", row.at("train_ihn/alignment").get<double>(),
                          row.at("train_ihn/hardness").get<double>());
    else if (row.contains("train_ihn/l_cp"))
      extra = fmt::format(
          "  l_cp {:.3f} l_cs {:.3f} hard {:.2f}", row.at("train_ihn/l_cp").get<double>(),
          row.at("train_ihn/l_cs").get<double>(), row.at("train_ihn/hardness").get<double>());
    std::string val_line = "val BLEU-4 " + format_score(v.bleu4);
    if (config_.optim.select_metric != "BLEU_4")
      val_line += " distinct " + format_score(v.metrics.at("val_distinct_reports")) + " " +
                  config_.optim.select_metric + " " + format_score(score);
    fmt::print(
        "{}epoch {}/{}  loss {:.4f}{}  {:.2f} it/s  {} (best {:.4f} @{})  {}  ETA {}\n", label_,
        epoch, config_.optim.epochs, row.at("train_loss").get<double>(), extra,
        row.at("it_per_s").get<double>(), val_line, state_.best_score, state_.best_epoch,
        format_duration(epoch_seconds),
        format_duration(seconds_per_epoch_ * static_cast<double>(config_.optim.epochs - epoch)));
    std::fflush(stdout);
  }

  /// best.pt on the test split (test.json, reports/test.jsonl) and the curves. Data-parallel:
  /// every rank decodes its block of the split (evaluate_test_sharded), rank 0 writes.
  void finish(TrainResult& result) {
    if (main_rank()) check_best_file();
    if (!config_.run.quiet && state_.bad_epochs >= config_.optim.early_stop &&
        state_.epoch_done < config_.optim.epochs)
      fmt::print("{}early stop: no better validation {} for {} epochs\n", label_,
                 config_.optim.select_metric, config_.optim.early_stop);
    EvaluateOptions eo;
    eo.checkpoint = best_path_.string();
    eo.device = config_.run.device;
    eo.bootstrap = config_.eval.bootstrap;
    eo.wordnet = config_.eval.wordnet;
    if (main_rank()) eo.reports_out = (out_dir_ / "reports" / "test.jsonl").string();
    result.test = group_ ? evaluate_test_sharded(eo) : evaluate_checkpoint(eo);
    if (!main_rank()) return;
    {
      std::ofstream test_json((out_dir_ / "test.json").string());
      test_json << result.test.dump(2) << "\n";
      test_json.close();
      if (test_json.fail())
        throw TrainError("writing " + (out_dir_ / "test.json").string() + " failed");
    }
    if (!config_.run.plots) return;
    const std::string png = (out_dir_ / "curves.png").string();
    const std::string note = plot_runs({out_dir_.string()}, {"train"}, png);
    if (!config_.run.quiet) fmt::print("{}{}\n", label_, note.empty() ? "plots: " + png : note);
  }

  /// The weights scored on the test split must be the epoch the log calls best.
  void check_best_file() const {
    const double best_file_epoch =
        tensor_scalar(ihn::load_state(best_path_), "trainer.epoch", best_path_.string());
    if (static_cast<int64_t>(best_file_epoch) != state_.best_epoch)
      throw TrainError(best_path_.string() + " holds epoch " +
                       std::to_string(static_cast<int64_t>(best_file_epoch)) + ", but " +
                       last_path_.string() + " names epoch " + std::to_string(state_.best_epoch) +
                       " as the best: the run folder was changed by hand or by another run");
  }

  /// The test split scored with best.pt's weights on every rank: rank 0 reads the file and
  /// broadcasts them (ranks on other machines have no run folder), each rank decodes its block
  /// of the split, and rank 0 scores the gathered split as evaluate_checkpoint does (the same
  /// config, from the checkpoint). The model's weights are best.pt's afterwards.
  json evaluate_test_sharded(const EvaluateOptions& eo) {
    std::optional<Checkpoint> best;
    if (main_rank()) {
      best = read_checkpoint(best_path_.string());
      load_model(*model_, best->state, best_path_.string());
    }
    broadcast_weights();
    const TrainConfig c = evaluation_config(eo, config_);
    const int beam = beam_size_for(eo.beam_size, c);
    const ihn_toolkit::data::Shard shard{static_cast<size_t>(group_->rank()),
                                         static_cast<size_t>(world())};
    const auto all = gather_decoded(
        decode_split(model_, *data_.test, data_.tokenizer, c, beam, device_, true, shard), true);
    if (!main_rank()) return {};
    return score_decoded(eo, evaluation_config(eo, best->config), all, beam);
  }

  dist::Group* group_;                                ///< data-parallel runs; null in one process
  std::unique_ptr<dist::GradientAverager> averager_;  ///< with group_: averages gradients
  TrainConfig config_;
  fs::path out_dir_, last_path_, best_path_;
  torch::Device device_;
  RunData data_;
  std::string label_;  ///< "LABEL " before every line printed, or ""
  typename Traits::Options options_;
  nn::Precision precision_;
  nn::GradScaler scaler_;
  Model model_{nullptr};
  OfficialMode official_;
  Optimisation optimisation_;
  std::vector<std::shared_ptr<ihn::Callback>> callbacks_;
  TrainerState state_;
  std::ofstream log_;
  at::Tensor frozen_att_, frozen_fc_;  ///< --freeze-visual: extractor output per training study
  int64_t steps_this_run_ = 0;
  double seconds_per_epoch_ = 0;
};

template <class Traits>
TrainResult train_model(TrainConfig config, ihn::StateDict resume_state,
                        std::chrono::steady_clock::time_point t_start, dist::Group* group) {
  // Before the data are built: the synthetic set's rendering runs on LibTorch's threads.
  if (config.run.threads > 0) at::set_num_threads(config.run.threads);
  return TrainingRun<Traits>(std::move(config), resume_state, group).run(t_start);
}

}  // namespace

}  // namespace ihn_toolkit::train
