// Clinical efficacy: a rule-based labeller for the 14 CheXpert observations and precision /
// recall / F1 between the labels of generated and reference reports.
//
// The labeller is our own rules in the spirit of the CheXpert labeller (mention phrases,
// negation and uncertainty cues), not a port of it, and it works on raw or R2Gen-cleaned text:
//  1. Lower-case; split into sentences at . ? ! ; and new lines (not inside numbers such as
//     "1.5"), then into clauses at "but", "however", "although", "though", "whereas", "except".
//     Words are runs of letters and digits (so "air-space" reads as "air space").
//  2. Mentions: phrase lists per observation (e.g. "pleural effusion", "effusion" but not
//     "pericardial effusion"), plus organ-state rules: a heart word (heart, cardiac) or a
//     mediastinum word (mediastinum, mediastinal, cardiomediastinal) takes the nearest state
//     word in its clause: enlarged/enlargement/large/widened/widening/prominent/increased ->
//     Cardiomegaly / Enlarged Cardiomediastinum mention; normal/unremarkable/"within normal
//     limits" -> a negative mention; borderline/"upper limits of normal" -> uncertain. A lung
//     word (lung, lungs) with "clear" is a negative mention of Lung Opacity.
//  3. Each mention is negative when a negation cue ("no", "not", "without", "free of",
//     "negative for", "no evidence of", "clear of", "absence of", "resolved", ...) precedes it in
//     its clause within the cue's scope, or follows it with no other mention after the cue
//     ("pneumothorax is not seen"); uncertain likewise for uncertainty cues ("may", "possible",
//     "cannot exclude", "suspicious for", "likely", ...); otherwise positive. A forward scope
//     ends at the clause end, at a verb such as is/are/was/were, or at a cue of the other kind.
//     Negative wins over uncertain when both apply. "no change"/"no interval change" is no cue.
//  4. Per report and observation: positive if any mention is positive, else uncertain if any
//     is uncertain, else negative if any is negative, else blank. No Finding is positive when
//     no observation other than No Finding and Support Devices is positive or uncertain, and
//     blank otherwise (as CheXpert).
#pragma once

