// `ihn`: the project's command-line tool. Subcommands live in cmd_*.cpp and register
// themselves (command.hpp), so this file stays the same as the tool grows.
#include "command.hpp"

#include <ihn/version.hpp>

#include "nn/allocator.hpp"

#include <fmt/core.h>

#include <algorithm>
#include <cstdio>
#include <exception>

int main(int argc, char** argv) {
  ihn_toolkit::nn::keep_freed_memory();  // glibc reuses freed tensor buffers (allocator.hpp)
  ihn::cli::program_arguments().assign(argv, argv + argc);
  CLI::App app{
      "ihn: radiology report generation with increasingly hard negatives.\n"
      "Train, evaluate and compare report generators; score reports with the field's "
      "metrics.",
      "ihn"};
  app.set_version_flag("--version", std::string("ihn ") + ihn::version_string);
  app.require_subcommand(1);
  app.fallthrough(false);

  auto& registry = ihn::cli::command_registry();
  std::stable_sort(registry.begin(), registry.end(),
                   [](const auto& a, const auto& b) { return a.order < b.order; });
  for (auto& command : registry) command.add(app);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const ihn::cli::CommandError& e) {
    fmt::print(stderr, "ihn: error: {}\n", e.what());
    return e.exit_code;
  } catch (const std::exception& e) {
    fmt::print(stderr, "ihn: error: {}\n", e.what());
    return 1;
  }
  return 0;
}
