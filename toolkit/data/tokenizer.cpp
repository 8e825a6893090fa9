// R2Gen's tokenizer on Unicode code points (see tokenizer.hpp).
#include "data/tokenizer.hpp"

#include <ihn/eval/utf8.hpp>
#include <nlohmann/json.hpp>

#include <locale.h>
#include <wctype.h>
#include <algorithm>
#include <clocale>
#include <cwctype>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace ihn_toolkit::data {
namespace {

// ---- UTF-8 <-> code points, with ihn's one codec (ihn/eval/utf8.hpp). Bytes that do not form
// a sequence become U+FFFD (Python would refuse to decode them; JSON loaders only hand us valid
// UTF-8).
std::u32string decode_utf8(std::string_view text) {
  std::u32string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    const ihn::eval::Utf8Sequence sequence = ihn::eval::decode_utf8_sequence(text, i);
    out.push_back(sequence.length ? sequence.code_point : char32_t{0xFFFD});
    i += sequence.length ? sequence.length : 1;
  }
  return out;
}

using ihn::eval::append_utf8;

std::string encode_utf8(const std::u32string& text) {
  std::string out;
  out.reserve(text.size());
  for (char32_t cp : text) append_utf8(out, cp);
  return out;
}

// Python's str.isspace() set (used by strip() and split()): bidi classes WS/B/S and Zs, which
// includes the ASCII separators \x1c-\x1f but not U+200B (zero width space).
bool is_python_whitespace(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

// glibc's C.UTF-8 locale carries Unicode's simple case mappings; the locale-independent
// *_l calls keep us clear of the process-wide setlocale().
locale_t unicode_locale() {
  static const locale_t locale = [] {
    locale_t l = newlocale(LC_CTYPE_MASK, "C.UTF-8", static_cast<locale_t>(0));
    if (l == static_cast<locale_t>(0)) l = newlocale(LC_CTYPE_MASK, "C", static_cast<locale_t>(0));
    return l;
  }();
  return locale;
}

char32_t simple_lower(char32_t c) {
  if (c < 0x80) return (c >= 'A' && c <= 'Z') ? c + 32 : c;
  return static_cast<char32_t>(towlower_l(static_cast<wint_t>(c), unicode_locale()));
}

bool is_cased(char32_t c) {
  if (c < 0x80) return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
  return iswupper_l(static_cast<wint_t>(c), unicode_locale()) ||
         iswlower_l(static_cast<wint_t>(c), unicode_locale());
}

// Unicode Case_Ignorable, the part that occurs in text: apostrophes, periods, colons, modifier
// letters and combining marks (enough for Final_Sigma).
bool is_case_ignorable(char32_t c) {
  return c == '\'' || c == '.' || c == ':' || c == '^' || c == '`' || c == 0xA8 || c == 0xAD ||
         c == 0xAF || c == 0xB4 || c == 0xB7 || c == 0xB8 || c == 0x2019 ||
         (c >= 0x0300 && c <= 0x036F) || (c >= 0x02B0 && c <= 0x02FF) || c == 0x200B;
}

// Python's str.lower(): full lower-casing = simple mapping plus SpecialCasing's unconditional
// U+0130 -> "i\u0307" and the Final_Sigma rule for U+03A3.
std::u32string python_lower(const std::u32string& text) {
  std::u32string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    const char32_t c = text[i];
    if (c == 0x0130) {
      out.push_back(U'i');
      out.push_back(0x0307);
    } else if (c == 0x03A3) {
      auto preceded_by_cased = false;
      for (size_t j = i; j-- > 0;) {
        if (is_case_ignorable(text[j])) continue;
        preceded_by_cased = is_cased(text[j]);
        break;
      }
      auto followed_by_cased = false;
      for (size_t j = i + 1; j < text.size(); ++j) {
        if (is_case_ignorable(text[j])) continue;
        followed_by_cased = is_cased(text[j]);
        break;
      }
      out.push_back(preceded_by_cased && !followed_by_cased ? 0x03C2 : 0x03C3);
    } else {
      out.push_back(simple_lower(c));
    }
  }
  return out;
}

std::u32string python_strip(const std::u32string& text) {
  size_t begin = 0, end = text.size();
  while (begin < end && is_python_whitespace(text[begin])) ++begin;
  while (end > begin && is_python_whitespace(text[end - 1])) --end;
  return text.substr(begin, end - begin);
}

// Python's str.replace: non-overlapping, left to right.
std::u32string replace_all(const std::u32string& text, std::u32string_view from,
                           std::u32string_view to) {
  std::u32string out;
  out.reserve(text.size());
  size_t pos = 0;
  while (true) {
    const size_t hit = text.find(from, pos);
    if (hit == std::u32string::npos) break;
    out.append(text, pos, hit - pos);
    out.append(to);
    pos = hit + from.size();
  }
  out.append(text, pos, std::u32string::npos);
  return out;
}

