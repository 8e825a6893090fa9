// Entry points of the fuzz targets defined in entries_torch.cpp (one LibTorch TU for all).
#pragma once

#include <cstddef>
#include <cstdint>

int ihn_fuzz_pth(const uint8_t* data, size_t size);
int ihn_fuzz_checkpoint(const uint8_t* data, size_t size);
int ihn_fuzz_image(const uint8_t* data, size_t size);
