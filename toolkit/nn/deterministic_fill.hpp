// The fixtures' deterministic weight fill (shared/fixtures/README.md): every floating-point
// parameter and buffer, in byte-wise sorted key order, is overwritten by a closed-form sinusoid,
// so a port can be compared with the official code without storing any weights. The file that
// implements it is compiled with -ffp-contract=off: a fused multiply-add in the phase changes the
// float32 result of ~0.1% of the elements by one ulp.
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

namespace ihn_toolkit::nn {

enum class FillRuleset { A, B };

struct FilledEntry {
  std::string key;
  std::string rule;  ///< bn_running_var, bn_running_mean, gamma_like, scaled, vector
  int64_t k = 0;
  double checksum = 0;   ///< sum_i v_i (double)
  double wchecksum = 0;  ///< sum_i v_i * ((i mod 97) + 1)
};

/// Fills `module`'s named parameters and buffers (state_dict order does not matter: keys are
/// sorted) and returns one entry per filled key, in k order. Integer buffers are skipped.
std::vector<FilledEntry> deterministic_fill(torch::nn::Module& module,
                                            FillRuleset ruleset = FillRuleset::B);

}  // namespace ihn_toolkit::nn
