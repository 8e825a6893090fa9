// What the trainer's translation units share (train.cpp: training, evaluation, generation;
// config.cpp: the config; compare.cpp: the comparison). Torch-free: config.cpp and compare.cpp
// compile without LibTorch.
#pragma once

#include <ihn/eval/meteor.hpp>
#include <ihn/schedule.hpp>

#include <string>

namespace ihn_toolkit::train {

/// METEOR options with WordNet's synonyms when `wordnet` holds the dictionary; otherwise
/// without them, and `note` (when given) says so and how to install it.
ihn::eval::MeteorOptions meteor_options(const std::string& wordnet, std::string* note);

/// --schedule through the library's parser, as a TrainError naming the option.
ihn::HardnessSchedule parse_schedule(const std::string& text);

/// --ihn official's α: the release's λ = exp(−α·epoch) needs an exp:ALPHA per-epoch schedule.
double official_alpha_of(const std::string& text);

}  // namespace ihn_toolkit::train
