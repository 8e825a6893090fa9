// annotation.json loading and validation (see annotation.hpp).
#include "data/annotation.hpp"

#include "data/image.hpp"

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <sstream>

namespace ihn_toolkit::data {

namespace {
constexpr const char* kSplits[] = {"train", "val", "test"};
constexpr size_t kProblemsListedInError = 20;

bool is_blank(const std::string& text) {
  return split_whitespace(text).empty();  // Python's notion of whitespace, as the tokenizer's
}
}  // namespace

std::string AnnotationProblem::describe(const std::string& file) const {
  std::ostringstream out;
  out << file << ": " << split << "[" << index << "]";
  if (!id.empty()) out << " (id " << id << ")";
  out << ": " << problem;
  return out.str();
}

size_t required_views(Dataset dataset) {
  return dataset == Dataset::iu_xray ? 2 : 1;
}

const std::vector<Study>& Annotation::split(const std::string& name) const {
  if (name == "train") return train;
  if (name == "val") return val;
  if (name == "test") return test;
  throw std::invalid_argument("unknown split '" + name + "': expected train, val or test");
}

std::vector<std::string> Annotation::train_reports() const {
  std::vector<std::string> reports;
  reports.reserve(train.size());
  for (const auto& study : train) reports.push_back(study.report);
  return reports;
}

std::string Annotation::summary() const {
  std::ostringstream out;
  out << path << " (" << dataset_name(dataset) << "): train " << train.size() << ", val "
      << val.size() << ", test " << test.size() << "; skipped " << problems.size() << " bad entr"
      << (problems.size() == 1 ? "y" : "ies");
  for (const auto& problem : problems) out << "\n  skipped " << problem.describe(path);
  return out.str();
}

Annotation parse_annotation(const std::string& json_text, const std::string& path,
                            const AnnotationOptions& options) {
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(json_text);
  } catch (const nlohmann::json::exception& e) {  // parse_error, or out_of_range: 1e99999
    throw AnnotationError(
        path + ": malformed JSON (" + e.what() +
        "); expected R2Gen's {\"train\": [...], \"val\": [...], \"test\": [...]}");
  }
  if (!json.is_object())
    throw AnnotationError(path + ": the top level is a JSON " + json.type_name() +
                          ", expected an object with train/val/test arrays");
  for (const char* split : kSplits) {
    if (!json.contains(split))
      throw AnnotationError(path + ": missing split '" + split +
                            "' (R2Gen's annotation.json has train, val and test)");
    if (!json[split].is_array())
      throw AnnotationError(path + ": split '" + split + "' is a JSON " + json[split].type_name() +
                            ", expected an array of entries");
  }

