// The augmenter's options, and the kinds they choose between. Needs no LibTorch, so that a
// program can read, check and print them (a command line, a config file) without compiling
// the library's tensor code; augmenter.hpp, alignment_loss.hpp and bank.hpp use them.
//
//   auto options = ihn::Options{}.negatives_per_sample(4).weight(0.1).temperature(0.07);
#pragma once

#include <ihn/detail/arg.hpp>
#include <ihn/schedule.hpp>

#include <cstdint>
#include <memory>

namespace ihn {
inline namespace v0 {

class Collective;  // collective.hpp

enum class AlignmentKind {
  info_nce,  ///< cross-entropy over cosine similarities / temperature
  hinge      ///< sum (or max) of relu(margin − s(i, i) + s(i, c)) over candidates c
};

inline const char* to_string(AlignmentKind kind) {
  return kind == AlignmentKind::hinge ? "hinge" : "info_nce";
}

/// How the feature bank and the persistent negatives are held.
enum class Storage {
  /// float32: exact; 4·D bytes per report and 4·K·D per sample.
  float32,
  /// bank in bfloat16 (similarities still accumulate in float32), negatives as int8 codes
  /// with a float32 scale per vector: 2·D + K·(D + 4) bytes per report, a quarter of the
  /// float32 total at K 4. Negatives are only where the next max step starts (it re-projects
  /// them), so their 1/254 quantisation moves a start by at most ~0.3° per component.
  compact,
};

inline const char* to_string(Storage storage) {
  return storage == Storage::compact ? "compact" : "float32";
}

struct Options {
  /// K: hard negatives per sample. 0 = plain in-batch alignment.
  IHN_ARG(int64_t, negatives_per_sample) = 4;
  /// Weight of the alignment term added to the generation loss.
  IHN_ARG(double, weight) = 0.1;
  /// InfoNCE temperature (fixed, not learned).
  IHN_ARG(double, temperature) = 0.07;
  IHN_ARG(AlignmentKind, loss_kind) = AlignmentKind::info_nce;
  IHN_ARG(double, hinge_margin) = 0.2;
  /// How fast negatives get harder: λ(t); hardness = 1 − λ(t).
  IHN_ARG(HardnessSchedule, schedule) = ExponentialHardness{0.01, ScheduleUnit::epoch};
  /// Gradient-ascent iterations of the max step per batch.
  IHN_ARG(int64_t, ascent_steps) = 5;
  /// Initial geodesic step (chord) of one ascent iteration.
  IHN_ARG(double, step_size) = 0.25;
  /// Trust-region chord radius at hardness 0 and at hardness 1 (at most sqrt(2)).
  IHN_ARG(double, min_radius) = 0.1;
  IHN_ARG(double, max_radius) = 1.0;
  /// Every negative stays at least this much less cosine-similar to the image than the
  /// positive report (must be > 0: the negative never reaches the positive).
  IHN_ARG(double, margin) = 0.05;
  /// Choose the K negatives at random among this many closest peers (0 = the K closest).
  IHN_ARG(int64_t, candidate_pool) = 0;
  /// Start a sample's negatives where its previous visit left them when the peers agree.
  IHN_ARG(bool, keep_negatives) = true;
  /// Seed of the augmenter's own generator (candidate sampling).
  IHN_ARG(uint64_t, seed) = 0;
  /// How the feature bank and the persistent negatives are held: float32 (exact) or compact
  /// (a quarter of the memory; for data sets of 100,000 reports and more). See bank.hpp.
  IHN_ARG(Storage, storage) = Storage::float32;
  /// Data-parallel training: with a process group (ihn::process_group(pg)) the augmenter
  /// works on the global batch — every rank's bank holds every rank's reports, and the
  /// alignment term is the global batch's, its gradient scaled for averaging across ranks.
  /// Every rank must call loss() for each step. See collective.hpp.
  IHN_ARG(std::shared_ptr<Collective>, process_group);
};

}  // namespace v0
}  // namespace ihn
