// ihn: increasingly hard negatives for radiology report generation — the umbrella header.
//
// #include <ihn/ihn.hpp> brings in the whole library (LibTorch required). The metrics alone,
// without LibTorch, are in <ihn/eval.hpp>.
#pragma once

#include <ihn/alignment_loss.hpp>
#include <ihn/augmenter.hpp>
#include <ihn/bank.hpp>
#include <ihn/collective.hpp>
#include <ihn/encoder_traits.hpp>
#include <ihn/features.hpp>
#include <ihn/hooks.hpp>
#include <ihn/negatives.hpp>
#include <ihn/official.hpp>
#include <ihn/options.hpp>
#include <ihn/schedule.hpp>
#include <ihn/state.hpp>
#include <ihn/version.hpp>
