// Discriminativeness of generated reports: image->report and report->image retrieval
// (recall@1/5/10, median rank) from two feature matrices, and distinctness of the generated
// reports (share of distinct reports, distinct-1, distinct-2).
//
// Retrieval: row i of the image features and row i of the report features belong to example i.
// Similarity is the cosine of the rows (a zero row has similarity 0 to everything). Ties are
// broken pessimistically and deterministically: the rank of the true match is 1 + the number
// of other candidates whose similarity is >= the true one, so identical (collapsed) reports
// cannot score well by luck of ordering.
#pragma once

#include <ihn/eval/text.hpp>

#include <Eigen/Dense>

#include <algorithm>
#include <set>
#include <string>
#include <unordered_set>
#include <vector>

namespace ihn {
inline namespace v0 {
namespace eval {

struct RetrievalScores {
  double recall_at_1 = 0, recall_at_5 = 0, recall_at_10 = 0;  ///< shares in [0, 1]
  double median_rank = 0;   ///< 1-based; mean of the two middle ranks for an even count
  std::vector<long> ranks;  ///< rank of the true match per query (1 = first)
};

struct Retrieval {
  RetrievalScores image_to_report;  ///< query = image i, candidates = all reports
  RetrievalScores report_to_image;  ///< query = report i, candidates = all images
};

namespace detail {

inline Eigen::MatrixXd normalized_rows(const Eigen::MatrixXd& m) {
  Eigen::MatrixXd out = m;
  for (Eigen::Index i = 0; i < out.rows(); ++i) {
    const double norm = out.row(i).norm();
    if (norm > 0) out.row(i) /= norm;
  }
  return out;
}

/// Ranks of the diagonal in each row of a square similarity matrix.
inline RetrievalScores rank_diagonal(const Eigen::MatrixXd& sim) {
  RetrievalScores s;
  const Eigen::Index n = sim.rows();
  for (Eigen::Index i = 0; i < n; ++i) {
    const double truth = sim(i, i);
    long rank = 1;
    for (Eigen::Index j = 0; j < n; ++j)
      if (j != i && sim(i, j) >= truth) ++rank;
    s.ranks.push_back(rank);
  }
  if (n == 0) return s;
  long r1 = 0, r5 = 0, r10 = 0;
  for (long r : s.ranks) {
    r1 += r <= 1;
    r5 += r <= 5;
    r10 += r <= 10;
  }
  s.recall_at_1 = static_cast<double>(r1) / static_cast<double>(n);
  s.recall_at_5 = static_cast<double>(r5) / static_cast<double>(n);
  s.recall_at_10 = static_cast<double>(r10) / static_cast<double>(n);
  std::vector<long> sorted = s.ranks;
  std::sort(sorted.begin(), sorted.end());
  s.median_rank = n % 2 ? static_cast<double>(sorted[n / 2])
                        : 0.5 * static_cast<double>(sorted[n / 2 - 1] + sorted[n / 2]);
  return s;
}

}  // namespace detail

/// Retrieval between image and report features (rows = examples, same order and width).
inline Retrieval retrieval_scores(const Eigen::MatrixXd& image_features,
                                  const Eigen::MatrixXd& report_features) {
  if (image_features.rows() != report_features.rows() ||
      image_features.cols() != report_features.cols())
    throw EvalError(
        "retrieval_scores: image features are " + std::to_string(image_features.rows()) + "x" +
        std::to_string(image_features.cols()) + " but report features are " +
        std::to_string(report_features.rows()) + "x" + std::to_string(report_features.cols()));
  const Eigen::MatrixXd sim = detail::normalized_rows(image_features) *
                              detail::normalized_rows(report_features).transpose();
  Retrieval r;
  r.image_to_report = detail::rank_diagonal(sim);
  r.report_to_image = detail::rank_diagonal(sim.transpose());
  return r;
}

/// The `k` most similar reports of each image (rows), most similar first; ties go to the lower
/// index. What an image "retrieves" from the model's features, for showing next to the study.
struct NearestReports {
  std::vector<std::vector<long>> index;         ///< [image][rank] -> report row
  std::vector<std::vector<double>> similarity;  ///< the cosine of each
};

inline NearestReports nearest_reports(const Eigen::MatrixXd& image_features,
                                      const Eigen::MatrixXd& report_features, int k) {
  if (image_features.cols() != report_features.cols())
    throw EvalError("nearest_reports: image features have " +
                    std::to_string(image_features.cols()) + " columns but report features " +
                    std::to_string(report_features.cols()));
  const Eigen::MatrixXd sim = detail::normalized_rows(image_features) *
                              detail::normalized_rows(report_features).transpose();
  NearestReports out;
  const long n = static_cast<long>(sim.cols());
  const long take = std::min<long>(std::max(k, 0), n);
  std::vector<long> order(static_cast<std::size_t>(n));
  for (Eigen::Index i = 0; i < sim.rows(); ++i) {
    for (long j = 0; j < n; ++j) order[static_cast<std::size_t>(j)] = j;
    std::partial_sort(order.begin(), order.begin() + take, order.end(), [&](long a, long b) {
      return sim(i, a) > sim(i, b) || (sim(i, a) == sim(i, b) && a < b);
    });
    out.index.emplace_back(order.begin(), order.begin() + take);
    std::vector<double> s;
    for (long t = 0; t < take; ++t) s.push_back(sim(i, order[static_cast<std::size_t>(t)]));
    out.similarity.push_back(std::move(s));
  }
  return out;
}

struct Distinctness {
  double distinct_reports = 0;  ///< distinct generated reports / reports
  double distinct_1 = 0;        ///< distinct unigrams / unigrams, over all generated reports
  double distinct_2 = 0;        ///< distinct bigrams / bigrams
};

/// Distinctness of generated reports (tokens: Python's split(); 0 when there is nothing).
inline Distinctness distinctness(const std::vector<std::string>& reports) {
  Distinctness d;
  if (reports.empty()) return d;
  std::unordered_set<std::string> unique_reports(reports.begin(), reports.end());
  d.distinct_reports =
      static_cast<double>(unique_reports.size()) / static_cast<double>(reports.size());
  std::unordered_set<std::string> unigrams, bigrams;
  long long n1 = 0, n2 = 0;
  for (const auto& r : reports) {
    const auto t = detail::split_python_whitespace(r);
    for (std::size_t i = 0; i < t.size(); ++i) {
      unigrams.emplace(t[i]);
      ++n1;
      if (i + 1 < t.size()) {
        std::string b(t[i]);
        b += ' ';
        b += t[i + 1];
        bigrams.emplace(std::move(b));
        ++n2;
      }
    }
  }
  d.distinct_1 = n1 ? static_cast<double>(unigrams.size()) / static_cast<double>(n1) : 0.0;
  d.distinct_2 = n2 ? static_cast<double>(bigrams.size()) / static_cast<double>(n2) : 0.0;
  return d;
}

}  // namespace eval
}  // namespace v0
}  // namespace ihn