std::vector<std::u32string> split_on(const std::u32string& text, std::u32string_view separator) {
  std::vector<std::u32string> parts;
  size_t pos = 0;
  while (true) {
    const size_t hit = text.find(separator, pos);
    if (hit == std::u32string::npos) break;
    parts.push_back(text.substr(pos, hit - pos));
    pos = hit + separator.size();
  }
  parts.push_back(text.substr(pos));
  return parts;
}

// re.sub('[.,?;*!%^&_+():-\[\]{}]', '', t): `:-\[` is the range ':' .. '[' (0x3A-0x5B), so
// ':;<=>?@', 'A'-'Z' and '[' go, while '-' survives.
bool in_r2gen_punctuation_class(char32_t c) {
  switch (c) {
    case '.':
    case ',':
    case '?':
    case ';':
    case '*':
    case '!':
    case '%':
    case '^':
    case '&':
    case '_':
    case '+':
    case '(':
    case ')':
    case ']':
    case '{':
    case '}':
      return true;
    default:
      return c >= 0x3A && c <= 0x5B;
  }
}

std::u32string sentence_cleaner(const std::u32string& sentence) {
  std::u32string text = sentence;
  text = replace_all(text, U"\"", U"");
  text = replace_all(text, U"/", U"");
  text = replace_all(text, U"\\", U"");
  text = replace_all(text, U"'", U"");
  text = python_lower(python_strip(text));
  std::u32string out;
  out.reserve(text.size());
  for (char32_t c : text)
    if (!in_r2gen_punctuation_class(c)) out.push_back(c);
  return out;
}

// The part shared by both cleaners after their dataset-specific collapsing passes.
std::string finish_cleaning(std::u32string text) {
  for (auto number : {U"1. "}) text = replace_all(text, number, U"");
  for (auto from : {U". 2. ", U". 3. ", U". 4. ", U". 5. ", U" 2. ", U" 3. ", U" 4. ", U" 5. "})
    text = replace_all(text, from, U". ");
  text = python_lower(python_strip(text));
  // R2Gen keeps every sentence: its filter compares a string with [] and is always true.
  std::u32string joined;
  bool first = true;
  for (const auto& sentence : split_on(text, U". ")) {
    if (!first) joined += U" . ";
    first = false;
    joined += sentence_cleaner(sentence);
  }
  joined += U" .";
  return encode_utf8(joined);
}

std::u32string repeat_replace(std::u32string text, std::u32string_view from, std::u32string_view to,
                              int passes) {
  for (int pass = 0; pass < passes; ++pass) text = replace_all(text, from, to);
  return text;
}

}  // namespace

Dataset parse_dataset(std::string_view name) {
  if (name == "iu_xray") return Dataset::iu_xray;
  if (name == "mimic_cxr") return Dataset::mimic_cxr;
  throw std::invalid_argument("unknown dataset '" + std::string(name) +
                              "': expected iu_xray or mimic_cxr");
}

const char* dataset_name(Dataset dataset) {
  return dataset == Dataset::iu_xray ? "iu_xray" : "mimic_cxr";
}

std::string clean_report_iu_xray(std::string_view report) {
  return finish_cleaning(repeat_replace(decode_utf8(report), U"..", U".", 3));
}

std::string clean_report_mimic_cxr(std::string_view report) {
  std::u32string text = replace_all(decode_utf8(report), U"\n", U" ");
  text = repeat_replace(text, U"__", U"_", 7);
  text = repeat_replace(text, U"  ", U" ", 6);
  text = repeat_replace(text, U"..", U".", 8);
  return finish_cleaning(text);
}

std::string clean_report(Dataset dataset, std::string_view report) {
  return dataset == Dataset::iu_xray ? clean_report_iu_xray(report)
                                     : clean_report_mimic_cxr(report);
}

std::vector<std::string> split_whitespace(std::string_view text) {
  std::vector<std::string> tokens;
  std::string current;
  bool in_token = false;
  for (char32_t c : decode_utf8(text)) {
    if (is_python_whitespace(c)) {
      if (in_token) tokens.push_back(std::move(current));
      current.clear();
      in_token = false;
    } else {
      append_utf8(current, c);
      in_token = true;
    }
  }
  if (in_token) tokens.push_back(std::move(current));
  return tokens;
}

Tokenizer Tokenizer::build(const std::vector<std::string>& train_reports, Dataset dataset,
                           int threshold) {
  std::unordered_map<std::string, int64_t> counts;
  for (const auto& report : train_reports)
    for (auto& token : split_whitespace(clean_report(dataset, report))) ++counts[token];
  std::vector<std::string> tokens;
  for (const auto& [token, count] : counts)
    if (count >= threshold) tokens.push_back(token);
  // R2Gen appends '<unk>' before sorting; it would be counted twice if a report contained it.
  if (std::find(tokens.begin(), tokens.end(), kUnknownToken) == tokens.end())
    tokens.push_back(kUnknownToken);
  // Byte order of UTF-8 = code point order = Python's str ordering.
  std::sort(tokens.begin(), tokens.end());
  return Tokenizer(std::move(tokens), dataset, threshold);
}

