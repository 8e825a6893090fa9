// libFuzzer target: the tokenizer (toolkit/data/tokenizer.cpp): a vocabulary read from
// JSON (as a checkpoint's vocab.json), and R2Gen's cleaners, splitting, building, encoding and
// decoding on arbitrary bytes (not necessarily UTF-8).
#include "data/tokenizer.hpp"

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const std::string_view text(reinterpret_cast<const char*>(data) + 1, size - 1);
  if (data[0] & 1) {
    try {
      const auto tokenizer = ihn_toolkit::data::Tokenizer::from_json(text);
      (void)tokenizer.decode(tokenizer.encode("the heart is normal in size .", 10));
      (void)tokenizer.to_json();
    } catch (const std::invalid_argument&) {
    }
    return 0;
  }
  const auto dataset =
      data[0] & 2 ? ihn_toolkit::data::Dataset::mimic_cxr : ihn_toolkit::data::Dataset::iu_xray;
  (void)ihn_toolkit::data::split_whitespace(text);
  const auto tokenizer = ihn_toolkit::data::Tokenizer::build({std::string(text)}, dataset, 1);
  const auto ids = tokenizer.encode(text);
  (void)tokenizer.decode(ids);
  (void)tokenizer.round_trip(text, 8);
  return 0;
}
