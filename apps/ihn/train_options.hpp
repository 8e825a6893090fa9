// The recipe options shared by `ihn train` and `ihn compare`. A preset is applied first and
// only the options a user actually gives override it, so each option is bound to a scratch
// value and copied into the config after parsing when it was set.
#pragma once

#include "command.hpp"
#include "train/options.hpp"
#include "train/train.hpp"

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

namespace ihn::cli {

class RecipeOptions {
 public:
  /// Adds every option of IHN_TRAIN_OPTIONS that has help (--epochs, --lr-ve, ...) to `cmd`;
  /// `with_ihn` adds --ihn too (ihn compare chooses it per arm).
  /// Each component's options form a section of --help (IHN_TRAIN_OPTION_GROUPS).
  RecipeOptions(CLI::App* cmd, bool with_ihn) {
    using C = ihn_toolkit::train::TrainConfig;
    std::string group;
#define X(field, flag, check, help)                                  \
  if (*(help) != '\0' && (with_ihn || std::string(flag) != "--ihn")) \
    add(cmd, flag, scratch_.field, help, &C::field)->group(group);
#define G(title, OPTIONS) \
  group = title;          \
  OPTIONS(X)
    IHN_TRAIN_OPTION_GROUPS(G)
#undef G
#undef X
  }

  /// Copies the options that were given into `config`.
  void apply(ihn_toolkit::train::TrainConfig& config) const {
    for (const auto& a : appliers_) a(config);
  }

  /// Whether `flag` (e.g. "--epochs") was on the command line.
  bool given(const std::string& flag) const {
    auto it = options_.find(flag);
    return it != options_.end() && it->second->count() > 0;
  }

 private:
  template <class T>
  CLI::Option* add(CLI::App* cmd, const std::string& flag, T& target, const std::string& help,
                   T ihn_toolkit::train::TrainConfig::*member) {
    CLI::Option* opt = nullptr;
    if constexpr (std::is_same_v<T, bool>)  // --pretrain and --no-pretrain (a preset may set it)
      opt = cmd->add_flag(flag + ",!--no-" + flag.substr(2), target, help);
    else
      opt = cmd->add_option(flag, target, help);
    options_[flag] = opt;
    appliers_.push_back([opt, member, this](ihn_toolkit::train::TrainConfig& c) {
      if (opt->count() > 0) c.*member = scratch_.*member;
    });
    return opt;
  }

  ihn_toolkit::train::TrainConfig scratch_;
  std::map<std::string, CLI::Option*> options_;
  std::vector<std::function<void(ihn_toolkit::train::TrainConfig&)>> appliers_;
};

/// --beam-size of evaluate and generate: 0 or absent = the run's own (beam_size_for).
inline void add_beam_size_option(CLI::App* cmd, int& beam_size) {
  cmd->add_option("--beam-size", beam_size,
                  "Beam size (default: the run's; an authors' .pth: R2Gen's 3)")
      ->check(CLI::PositiveNumber);
}

/// What an authors' .pth cannot tell about itself (`ihn evaluate` and `ihn generate`).
inline void add_authors_options(CLI::App* cmd,
                                ihn_toolkit::train::AuthorsCheckpointOptions& authors) {
  cmd->add_option("--dataset", authors.dataset, "Authors' .pth: iu_xray or mimic_cxr")
      ->capture_default_str();
  cmd->add_option("--threshold", authors.threshold,
                  "Authors' .pth: vocabulary cut-off (default: iu_xray 3, mimic_cxr 10)");
  cmd->add_option("--max-seq-length", authors.max_seq_length,
                  "Authors' .pth: longest report in tokens (default: iu_xray 60, mimic_cxr 100)");
  cmd->add_option("--num-heads", authors.num_heads, "Authors' .pth: attention heads (default 8)");
  cmd->add_option("--rm-num-heads", authors.rm_num_heads,
                  "Authors' R2Gen .pth: relational-memory heads (default 8)");
  cmd->add_option("--topk", authors.topk, "Authors' R2GenCMN .pth: memory top-k (default 32)");
}

}  // namespace ihn::cli
