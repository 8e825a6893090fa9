// libFuzzer target: the ihn checkpoint reader (ihn::load_state, then the vocabulary and config it
// holds).
#include "fuzz_entries.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return ihn_fuzz_checkpoint(data, size);
}
