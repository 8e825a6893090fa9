// R2Gen's report tokenizer, ported character for character (modules/tokenizers.py of
// cuhksz-nlp/R2Gen @ 5a2e63f): the IU X-Ray and MIMIC-CXR cleaners, the vocabulary built from
// the train split (count >= threshold, sorted, plus `<unk>`, ids from 1, 0 = BOS/EOS/PAD),
// encode `[0] + ids + [0]`, decode up to the first 0, and truncation to max_seq_length.
//
// The cleaners work on Unicode code points as Python's `str` does (full lower-casing incl.
// `İ` -> `i̇` and final sigma, Python's whitespace set for strip/split), so that every case
// of /work/shared/fixtures/tokenizer matches. No LibTorch here: the metrics and the CLI use
// it without torch. The vocabulary saves to / loads from JSON so a checkpoint can carry it.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace ihn_toolkit::data {

enum class Dataset { iu_xray, mimic_cxr };

/// "iu_xray" / "mimic_cxr" <-> Dataset; throws std::invalid_argument naming the valid values.
Dataset parse_dataset(std::string_view name);
const char* dataset_name(Dataset dataset);

/// R2Gen's clean_report_iu_xray (UTF-8 in, UTF-8 out).
std::string clean_report_iu_xray(std::string_view report);
/// R2Gen's clean_report_mimic_cxr (UTF-8 in, UTF-8 out).
std::string clean_report_mimic_cxr(std::string_view report);
/// The cleaner R2Gen picks for `dataset`.
std::string clean_report(Dataset dataset, std::string_view report);
/// Python's `str.split()` with no argument: splits on runs of Unicode whitespace.
std::vector<std::string> split_whitespace(std::string_view text);

/// R2Gen's Tokenizer. Token id 0 is BOS, EOS and PAD and has no token; ids 1..vocab_size.
class Tokenizer {
 public:
  static constexpr int64_t kPadId = 0;  ///< also BOS and EOS, as in R2Gen
  static constexpr const char* kUnknownToken = "<unk>";

  /// Vocabulary from `train_reports` (raw text): cleaned, split, tokens with count >= threshold,
  /// plus `<unk>`, sorted by code point as Python's list.sort().
  static Tokenizer build(const std::vector<std::string>& train_reports, Dataset dataset,
                         int threshold);
  /// From an ordered token list (id = index + 1), e.g. one saved in a checkpoint. Throws
  /// std::invalid_argument on duplicates or a missing `<unk>`.
  Tokenizer(std::vector<std::string> tokens, Dataset dataset, int threshold);

  /// `[0] + ids + [0]` of the cleaned report (unknown tokens -> id of `<unk>`), not truncated.
  std::vector<int64_t> encode(std::string_view report) const;
  /// encode() truncated to `max_seq_length` as R2Gen's BaseDataset does (long reports lose EOS).
  std::vector<int64_t> encode(std::string_view report, size_t max_seq_length) const;
  /// Tokens up to the first id 0, joined with single spaces. Throws std::out_of_range on an id
  /// outside 1..vocab_size.
  std::string decode(const std::vector<int64_t>& ids) const;
  /// Tokenizer round trip R2Gen uses as the reference: decode(encode(report, max)[1:]).
  std::string round_trip(std::string_view report, size_t max_seq_length) const;

  std::string clean(std::string_view report) const { return clean_report(dataset_, report); }
  int64_t id_of(const std::string& token) const;  ///< id of `<unk>` when absent
  const std::string& token_of(int64_t id) const;  ///< throws std::out_of_range
  /// Number of tokens incl. `<unk>` (R2Gen's get_vocab_size); models use vocab_size() + 1 logits.
  int64_t vocab_size() const { return static_cast<int64_t>(tokens_.size()); }
  const std::vector<std::string>& tokens() const { return tokens_; }
  Dataset dataset() const { return dataset_; }
  int threshold() const { return threshold_; }

  /// JSON as in fixtures/tokenizer/vocab.json: {"dataset_name", "threshold", "vocab_size",
  /// "id_to_token": [null, tok1, ...]}.
  std::string to_json() const;
  static Tokenizer from_json(std::string_view json_text);  ///< throws std::invalid_argument
  void save(const std::string& path) const;                ///< throws std::runtime_error
  static Tokenizer load(const std::string& path);          ///< errors name the file

 private:
  std::vector<std::string> tokens_;  // tokens_[id - 1]
  std::unordered_map<std::string, int64_t> token_to_id_;
  Dataset dataset_;
  int threshold_;
  int64_t unknown_id_ = 0;
};

}  // namespace ihn_toolkit::data