  Annotation annotation;
  annotation.path = path;
  annotation.dataset = options.dataset;
  std::vector<AnnotationProblem> problems;
  const size_t views = required_views(options.dataset);
  // Where each accepted id sits: a repeated id would be one study seen twice (or, across
  // splits, a test study trained on), and ids key the feature bank and the reports.
  std::map<std::string, std::string> seen;
  for (const char* split : kSplits) {
    auto& studies = split == std::string("train") ? annotation.train
                    : split == std::string("val") ? annotation.val
                                                  : annotation.test;
    const auto& entries = json[split];
    for (size_t index = 0; index < entries.size(); ++index) {
      const auto& entry = entries[index];
      AnnotationProblem problem{split, index, "", ""};
      auto fail = [&](std::string what) {
        problem.problem = std::move(what);
        problems.push_back(problem);
      };
      if (!entry.is_object()) {
        fail(std::string("entry is a JSON ") + entry.type_name() + ", expected an object");
        continue;
      }
      if (entry.contains("id") && entry["id"].is_string()) problem.id = entry["id"];
      std::string missing;
      for (const char* key : {"id", "report", "image_path"})
        if (!entry.contains(key)) missing += missing.empty() ? key : std::string(", ") + key;
      if (!missing.empty()) {
        fail("missing key(s): " + missing);
        continue;
      }
      if (!entry["id"].is_string() || entry["id"].get<std::string>().empty()) {
        fail("'id' must be a non-empty string");
        continue;
      }
      if (!entry["report"].is_string()) {
        fail(std::string("'report' is a JSON ") + entry["report"].type_name() + ", not a string");
        continue;
      }
      const auto& image_path = entry["image_path"];
      if (!image_path.is_array()) {
        fail(std::string("'image_path' is a JSON ") + image_path.type_name() + ", not an array");
        continue;
      }
      Study study;
      study.id = entry["id"];
      study.report = entry["report"];
      study.split = split;
      if (entry.contains("split") && entry["split"].is_string() && entry["split"] != split) {
        fail("entry says split '" + entry["split"].get<std::string>() + "' but sits in '" + split +
             "'");
        continue;
      }
      if (is_blank(study.report)) {
        fail("empty or whitespace-only report");
        continue;
      }
      bool paths_ok = true;
      for (const auto& p : image_path) {
        if (!p.is_string() || p.get<std::string>().empty()) {
          paths_ok = false;
          break;
        }
        study.image_paths.push_back(p);
      }
      if (!paths_ok) {
        fail("'image_path' must hold non-empty strings");
        continue;
      }
      std::string escaping;
      for (const auto& p : study.image_paths) {
        const auto normal = std::filesystem::path(p).lexically_normal();
        if (normal.is_absolute() || normal.has_root_name() ||
            (!normal.empty() && *normal.begin() == ".."))
          escaping = p;
      }
      if (!escaping.empty()) {
        fail("image path '" + escaping +
             "' leaves the image folder (absolute, or '..' climbs out of it); paths are relative "
             "to --images");
        continue;
      }
      const bool views_ok = options.dataset == Dataset::iu_xray ? study.image_paths.size() == views
                                                                : study.image_paths.size() >= views;
      if (!views_ok) {
        fail("has " + std::to_string(study.image_paths.size()) + " image(s), " +
             dataset_name(options.dataset) + " needs " +
             (options.dataset == Dataset::iu_xray ? "exactly 2 (frontal, lateral)" : "at least 1"));
        continue;
      }
      if (!options.image_root.empty()) {
        std::string image_problems;
        // MIMIC-CXR's loader reads image_path[0] only, so only that one must be readable.
        const size_t used = options.dataset == Dataset::iu_xray ? views : 1;
        for (size_t v = 0; v < used; ++v) {
          const auto full = (std::filesystem::path(options.image_root) / study.image_paths[v]);
          const auto what = probe_image(full.string(), options.decode_images);
          if (!what.empty())
            image_problems += (image_problems.empty() ? "" : "; ") + std::string("image ") +
                              full.string() + " " + what;
        }
        if (!image_problems.empty()) {
          fail(image_problems);
          continue;
        }
      }
      const std::string where = std::string(split) + "[" + std::to_string(index) + "]";
      if (const auto [it, fresh] = seen.emplace(study.id, where); !fresh) {
        fail("duplicate id: also " + it->second);
        continue;
      }
      studies.push_back(std::move(study));
    }
  }
  if (!problems.empty() && options.on_bad_entry == OnBadEntry::fail) {
    std::ostringstream message;
    message << path << ": " << problems.size() << " bad entr"
            << (problems.size() == 1 ? "y" : "ies")
            << " (fix them, or leave them out with --skip-bad, which lists them):";
    for (size_t i = 0; i < problems.size() && i < kProblemsListedInError; ++i)
      message << "\n  " << problems[i].describe(path);
    if (problems.size() > kProblemsListedInError)
      message << "\n  ... and " << problems.size() - kProblemsListedInError << " more";
    throw AnnotationError(message.str());
  }
  annotation.problems = std::move(problems);
  return annotation;
}

Annotation load_annotation(const std::string& path, const AnnotationOptions& options) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw AnnotationError(path +
                          ": cannot open the annotation file (missing or unreadable); "
                          "pass the path of R2Gen's annotation.json");
  std::stringstream buffer;
  buffer << in.rdbuf();
  return parse_annotation(buffer.str(), path, options);
}

void save_annotation(const std::vector<Study>& studies, const std::string& path) {
  nlohmann::ordered_json json;
  for (const char* split : kSplits) json[split] = nlohmann::ordered_json::array();
  for (const auto& study : studies) {
    if (!json.contains(study.split))
      throw std::invalid_argument("save_annotation: study " + study.id + " has split '" +
                                  study.split + "', expected train, val or test");
    json[study.split].push_back({{"id", study.id},
                                 {"report", study.report},
                                 {"image_path", study.image_paths},
                                 {"split", study.split}});
  }
  std::ofstream out(path);
  if (!out) throw std::runtime_error("cannot write annotation '" + path + "'");
  out << json.dump() << "\n";
  if (!out) throw std::runtime_error("writing annotation '" + path + "' failed");
}

}  // namespace ihn_toolkit::data
