// `ihn version`: the library version and the LibTorch it was built with.
#include "command.hpp"

#include "nn/precision.hpp"

#include <torch/version.h>
#include <ihn/version.hpp>

#include <iostream>

namespace {
void add_version_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "version", "Print the ihn and LibTorch versions and the precisions this machine runs");
  cmd->callback([] {
    std::cout << "ihn " << ihn::version_string << " (LibTorch " << TORCH_VERSION << ")\n"
              << ihn_toolkit::nn::precision_support() << "\n";
  });
}
}  // namespace

IHN_REGISTER_COMMAND(90, add_version_command);
