// What the trainer's translation units share (train.cpp: training, evaluation, generation;
// config.cpp: the config; compare.cpp: the comparison). Torch-free: config.cpp and compare.cpp
// compile without LibTorch.
#pragma once

#include <ihn/eval/meteor.hpp>

#include <string>

namespace ihn_toolkit::train {

/// METEOR options with WordNet's synonyms when `wordnet` holds the dictionary; otherwise
/// without them, and `note` (when given) says so and how to install it.
ihn::eval::MeteorOptions meteor_options(const std::string& wordnet, std::string* note);

}  // namespace ihn_toolkit::train
