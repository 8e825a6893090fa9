// Text handling shared by the metrics: UTF-8 validation, the two ways pycocoevalcap splits a
// report into tokens (Python's str.split() for BLEU/CIDEr, str.split(" ") for ROUGE-L), a token
// interner so the metrics compare integers instead of strings, and numpy's pairwise summation
// (np.mean), so that corpus means round the way the Python reference does.
#pragma once

#include <ihn/eval/utf8.hpp>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <limits>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace ihn {
inline namespace v0 {
namespace eval {

/// Bad input to a metric (malformed text, mismatched lists); the message names the example.
struct EvalError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

namespace detail {

/// Byte offset of the first invalid UTF-8 sequence in `s`, or npos when `s` is valid UTF-8
/// (overlong forms, surrogates and code points above U+10FFFF count as invalid).
inline std::size_t first_invalid_utf8(std::string_view s) {
  for (std::size_t i = 0; i < s.size();) {
    const Utf8Sequence sequence = decode_utf8_sequence(s, i);
    if (sequence.length == 0 || !is_well_formed(sequence)) return i;
    i += sequence.length;
  }
  return std::string_view::npos;
}

/// Length in bytes of the whitespace character starting at s[i] as Python's str.split() sees
/// it (str.isspace: ASCII \t\n\v\f\r, 0x1C-0x1F, space, and the Unicode White_Space/bidi
/// separators U+0085, U+00A0, U+1680, U+2000-U+200A, U+2028, U+2029, U+202F, U+205F, U+3000),
/// or 0 when s[i] does not start one. Input is valid UTF-8.
inline std::size_t python_space_length(std::string_view s, std::size_t i) {
  const auto c = static_cast<unsigned char>(s[i]);
  if (c == ' ' || (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F)) return 1;
  if (c < 0x80 || i + 1 >= s.size()) return 0;
  const auto c1 = static_cast<unsigned char>(s[i + 1]);
  if (c == 0xC2 && (c1 == 0x85 || c1 == 0xA0)) return 2;
  if (i + 2 >= s.size()) return 0;
  const auto c2 = static_cast<unsigned char>(s[i + 2]);
  if (c == 0xE1 && c1 == 0x9A && c2 == 0x80) return 3;  // U+1680
  if (c == 0xE2 && c1 == 0x80 &&
      (c2 <= 0x8A || c2 == 0xA8 || c2 == 0xA9 || c2 == 0xAF))  // U+2000-200A, 2028, 2029, 202F
    return 3;
  if (c == 0xE2 && c1 == 0x81 && c2 == 0x9F) return 3;  // U+205F
  if (c == 0xE3 && c1 == 0x80 && c2 == 0x80) return 3;  // U+3000
  return 0;
}

/// Python's `s.split()`: runs of whitespace separate tokens; no empty tokens.
inline std::vector<std::string_view> split_python_whitespace(std::string_view s) {
  std::vector<std::string_view> tokens;
  std::size_t i = 0, start = std::string_view::npos;
  while (i < s.size()) {
    const std::size_t space = python_space_length(s, i);
    if (space) {
      if (start != std::string_view::npos) tokens.push_back(s.substr(start, i - start));
      start = std::string_view::npos;
      i += space;
    } else {
      if (start == std::string_view::npos) start = i;
      ++i;
    }
  }
  if (start != std::string_view::npos) tokens.push_back(s.substr(start));
  return tokens;
}

/// Python's `s.split(" ")`: every single space separates, so "" gives one empty token and two
/// spaces give an empty token between them (ROUGE-L in pycocoevalcap tokenises this way).
inline std::vector<std::string_view> split_on_space(std::string_view s) {
  std::vector<std::string_view> tokens;
  std::size_t start = 0;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == ' ') {
      tokens.push_back(s.substr(start, i - start));
      start = i + 1;
    }
  }
  tokens.push_back(s.substr(start));
  return tokens;
}

/// Maps each distinct token to a dense id, so that n-grams can be keyed by integers. Lookups
/// take string_views (no allocation); each distinct token is stored once.
class TokenInterner {
 public:
  TokenInterner() = default;
  TokenInterner(const TokenInterner&) = delete;  // the map's keys view into storage_
  TokenInterner& operator=(const TokenInterner&) = delete;

  std::uint32_t id(std::string_view token) {
    auto it = ids_.find(token);
    if (it != ids_.end()) return it->second;
    const auto next = static_cast<std::uint32_t>(storage_.size());
    storage_.emplace_back(token);
    ids_.emplace(std::string_view(storage_.back()), next);
    return next;
  }
  std::vector<std::uint32_t> ids(const std::vector<std::string_view>& tokens) {
    std::vector<std::uint32_t> out;
    out.reserve(tokens.size());
    for (auto t : tokens) out.push_back(id(t));
    return out;
  }
  std::size_t size() const { return storage_.size(); }

 private:
  std::deque<std::string> storage_;  // stable addresses for the views in ids_
  std::unordered_map<std::string_view, std::uint32_t> ids_;
};

/// An open-addressing map from 64-bit keys to dense ids 0, 1, 2, ... in insertion order (the
/// n-gram table: std::unordered_map's node allocations were most of BLEU's time).
class DenseIdTable {
 public:
  /// The id of `key`, inserting it with the next id when new. `key` must not be ~0.
  std::uint32_t intern(std::uint64_t key) {
    if ((size_ + 1) * 2 > slots_.size()) grow();
    std::size_t i = slot_of(key);
    while (true) {
      auto& s = slots_[i];
      if (s.key == kEmpty) {
        s.key = key;
        s.id = static_cast<std::uint32_t>(size_++);
        return s.id;
      }
      if (s.key == key) return s.id;
      i = (i + 1) & (slots_.size() - 1);
    }
  }
  std::size_t size() const { return size_; }

 private:
  static constexpr std::uint64_t kEmpty = ~std::uint64_t{0};
  struct Slot {
    std::uint64_t key = kEmpty;
    std::uint32_t id = 0;
  };
  std::size_t slot_of(std::uint64_t key) const {
    std::uint64_t h = key * 0x9E3779B97F4A7C15ull;  // Fibonacci hashing
    h ^= h >> 29;
    return static_cast<std::size_t>(h) & (slots_.size() - 1);
  }
  void grow() {
    std::vector<Slot> old = std::move(slots_);
    slots_.assign(old.empty() ? 1024 : old.size() * 2, Slot{});
    for (const auto& s : old) {
      if (s.key == kEmpty) continue;
      std::size_t i = slot_of(s.key);
      while (slots_[i].key != kEmpty) i = (i + 1) & (slots_.size() - 1);
      slots_[i] = s;
    }
  }
  std::vector<Slot> slots_;
  std::size_t size_ = 0;
};

/// numpy's pairwise summation of doubles (what np.sum/np.mean do on a contiguous float64
/// array): blocks of at most 128 summed with 8 accumulators, larger ranges split in two.
inline double numpy_pairwise_sum(const double* a, std::size_t n) {
  if (n < 8) {
    double res = 0.;
    for (std::size_t i = 0; i < n; ++i) res += a[i];
    return res;
  }
  if (n <= 128) {
    double r[8];
    for (int j = 0; j < 8; ++j) r[j] = a[j];
    std::size_t i = 8;
    for (; i < n - (n % 8); i += 8)
      for (int j = 0; j < 8; ++j) r[j] += a[i + j];
    double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; ++i) res += a[i];
    return res;
  }
  std::size_t n2 = n / 2;
  n2 -= n2 % 8;
  return numpy_pairwise_sum(a, n2) + numpy_pairwise_sum(a + n2, n - n2);
}

/// np.mean of a float64 vector (NaN for an empty one, as numpy gives).
inline double numpy_mean(const std::vector<double>& v) {
  if (v.empty()) return std::numeric_limits<double>::quiet_NaN();
  return (0.0 + numpy_pairwise_sum(v.data(), v.size())) / static_cast<double>(v.size());
}

}  // namespace detail
}  // namespace eval
}  // namespace v0
}  // namespace ihn
