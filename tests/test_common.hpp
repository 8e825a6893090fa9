// Shared by every test TU that uses LibTorch. Torch and ihn come first: glog's CHECK would
// otherwise replace Catch2's.
#pragma once

#include <torch/torch.h>

#include <ihn/ihn.hpp>

#include <catch2/catch.hpp>

#include <filesystem>
#include <string>

namespace ihn_test {

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

}  // namespace ihn_test
