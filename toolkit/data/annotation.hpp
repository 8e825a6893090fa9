// R2Gen's annotation.json (`{"train": [...], "val": [...], "test": [...]}`, entries
// `{id, report, image_path: [...], split}`) for IU X-Ray (two views: image_path[0] frontal,
// image_path[1] lateral) and MIMIC-CXR (image_path[0]), with validation.
//
// File-level problems (missing file, malformed JSON, a missing split) always throw
// AnnotationError. Entry-level problems (missing/mistyped keys, empty or whitespace report,
// wrong number of views, missing/unreadable/corrupt images under the image root) either
// throw (OnBadEntry::fail, listing every problem found) or drop the entry (OnBadEntry::skip)
// and are listed in Annotation::problems with a count: nothing is dropped silently.
#pragma once

#include "data/tokenizer.hpp"

#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace ihn_toolkit::data {

struct Study {
  std::string id;
  std::string report;
  std::vector<std::string> image_paths;  ///< relative to the image root, as in annotation.json
  std::string split;                     ///< "train", "val" or "test"
};

/// One problem with one entry: where it is and what is wrong.
struct AnnotationProblem {
  std::string split;
  size_t index = 0;  ///< position in the split's array
  std::string id;    ///< empty when the entry has no usable id
  std::string problem;
  std::string describe(const std::string& file) const;  ///< "file: train[12] (id X): problem"
};

struct AnnotationError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

enum class OnBadEntry { fail, skip };

struct AnnotationOptions {
  Dataset dataset = Dataset::iu_xray;
  /// Folder the image paths are relative to; empty = do not look at images.
  std::string image_root;
  OnBadEntry on_bad_entry = OnBadEntry::fail;
  /// false: a header check per image (stbi_info, fast); true: decode every image.
  bool decode_images = false;
};

struct Annotation {
  std::string path;
  Dataset dataset = Dataset::iu_xray;
  std::vector<Study> train, val, test;
  std::vector<AnnotationProblem> problems;  ///< entries skipped (OnBadEntry::skip)

  const std::vector<Study>& split(const std::string& name) const;  ///< throws on a bad name
  /// "train 2069, val 296, test 590 (skipped 0)" and, when entries were skipped, each problem.
  std::string summary() const;
  std::vector<std::string> train_reports() const;
};

/// Number of views a study of `dataset` must have: 2 for IU X-Ray, at least 1 for MIMIC-CXR.
size_t required_views(Dataset dataset);

Annotation load_annotation(const std::string& path, const AnnotationOptions& options = {});
/// As load_annotation, from JSON text (`path` only names it in messages).
Annotation parse_annotation(const std::string& json_text, const std::string& path,
                            const AnnotationOptions& options = {});
/// Writes studies back in the same format (used by the synthetic data set).
void save_annotation(const std::vector<Study>& studies, const std::string& path);

}  // namespace ihn_toolkit::data
