// libFuzzer target: the image decoder (ihn_toolkit::data::decode_image: size limits, then stb).
#include "fuzz_entries.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return ihn_fuzz_image(data, size);
}
