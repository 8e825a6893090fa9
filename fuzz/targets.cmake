# The fuzz targets (fuzz/fuzz_<name>.cpp, seeds in fuzz/corpus/<name>, one input per crash ever
# found in fuzz/regressions/<name>). Read by fuzz/CMakeLists.txt and tests/CMakeLists.txt.
set(IHN_FUZZ_TARGETS pth checkpoint annotation jsonl tokenizer image)
