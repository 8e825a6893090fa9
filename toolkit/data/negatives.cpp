// TF-IDF top-1 negatives (negatives.hpp): distinct texts, an inverted index, and term-at-a-time
// scoring that stops once the terms left cannot reach the best score found.
#include "data/negatives.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <numeric>
#include <sstream>

namespace ihn_toolkit::data {

namespace {

// Scores closer than this are ties (resolved by the lowest index). The same margin keeps the
// pruning exact despite rounding: terms are dropped only when their bound is clearly below.
constexpr double kTie = 1e-12;
constexpr double kPruneMargin = 1e-9;

struct Term {
  int32_t id;
  double weight;
};

}  // namespace

Retrieval closest_different(const std::vector<std::string>& texts) {
  const size_t n = texts.size();
  Retrieval out;
  out.index.assign(n, -1);
  out.similarity.assign(n, 0.0);
  // Distinct texts, numbered in order of first occurrence so that "lowest distinct-text
  // number" is "lowest study index".
  std::unordered_map<std::string, int32_t> distinct_of;
  std::vector<int32_t> text_of(n);
  std::vector<int64_t> first_study, multiplicity;
  for (size_t i = 0; i < n; ++i) {
    auto [it, inserted] = distinct_of.emplace(texts[i], static_cast<int32_t>(first_study.size()));
    if (inserted) {
      first_study.push_back(static_cast<int64_t>(i));
      multiplicity.push_back(0);
    }
    text_of[i] = it->second;
    ++multiplicity[static_cast<size_t>(it->second)];
  }
  const size_t u = first_study.size();
  if (u < 2) return out;

  // Term counts per distinct text, then idf over studies (a text counts once per study).
  std::unordered_map<std::string, int32_t> term_of;
  std::vector<std::vector<Term>> docs(u);
  std::vector<int64_t> df;
  for (size_t k = 0; k < u; ++k) {
    std::map<int32_t, int> counts;
    for (const auto& token : split_whitespace(texts[static_cast<size_t>(first_study[k])])) {
      auto [it, inserted] = term_of.emplace(token, static_cast<int32_t>(df.size()));
      if (inserted) df.push_back(0);
      ++counts[it->second];
    }
    for (const auto& [term, count] : counts) {
      docs[k].push_back({term, static_cast<double>(count)});
      df[static_cast<size_t>(term)] += multiplicity[k];
    }
  }
  const size_t terms = df.size();
  std::vector<double> idf(terms);
  for (size_t t = 0; t < terms; ++t)
    idf[t] = std::log((1.0 + static_cast<double>(n)) / (1.0 + static_cast<double>(df[t]))) + 1.0;
  std::vector<std::vector<std::pair<int32_t, double>>> postings(terms);
  std::vector<double> max_weight(terms, 0.0);
  for (size_t k = 0; k < u; ++k) {
    double norm = 0;
    for (auto& term : docs[k]) {
      term.weight *= idf[static_cast<size_t>(term.id)];
      norm += term.weight * term.weight;
    }
    norm = std::sqrt(norm);
    for (auto& term : docs[k]) {
      term.weight /= norm;  // norm > 0: a listed term has tf >= 1 and idf >= 1
      postings[static_cast<size_t>(term.id)].emplace_back(static_cast<int32_t>(k), term.weight);
      max_weight[static_cast<size_t>(term.id)] =
          std::max(max_weight[static_cast<size_t>(term.id)], term.weight);
    }
  }

  std::vector<double> query(terms, 0.0);
  std::vector<int32_t> seen(u, -1);
  std::vector<int32_t> best_of(u, -1);
  std::vector<double> best_score_of(u, 0.0);
  std::vector<std::pair<double, int32_t>> order;  // (upper bound, term)
  for (size_t k = 0; k < u; ++k) {
    for (const auto& term : docs[k]) query[static_cast<size_t>(term.id)] = term.weight;
    int32_t best = -1;
    double best_score = 0;
    auto consider = [&](int32_t d) {
      if (d == static_cast<int32_t>(k) || seen[static_cast<size_t>(d)] == static_cast<int32_t>(k))
        return;
      seen[static_cast<size_t>(d)] = static_cast<int32_t>(k);
      double s = 0;
      for (const auto& term : docs[static_cast<size_t>(d)])
        s += query[static_cast<size_t>(term.id)] * term.weight;
      if (best < 0 || s > best_score + kTie || (s >= best_score - kTie && d < best)) {
        best = d;
        best_score = s;
      }
    };
    // Most promising terms first; stop when the bounds of the rest sum below the best score.
    order.clear();
    for (const auto& term : docs[k])
      order.emplace_back(term.weight * max_weight[static_cast<size_t>(term.id)], term.id);
    std::sort(order.begin(), order.end(), [](const auto& a, const auto& b) {
      return a.first != b.first ? a.first > b.first : a.second < b.second;
    });
    double remaining = 0;
    for (const auto& entry : order) remaining += entry.first;
    for (const auto& [bound, term] : order) {
      if (best >= 0 && remaining + kPruneMargin < best_score) break;
      for (const auto& posting : postings[static_cast<size_t>(term)]) consider(posting.first);
      remaining -= bound;
    }
    if (best < 0) {  // no shared term: the lowest-index different text, at similarity 0
      best = k == 0 ? 1 : 0;
      best_score = 0;
    }
    for (const auto& term : docs[k]) query[static_cast<size_t>(term.id)] = 0.0;
    best_of[k] = best;
    best_score_of[k] = best_score;
  }
  for (size_t i = 0; i < n; ++i) {
    const auto k = static_cast<size_t>(text_of[i]);
    out.index[i] = first_study[static_cast<size_t>(best_of[k])];
    out.similarity[i] = best_score_of[k];
  }
  return out;
}

std::unordered_map<std::string, std::string> Negatives::by_id() const {
  std::unordered_map<std::string, std::string> map;
  for (size_t i = 0; i < ids.size(); ++i) map.emplace(ids[i], negative_ids[i]);
  return map;
}

Negatives mine_negatives(const std::vector<Study>& studies, Dataset dataset,
                         const std::string& source) {
  std::vector<std::string> cleaned;
  cleaned.reserve(studies.size());
  for (const auto& study : studies) cleaned.push_back(clean_report(dataset, study.report));
  const auto retrieval = closest_different(cleaned);
  Negatives out;
  out.dataset = dataset_name(dataset);
  out.source = source;
  for (size_t i = 0; i < studies.size(); ++i) {
    if (retrieval.index[i] < 0)
      throw NegativesError(source + ": fewer than two distinct cleaned reports among " +
                           std::to_string(studies.size()) +
                           " training studies, so no study has a different report to serve as "
                           "its negative");
    out.ids.push_back(studies[i].id);
    out.negative_ids.push_back(studies[static_cast<size_t>(retrieval.index[i])].id);
    out.similarity.push_back(retrieval.similarity[i]);
  }
  return out;
}

std::string negatives_to_json(const Negatives& negatives) {
  nlohmann::ordered_json j;
  j["method"] = negatives.method;
  j["version"] = negatives.version;
  j["dataset"] = negatives.dataset;
  j["source"] = negatives.source;
  j["description"] =
      "per training study, the closest different training report: R2Gen-cleaned tokens, "
      "tf = count, idf = ln((1+N)/(1+df))+1, L2-normalised, cosine; identical cleaned text "
      "excluded; ties to the lowest index";
  j["studies"] = negatives.ids.size();
  auto& pairs = j["negatives"] = nlohmann::ordered_json::object();
  for (size_t i = 0; i < negatives.ids.size(); ++i)
    pairs[negatives.ids[i]] = {{"negative", negatives.negative_ids[i]},
                               {"similarity", negatives.similarity[i]}};
  return j.dump(1) + "\n";
}

Negatives negatives_from_json(const std::string& text, const std::string& path) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const std::exception& e) {
    throw NegativesError(path + ": not valid JSON (" + e.what() +
                         "); write it with `ihn data negatives`");
  }
  auto fail = [&](const std::string& what) {
    throw NegativesError(path + ": " + what + " (expected the output of `ihn data negatives`)");
  };
  if (!j.is_object()) fail("the top level is not an object");
  if (!j.contains("method") || !j["method"].is_string()) fail("no \"method\" string");
  if (!j.contains("version") || !j["version"].is_number_integer()) fail("no \"version\" integer");
  Negatives out;
  out.method = j["method"].get<std::string>();
  out.version = j["version"].get<int>();
  if (out.version > 1)
    fail("version " + std::to_string(out.version) + " is newer than this ihn reads (1)");
  if (j.contains("dataset") && j["dataset"].is_string()) out.dataset = j["dataset"];
  if (j.contains("source") && j["source"].is_string()) out.source = j["source"];
  if (!j.contains("negatives") || !j["negatives"].is_object())
    fail("no \"negatives\" object mapping study id to {negative, similarity}");
  for (const auto& [id, entry] : j["negatives"].items()) {
    if (!entry.is_object() || !entry.contains("negative") || !entry["negative"].is_string() ||
        !entry.contains("similarity") || !entry["similarity"].is_number())
      fail("entry '" + id + "' is not {\"negative\": ID, \"similarity\": NUMBER}");
    out.ids.push_back(id);
    out.negative_ids.push_back(entry["negative"].get<std::string>());
    out.similarity.push_back(entry["similarity"].get<double>());
    if (out.negative_ids.back() == id) fail("entry '" + id + "' names itself as its negative");
  }
  return out;
}

void save_negatives(const Negatives& negatives, const std::string& path) {
  std::ofstream out(path);
  if (!out) throw NegativesError(path + ": cannot write (does its folder exist?)");
  out << negatives_to_json(negatives);
  if (!out) throw NegativesError(path + ": write failed");
}

Negatives load_negatives(const std::string& path) {
  std::ifstream in(path);
  if (!in)
    throw NegativesError(path + ": negatives file not found (write it with `ihn data negatives`)");
  std::ostringstream text;
  text << in.rdbuf();
  return negatives_from_json(text.str(), path);
}

}  // namespace ihn_toolkit::data
