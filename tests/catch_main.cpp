// The one Catch2 main of all test executables (Debian's libCatch2WithMain lacks benchmarking).
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
