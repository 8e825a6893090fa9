// UTF-8 decoding and encoding: the one codec of ihn. The metrics validate their texts with it
// (first_invalid_utf8() in text.hpp) and the toolkit's tokenizer turns reports into code points
// and back with it.
//
// decode_utf8_sequence() reads a sequence by its structure alone (a lead byte and its
// continuation bytes); is_well_formed() adds what strict UTF-8 (RFC 3629) also requires: the
// shortest form, no surrogate, nothing above U+10FFFF. Callers choose: the validator rejects
// what is not well formed, the tokenizer replaces only structural errors by U+FFFD (its input
// comes from JSON parsers, which already reject the rest).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace ihn {
inline namespace v0 {
namespace eval {

/// One decoded UTF-8 sequence: its code point and its length in bytes (0 when the bytes do not
/// form a sequence).
struct Utf8Sequence {
  char32_t code_point = 0;
  std::size_t length = 0;
};

/// The sequence starting at byte `i` of `s` (i < s.size()): a lead byte 0xxxxxxx, 110xxxxx,
/// 1110xxxx or 11110xxx followed by as many 10xxxxxx bytes as it announces. Length 0 when the
/// byte cannot start a sequence, a continuation byte is missing or wrong, or `s` ends inside
/// the sequence. Overlong forms, surrogates and code points up to 0x1FFFFF decode (see
/// is_well_formed()).
inline Utf8Sequence decode_utf8_sequence(std::string_view s, std::size_t i) {
  const auto lead = static_cast<unsigned char>(s[i]);
  if (lead < 0x80) return {lead, 1};
  const int continuation_bytes = (lead >> 5) == 0x6    ? 1
                                 : (lead >> 4) == 0xE  ? 2
                                 : (lead >> 3) == 0x1E ? 3
                                                       : -1;
  if (continuation_bytes < 0 || i + continuation_bytes >= s.size()) return {};
  char32_t code_point = lead & (0x3F >> continuation_bytes);
  for (int k = 1; k <= continuation_bytes; ++k) {
    const auto next = static_cast<unsigned char>(s[i + k]);
    if ((next & 0xC0) != 0x80) return {};
    code_point = (code_point << 6) | (next & 0x3F);
  }
  return {code_point, static_cast<std::size_t>(continuation_bytes) + 1};
}

/// True when `sequence` (length > 0) is strict UTF-8: the shortest encoding of its code point,
/// which is a Unicode scalar value (not a surrogate, at most U+10FFFF).
inline bool is_well_formed(const Utf8Sequence& sequence) {
  const char32_t cp = sequence.code_point;
  switch (sequence.length) {
    case 1:
      return true;
    case 2:
      return cp >= 0x80;
    case 3:
      return cp >= 0x800 && (cp < 0xD800 || cp > 0xDFFF);
    case 4:
      return cp >= 0x10000 && cp <= 0x10FFFF;
    default:
      return false;
  }
}

/// Appends the UTF-8 encoding of `cp` (up to 0x1FFFFF, four bytes) to `out`.
inline void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

}  // namespace eval
}  // namespace v0
}  // namespace ihn
