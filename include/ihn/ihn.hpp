// ihn: increasingly hard negatives for radiology report generation — the umbrella header.
//
// #include <ihn/ihn.hpp> brings in the whole library (LibTorch required). The metrics alone,
// without LibTorch, are in <ihn/eval.hpp>.
#pragma once

#include <ihn/version.hpp>
