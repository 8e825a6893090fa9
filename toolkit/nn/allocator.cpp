#include "nn/allocator.hpp"

#include <cstdlib>
#include <cstring>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace ihn_toolkit::nn {

bool keep_freed_memory() {
  const char* opt_out = std::getenv("IHN_SYSTEM_MALLOC");
  if (opt_out != nullptr && std::strcmp(opt_out, "1") == 0) return false;
#if defined(__GLIBC__)
  // Never serve a block with its own mmap (it would be unmapped, and faulted in anew, on every
  // free/malloc pair)...
  const bool no_mmap = mallopt(M_MMAP_MAX, 0) == 1;
  // ...and never give the top of the heap back: glibc widens this int to size_t, so -1 is
  // "no threshold", the same as the environment's MALLOC_TRIM_THRESHOLD_=1 TiB.
  const bool no_trim = mallopt(M_TRIM_THRESHOLD, -1) == 1;
  return no_mmap && no_trim;
#else
  return false;
#endif
}

}  // namespace ihn_toolkit::nn
