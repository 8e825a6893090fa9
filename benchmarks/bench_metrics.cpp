// Timing of ihn::eval's metrics on the workload of the Python baseline
// (../shared/baselines/bench_metrics.py): the 2,955 IU X-Ray reports cleaned with R2Gen's
// iu_xray cleaner, cycled to 3,858 references, hypothesis i = reference i+1. One timed
// repetition = one call of the metric on all pairs (tokenising included), one thread; median of
// the repetitions. Also: scaling with the number of pairs and with report length.
//
// usage: bench_metrics [annotation.json] [--reps R] [--no-meteor]
// Without annotation.json (or the shared folder) a synthetic IU-like corpus is used and said so.
#include <ihn/eval.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <random>
#include <regex>
#include <string>
#include <vector>

namespace {

// R2Gen's Tokenizer.clean_report_iu_xray, character for character (str.replace chain, strip,
// lower, split('. '), per-sentence character-class removal, ' . '.join + ' .').
std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  std::string out;
  std::size_t pos = 0;
  while (true) {
    const auto hit = s.find(from, pos);
    if (hit == std::string::npos) break;
    out.append(s, pos, hit - pos);
    out += to;
    pos = hit + from.size();
  }
  out.append(s, pos, std::string::npos);
  return out;
}
std::string strip(const std::string& s) {
  const char* ws = " \t\n\r\v\f";
  const auto b = s.find_first_not_of(ws);
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(ws) - b + 1);
}
std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}
std::string clean_report_iu_xray(const std::string& report) {
  std::string t = report;
  for (int i = 0; i < 3; ++i) t = replace_all(t, "..", ".");
  t = replace_all(t, "1. ", "");
  for (const char* d : {". 2. ", ". 3. ", ". 4. ", ". 5. "}) t = replace_all(t, d, ". ");
  for (const char* d : {" 2. ", " 3. ", " 4. ", " 5. "}) t = replace_all(t, d, ". ");
  t = lower(strip(t));
  std::vector<std::string> sentences;
  std::size_t pos = 0;
  while (true) {
    const auto hit = t.find(". ", pos);
    sentences.push_back(t.substr(pos, hit == std::string::npos ? std::string::npos : hit - pos));
    if (hit == std::string::npos) break;
    pos = hit + 2;
  }
  std::string out;
  for (std::size_t i = 0; i < sentences.size(); ++i) {
    std::string s;
    for (char c : sentences[i])
      if (c != '"' && c != '/' && c != '\\' && c != '\'') s += c;
    s = lower(strip(s));
    std::string kept;
    // The regex class [.,?;*!%^&_+():-\[\]{}]: ':-\[' is the range 0x3A-0x5B.
    for (char c : s) {
      const auto u = static_cast<unsigned char>(c);
      const bool drop = c == '.' || c == ',' || c == '?' || c == ';' || c == '*' || c == '!' ||
                        c == '%' || c == '^' || c == '&' || c == '_' || c == '+' || c == '(' ||
                        c == ')' || (u >= 0x3A && u <= 0x5B) || c == ']' || c == '{' || c == '}';
      if (!drop) kept += c;
    }
    if (i) out += " . ";
    out += kept;
  }
  return out + " .";
}

std::vector<std::string> load_reports(const std::string& path, bool& synthetic) {
  std::ifstream in(path);
  std::vector<std::string> reports;
  if (in) {
    const auto ann = nlohmann::json::parse(in);
    for (const char* split : {"train", "val", "test"})
      for (const auto& e : ann.at(split)) reports.push_back(clean_report_iu_xray(e.at("report")));
    synthetic = false;
    return reports;
  }
  // Synthetic fallback: IU-like sentences combined at random (fixed seed).
  synthetic = true;
  const std::vector<std::string> sentences = {
      "the heart is normal in size",
      "the mediastinum is unremarkable",
      "the lungs are clear",
      "there is no pneumothorax or pleural effusion",
      "no focal consolidation",
      "the heart is enlarged",
      "there is a small left pleural effusion",
      "right upper lobe opacity",
      "a pacemaker is present",
      "healed rib fracture",
      "degenerative changes of the spine",
      "calcified granuloma in the right upper lobe",
      "no acute bony abnormality",
      "heart size and pulmonary vascularity within normal limits"};
  std::mt19937_64 rng(1);
  for (int i = 0; i < 2955; ++i) {
    std::string r;
    const int k = 3 + static_cast<int>(rng() % 4);
    for (int j = 0; j < k; ++j) r += (j ? " . " : "") + sentences[rng() % sentences.size()];
    reports.push_back(r + " .");
  }
  return reports;
}

