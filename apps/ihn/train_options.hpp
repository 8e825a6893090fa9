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
    // clang-format off
#define X(path, key, flag, check, help)                                  \
  if (*(help) != '\0' && (with_ihn || std::string(flag) != "--ihn"))     \
    add(cmd, flag, help, [](C& c) -> auto& { return c.path; })->group(group);
    // clang-format on
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
  /// Binds `flag` to the field `field(config)`. Numbers, text and switches go through CLI11;
  /// the library's kinds (the schedule, the alignment) are read as text by config.json's own
  /// reader, so the flag and the file accept the same values and name the same errors.
  template <class Field>
  CLI::Option* add(CLI::App* cmd, const std::string& flag, const std::string& help, Field field) {
    using T = std::decay_t<decltype(field(scratch_))>;
    CLI::Option* opt = nullptr;
    std::function<void(ihn_toolkit::train::TrainConfig&)> apply;
    if constexpr (std::is_same_v<T, bool>) {  // --pretrain and --no-pretrain (a preset may set it)
      opt = cmd->add_flag(flag + ",!--no-" + flag.substr(2), field(scratch_), help);
      apply = [this, field](auto& c) { field(c) = field(scratch_); };
    } else if constexpr (std::is_arithmetic_v<T> || std::is_same_v<T, std::string>) {
      opt = cmd->add_option(flag, field(scratch_), help);
      apply = [this, field](auto& c) { field(c) = field(scratch_); };
    } else {
      auto text = std::make_shared<std::string>();
      opt = cmd->add_option(flag, *text, help);
      apply = [text, field, flag](auto& c) {
        try {
          field(c) = nlohmann::json(*text).get<T>();
        } catch (const std::exception& e) {
          throw ihn_toolkit::train::TrainError(flag + " " + *text + ": " + e.what());
        }
      };
    }
    options_[flag] = opt;
    appliers_.push_back([opt, apply](ihn_toolkit::train::TrainConfig& c) {
      if (opt->count() > 0) apply(c);
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
