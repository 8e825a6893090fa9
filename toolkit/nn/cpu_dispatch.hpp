// IHN_AVX2_CLONE: a function attribute that compiles a loop twice, for the baseline x86-64 and
// for AVX2, and picks the clone at load time (GNU ifunc) by the CPU it runs on. For the few
// hand-written elementwise kernels (FusedAdam, dropout) that LibTorch's own dispatch does not
// cover; results are identical across clones (no FMA contraction, integer hashing).
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__)
#define IHN_AVX2_CLONE __attribute__((target_clones("avx2", "default")))
#else
#define IHN_AVX2_CLONE
#endif
