// Shared by the test TUs of ihn::eval, which must build without LibTorch: the eval headers,
// Catch2, and where the shared fixtures live.
#pragma once

#include <ihn/eval.hpp>

#include <catch2/catch.hpp>

#include "scratch.hpp"

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

using ihn_test::scratch_dir;

}  // namespace ihn_eval_test
