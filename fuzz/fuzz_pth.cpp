// libFuzzer target: the .pth reader (ihn::io::read_pth: zip and legacy torch.save files).
#include "fuzz_entries.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return ihn_fuzz_pth(data, size);
}
