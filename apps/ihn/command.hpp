// How a subcommand of the `ihn` tool joins it: a source file in this folder defines a
// function that adds its CLI11 subcommand and registers it with IHN_REGISTER_COMMAND.
// main.cpp never changes when a command is added; only CMakeLists.txt lists the file.
#pragma once

#include <CLI/CLI.hpp>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

namespace ihn::cli {

/// A user-facing failure: main prints "ihn: error: <what>" and exits with `exit_code`.
struct CommandError : std::runtime_error {
  explicit CommandError(const std::string& what, int exit_code = 1)
      : std::runtime_error(what), exit_code(exit_code) {}
  int exit_code;
};

/// Writes `content` to `path`, checking every step: a missing folder, a read-only disk or a full
/// one is an error naming the file, never a silent empty file.
inline void write_file(const std::string& path, const std::string& content) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) throw CommandError(path + ": cannot open for writing (" + std::strerror(errno) + ")");
  out << content;
  out.flush();
  if (!out) throw CommandError(path + ": writing failed (" + std::strerror(errno) + ")");
  out.close();
  if (out.fail()) throw CommandError(path + ": closing failed (" + std::strerror(errno) + ")");
}

/// The tool's command line as main received it (a launcher starts its workers with it).
inline std::vector<std::string>& program_arguments() {
  static std::vector<std::string> arguments;
  return arguments;
}

struct CommandRegistration {
  int order;  ///< position in --help (train 10, evaluate 20, generate 30, compare 40, eval 50, data
              ///< 60)
  std::function<void(CLI::App&)> add;
};

inline std::vector<CommandRegistration>& command_registry() {
  static std::vector<CommandRegistration> registry;
  return registry;
}

struct CommandRegistrar {
  CommandRegistrar(int order, std::function<void(CLI::App&)> add) {
    command_registry().push_back({order, std::move(add)});
  }
};

}  // namespace ihn::cli

#define IHN_CLI_CONCAT_INNER(a, b) a##b
#define IHN_CLI_CONCAT(a, b) IHN_CLI_CONCAT_INNER(a, b)
/// IHN_REGISTER_COMMAND(order, function adding the subcommand to the CLI::App)
#define IHN_REGISTER_COMMAND(order, add_function)                                         \
  static const ::ihn::cli::CommandRegistrar IHN_CLI_CONCAT(ihn_cli_registrar_, __LINE__)( \
      order, add_function)
