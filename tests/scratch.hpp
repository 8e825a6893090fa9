// Scratch folders for the tests, shared by every test executable (no LibTorch here: the Catch
// main includes it too). Training runs write checkpoints of ~180 MB, so the folders of a test
// case that passed are removed when it ends (catch_main.cpp); a failed case keeps its files for
// inspection, and IHN_KEEP_TEST_FILES=1 keeps them all.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <string>
#include <system_error>
#include <vector>

namespace ihn_test {
namespace detail {

/// The folders handed out since the current test case started.
inline std::vector<std::filesystem::path>& scratch_in_use() {
  static std::vector<std::filesystem::path> dirs;
  return dirs;
}

/// Called by the Catch listener when a test case ends.
inline void end_test_case(bool passed) {
  const char* keep = std::getenv("IHN_KEEP_TEST_FILES");
  const bool keep_all = keep != nullptr && std::string(keep) == "1";
  if (passed && !keep_all)
    for (const auto& dir : scratch_in_use()) {
      std::error_code ignored;  // a folder a test removed itself is fine
      std::filesystem::remove_all(dir, ignored);
    }
  scratch_in_use().clear();
}

}  // namespace detail

/// A scratch folder under the build tree, emptied for each caller that asks by name and removed
/// when the test case that asked passes.
inline std::filesystem::path scratch_dir(const std::string& name) {
  auto dir = std::filesystem::path(IHN_TEST_TMPDIR) / name;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  detail::scratch_in_use().push_back(dir);
  return dir;
}

}  // namespace ihn_test
