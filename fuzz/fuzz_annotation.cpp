// libFuzzer target: the annotation parser (ihn_toolkit::data::parse_annotation), in both modes. Its
// only documented error is AnnotationError naming the file and the entry.
#include "data/annotation.hpp"

#include <cstdint>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  ihn_toolkit::data::AnnotationOptions options;
  options.dataset =
      data[0] & 1 ? ihn_toolkit::data::Dataset::mimic_cxr : ihn_toolkit::data::Dataset::iu_xray;
  options.on_bad_entry =
      data[0] & 2 ? ihn_toolkit::data::OnBadEntry::skip : ihn_toolkit::data::OnBadEntry::fail;
  try {
    const auto annotation = ihn_toolkit::data::parse_annotation(
        std::string(reinterpret_cast<const char*>(data) + 1, size - 1), "input.json", options);
    (void)annotation.summary();
    (void)annotation.train_reports();
  } catch (const ihn_toolkit::data::AnnotationError&) {
  }
  return 0;
}
