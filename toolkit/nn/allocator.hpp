// How the programs that train and decode with LibTorch ask glibc's malloc to keep freed memory.
//
// LibTorch's CPU allocator is plain malloc. glibc serves every block of 32 MiB or more (its
// dynamic mmap threshold) with a fresh mmap and unmaps it on free, and trims the heap top back
// to the kernel; a training step frees and re-allocates the same large activation and gradient
// buffers every step, so each step page-faults them back in, zero-filled by the kernel (the
// official R2Gen step spends about 40% of its time there, shared/baselines/README.md).
// keep_freed_memory() turns both off, so freed buffers are reused; the process keeps its peak
// footprint instead of returning it between steps. It is the programmatic form of
// MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<huge>; IHN_SYSTEM_MALLOC=1 opts out.
#pragma once

namespace ihn_toolkit::nn {

/// Applies the setting unless IHN_SYSTEM_MALLOC=1; call once at the start of main(), before
/// large allocations. Returns whether it was applied. A no-op returning false where the C
/// library is not glibc.
bool keep_freed_memory();

}  // namespace ihn_toolkit::nn
