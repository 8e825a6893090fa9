// Offline negatives for the official-compatible mode (`ihn data negatives`, `--ihn official`):
// for every training study, the closest *different* training report by TF-IDF cosine, the
// role of the precomputed `updated_top1_pos_neg_reports.json` of the authors' release.
//
// Method "tfidf-cosine", version 1 (docs/training.md):
//  - tokens: the report cleaned by R2Gen's cleaner of the data set (clean_report), split on
//    whitespace — exactly the tokens the R2Gen tokenizer sees (punctuation included);
//  - tf = raw count of the term in the report; idf = ln((1 + N) / (1 + df)) + 1 with N the
//    number of studies and df the studies containing the term (scikit-learn's smooth idf);
//    each report's tf·idf vector is L2-normalised, so the dot product is the cosine;
//  - candidates: every other study whose cleaned text differs (identical text is never a
//    negative: the model could not be asked to tell it apart);
//  - ties (scores within 1e-12) go to the lowest study index; a study sharing no term with
//    any other gets the lowest-index different study at similarity 0.
// Retrieval is exact but sparse: an inverted index over distinct cleaned texts, scored
// candidate by candidate with MaxScore pruning (terms whose summed upper bounds cannot reach
// the best score found so far are not traversed), so common words ("the", "no") do not make
// it quadratic on MIMIC-size sets.
#pragma once

#include "data/annotation.hpp"
#include "data/tokenizer.hpp"

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace ihn_toolkit::data {

struct NegativesError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// Result of closest_different(): for each input text, the index of its negative and the
/// cosine; index -1 only when every text is identical to it.
struct Retrieval {
  std::vector<int64_t> index;
  std::vector<double> similarity;
};

/// Top-1 TF-IDF retrieval over already cleaned texts (see the file comment for the method).
Retrieval closest_different(const std::vector<std::string>& cleaned_texts);

/// The negatives of a split: ids[i]'s negative is negative_ids[i] at cosine similarity[i].
struct Negatives {
  std::string method = "tfidf-cosine";
  int version = 1;
  std::string dataset = "iu_xray";
  std::string source;  ///< where the reports came from (annotation path or synthetic seed)
  std::vector<std::string> ids, negative_ids;
  std::vector<double> similarity;

  /// id -> negative id (the lookup the trainer needs).
  std::unordered_map<std::string, std::string> by_id() const;
};

/// Mines negatives among `studies` (the training split); throws NegativesError when fewer than
/// two distinct cleaned reports exist.
Negatives mine_negatives(const std::vector<Study>& studies, Dataset dataset,
                         const std::string& source);

std::string negatives_to_json(const Negatives& negatives);
/// Throws NegativesError naming `path` and the problem.
Negatives negatives_from_json(const std::string& json_text, const std::string& path);
void save_negatives(const Negatives& negatives, const std::string& path);
Negatives load_negatives(const std::string& path);

}  // namespace ihn_toolkit::data
