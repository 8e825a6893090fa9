// The single source of ihn's version; CMake reads these three lines.
#pragma once

#define IHN_VERSION_MAJOR 0
#define IHN_VERSION_MINOR 1
#define IHN_VERSION_PATCH 0

#define IHN_VERSION (IHN_VERSION_MAJOR * 10000 + IHN_VERSION_MINOR * 100 + IHN_VERSION_PATCH)

namespace ihn {
inline namespace v0 {
/// "MAJOR.MINOR.PATCH" of the headers in use.
inline constexpr const char* version_string = "0.1.0";
}  // namespace v0
}  // namespace ihn