Tokenizer::Tokenizer(std::vector<std::string> tokens, Dataset dataset, int threshold)
    : tokens_(std::move(tokens)), dataset_(dataset), threshold_(threshold) {
  for (size_t i = 0; i < tokens_.size(); ++i) {
    if (!token_to_id_.emplace(tokens_[i], static_cast<int64_t>(i) + 1).second)
      throw std::invalid_argument("tokenizer vocabulary: token '" + tokens_[i] +
                                  "' appears twice (ids must be unique)");
  }
  auto unknown = token_to_id_.find(kUnknownToken);
  if (unknown == token_to_id_.end())
    throw std::invalid_argument(
        "tokenizer vocabulary: no '<unk>' token (R2Gen maps unseen "
        "words to it; rebuild the vocabulary)");
  unknown_id_ = unknown->second;
}

int64_t Tokenizer::id_of(const std::string& token) const {
  auto it = token_to_id_.find(token);
  return it == token_to_id_.end() ? unknown_id_ : it->second;
}

const std::string& Tokenizer::token_of(int64_t id) const {
  if (id < 1 || id > vocab_size())
    throw std::out_of_range("token id " + std::to_string(id) + " outside the vocabulary 1.." +
                            std::to_string(vocab_size()));
  return tokens_[static_cast<size_t>(id - 1)];
}

std::vector<int64_t> Tokenizer::encode(std::string_view report) const {
  std::vector<int64_t> ids{kPadId};
  for (const auto& token : split_whitespace(clean(report))) ids.push_back(id_of(token));
  ids.push_back(kPadId);
  return ids;
}

std::vector<int64_t> Tokenizer::encode(std::string_view report, size_t max_seq_length) const {
  auto ids = encode(report);
  if (ids.size() > max_seq_length) ids.resize(max_seq_length);
  return ids;
}

std::string Tokenizer::decode(const std::vector<int64_t>& ids) const {
  std::string text;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] <= 0) break;  // R2Gen: `if idx > 0 ... else: break`
    if (i >= 1) text += ' ';
    text += token_of(ids[i]);
  }
  return text;
}

std::string Tokenizer::round_trip(std::string_view report, size_t max_seq_length) const {
  auto ids = encode(report, max_seq_length);
  return decode(std::vector<int64_t>(ids.begin() + 1, ids.end()));
}

std::string Tokenizer::to_json() const {
  nlohmann::ordered_json json;
  json["dataset_name"] = dataset_name(dataset_);
  json["threshold"] = threshold_;
  json["vocab_size"] = vocab_size();
  auto id_to_token = nlohmann::ordered_json::array({nullptr});
  for (const auto& token : tokens_) id_to_token.push_back(token);
  json["id_to_token"] = std::move(id_to_token);
  return json.dump(1);
}

Tokenizer Tokenizer::from_json(std::string_view json_text) {
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(json_text);
  } catch (const nlohmann::json::exception& e) {
    throw std::invalid_argument(std::string("tokenizer vocabulary: malformed JSON: ") + e.what());
  }
  if (!json.is_object() || !json.contains("id_to_token") || !json["id_to_token"].is_array())
    throw std::invalid_argument(
        "tokenizer vocabulary: expected an object with an 'id_to_token' array");
  const auto& id_to_token = json["id_to_token"];
  if (id_to_token.empty() || !id_to_token[0].is_null())
    throw std::invalid_argument(
        "tokenizer vocabulary: 'id_to_token'[0] must be null (id 0 is "
        "BOS/EOS/PAD and has no token)");
  std::vector<std::string> tokens;
  for (size_t i = 1; i < id_to_token.size(); ++i) {
    if (!id_to_token[i].is_string())
      throw std::invalid_argument("tokenizer vocabulary: 'id_to_token'[" + std::to_string(i) +
                                  "] is not a string");
    tokens.push_back(id_to_token[i].get<std::string>());
  }
  const auto dataset = parse_dataset(json.value("dataset_name", std::string("iu_xray")));
  const int threshold = json.value("threshold", 0);
  Tokenizer tokenizer(std::move(tokens), dataset, threshold);
  if (json.contains("vocab_size") && json["vocab_size"].get<int64_t>() != tokenizer.vocab_size())
    throw std::invalid_argument("tokenizer vocabulary: 'vocab_size' " + json["vocab_size"].dump() +
                                " disagrees with " + std::to_string(tokenizer.vocab_size()) +
                                " tokens listed");
  return tokenizer;
}

void Tokenizer::save(const std::string& path) const {
  std::ofstream out(path);
  if (!out) throw std::runtime_error("cannot write tokenizer vocabulary to '" + path + "'");
  out << to_json() << "\n";
  if (!out) throw std::runtime_error("writing tokenizer vocabulary to '" + path + "' failed");
}

Tokenizer Tokenizer::load(const std::string& path) {
  std::ifstream in(path);
  if (!in)
    throw std::runtime_error("cannot read tokenizer vocabulary '" + path +
                             "': no such file or not readable");
  std::stringstream buffer;
  buffer << in.rdbuf();
  try {
    return from_json(buffer.str());
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(path + ": " + e.what());
  }
}

}  // namespace ihn_toolkit::data
