// Shared by the test TUs of ihn::eval, which must build without LibTorch: the eval headers,
// Catch2, and where the shared fixtures live.
#pragma once

#include <ihn/eval.hpp>

#include <catch2/catch.hpp>

#include <filesystem>
#include <string>

namespace ihn_eval_test {

/// ../shared beside the clone (fixtures/, data/); tests that read it are tagged [shared].
inline std::filesystem::path shared_dir() {
  return IHN_SHARED_DIR;
}
inline std::filesystem::path fixtures_dir() {
  return shared_dir() / "fixtures";
}

/// A scratch folder under the build tree, emptied for each caller that asks by name.
inline std::filesystem::path scratch_dir(const std::string& name) {
  auto dir = std::filesystem::path(IHN_TEST_TMPDIR) / name;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

}  // namespace ihn_eval_test
