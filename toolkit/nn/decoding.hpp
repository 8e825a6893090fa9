// Generic decoding for the report generators, with R2Gen's exact semantics (modules/att_model.py
// `_sample`, modules/caption_model.py `beam_search`, group size 1, no length penalty), written
// against an incremental-step interface so that each step costs one position, not the prefix.
//
// A model provides an IncrementalDecoder for a batch: `step(tokens)` feeds the last token of every
// row and returns the next-token log-probabilities; `expand(n)` repeats every row n times (beam
// start); `reorder(rows)` makes row i continue from old row rows[i] (beam forking). EOS = BOS = PAD
// = 0 as in R2Gen.
#pragma once

#include <torch/torch.h>

#include <vector>

namespace ihn_toolkit::nn {

class IncrementalDecoder {
 public:
  virtual ~IncrementalDecoder() = default;
  /// tokens (N) int64 -> log-probs (N, vocab) of the next token.
  virtual torch::Tensor step(const torch::Tensor& tokens) = 0;
  /// Row b becomes rows b*n .. b*n+n-1 (all per-row state, including the visual memory).
  virtual void expand(int64_t n) = 0;
  /// New row i continues old row rows[i]; rows only ever map within one study's beams.
  virtual void reorder(const torch::Tensor& rows) = 0;
};

struct GreedyOptions {
  TORCH_ARG(int64_t, max_length) = 60;
  /// R2Gen's default (block_trigrams=1): penalise repeated trigrams by 2*ln(1/2) per earlier use.
  TORCH_ARG(bool, block_trigrams) = true;
  TORCH_ARG(int64_t, bos) = 0;
  TORCH_ARG(int64_t, eos) = 0;
};

struct GreedyResult {
  torch::Tensor seq;           ///< (B, max_length) int64, 0 after the end
  torch::Tensor seq_logprobs;  ///< (B, max_length, V): the rows `_sample` stores (0 once finished)
};

/// R2Gen `_sample` with sample_method='greedy', beam_size=1.
GreedyResult greedy_decode(IncrementalDecoder& decoder, int64_t batch_size,
                           const GreedyOptions& options, const torch::Device& device);

struct BeamSearchOptions {
  TORCH_ARG(int64_t, beam_size) = 3;
  TORCH_ARG(int64_t, max_length) = 60;
  TORCH_ARG(int64_t, bos) = 0;
  TORCH_ARG(int64_t, eos) = 0;
};

struct Beam {
  torch::Tensor seq;       ///< (len) int64, ends with EOS when the beam finished
  torch::Tensor logps;     ///< (len, V) full log-prob rows along the beam
  double logprob_sum = 0;  ///< R2Gen's 'p': sum of the chosen tokens' log-probs (float32 sum)
};

struct BeamSearchResult {
  torch::Tensor seq;                     ///< (B, max_length) best beam, zero padded
  torch::Tensor seq_logprobs;            ///< (B, max_length, V)
  std::vector<std::vector<Beam>> beams;  ///< per study, the final beams sorted by logprob_sum
};

/// R2Gen `_sample_beam` + `beam_search` (group_size 1): finished beams are recorded when they
/// emit EOS (or at max_length) and then kept alive with their sum lowered by 1000, as upstream.
BeamSearchResult beam_search(IncrementalDecoder& decoder, int64_t batch_size,
                             const BeamSearchOptions& options, const torch::Device& device);

}  // namespace ihn_toolkit::nn
