// METEOR_esw: METEOR 1.5's alignment and scoring with the matcher stages that can be rebuilt
// without its jar -- exact, Snowball stem, WordNet synonyms -- and no paraphrase table. It is NOT
// METEOR 1.5 and must not be reported as such: METEOR 1.5 also matches paraphrases (weight 0.6),
// uses its own function-word list and searches alignments with a beam; see
// docs/evaluation.md. What is kept exactly is the scoring of an alignment (MeteorScorer's
// computeMetrics): weighted precision/recall with content/function weighting delta, Fmean with
// alpha, fragmentation penalty gamma * (chunks / mean matches)^beta, the "identical" case with
// no penalty, NaN -> 0, and the corpus score from summed sufficient statistics (identical
// segments adding no chunks, as MeteorStats.addStats does).
//
// Provides: SnowballStemmer (METEOR 1.5's English stemmer, from Debian's libstemmer: ihn::eval
// links -lstemmer), WordNet (synsets read at runtime from Debian's wordnet-base files, with
// WordNet's morphological base forms), MeteorScorer, meteor_scores().
#pragma once

#include <ihn/eval/text.hpp>

#include <libstemmer.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <queue>
#include <sstream>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace ihn {
inline namespace v0 {
namespace eval {

namespace detail {

/// METEOR 1.5's stemmer: Snowball's English algorithm (Porter2; METEOR's Constants.newStemmer
/// wraps org.tartarus.snowball.ext.englishStemmer), here from Debian's libstemmer
/// (libstemmer-dev). A Snowball stemmer is not thread-safe: use one per thread. Expects a
/// lower-case UTF-8 word.
class SnowballStemmer {
 public:
  SnowballStemmer() : stemmer_(sb_stemmer_new("english", "UTF_8")) {
    if (!stemmer_) throw EvalError("METEOR: libstemmer could not create its English stemmer");
  }
  std::string operator()(const std::string& word) {
    const sb_symbol* stem =
        sb_stemmer_stem(stemmer_.get(), reinterpret_cast<const sb_symbol*>(word.data()),
                        static_cast<int>(word.size()));
    if (!stem) throw EvalError("METEOR: libstemmer ran out of memory stemming \"" + word + "\"");
    return std::string(reinterpret_cast<const char*>(stem),
                       static_cast<std::size_t>(sb_stemmer_length(stemmer_.get())));
  }

 private:
  struct Delete {
    void operator()(sb_stemmer* stemmer) const { sb_stemmer_delete(stemmer); }
  };
  std::unique_ptr<sb_stemmer, Delete> stemmer_;
};

/// English function words used for METEOR's content/function weighting (delta). Our own list
/// (articles, pronouns, prepositions, conjunctions, auxiliaries, punctuation), not METEOR 1.5's
/// function.words file, which ships inside its jar.
inline const std::unordered_set<std::string>& default_function_words() {
  static const std::unordered_set<std::string> words = {
      "a",      "an",   "the",   "this",  "that", "these", "those", "there",  "here",    "it",
      "its",    "they", "them",  "their", "he",   "she",   "his",   "her",    "we",      "you",
      "i",      "is",   "are",   "was",   "were", "be",    "been",  "being",  "am",      "has",
      "have",   "had",  "do",    "does",  "did",  "will",  "would", "shall",  "should",  "can",
      "could",  "of",   "in",    "on",    "at",   "to",    "for",   "from",   "by",      "with",
      "within", "into", "onto",  "upon",  "over", "under", "about", "as",     "than",    "and",
      "or",     "nor",  "but",   "so",    "if",   "then",  "which", "who",    "whom",    "whose",
      "what",   "when", "where", "while", "also", "both",  "each",  "either", "neither", "such",
      "some",   "any",  ".",     ",",     ";",    ":",     "?",     "!",      "-",       "(",
      ")",      "'",    "\""};
  return words;
}

}  // namespace detail

/// WordNet synsets read from the database files of a WordNet 3.0 installation (Debian's
/// wordnet-base: /usr/share/wordnet/data.{noun,verb,adj,adv} and *.exc). Two words are
/// synonyms when their base forms share a synset; base forms follow WordNet's morphy
/// (exception lists, then the detachment rules, kept only if the base form is in WordNet).
class WordNet {
 public:
  /// Throws EvalError naming the folder and file when the database is absent or unreadable.
  explicit WordNet(const std::filesystem::path& dir) {
    const std::array<std::pair<const char*, char>, 4> parts = {
        {{"noun", 'n'}, {"verb", 'v'}, {"adj", 'a'}, {"adv", 'r'}}};
    for (int pos = 0; pos < 4; ++pos) {
      const auto data = dir / (std::string("data.") + parts[pos].first);
      std::ifstream in(data);
      if (!in)
        throw EvalError("WordNet: cannot read " + data.string() +
                        " (install wordnet-base, pass the WordNet dict folder, or disable the "
                        "synonym stage)");
      std::string line;
      while (std::getline(in, line)) {
        if (line.empty() || line[0] == ' ') continue;  // licence header lines start with spaces
        std::istringstream fields(line);
        std::string offset, lex_filenum, ss_type, count_hex;
        fields >> offset >> lex_filenum >> ss_type >> count_hex;
        const auto synset = static_cast<std::uint32_t>(synset_count_++);
        const int count = static_cast<int>(std::stoul(count_hex, nullptr, 16));
        for (int w = 0; w < count; ++w) {
          std::string word, lex_id;
          fields >> word >> lex_id;
          if (const auto paren = word.find('('); paren != std::string::npos) word.resize(paren);
          for (auto& c : word) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
          lemmas_[pos][word].push_back(synset);
        }
      }
      const auto exc = dir / (std::string(parts[pos].first) + ".exc");
      std::ifstream exc_in(exc);  // optional: morphy still works from the rules without it
      while (std::getline(exc_in, line)) {
        std::istringstream fields(line);
        std::string inflected, base;
        fields >> inflected;
        while (fields >> base) exceptions_[pos][inflected].push_back(base);
      }
    }
    if (synset_count_ == 0) throw EvalError("WordNet: no synsets found in " + dir.string());
  }

  /// The sorted synset ids of every base form of `word` (lower case), all parts of speech.
  std::vector<std::uint32_t> synsets(const std::string& word) const {
    std::vector<std::uint32_t> out;
    for (int pos = 0; pos < 4; ++pos) {
      for (const auto& base : base_forms(word, pos)) {
        auto it = lemmas_[pos].find(base);
        if (it != lemmas_[pos].end()) out.insert(out.end(), it->second.begin(), it->second.end());
      }
    }
    std::sort(out.begin(), out.end());
    out.erase(std::unique(out.begin(), out.end()), out.end());
    return out;
  }
  std::size_t synset_count() const { return synset_count_; }

  /// One WordNet per folder per process: the files take ~0.3 s to read.
  static std::shared_ptr<const WordNet> load(const std::filesystem::path& dir) {
    static std::mutex mutex;
    static std::map<std::string, std::shared_ptr<const WordNet>> cache;
    std::lock_guard<std::mutex> lock(mutex);
    auto& slot = cache[dir.string()];
    if (!slot) slot = std::make_shared<const WordNet>(dir);
    return slot;
  }

 private:
  std::vector<std::string> base_forms(const std::string& word, int pos) const {
    std::vector<std::string> out;
    if (lemmas_[pos].count(word)) out.push_back(word);
    if (auto it = exceptions_[pos].find(word); it != exceptions_[pos].end())
      out.insert(out.end(), it->second.begin(), it->second.end());
    // WordNet's detachment rules per part of speech (noun, verb, adj; adverbs have none).
    static const std::vector<std::pair<std::string, std::string>> rules[4] = {
        {{"s", ""},
         {"ses", "s"},
         {"xes", "x"},
         {"zes", "z"},
         {"ches", "ch"},
         {"shes", "sh"},
         {"men", "man"},
         {"ies", "y"}},
        {{"s", ""},
         {"ies", "y"},
         {"es", "e"},
         {"es", ""},
         {"ed", "e"},
         {"ed", ""},
         {"ing", "e"},
         {"ing", ""}},
        {{"er", ""}, {"est", ""}, {"er", "e"}, {"est", "e"}},
        {}};
    for (const auto& [suffix, ending] : rules[pos]) {
      if (word.size() > suffix.size() &&
          word.compare(word.size() - suffix.size(), suffix.size(), suffix) == 0) {
        std::string base = word.substr(0, word.size() - suffix.size()) + ending;
        if (lemmas_[pos].count(base)) out.push_back(std::move(base));
      }
    }
    return out;
  }

  std::size_t synset_count_ = 0;
  std::array<std::unordered_map<std::string, std::vector<std::uint32_t>>, 4> lemmas_;
  std::array<std::unordered_map<std::string, std::vector<std::string>>, 4> exceptions_;
};

struct MeteorOptions {
  // METEOR 1.5's English parameters (task "rank", the default pycocoevalcap runs).
  double alpha = 0.85, beta = 0.20, gamma = 0.60, delta = 0.75;
  double weight_exact = 1.0, weight_stem = 0.6, weight_synonym = 0.8;
  bool stem = true;
  bool synonyms = true;
  std::filesystem::path wordnet_dir = "/usr/share/wordnet";
  /// Content/function weighting with detail::default_function_words(); false = every word is a
  /// content word (then delta cancels out).
  bool function_words = true;
};

/// METEOR's sufficient statistics of one alignment (summable over a corpus).
struct MeteorStats {
  long long test_length = 0, reference_length = 0;
  long long test_function_words = 0, reference_function_words = 0;
  std::array<long long, 3> test_content_matches{}, reference_content_matches{};  // per stage
  std::array<long long, 3> test_function_matches{}, reference_function_matches{};
  long long chunks = 0;

  MeteorStats& operator+=(const MeteorStats& o) {
    test_length += o.test_length;
    reference_length += o.reference_length;
    test_function_words += o.test_function_words;
    reference_function_words += o.reference_function_words;
    for (int s = 0; s < 3; ++s) {
      test_content_matches[s] += o.test_content_matches[s];
      reference_content_matches[s] += o.reference_content_matches[s];
      test_function_matches[s] += o.test_function_matches[s];
      reference_function_matches[s] += o.reference_function_matches[s];
    }
    // As METEOR's MeteorStats.addStats: a fully matched one-chunk segment adds no chunks, so a
    // test set identical to its references scores 1 (no fragmentation penalty) in aggregate.
    const bool identical = o.matches() == o.test_length &&
                           o.reference_matches() == o.reference_length && o.chunks == 1;
    if (!identical) chunks += o.chunks;
    return *this;
  }
  long long matches() const {  ///< hypothesis words matched
    long long m = 0;
    for (int s = 0; s < 3; ++s) m += test_content_matches[s] + test_function_matches[s];
    return m;
  }
  long long reference_matches() const {
    long long m = 0;
    for (int s = 0; s < 3; ++s) m += reference_content_matches[s] + reference_function_matches[s];
    return m;
  }
};

/// The name to print for the variant configured by `options` (never plain "METEOR").
inline std::string meteor_variant_key(const MeteorOptions& options) {
  return std::string("METEOR_e") + (options.stem ? "s" : "") + (options.synonyms ? "w" : "");
}
inline std::string meteor_variant_description(const MeteorOptions& options) {
  std::string stages = "exact";
  if (options.stem) stages += "+stem";
  if (options.synonyms) stages += "+WordNet";
  return "METEOR (" + stages + ", no paraphrase; METEOR 1.5 English parameters)";
}

/// Aligns and scores with the stages of `options`. Loads WordNet once when synonyms are on.
class MeteorScorer {
 public:
  explicit MeteorScorer(MeteorOptions options = {}) : options_(std::move(options)) {
    if (options_.synonyms) wordnet_ = WordNet::load(options_.wordnet_dir);
  }
  const MeteorOptions& options() const { return options_; }

  /// METEOR 1.5's computeMetrics on (one example's or summed) statistics.
  double score(const MeteorStats& s) const {
    const double delta = options_.delta;
    const std::array<double, 3> weights = {options_.weight_exact, options_.weight_stem,
                                           options_.weight_synonym};
    const double test_weighted_length =
        (delta * static_cast<double>(s.test_length - s.test_function_words)) +
        ((1.0 - delta) * static_cast<double>(s.test_function_words));
    const double ref_weighted_length =
        (delta * static_cast<double>(s.reference_length - s.reference_function_words)) +
        ((1.0 - delta) * static_cast<double>(s.reference_function_words));
    double test_matches = 0, ref_matches = 0;
    for (int i = 0; i < 3; ++i) test_matches += s.test_content_matches[i] * weights[i] * delta;
    for (int i = 0; i < 3; ++i) ref_matches += s.reference_content_matches[i] * weights[i] * delta;
    for (int i = 0; i < 3; ++i)
      test_matches += s.test_function_matches[i] * weights[i] * (1.0 - delta);
    for (int i = 0; i < 3; ++i)
      ref_matches += s.reference_function_matches[i] * weights[i] * (1.0 - delta);
    const double precision = test_matches / test_weighted_length;
    const double recall = ref_matches / ref_weighted_length;
    const double fmean = 1.0 / (((1.0 - options_.alpha) / precision) + (options_.alpha / recall));
    long long test_total = 0, ref_total = 0;
    for (int i = 0; i < 3; ++i) {
      test_total += s.test_content_matches[i] + s.test_function_matches[i];
      ref_total += s.reference_content_matches[i] + s.reference_function_matches[i];
    }
    double frag;
    if (test_total == s.test_length && ref_total == s.reference_length && s.chunks == 1)
      frag = 0;  // identical word sequences: no penalty
    else
      frag = static_cast<double>(s.chunks) / (static_cast<double>(test_total + ref_total) / 2);
    const double penalty = options_.gamma * std::pow(frag, options_.beta);
    const double score = fmean * (1.0 - penalty);
    return std::isnan(score) ? 0.0 : std::max(score, 0.0);
  }

  /// Tokenises (Python's split(), ASCII lower case), aligns and returns the statistics.
  /// `alignment`, if given, receives the matched (hypothesis, reference) word positions.
  MeteorStats align(std::string_view hypothesis, std::string_view reference,
                    std::vector<std::pair<int, int>>* alignment = nullptr) const {
    const auto hyp = words(hypothesis);
    const auto ref = words(reference);
    MeteorStats s;
    s.test_length = static_cast<long long>(hyp.size());
    s.reference_length = static_cast<long long>(ref.size());
    std::vector<char> hyp_function(hyp.size()), ref_function(ref.size());
    for (std::size_t i = 0; i < hyp.size(); ++i)
      s.test_function_words += hyp_function[i] = is_function(hyp[i]);
    for (std::size_t j = 0; j < ref.size(); ++j)
      s.reference_function_words += ref_function[j] = is_function(ref[j]);

    std::vector<int> hyp_to_ref(hyp.size(), -1), ref_to_hyp(ref.size(), -1);
    std::vector<int> stage_of(hyp.size(), -1);
    const int stages = 1 + (options_.stem ? 1 : 0) + (options_.synonyms ? 1 : 0);
    std::vector<std::string> hyp_stem, ref_stem;
    std::vector<std::vector<std::uint32_t>> hyp_syn, ref_syn;
    for (int stage_index = 0; stage_index < stages; ++stage_index) {
      const int stage = stage_index == 0 ? 0 : (stage_index == 1 && options_.stem ? 1 : 2);
      if (stage == 1) {  // only words still unmatched need their stems
        detail::SnowballStemmer stemmer;
        hyp_stem.resize(hyp.size());
        ref_stem.resize(ref.size());
        for (std::size_t i = 0; i < hyp.size(); ++i)
          if (hyp_to_ref[i] < 0) hyp_stem[i] = stemmer(hyp[i]);
        for (std::size_t j = 0; j < ref.size(); ++j)
          if (ref_to_hyp[j] < 0) ref_stem[j] = stemmer(ref[j]);
      } else if (stage == 2) {  // only words still unmatched need their synsets
        hyp_syn.resize(hyp.size());
        ref_syn.resize(ref.size());
        for (std::size_t i = 0; i < hyp.size(); ++i)
          if (hyp_to_ref[i] < 0) hyp_syn[i] = wordnet_->synsets(hyp[i]);
        for (std::size_t j = 0; j < ref.size(); ++j)
          if (ref_to_hyp[j] < 0) ref_syn[j] = wordnet_->synsets(ref[j]);
      }
      auto same = [&](std::size_t i, std::size_t j) {
        if (stage == 0) return hyp[i] == ref[j];
        if (stage == 1) return hyp_stem[i] == ref_stem[j];
        const auto& a = hyp_syn[i];
        const auto& b = ref_syn[j];
        std::size_t x = 0, y = 0;
        while (x < a.size() && y < b.size()) {
          if (a[x] == b[y]) return true;
          if (a[x] < b[y])
            ++x;
          else
            ++y;
        }
        return false;
      };
      // Greedy tiling: repeatedly take the longest run of consecutive word pairs that match in
      // this stage and are both still free (first in the hypothesis, then in the reference, on
      // a tie), until no pair matches. Every word that can match still does (runs of one), so
      // matches are maximal, and long runs become single chunks -- e.g. reordered sentences
      // give one chunk per sentence. A deterministic stand-in for METEOR's beam search (most
      // matches, then fewest chunks, then smallest distances).
      const std::size_t n = hyp.size(), m = ref.size();
      std::vector<char> match(n * m, 0);
      for (std::size_t i = 0; i < n; ++i)
        if (hyp_to_ref[i] < 0)
          for (std::size_t j = 0; j < m; ++j)
            if (ref_to_hyp[j] < 0) match[i * m + j] = same(i, j);
      // Lazy greedy: the diagonal runs of matching pairs in a heap, longest first; a popped run
      // that lost words to an accepted one is split into its free pieces and pushed back.
      struct Run {
        std::size_t length, i, j;
      };
      auto after = [](const Run& a, const Run& b) {
        if (a.length != b.length) return a.length < b.length;
        return a.i != b.i ? a.i > b.i : a.j > b.j;
      };
      std::priority_queue<Run, std::vector<Run>, decltype(after)> runs(after);
      for (std::size_t i = 0; i < n; ++i)
        for (std::size_t j = 0; j < m; ++j)
          if (match[i * m + j] && (i == 0 || j == 0 || !match[(i - 1) * m + j - 1])) {
            std::size_t length = 0;
            while (i + length < n && j + length < m && match[(i + length) * m + j + length])
              ++length;
            runs.push({length, i, j});
          }
      while (!runs.empty()) {
        const Run r = runs.top();
        runs.pop();
        auto is_free = [&](std::size_t k) {
          return hyp_to_ref[r.i + k] < 0 && ref_to_hyp[r.j + k] < 0;
        };
        bool intact = true;
        for (std::size_t k = 0; k < r.length && intact; ++k) intact = is_free(k);
        if (intact) {
          for (std::size_t k = 0; k < r.length; ++k) {
            hyp_to_ref[r.i + k] = static_cast<int>(r.j + k);
            ref_to_hyp[r.j + k] = static_cast<int>(r.i + k);
            stage_of[r.i + k] = stage;
          }
          continue;
        }
        for (std::size_t k = 0; k < r.length;) {
          while (k < r.length && !is_free(k)) ++k;
          const std::size_t start = k;
          while (k < r.length && is_free(k)) ++k;
          if (k > start) runs.push({k - start, r.i + start, r.j + start});
        }
      }
    }
    // Statistics: matches per stage, content/function per side, and chunks (maximal runs
    // adjacent in both sentences, in hypothesis order).
    long prev_i = -2, prev_j = -2;
    for (std::size_t i = 0; i < hyp.size(); ++i) {
      const int j = hyp_to_ref[i];
      if (j < 0) continue;
      const int stage = stage_of[i];
      (hyp_function[i] ? s.test_function_matches : s.test_content_matches)[stage] += 1;
      (ref_function[j] ? s.reference_function_matches : s.reference_content_matches)[stage] += 1;
      if (!(static_cast<long>(i) == prev_i + 1 && j == prev_j + 1)) ++s.chunks;
      prev_i = static_cast<long>(i);
      prev_j = j;
      if (alignment) alignment->emplace_back(static_cast<int>(i), j);
    }
    return s;
  }

 private:
  static std::vector<std::string> words(std::string_view text) {
    std::vector<std::string> out;
    for (auto token : detail::split_python_whitespace(text)) {
      std::string w(token);
      for (auto& c : w) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      out.push_back(std::move(w));
    }
    return out;
  }
  bool is_function(const std::string& w) const {
    return options_.function_words && detail::default_function_words().count(w) > 0;
  }

  MeteorOptions options_;
  std::shared_ptr<const WordNet> wordnet_;
};

struct MeteorScores {
  std::string key;          ///< e.g. "METEOR_esw"
  std::string description;  ///< what was computed, in words
  double corpus = 0;        ///< from summed statistics, as METEOR aggregates a test set
  std::vector<double> per_example;
  std::vector<MeteorStats> stats;
};

inline MeteorScores meteor_scores(const std::vector<std::string>& hyps,
                                  const std::vector<std::string>& refs,
                                  const MeteorScorer& scorer) {
  if (hyps.size() != refs.size())
    throw EvalError("meteor_scores: " + std::to_string(hyps.size()) + " hypotheses but " +
                    std::to_string(refs.size()) + " references");
  MeteorScores out;
  out.key = meteor_variant_key(scorer.options());
  out.description = meteor_variant_description(scorer.options());
  MeteorStats total;
  for (std::size_t i = 0; i < hyps.size(); ++i) {
    out.stats.push_back(scorer.align(hyps[i], refs[i]));
    out.per_example.push_back(scorer.score(out.stats.back()));
    total += out.stats.back();
  }
  out.corpus = scorer.score(total);
  return out;
}

}  // namespace eval
}  // namespace v0
}  // namespace ihn