#include <ihn/eval/text.hpp>

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace ihn {
inline namespace v0 {
namespace eval {

enum class Label : std::int8_t { blank = 0, positive = 1, negative = 2, uncertain = 3 };

inline constexpr int kNumObservations = 14;
inline constexpr std::array<const char*, kNumObservations> kObservations = {
    "No Finding",       "Enlarged Cardiomediastinum",
    "Cardiomegaly",     "Lung Opacity",
    "Lung Lesion",      "Edema",
    "Consolidation",    "Pneumonia",
    "Atelectasis",      "Pneumothorax",
    "Pleural Effusion", "Pleural Other",
    "Fracture",         "Support Devices"};

enum Observation : int {
  kNoFinding = 0,
  kEnlargedCardiomediastinum,
  kCardiomegaly,
  kLungOpacity,
  kLungLesion,
  kEdema,
  kConsolidation,
  kPneumonia,
  kAtelectasis,
  kPneumothorax,
  kPleuralEffusion,
  kPleuralOther,
  kFracture,
  kSupportDevices
};

using ReportLabels = std::array<Label, kNumObservations>;

inline const char* label_name(Label l) {
  switch (l) {
    case Label::positive:
      return "positive";
    case Label::negative:
      return "negative";
    case Label::uncertain:
      return "uncertain";
    default:
      return "blank";
  }
}

namespace detail {

using Words = std::vector<std::string>;

inline Words phrase_words(std::string_view phrase) {
  Words out;
  for (auto w : split_python_whitespace(phrase)) out.emplace_back(w);
  return out;
}

struct ObservationPhrases {
  int observation;
  std::vector<Words> include;
  std::vector<Words> exclude;  // a mention inside one of these does not count
};

inline std::vector<Words> phrase_list(std::initializer_list<const char*> phrases) {
  std::vector<Words> out;
  for (const char* p : phrases) out.push_back(phrase_words(p));
  return out;
}

inline const std::vector<ObservationPhrases>& observation_phrases() {
  static const std::vector<ObservationPhrases> table = {
      {kEnlargedCardiomediastinum,
       phrase_list({"mediastinal widening", "widened mediastinum", "mediastinal enlargement",
                    "enlarged cardiomediastinal silhouette", "enlarged mediastinum",
                    "widening of the mediastinum",
                    "enlargement of the cardiomediastinal silhouette"}),
       {}},
      {kCardiomegaly,
       phrase_list({"cardiomegaly", "cardiac enlargement", "enlarged heart",
                    "enlargement of the heart", "enlarged cardiac silhouette",
                    "enlargement of the cardiac silhouette"}),
       {}},
      {kLungOpacity,
       phrase_list({"opacity",
                    "opacities",
                    "opacification",
                    "opacifications",
                    "opacified",
                    "infiltrate",
                    "infiltrates",
                    "infiltration",
                    "infiltrations",
                    "airspace disease",
                    "air space disease",
                    "airspace process",
                    "density",
                    "densities",
                    "haziness",
                    "interstitial markings",
                    "interstitial marking",
                    "interstitial pattern",
                    "reticular",
                    "reticulation",
                    "reticulonodular",
                    "scarring",
                    "scar",
                    "scars",
                    "decreased translucency",
                    "peribronchial thickening",
                    "peribronchial cuffing"}),
       phrase_list({"pleural scarring", "pleural scar", "nodular opacity", "nodular opacities",
                    "nodular density", "nodular densities", "bone density",
                    "soft tissue density"})},
      {kLungLesion,
       phrase_list({"nodule",
                    "nodules",
                    "nodular opacity",
                    "nodular opacities",
                    "nodular density",
                    "nodular densities",
                    "mass",
                    "masses",
                    "lesion",
                    "lesions",
                    "tumor",
                    "tumors",
                    "neoplasm",
                    "neoplasms",
                    "carcinoma",
                    "cancer",
                    "metastasis",
                    "metastases",
                    "metastatic disease",
                    "lump"}),
       phrase_list({"bony lesion", "bony lesions", "lytic lesion", "lytic lesions",
                    "osseous lesion", "osseous lesions", "blastic lesion", "sclerotic lesion",
                    "bone lesion", "bone lesions", "soft tissue mass"})},
      {kEdema,
       phrase_list({"edema", "pulmonary edema", "vascular congestion", "pulmonary congestion",
                    "venous congestion", "heart failure", "chf", "interstitial edema",
                    "cephalization", "kerley"}),
       phrase_list({"soft tissue edema"})},
      {kConsolidation,
       phrase_list({"consolidation", "consolidations", "consolidative", "consolidated"}),
       {}},
      {kPneumonia,
       phrase_list({"pneumonia", "pneumonias", "bronchopneumonia", "pneumonitis", "infection",
                    "infections", "infectious", "infectious process"}),
       {}},
      {kAtelectasis,
       phrase_list({"atelectasis", "atelectases", "atelectatic", "collapse", "collapsed"}),
       phrase_list({"vertebral collapse", "compression collapse"})},
      {kPneumothorax,
       phrase_list({"pneumothorax", "pneumothoraces", "pneumothoraxes", "hydropneumothorax"}),
       {}},
      {kPleuralEffusion,
       phrase_list({"pleural effusion", "pleural effusions", "effusion", "effusions",
                    "pleural fluid", "hydropneumothorax", "hydrothorax",
                    "blunting of the costophrenic", "costophrenic angle blunting",
                    "costophrenic blunting"}),
       phrase_list({"pericardial effusion", "pericardial effusions", "joint effusion"})},
      {kPleuralOther,
       phrase_list({"pleural thickening", "pleural plaque", "pleural plaques", "pleural scarring",
                    "pleural scar", "pleural calcification", "pleural calcifications",
                    "fibrothorax", "pleural fibrosis", "pleural parenchymal scarring",
                    "pleuroparenchymal scarring"}),
       {}},
      {kFracture, phrase_list({"fracture", "fractures", "fractured", "fx"}), {}},
      {kSupportDevices,
       phrase_list({"pacemaker",
                    "pacemakers",
                    "pacer",
                    "defibrillator",
                    "icd",
                    "aicd",
                    "catheter",
                    "catheters",
                    "picc",
                    "central line",
                    "central venous line",
                    "port",
                    "porta cath",
                    "port a cath",
                    "portacath",
                    "endotracheal tube",
                    "et tube",
                    "tracheostomy",
                    "nasogastric tube",
                    "ng tube",
                    "og tube",
                    "feeding tube",
                    "chest tube",
                    "chest tubes",
                    "enteric tube",
                    "tube",
                    "tubes",
                    "sternotomy",
                    "sternotomy wires",
                    "sternal wires",
                    "wires",
                    "surgical clips",
                    "clips",
                    "stent",
                    "stents",
                    "valve replacement",
                    "prosthetic valve",
                    "hardware",
                    "device",
                    "devices",
                    "leads",
                    "drain",
                    "drains",
                    "coil",
                    "coils",
                    "prosthesis",
                    "generator",
                    "loop recorder",
                    "cabg"}),
       {}},
  };
  return table;
}

/// Negation cues (longest first when matched). A cue's words are consumed, so "not" in
/// "cannot be excluded" is not also a negation.
inline const std::vector<Words>& negation_cues() {
  static const std::vector<Words> cues = phrase_list({"no evidence of",
                                                      "no evidence for",
                                                      "no signs of",
                                                      "no sign of",
                                                      "negative for",
                                                      "free of",
                                                      "clear of",
                                                      "absence of",
                                                      "resolution of",
                                                      "removal of",
                                                      "rather than",
                                                      "no",
                                                      "not",
                                                      "without",
                                                      "absent",
                                                      "resolved",
                                                      "removed",
                                                      "none",
                                                      "neither",
                                                      "nor",
                                                      "never",
                                                      "cleared",
                                                      "negative",
                                                      "excluded",
                                                      "ruled out"});
  return cues;
}

/// Uncertainty cues. `breaks_negation`: whether the cue ends a negation's forward scope
/// ("no effusion possible atelectasis"); "suggest"/"suspicious" usually sit inside one ("no
/// focal consolidation to suggest pneumonia", "no suspicious opacity").
struct UncertaintyCue {
  Words words;
  bool breaks_negation;
};
inline const std::vector<UncertaintyCue>& uncertainty_cues() {
  static const std::vector<UncertaintyCue> cues = [] {
    std::vector<UncertaintyCue> out;
    for (const char* p : {"cannot be excluded",
                          "can not be excluded",
                          "cannot exclude",
                          "can not exclude",
                          "cannot be ruled out",
                          "cannot rule out",
                          "not be excluded",
                          "not excluded",
                          "not ruled out",
                          "not be ruled out",
                          "difficult to exclude",
                          "may",
                          "might",
                          "possible",
                          "possibly",
                          "probable",
                          "probably",
                          "likely",
                          "questionable",
                          "question of",
                          "versus",
                          "vs",
                          "equivocal",
                          "indeterminate",
                          "borderline",
                          "differential",
                          "could",
                          "presumed",
                          "suspected",
                          "upper limits of normal",
                          "upper limit of normal",
                          "top normal",
                          "upper normal",
                          "concern for",
                          "concerning for"})
      out.push_back({phrase_words(p), true});
    for (const char* p :
         {"suggest", "suggests", "suggesting", "suggestive", "suspicious", "suspect", "concerning"})
      out.push_back({phrase_words(p), false});
    return out;
  }();
  return cues;
}

/// Words that end the forward scope of a cue: the clause moves on to a new statement.
inline bool ends_scope(const std::string& w) {
  return w == "is" || w == "are" || w == "was" || w == "were";
}

inline bool matches_at(const Words& words, std::size_t i, const Words& phrase) {
  if (i + phrase.size() > words.size()) return false;
  for (std::size_t k = 0; k < phrase.size(); ++k)
    if (words[i + k] != phrase[k]) return false;
  return true;
}

/// Sentences, then clauses, then lower-case words of a report.
inline std::vector<Words> clauses_of(std::string_view report) {
  std::vector<Words> clauses;
  Words current;
  std::string word;
  auto end_word = [&] {
    if (word.empty()) return;
    if (word == "but" || word == "however" || word == "although" || word == "though" ||
        word == "whereas" || word == "except") {
      if (!current.empty()) clauses.push_back(std::move(current));
      current.clear();
    } else {
      current.push_back(word);
    }
    word.clear();
  };
  auto end_clause = [&] {
    end_word();
    if (!current.empty()) clauses.push_back(std::move(current));
    current.clear();
  };
  for (std::size_t i = 0; i < report.size(); ++i) {
    const auto c = static_cast<unsigned char>(report[i]);
    if (std::isalnum(c)) {
      word.push_back(static_cast<char>(std::tolower(c)));
    } else if (c == '.' && i > 0 && i + 1 < report.size() &&
               std::isdigit(static_cast<unsigned char>(report[i - 1])) &&
               std::isdigit(static_cast<unsigned char>(report[i + 1]))) {
      word.push_back('.');  // a decimal point, not a sentence end
    } else if (c == '.' || c == '?' || c == '!' || c == ';' || c == '\n') {
      end_clause();
    } else {
      end_word();
    }
  }
  end_clause();
  return clauses;
}

struct Mention {
  int observation;
  std::size_t begin, end;  // word span in the clause
  Label fixed;             // blank: decided by cues; otherwise the organ-state rule's label
};

inline bool is_heart_word(const std::string& w) {
  return w == "heart" || w == "cardiac";
}
inline bool is_mediastinum_word(const std::string& w) {
  return w == "mediastinum" || w == "mediastinal" || w == "cardiomediastinal";
}
inline bool is_lung_word(const std::string& w) {
  return w == "lung" || w == "lungs";
}

/// The organ-state mentions of a clause (see the header comment).
inline void organ_state_mentions(const Words& w, std::vector<Mention>& out) {
  enum State { abnormal, normal, borderline };
  struct StateWord {
    std::size_t pos;
    State state;
  };
  static const std::vector<Words> borderline_phrases = phrase_list(
      {"upper limits of normal", "upper limit of normal", "top normal", "upper normal"});
  std::vector<StateWord> states;
  for (std::size_t i = 0; i < w.size(); ++i) {
    std::size_t phrase_length = 0;
    for (const auto& p : borderline_phrases)
      if (matches_at(w, i, p)) phrase_length = p.size();
    if (phrase_length) {  // one borderline state; its "normal" is not a second state
      states.push_back({i, borderline});
      i += phrase_length - 1;
      continue;
    }
    const auto& x = w[i];
    if (x == "enlarged" || x == "enlargement" || x == "large" || x == "widened" ||
        x == "widening" || x == "prominent" || x == "prominence" || x == "increased" ||
        x == "cardiomegaly")
      states.push_back({i, abnormal});
    else if (x == "normal" || x == "unremarkable")
      states.push_back({i, normal});
    else if (x == "borderline")
      states.push_back({i, borderline});
  }
  auto nearest_state = [&](std::size_t organ) -> const StateWord* {
    const StateWord* best = nullptr;
    std::size_t best_distance = 0;
    for (const auto& s : states) {
      const std::size_t d = s.pos > organ ? s.pos - organ : organ - s.pos;
      if (!best || d < best_distance) {
        best = &s;
        best_distance = d;
      }
    }
    return best;
  };
  for (std::size_t i = 0; i < w.size(); ++i) {
    int observation = -1;
    if (is_heart_word(w[i]))
      observation = kCardiomegaly;
    else if (is_mediastinum_word(w[i]))
      observation = kEnlargedCardiomediastinum;
    if (observation >= 0) {
      const StateWord* s = nearest_state(i);
      if (!s) continue;
      const Label fixed = s->state == abnormal ? Label::blank  // cues decide
                          : s->state == normal ? Label::negative
                                               : Label::uncertain;
      out.push_back({observation, s->pos, s->pos + 1, fixed});
    } else if (is_lung_word(w[i])) {
      for (std::size_t j = 0; j < w.size(); ++j) {
        if (w[j] == "clear" && !(j + 1 < w.size() && w[j + 1] == "of")) {
          out.push_back({kLungOpacity, j, j + 1, Label::negative});
          break;
        }
      }
    }
  }
}

/// Labels of every mention in one clause.
inline void label_clause(const Words& w, ReportLabels& labels) {
  // 1. Cues: uncertainty first (its multi-word forms contain "not"), then negation.
  enum CueKind { none, negation, uncertainty, uncertainty_soft };
  std::vector<CueKind> cue(w.size(), none);
  std::vector<char> consumed(w.size(), 0), both_ways(w.size(), 0);
  for (std::size_t i = 0; i < w.size(); ++i) {
    for (const auto& u : uncertainty_cues()) {
      if (matches_at(w, i, u.words)) {
        cue[i] = u.breaks_negation ? uncertainty : uncertainty_soft;
        both_ways[i] = w[i] == "versus" || w[i] == "vs";  // "thickening versus effusion"
        for (std::size_t k = 0; k < u.words.size(); ++k) consumed[i + k] = 1;
        break;
      }
    }
  }
  for (std::size_t i = 0; i < w.size(); ++i) {
    if (consumed[i]) continue;
    // "no change", "no interval change", "not changed": statements about time, not absence.
    if ((w[i] == "no" || w[i] == "not") && i + 1 < w.size() &&
        (w[i + 1] == "change" || w[i + 1] == "changed" || w[i + 1] == "interval" ||
         (w[i + 1] == "significant" && i + 2 < w.size() && w[i + 2] == "change")))
      continue;
    for (const auto& n : negation_cues()) {
      if (matches_at(w, i, n)) {
        bool free = true;
        for (std::size_t k = 0; k < n.size(); ++k) free = free && !consumed[i + k];
        if (!free) continue;
        cue[i] = negation;
        for (std::size_t k = 0; k < n.size(); ++k) consumed[i + k] = 1;
        break;
      }
    }
  }

  // 2. Mentions: phrases (longest match wins at a position, excluded contexts dropped).
  std::vector<Mention> mentions;
  for (const auto& obs : observation_phrases()) {
    for (std::size_t i = 0; i < w.size(); ++i) {
      std::size_t best = 0;
      for (const auto& p : obs.include)
        if (p.size() > best && matches_at(w, i, p)) best = p.size();
      if (!best) continue;
      bool excluded = false;
      for (const auto& x : obs.exclude) {
        for (std::size_t start = i + 1 >= x.size() ? i + 1 - x.size() : 0; start <= i && !excluded;
             ++start)
          if (matches_at(w, start, x) && start + x.size() >= i + best) excluded = true;
      }
      if (!excluded) mentions.push_back({obs.observation, i, i + best, Label::blank});
      i += best - 1;
    }
  }
  organ_state_mentions(w, mentions);
  if (mentions.empty()) return;

  // 3. Scopes. Forward: from the cue to the clause end, stopped by is/are/was/were or by a cue
  // of the other kind (soft uncertainty cues do not stop negation). Backward: to every earlier
  // mention, when no mention follows the cue in the clause, and always for "versus".
  auto mention_after = [&](std::size_t pos) {
    for (const auto& m : mentions)
      if (m.begin > pos) return true;
    return false;
  };
  std::vector<char> negated(w.size(), 0), uncertain(w.size(), 0);
  for (std::size_t c = 0; c < w.size(); ++c) {
    if (cue[c] == none) continue;
    const bool is_negation = cue[c] == negation;
    auto& mark = is_negation ? negated : uncertain;
    for (std::size_t k = c + 1; k < w.size(); ++k) {
      if (ends_scope(w[k])) break;
      if (is_negation && cue[k] == uncertainty) break;
      if (!is_negation && cue[k] == negation) break;
      mark[k] = 1;
    }
    mark[c] = 1;  // a cue that is itself part of a mention phrase
    if (!mention_after(c) || both_ways[c]) {
      for (std::size_t k = 0; k < c; ++k) mark[k] = 1;
    }
  }

  // 4. Each mention's label, then the report label (positive > uncertain > negative).
  auto rank = [](Label l) {
    switch (l) {
      case Label::positive:
        return 3;
      case Label::uncertain:
        return 2;
      case Label::negative:
        return 1;
      default:
        return 0;
    }
  };
  for (const auto& m : mentions) {
    bool neg = false, unc = false;
    for (std::size_t k = m.begin; k < m.end; ++k) {
      neg = neg || negated[k];
      unc = unc || uncertain[k];
    }
    Label l;
    if (m.fixed == Label::negative)
      l = Label::negative;
    else if (neg)
      l = Label::negative;
    else if (m.fixed == Label::uncertain || unc)
      l = Label::uncertain;
    else
      l = Label::positive;
    if (rank(l) > rank(labels[m.observation])) labels[m.observation] = l;
  }
}

}  // namespace detail

/// The 14 CheXpert labels of one report (see the header comment for the rules).
inline ReportLabels label_report(std::string_view report) {
  ReportLabels labels{};
  for (const auto& clause : detail::clauses_of(report)) detail::label_clause(clause, labels);
  bool finding = false;
  for (int o = 1; o < kNumObservations; ++o) {
    if (o == kSupportDevices) continue;
    finding = finding || labels[o] == Label::positive || labels[o] == Label::uncertain;
  }
  labels[kNoFinding] = finding ? Label::blank : Label::positive;
  return labels;
}

/// Precision, recall and F1 (0 where a denominator is 0, as scikit-learn's zero_division=0).
struct PRF {
  double precision = 0, recall = 0, f1 = 0;
  long long tp = 0, fp = 0, fn = 0;
};

struct ClinicalScores {
  bool uncertain_as_positive = false;
  std::array<PRF, kNumObservations> per_observation;
  PRF micro;  ///< pooled tp/fp/fn over the 14 observations
  PRF macro;  ///< unweighted mean of the 14 per-observation P, R, F1
  std::vector<ReportLabels> hypothesis_labels, reference_labels;
};

namespace detail {
inline PRF prf_from_counts(long long tp, long long fp, long long fn) {
  PRF r;
  r.tp = tp;
  r.fp = fp;
  r.fn = fn;
  r.precision = tp + fp ? static_cast<double>(tp) / static_cast<double>(tp + fp) : 0.0;
  r.recall = tp + fn ? static_cast<double>(tp) / static_cast<double>(tp + fn) : 0.0;
  r.f1 = r.precision + r.recall > 0 ? 2 * r.precision * r.recall / (r.precision + r.recall) : 0.0;
  return r;
}
}  // namespace detail

/// P/R/F1 of hypothesis labels against reference labels, binary per observation: positive
/// (plus uncertain when `uncertain_as_positive`) against everything else.
inline ClinicalScores clinical_scores(const std::vector<ReportLabels>& hyp,
                                      const std::vector<ReportLabels>& ref,
                                      bool uncertain_as_positive = false) {
  if (hyp.size() != ref.size())
    throw EvalError("clinical_scores: " + std::to_string(hyp.size()) +
                    " hypothesis label rows but " + std::to_string(ref.size()) + " reference rows");
  ClinicalScores out;
  out.uncertain_as_positive = uncertain_as_positive;
  auto on = [&](Label l) {
    return l == Label::positive || (uncertain_as_positive && l == Label::uncertain);
  };
  long long tp = 0, fp = 0, fn = 0;
  for (int o = 0; o < kNumObservations; ++o) {
    long long otp = 0, ofp = 0, ofn = 0;
    for (std::size_t i = 0; i < hyp.size(); ++i) {
      const bool h = on(hyp[i][o]), r = on(ref[i][o]);
      otp += h && r;
      ofp += h && !r;
      ofn += !h && r;
    }
    out.per_observation[o] = detail::prf_from_counts(otp, ofp, ofn);
    tp += otp;
    fp += ofp;
    fn += ofn;
    out.macro.precision += out.per_observation[o].precision / kNumObservations;
    out.macro.recall += out.per_observation[o].recall / kNumObservations;
    out.macro.f1 += out.per_observation[o].f1 / kNumObservations;
  }
  out.micro = detail::prf_from_counts(tp, fp, fn);
  out.macro.tp = tp;
  out.macro.fp = fp;
  out.macro.fn = fn;
  return out;
}

inline ClinicalScores clinical_scores(const std::vector<std::string>& hyps,
                                      const std::vector<std::string>& refs,
                                      bool uncertain_as_positive = false) {
  std::vector<ReportLabels> h, r;
  for (const auto& s : hyps) h.push_back(label_report(s));
  for (const auto& s : refs) r.push_back(label_report(s));
  auto out = clinical_scores(h, r, uncertain_as_positive);
  out.hypothesis_labels = std::move(h);
  out.reference_labels = std::move(r);
  return out;
}

}  // namespace eval
}  // namespace v0
}  // namespace ihn
