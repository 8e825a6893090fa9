// `ihn version`: the library version and the LibTorch it was built with.
#include "command.hpp"

#include "nn/precision.hpp"
#include "train/distributed.hpp"

#include <torch/version.h>
#include <ihn/version.hpp>

#include <iostream>

namespace {
void add_version_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "version",
      "Print the ihn and LibTorch versions, the precisions this machine runs and the "
      "distributed backend");
  cmd->callback([] {
    std::cout << "ihn " << ihn::version_string << " (LibTorch " << TORCH_VERSION << ")\n"
              << ihn_toolkit::nn::precision_support() << "\n"
              << "distributed: "
              << (!ihn_toolkit::train::dist::available()
                      ? "none in this build (install libgloo-dev and rebuild)"
                  : ihn_toolkit::train::dist::nccl_available()
                      ? "c10d Gloo and NCCL (ihn train --nproc N, torchrun)"
                      : "c10d Gloo (ihn train --nproc N, torchrun; no NCCL in this LibTorch)")
              << "\n";
  });
}
}  // namespace

IHN_REGISTER_COMMAND(90, add_version_command);
