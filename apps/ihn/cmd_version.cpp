// `ihn version`: the library version and the LibTorch it was built with.
#include "command.hpp"

#include <ihn/version.hpp>

#include <iostream>

namespace {
void add_version_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("version", "Print the ihn version and exit");
  cmd->callback([] { std::cout << "ihn " << ihn::version_string << "\n"; });
}
}  // namespace

IHN_REGISTER_COMMAND(90, add_version_command);
