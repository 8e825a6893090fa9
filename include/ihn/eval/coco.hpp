// BLEU-1..4, ROUGE-L and CIDEr exactly as pycocoevalcap computes them when called the way R2Gen
// calls it: one reference per example, already-tokenised strings, no PTB tokenizer. BLEU and
// CIDEr split with Python's str.split(), ROUGE-L with str.split(" "). Every floating-point
// operation follows the Python code's order (float64 throughout), so scores agree with the
// reference implementation to the last few bits (the tests demand 1e-9).
//
//  * BLEU: corpus BLEU from pooled clipped n-gram counts, brevity penalty with the "closest"
//    reference length, coco-caption's smoothing (1e-15 added to matches, 1e-9 to guesses);
//    per-example BLEU is the same formula on one example's counts.
//  * ROUGE-L: LCS F-measure with beta = 1.2 per example, corpus = mean (numpy pairwise sum).
//  * CIDEr: pycocoevalcap's Cider (CIDEr-D): tf-idf n-gram vectors (n = 1..4) with document
//    frequencies from the evaluated set's references, idf = log(N) - log(max(1, df)),
//    clipped cosine min(hyp, ref) * ref, Gaussian length penalty on the bigram-count difference
//    (sigma = 6), mean over n, times 10; corpus = mean.
#pragma once

#include <ihn/eval/text.hpp>

