// The one Catch2 main of all test executables (Debian's libCatch2WithMain lacks benchmarking).
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>

#include "scratch.hpp"

namespace {

/// Removes the scratch folders of each test case that passed (tests/scratch.hpp).
struct ScratchCleaner : Catch::TestEventListenerBase {
  using TestEventListenerBase::TestEventListenerBase;
  void testCaseEnded(const Catch::TestCaseStats& stats) override {
    ihn_test::detail::end_test_case(stats.totals.assertions.allOk());
  }
};

}  // namespace

CATCH_REGISTER_LISTENER(ScratchCleaner)