double median_seconds(int reps, const std::function<void()>& f) {
  f();  // warm-up: page in, fill caches (and load WordNet once for METEOR)
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) {
    const auto a = std::chrono::steady_clock::now();
    f();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  using namespace ihn::eval;
  std::string path = std::string(IHN_SHARED_DIR) + "/data/iu_xray/annotation.json";
  int reps = 7;
  bool meteor = true;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--reps" && i + 1 < argc)
      reps = std::stoi(argv[++i]);
    else if (a == "--no-meteor")
      meteor = false;
    else
      path = a;
  }
  bool synthetic = false;
  const auto cleaned = load_reports(path, synthetic);
  auto make_pairs = [&](std::size_t n, int repeat_text) {
    std::vector<std::string> refs(n), hyps(n);
    for (std::size_t i = 0; i < n; ++i) {
      std::string r = cleaned[i % cleaned.size()];
      std::string longer = r;
      for (int k = 1; k < repeat_text; ++k) longer += " " + r;
      refs[i] = longer;
    }
    for (std::size_t i = 0; i < n; ++i) hyps[i] = refs[(i + 1) % n];
    return std::make_pair(hyps, refs);
  };

  std::printf(
      "bench_metrics: %s, %zu cleaned reports; single thread (ihn::eval uses no threads); "
      "median of %d repetitions after 1 warm-up\n",
      synthetic ? "SYNTHETIC fallback corpus" : path.c_str(), cleaned.size(), reps);

  const std::size_t n = 3858;
  const auto [hyps, refs] = make_pairs(n, 1);
  long long tokens = 0;
  for (const auto& r : refs)
    tokens += static_cast<long long>(detail::split_python_whitespace(r).size());
  std::printf("\n%zu pairs, %lld reference tokens (%.1f per report)\n", n, tokens,
              static_cast<double>(tokens) / static_cast<double>(n));

  CocoScores last;
  auto time_coco = [&](CocoOptions o, const std::vector<std::string>& h,
                       const std::vector<std::string>& r) {
    return median_seconds(reps, [&] { last = coco_scores(h, r, o); });
  };
  const double t_bleu = time_coco({true, false, false}, hyps, refs);
  const auto bleu = last.bleu;
  const double t_rouge = time_coco({false, true, false}, hyps, refs);
  const double rouge = last.rouge_l;
  const double t_cider = time_coco({false, false, true}, hyps, refs);
  const double cider = last.cider;
  const double t_all = time_coco({}, hyps, refs);
  std::printf("%-28s %10s   %s\n", "metric", "median s", "score");
  std::printf("%-28s %10.4f   %.16g %.16g %.16g %.16g\n", "BLEU-1..4", t_bleu, bleu[0], bleu[1],
              bleu[2], bleu[3]);
  std::printf("%-28s %10.4f   %.16g\n", "ROUGE-L", t_rouge, rouge);
  std::printf("%-28s %10.4f   %.16g\n", "CIDEr", t_cider, cider);
  std::printf("%-28s %10.4f   (one coco_scores call, shared tokenising)\n", "BLEU+ROUGE-L+CIDEr",
              t_all);
  std::printf("%-28s %10.4f\n", "sum of the three", t_bleu + t_rouge + t_cider);
  if (meteor) {
    MeteorOptions o;
    const bool have_wordnet = std::ifstream(o.wordnet_dir / "data.noun").good();
    o.synonyms = have_wordnet;
    const auto t_load = [&] {
      const auto a = std::chrono::steady_clock::now();
      MeteorScorer s(o);
      return std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count();
    }();
    const MeteorScorer scorer(o);
    MeteorScores ms;
    const double t_meteor = median_seconds(reps, [&] { ms = meteor_scores(hyps, refs, scorer); });
    std::printf("%-28s %10.4f   %.16g (%s)\n", ms.key.c_str(), t_meteor, ms.corpus,
                ms.description.c_str());
    std::printf("%-28s %10.4f   (first load in this process)\n", "  WordNet load", t_load);
  }

  std::printf("\nscaling with the number of pairs (BLEU+ROUGE-L+CIDEr in one call)\n");
  std::printf("%8s %10s %12s\n", "pairs", "median s", "us per pair");
  for (std::size_t m : {500, 1000, 2000, 3858, 7716, 15432}) {
    const auto [h, r] = make_pairs(m, 1);
    const double t = time_coco({}, h, r);
    std::printf("%8zu %10.4f %12.2f\n", m, t, 1e6 * t / static_cast<double>(m));
  }
  std::printf("\nscaling with report length (3,858 pairs, each report repeated k times)\n");
  std::printf("%4s %10s %10s %10s %10s\n", "k", "BLEU s", "ROUGE-L s", "CIDEr s", "all s");
  for (int k : {1, 2, 4, 8}) {
    const auto [h, r] = make_pairs(n, k);
    std::printf("%4d %10.4f %10.4f %10.4f %10.4f\n", k, time_coco({true, false, false}, h, r),
                time_coco({false, true, false}, h, r), time_coco({false, false, true}, h, r),
                time_coco({}, h, r));
  }
  return 0;
}
