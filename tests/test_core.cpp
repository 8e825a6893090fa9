// The core library: version, encoder traits, alignment loss, schedules, augmenter, hooks.
#include "test_common.hpp"

TEST_CASE("version macros agree with the version string", "[version]") {
  const std::string expected = std::to_string(IHN_VERSION_MAJOR) + "." +
                               std::to_string(IHN_VERSION_MINOR) + "." +
                               std::to_string(IHN_VERSION_PATCH);
  CHECK(expected == ihn::version_string);
}
