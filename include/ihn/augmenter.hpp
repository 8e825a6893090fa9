// HardNegativeAugmenter<Model> (in progress).
#pragma once
#include <ihn/version.hpp>