#include <algorithm>
#include <array>
#include <bitset>
#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace ihn {
inline namespace v0 {
namespace eval {

/// The sufficient statistics of BLEU for one example (what bleu_scorer.cook_test records), so
/// corpus BLEU of any subset (e.g. a bootstrap resample) is a sum of these.
struct BleuStats {
  long long testlen = 0;               ///< hypothesis tokens
  long long reflen = 0;                ///< "closest" reference length (one reference: its length)
  std::array<long long, 4> guess{};    ///< hypothesis k-grams, max(0, testlen - k + 1)
  std::array<long long, 4> correct{};  ///< clipped k-gram matches
};

/// Which of the three pycocoevalcap metrics to compute (the benchmark times them one by one).
struct CocoOptions {
  bool bleu = true;
  bool rouge_l = true;
  bool cider = true;
};

struct CocoScores {
  std::array<double, 4> bleu{};  ///< corpus BLEU-1..4 (pooled counts)
  double rouge_l = 0;            ///< mean of per-example ROUGE-L
  double cider = 0;              ///< mean of per-example CIDEr
  std::array<std::vector<double>, 4> bleu_per_example;
  std::vector<double> rouge_l_per_example;
  std::vector<double> cider_per_example;
  std::vector<BleuStats> bleu_stats;  ///< per example, for resampling
  long long testlen = 0, reflen = 0;  ///< corpus lengths (BLEU's brevity penalty)
};

namespace detail {

// coco-caption's smoothing constants (bleu_scorer.py): added to matches and to guesses.
inline constexpr double kBleuTiny = 1e-15;
inline constexpr double kBleuSmall = 1e-9;
inline constexpr double kRougeBeta = 1.2;
inline constexpr double kCiderSigma = 6.0;
inline constexpr int kMaxN = 4;

/// BLEU-1..4 from (pooled or one example's) counts, bleu_scorer.compute_score's arithmetic.
inline std::array<double, 4> bleu_from_counts(double testlen, double reflen,
                                              const std::array<long long, 4>& guess,
                                              const std::array<long long, 4>& correct) {
  std::array<double, 4> out{};
  double bleu = 1.;
  for (int k = 0; k < kMaxN; ++k) {
    bleu *= (static_cast<double>(correct[k]) + kBleuTiny) /
            (static_cast<double>(guess[k]) + kBleuSmall);
    out[k] = std::pow(bleu, 1. / (k + 1));
  }
  const double ratio = (testlen + kBleuTiny) / (reflen + kBleuSmall);
  if (ratio < 1) {
    for (int k = 0; k < kMaxN; ++k) out[k] *= std::exp(1 - 1 / ratio);
  }
  return out;
}

/// The k-grams (k = 1..4) of one text with their counts, each k in order of first occurrence
/// (the order in which pycocoevalcap's precook dict iterates, which fixes CIDEr's sums).
struct NgramBag {
  std::uint32_t length = 0;
  std::array<std::vector<std::pair<std::uint32_t, std::uint32_t>>, kMaxN> grams;  // (id, count)
};

/// Gives every distinct n-gram (n = 1..4) a dense integer id: an n-gram is keyed by the id of
/// its (n-1)-gram prefix and its last token, so no n-gram is ever stored as strings.
class NgramIndex {
 public:
  NgramBag bag(std::string_view text) {
    const auto ids = tokens_.ids(split_python_whitespace(text));
    NgramBag bag;
    bag.length = static_cast<std::uint32_t>(ids.size());
    std::vector<std::uint32_t> prefix(ids.size(), kNoPrefix);  // (k-1)-gram id starting at i
    for (int k = 0; k < kMaxN; ++k) {
      auto& grams = bag.grams[k];
      if (ids.size() < static_cast<std::size_t>(k + 1)) break;
      const std::size_t count = ids.size() - k;
      for (std::size_t i = 0; i < count; ++i) {
        const std::uint32_t gram = intern(prefix[i], ids[i + k]);
        prefix[i] = gram;
        if (slot_.size() <= gram) slot_.resize(gram + 1, 0);
        if (slot_[gram] == 0) {
          grams.emplace_back(gram, 0);
          slot_[gram] = static_cast<std::uint32_t>(grams.size());
        }
        ++grams[slot_[gram] - 1].second;
      }
      for (const auto& g : grams) slot_[g.first] = 0;
    }
    return bag;
  }
  std::size_t size() const { return keys_.size(); }

 private:
  static constexpr std::uint32_t kNoPrefix = 0xFFFFFFFFu;
  std::uint32_t intern(std::uint32_t prefix, std::uint32_t token) {
    return keys_.intern((static_cast<std::uint64_t>(prefix) << 32) | token);
  }
  TokenInterner tokens_;
  DenseIdTable keys_;
  std::vector<std::uint32_t> slot_;  // per n-gram id: 1 + position in the bag being built
};

/// Length of the longest common subsequence by the textbook dynamic programme (one row);
/// kept as the reference the bit-parallel version is tested against.
inline std::size_t lcs_length_dp(const std::vector<std::uint32_t>& a,
                                 const std::vector<std::uint32_t>& b) {
  const auto& longer = a.size() >= b.size() ? a : b;
  const auto& shorter = a.size() >= b.size() ? b : a;
  std::vector<std::uint32_t> row(shorter.size() + 1, 0);
  for (std::size_t i = 0; i < longer.size(); ++i) {
    std::uint32_t diagonal = 0;  // row[j-1] of the previous i
    for (std::size_t j = 1; j <= shorter.size(); ++j) {
      const std::uint32_t up = row[j];
      row[j] = longer[i] == shorter[j - 1] ? diagonal + 1 : std::max(up, row[j - 1]);
      diagonal = up;
    }
  }
  return row[shorter.size()];
}

/// Length of the longest common subsequence, bit-parallel (Allison-Dix / Hyyro): one bit per
/// position of the shorter sequence, 64 positions per machine word, so a report pair costs
/// len(longer) * ceil(len(shorter) / 64) word operations instead of len(longer) * len(shorter).
inline std::size_t lcs_length(const std::vector<std::uint32_t>& a,
                              const std::vector<std::uint32_t>& b) {
  const auto& longer = a.size() >= b.size() ? a : b;
  const auto& shorter = a.size() >= b.size() ? b : a;
  const std::size_t m = shorter.size();
  if (m == 0) return 0;
  const std::size_t words = (m + 63) / 64;
  // Match masks per distinct token of the shorter sequence, found by binary search.
  std::vector<std::pair<std::uint32_t, std::uint32_t>> by_token(m);  // (token, position)
  for (std::size_t j = 0; j < m; ++j) by_token[j] = {shorter[j], static_cast<std::uint32_t>(j)};
  std::sort(by_token.begin(), by_token.end());
  std::vector<std::uint32_t> tokens;
  std::vector<std::uint64_t> masks;
  for (const auto& [token, j] : by_token) {
    if (tokens.empty() || tokens.back() != token) {
      tokens.push_back(token);
      masks.resize(masks.size() + words, 0);
    }
    masks[(tokens.size() - 1) * words + j / 64] |= std::uint64_t{1} << (j % 64);
  }
  std::vector<std::uint64_t> v(words, ~std::uint64_t{0});
  for (const auto token : longer) {
    const auto it = std::lower_bound(tokens.begin(), tokens.end(), token);
    if (it == tokens.end() || *it != token) continue;
    const std::uint64_t* match = &masks[static_cast<std::size_t>(it - tokens.begin()) * words];
    std::uint64_t carry = 0;
    for (std::size_t w = 0; w < words; ++w) {
      const std::uint64_t u = v[w] & match[w];
      const std::uint64_t sum1 = v[w] + u;
      const std::uint64_t sum2 = sum1 + carry;
      carry = (sum1 < v[w]) | (sum2 < sum1);
      v[w] = sum2 | (v[w] & ~u);  // (V + U) | (V - U); V - U = V & ~U as U is a subset of V
    }
  }
  std::size_t ones = 0;
  for (std::size_t w = 0; w < words; ++w) {
    std::uint64_t bits = v[w];
    if (w == words - 1 && m % 64) bits &= (std::uint64_t{1} << (m % 64)) - 1;
    ones += std::bitset<64>(bits).count();
  }
  return m - ones;  // the zero bits of V count the LCS
}

/// ROUGE-L of one example, rouge.py's calc_score with one reference.
inline double rouge_l_score(const std::vector<std::uint32_t>& hyp,
                            const std::vector<std::uint32_t>& ref) {
  const double lcs = static_cast<double>(lcs_length(ref, hyp));
  const double prec = lcs / static_cast<double>(hyp.size());
  const double rec = lcs / static_cast<double>(ref.size());
  if (prec == 0 || rec == 0) return 0.0;
  const double beta2 = std::pow(kRougeBeta, 2.0);
  return ((1 + beta2) * prec * rec) / (rec + beta2 * prec);
}

}  // namespace detail

/// Corpus BLEU-1..4 over the examples listed in `indices` (all when empty): pooled counts.
inline std::array<double, 4> corpus_bleu(const std::vector<BleuStats>& stats,
                                         const std::vector<std::size_t>& indices = {}) {
  long long testlen = 0, reflen = 0;
  std::array<long long, 4> guess{}, correct{};
  auto add = [&](const BleuStats& s) {
    testlen += s.testlen;
    reflen += s.reflen;
    for (int k = 0; k < 4; ++k) {
      guess[k] += s.guess[k];
      correct[k] += s.correct[k];
    }
  };
  if (indices.empty()) {
    for (const auto& s : stats) add(s);
  } else {
    for (auto i : indices) add(stats.at(i));
  }
  return detail::bleu_from_counts(static_cast<double>(testlen), static_cast<double>(reflen), guess,
                                  correct);
}

/// BLEU, ROUGE-L and CIDEr of hypotheses against one reference each (pycocoevalcap, R2Gen's
/// call). Texts must be valid UTF-8 (evaluate() checks; this function only tokenises).
/// An empty hypothesis scores 0 everywhere, as in pycocoevalcap (ROUGE-L splits it into one
/// empty token). Throws EvalError on a size mismatch, or when CIDEr is asked for and every
/// reference is empty (pycocoevalcap fails there too: max() of no document frequencies).
inline CocoScores coco_scores(const std::vector<std::string>& hyps,
                              const std::vector<std::string>& refs, CocoOptions options = {}) {
  if (hyps.size() != refs.size())
    throw EvalError("coco_scores: " + std::to_string(hyps.size()) + " hypotheses but " +
                    std::to_string(refs.size()) + " references");
  const std::size_t n = hyps.size();
  CocoScores out;

  if (options.bleu || options.cider) {
    detail::NgramIndex index;
    std::vector<detail::NgramBag> hyp_bags(n), ref_bags(n);
    for (std::size_t i = 0; i < n; ++i) {
      hyp_bags[i] = index.bag(hyps[i]);
      ref_bags[i] = index.bag(refs[i]);
    }
    std::vector<double> scratch(index.size(), 0.0);  // per n-gram id: the reference's value

    if (options.bleu) {
      out.bleu_stats.resize(n);
      for (auto& v : out.bleu_per_example) v.resize(n);
      for (std::size_t i = 0; i < n; ++i) {
        auto& s = out.bleu_stats[i];
        s.testlen = hyp_bags[i].length;
        s.reflen = ref_bags[i].length;
        for (int k = 0; k < 4; ++k) {
          s.guess[k] = std::max<long long>(0, s.testlen - k);
          for (const auto& [id, c] : ref_bags[i].grams[k]) scratch[id] = c;
          for (const auto& [id, c] : hyp_bags[i].grams[k])
            s.correct[k] += std::min<long long>(static_cast<long long>(scratch[id]), c);
          for (const auto& [id, c] : ref_bags[i].grams[k]) scratch[id] = 0;
        }
        const auto b = detail::bleu_from_counts(static_cast<double>(s.testlen),
                                                static_cast<double>(s.reflen), s.guess, s.correct);
        for (int k = 0; k < 4; ++k) out.bleu_per_example[k][i] = b[k];
        out.testlen += s.testlen;
        out.reflen += s.reflen;
      }
      out.bleu = corpus_bleu(out.bleu_stats);
    }

    if (options.cider) {
      // Document frequency: in how many examples' references each n-gram occurs.
      std::vector<double> log_df(index.size(), 0.0);
      double max_df = 0;
      {
        std::vector<std::uint32_t> df(index.size(), 0);
        for (const auto& bag : ref_bags)
          for (const auto& grams : bag.grams)
            for (const auto& g : grams) max_df = std::max<double>(max_df, ++df[g.first]);
        for (std::size_t id = 0; id < df.size(); ++id)
          log_df[id] = std::log(std::max(1.0, static_cast<double>(df[id])));
      }
      if (n > 0 && max_df == 0)
        throw EvalError("CIDEr: every reference is empty (no document frequencies)");
      const double ref_len = std::log(static_cast<double>(n));
      out.cider_per_example.resize(n);
      for (std::size_t i = 0; i < n; ++i) {
        const auto& hyp = hyp_bags[i];
        const auto& ref = ref_bags[i];
        std::array<double, 4> norm_hyp{}, norm_ref{}, val{};
        // The number of bigrams is what cider_scorer.py calls the length (its `n == 1`).
        long long length_hyp = 0, length_ref = 0;
        for (const auto& g : hyp.grams[1]) length_hyp += g.second;
        for (const auto& g : ref.grams[1]) length_ref += g.second;
        for (int k = 0; k < 4; ++k) {
          for (const auto& [id, tf] : ref.grams[k]) {
            const double w = static_cast<double>(tf) * (ref_len - log_df[id]);
            scratch[id] = w;
            norm_ref[k] += std::pow(w, 2.0);
          }
          for (const auto& [id, tf] : hyp.grams[k]) {
            const double w = static_cast<double>(tf) * (ref_len - log_df[id]);
            norm_hyp[k] += std::pow(w, 2.0);
            val[k] += std::min(w, scratch[id]) * scratch[id];
          }
          for (const auto& g : ref.grams[k]) scratch[g.first] = 0.0;
        }
        const double delta = static_cast<double>(length_hyp - length_ref);
        const double penalty = std::pow(
            2.718281828459045, -(delta * delta) / (2 * std::pow(detail::kCiderSigma, 2.0)));
        double sum = 0.;
        for (int k = 0; k < 4; ++k) {
          const double nh = std::sqrt(norm_hyp[k]), nr = std::sqrt(norm_ref[k]);
          if (nh != 0 && nr != 0) val[k] /= (nh * nr);
          val[k] *= penalty;
          sum += val[k];
        }
        double score = sum / 4.0;
        score /= 1.0;  // the number of references
        score *= 10.0;
        out.cider_per_example[i] = score;
      }
      out.cider = detail::numpy_mean(out.cider_per_example);
    }
  }

  if (options.rouge_l) {
    detail::TokenInterner interner;
    out.rouge_l_per_example.resize(n);
    for (std::size_t i = 0; i < n; ++i) {
      const auto hyp = interner.ids(detail::split_on_space(hyps[i]));
      const auto ref = interner.ids(detail::split_on_space(refs[i]));
      out.rouge_l_per_example[i] = detail::rouge_l_score(hyp, ref);
    }
    out.rouge_l = detail::numpy_mean(out.rouge_l_per_example);
  }
  return out;
}

}  // namespace eval
}  // namespace v0
}  // namespace ihn
