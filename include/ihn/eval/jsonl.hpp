// Reading reports from JSON Lines files ({"id": ..., "report": ...} per line) and pairing
// hypotheses with references by id -- what `ihn eval` reads. Every error names the file and
// line (1-based) or the ids concerned.
#pragma once

#include <ihn/eval/evaluate.hpp>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <istream>
#include <string>
#include <unordered_map>
#include <vector>

namespace ihn {
inline namespace v0 {
namespace eval {

struct Report {
  std::string id;
  std::string report;
  std::size_t line = 0;  ///< where it was read
};

/// Reads one report per non-blank line from `in` (`name` stands for the file in messages). The id
/// may be a JSON string or integer (an integer is used in its decimal spelling). Throws EvalError
/// "<file>:<line>: <what>" for malformed JSON, a missing or mistyped "id"/"report", bytes that are
/// not UTF-8, and a repeated id.
inline std::vector<Report> read_reports_jsonl(std::istream& in, const std::string& name) {
  std::vector<Report> out;
  std::unordered_map<std::string, std::size_t> first_line;
  std::string line;
  std::size_t number = 0;
  auto fail = [&](const std::string& what) {
    throw EvalError(name + ":" + std::to_string(number) + ": " + what);
  };
  while (std::getline(in, line)) {
    ++number;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (detail::split_python_whitespace(line).empty() &&
        detail::first_invalid_utf8(line) == std::string::npos)
      continue;
    if (const auto bad = detail::first_invalid_utf8(line); bad != std::string::npos)
      fail("byte " + std::to_string(bad + 1) + " is not valid UTF-8");
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      fail(std::string("malformed JSON (") + e.what() + ")");
    }
    if (!j.is_object()) fail("expected a JSON object {\"id\": ..., \"report\": ...}");
    Report r;
    r.line = number;
    const auto id = j.find("id");
    if (id == j.end()) fail("missing \"id\"");
    if (id->is_string())
      r.id = id->get<std::string>();
    else if (id->is_number_integer())
      r.id = id->dump();
    else
      fail("\"id\" must be a string or an integer");
    const auto report = j.find("report");
    if (report == j.end()) fail("missing \"report\" (id \"" + r.id + "\")");
    if (!report->is_string()) fail("\"report\" must be a string (id \"" + r.id + "\")");
    r.report = report->get<std::string>();
    auto [it, inserted] = first_line.emplace(r.id, number);
    if (!inserted)
      fail("duplicate id \"" + r.id + "\" (first on line " + std::to_string(it->second) + ")");
    out.push_back(std::move(r));
  }
  if (out.empty()) throw EvalError(name + ": no reports");
  return out;
}

/// The same from a file.
inline std::vector<Report> read_reports_jsonl(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw EvalError("cannot open " + path.string());
  return read_reports_jsonl(in, path.string());
}

/// Pairs hypotheses with references by id, in the hypotheses' order. Throws EvalError listing
/// (up to five of) the ids found in only one file.
inline std::vector<Example> match_by_id(const std::vector<Report>& hyps,
                                        const std::vector<Report>& refs,
                                        const std::string& hyp_name = "hypotheses",
                                        const std::string& ref_name = "references") {
  std::unordered_map<std::string, const Report*> by_id;
  for (const auto& r : refs) by_id.emplace(r.id, &r);
  std::vector<Example> out;
  std::vector<std::string> missing_ref;
  std::unordered_map<std::string, bool> used;
  for (const auto& h : hyps) {
    auto it = by_id.find(h.id);
    if (it == by_id.end()) {
      missing_ref.push_back(h.id);
      continue;
    }
    used[h.id] = true;
    out.push_back({h.id, h.report, it->second->report});
  }
  std::vector<std::string> missing_hyp;
  for (const auto& r : refs)
    if (!used.count(r.id)) missing_hyp.push_back(r.id);
  auto list = [](const std::vector<std::string>& ids) {
    std::string s;
    for (std::size_t i = 0; i < ids.size() && i < 5; ++i) s += (i ? ", \"" : "\"") + ids[i] + "\"";
    if (ids.size() > 5) s += ", ...";
    return s;
  };
  if (!missing_ref.empty() || !missing_hyp.empty()) {
    std::string what = "ids do not match:";
    if (!missing_ref.empty())
      what += " " + std::to_string(missing_ref.size()) + " in " + hyp_name + " but not in " +
              ref_name + " (" + list(missing_ref) + ")";
    if (!missing_hyp.empty())
      what += std::string(missing_ref.empty() ? "" : ";") + " " +
              std::to_string(missing_hyp.size()) + " in " + ref_name + " but not in " + hyp_name +
              " (" + list(missing_hyp) + ")";
    throw EvalError(what);
  }
  return out;
}

}  // namespace eval
}  // namespace v0
}  // namespace ihn
