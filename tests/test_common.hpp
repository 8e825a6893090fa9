// Shared by every test TU that uses LibTorch. Torch and ihn come first: glog's CHECK would
// otherwise replace Catch2's.
#pragma once

#include <torch/torch.h>

#include <ihn/ihn.hpp>

#include <catch2/catch.hpp>

#include "scratch.hpp"

#include <cstdlib>
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

/// Where the device-aware tests (the fixture parity tests, the augmenter on a device) run:
/// IHN_TEST_DEVICE (default cpu; e.g. cuda, cuda:1). The fixtures come from the CPU, so on CUDA the
/// TF32 shortcuts are turned off for the comparison. Asking for a device that is not there fails:
/// the CUDA ctest entries exist only to run on one.
inline torch::Device test_device() {
  const char* name = std::getenv("IHN_TEST_DEVICE");
  torch::Device device(name != nullptr && *name != '\0' ? name : "cpu");
  if (device.is_cuda()) {
    if (!torch::cuda::is_available())
      FAIL("IHN_TEST_DEVICE=" << name << " but this LibTorch sees no CUDA device");
    at::globalContext().setAllowTF32CuBLAS(false);
    at::globalContext().setAllowTF32CuDNN(false);
    if (!device.has_index()) device = torch::Device(torch::kCUDA, 0);  // what .to("cuda") gives
  }
  return device;
}

/// Debian's interpreter, where python3-torch installs; IHN_PYTHON overrides it (the ctest entry
/// test_authors_require_python points it at nothing to check that IHN_REQUIRE_PYTHON=1 fails).
inline std::string python() {
  const char* p = std::getenv("IHN_PYTHON");
  return p != nullptr && *p != '\0' ? p : "/usr/bin/python3";
}

/// Whether python() can import `module` (parity checks against Python-written files). Missing
/// is a test failure when IHN_REQUIRE_PYTHON=1 (the README's test command sets it and installs
/// the packages), and a warning otherwise, so no check is silently skipped in CI.
inline bool python_available(const std::string& module) {
  const auto cmd = python() + " -c 'import " + module + "' > /dev/null 2>&1";
  if (std::system(cmd.c_str()) == 0) return true;
  const char* require = std::getenv("IHN_REQUIRE_PYTHON");
  if (require != nullptr && std::string(require) == "1")
    FAIL("IHN_REQUIRE_PYTHON=1 but " << python() << " cannot import " << module
                                     << " (IHN_WITH_PYTHON=1 scripts/install-deps.sh)");
  WARN("skipped: " << python() << " cannot import " << module);
  return false;
}

}  // namespace ihn_test
