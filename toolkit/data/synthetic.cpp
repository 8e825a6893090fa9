// The synthetic chest X-ray data set (see synthetic.hpp).
#include "data/synthetic.hpp"

#include <nlohmann/json.hpp>

#include <fmt/core.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <stdexcept>

namespace ihn_toolkit::data {

// ---------------------------------------------------------------- names and labels

const char* finding_type_name(FindingType type) {
  static const char* names[kFindingTypes] = {
      "cardiomegaly",    "widened_mediastinum", "pleural_effusion", "pneumothorax",
      "lobar_opacity",   "consolidation",       "nodule",           "atelectasis",
      "pulmonary_edema", "pleural_thickening",  "rib_fracture",     "central_line",
      "pacemaker",       "hyperinflation",      "hiatal_hernia"};
  return names[static_cast<int>(type)];
}
const char* side_name(Side side) {
  static const char* names[] = {"none", "right", "left", "bilateral"};
  return names[static_cast<int>(side)];
}
const char* size_name(Size size) {
  static const char* names[] = {"none", "small", "moderate", "large"};
  return names[static_cast<int>(size)];
}
const char* location_name(Location location) {
  static const char* names[] = {"none", "upper", "middle", "lower"};
  return names[static_cast<int>(location)];
}
const char* severity_name(Severity severity) {
  static const char* names[] = {"none", "mild", "moderate", "marked"};
  return names[static_cast<int>(severity)];
}

std::string describe(const Finding& finding) {
  std::string text = finding_type_name(finding.type);
  std::string attributes;
  auto add = [&](const char* key, const char* value) {
    attributes += (attributes.empty() ? "" : ", ") + std::string(key) + "=" + value;
  };
  if (finding.side != Side::none) add("side", side_name(finding.side));
  if (finding.size != Size::none) add("size", size_name(finding.size));
  if (finding.location != Location::none) add("location", location_name(finding.location));
  if (finding.severity != Severity::none) add("severity", severity_name(finding.severity));
  return attributes.empty() ? text : text + "(" + attributes + ")";
}

namespace {
int chexpert_index(const char* name) {
  for (size_t i = 0; i < kChexpertObservations.size(); ++i)
    if (std::string(kChexpertObservations[i]) == name) return static_cast<int>(i);
  throw std::logic_error(std::string("unknown CheXpert observation ") + name);
}

const char* chexpert_label_of(FindingType type) {
  switch (type) {
    case FindingType::cardiomegaly:
      return "Cardiomegaly";
    case FindingType::widened_mediastinum:
      return "Enlarged Cardiomediastinum";
    case FindingType::pleural_effusion:
      return "Pleural Effusion";
    case FindingType::pneumothorax:
      return "Pneumothorax";
    case FindingType::lobar_opacity:
      return "Lung Opacity";
    case FindingType::consolidation:
      return "Consolidation";
    case FindingType::nodule:
      return "Lung Lesion";
    case FindingType::atelectasis:
      return "Atelectasis";
    case FindingType::pulmonary_edema:
      return "Edema";
    case FindingType::pleural_thickening:
      return "Pleural Other";
    case FindingType::rib_fracture:
      return "Fracture";
    case FindingType::central_line:
    case FindingType::pacemaker:
      return "Support Devices";
    case FindingType::hyperinflation:
    case FindingType::hiatal_hernia:
      return nullptr;
  }
  return nullptr;
}
}  // namespace

std::array<int, 14> chexpert_labels(const std::vector<Finding>& findings) {
  std::array<int, 14> labels{};
  for (const auto& finding : findings)
    if (const char* label = chexpert_label_of(finding.type)) labels[chexpert_index(label)] = 1;
  bool pathology = false;
  for (size_t i = 1; i < labels.size(); ++i)
    if (std::string(kChexpertObservations[i]) != "Support Devices" && labels[i]) pathology = true;
  labels[0] = pathology ? 0 : 1;
  return labels;
}

void SyntheticOptions::validate() const {
  auto bad = [](const std::string& what) {
    throw std::invalid_argument("synthetic data set: " + what);
  };
  if (studies < 1) bad("studies must be at least 1 (got " + std::to_string(studies) + ")");
  if (image_size < 32 || image_size > 4096)
    bad("image_size must be in [32, 4096] pixels (got " + std::to_string(image_size) + ")");
  if (!(normal_fraction >= 0 && normal_fraction <= 1))
    bad("normal_fraction must be in [0, 1] (got " + std::to_string(normal_fraction) + ")");
  if (!(val_fraction >= 0 && test_fraction >= 0 && val_fraction + test_fraction < 1))
    bad("val_fraction and test_fraction must be >= 0 with a sum below 1");
  if (max_findings < 1 || max_findings > kFindingTypes)
    bad("max_findings must be in [1, " + std::to_string(kFindingTypes) + "]");
}

// ---------------------------------------------------------------- findings and reports

namespace {

using Rng = std::mt19937_64;

double uniform(Rng& rng, double low, double high) {
  return std::uniform_real_distribution<double>(low, high)(rng);
}
int pick(Rng& rng, int count) {
  return std::uniform_int_distribution<int>(0, count - 1)(rng);
}
template <typename T>
T pick_of(Rng& rng, std::initializer_list<T> values) {
  return *(values.begin() + pick(rng, static_cast<int>(values.size())));
}

Finding draw_finding(FindingType type, Rng& rng) {
  Finding f{type};
  const auto left_or_right = [&] { return pick_of(rng, {Side::right, Side::left}); };
  switch (type) {
    case FindingType::cardiomegaly:
    case FindingType::pulmonary_edema:
      f.severity = pick_of(rng, {Severity::mild, Severity::moderate, Severity::marked});
      break;
    case FindingType::pleural_effusion:
      f.side = uniform(rng, 0, 1) < 0.2 ? Side::bilateral : left_or_right();
      f.size = pick_of(rng, {Size::small, Size::moderate, Size::large});
      break;
    case FindingType::pneumothorax:
      f.side = left_or_right();
      f.size = pick_of(rng, {Size::small, Size::moderate, Size::large});
      break;
    case FindingType::lobar_opacity:
    case FindingType::consolidation:
      f.side = left_or_right();
      // The left lung has no middle lobe.
      f.location = f.side == Side::right
                       ? pick_of(rng, {Location::upper, Location::middle, Location::lower})
                       : pick_of(rng, {Location::upper, Location::lower});
      break;
    case FindingType::nodule:
      f.side = left_or_right();
      f.location = pick_of(rng, {Location::upper, Location::middle, Location::lower});
      f.size = pick_of(rng, {Size::small, Size::large});
      break;
    case FindingType::atelectasis:
      f.side = left_or_right();
      f.severity = pick_of(rng, {Severity::mild, Severity::moderate});
      break;
    case FindingType::pleural_thickening:
    case FindingType::central_line:
      f.side = left_or_right();
      break;
    case FindingType::rib_fracture:
      f.side = left_or_right();
      f.severity = pick_of(rng, {Severity::mild, Severity::marked});  // healed / acute
      break;
    case FindingType::pacemaker:
      f.side = uniform(rng, 0, 1) < 0.8 ? Side::left : Side::right;
      break;
    case FindingType::hiatal_hernia:
      f.size = pick_of(rng, {Size::small, Size::moderate, Size::large});
      break;
    case FindingType::widened_mediastinum:
    case FindingType::hyperinflation:
      break;
  }
  return f;
}

std::string capitalize(std::string text) {
  if (!text.empty() && text[0] >= 'a' && text[0] <= 'z') text[0] = static_cast<char>(text[0] - 32);
  return text;
}

std::string replace_field(std::string text, const std::string& field, const std::string& value) {
  for (size_t pos; (pos = text.find(field)) != std::string::npos;)
    text.replace(pos, field.size(), value);
  return text;
}

const char* severity_adverb(Severity severity) {
  switch (severity) {
    case Severity::mild:
      return "mildly";
    case Severity::moderate:
      return "moderately";
    default:
      return "markedly";
  }
}

const char* zone_name(Location location) {
  return location == Location::upper ? "upper" : location == Location::middle ? "mid" : "lower";
}

// A reporting "style": each statement uses the style's paraphrase most of the time, so normal
// reports cluster into a few identical texts, as in IU X-Ray.
struct Writer {
  Rng& rng;
  int style;
  std::string choose(const std::vector<std::string>& paraphrases) {
    const int n = static_cast<int>(paraphrases.size());
    const int index = uniform(rng, 0, 1) < 0.85 ? style % n : pick(rng, n);
    return paraphrases[static_cast<size_t>(index)];
  }
};

std::string fill(std::string sentence, const Finding& f) {
  sentence = replace_field(sentence, "{side}", side_name(f.side));
  sentence = replace_field(sentence, "{size}", size_name(f.size));
  sentence = replace_field(sentence, "{lobe}", location_name(f.location));
  sentence = replace_field(sentence, "{zone}", zone_name(f.location));
  sentence = replace_field(sentence, "{sev}", severity_name(f.severity));
  sentence = replace_field(sentence, "{adv}", severity_adverb(f.severity));
  return capitalize(sentence);
}

std::vector<std::string> positive_paraphrases(const Finding& f) {
  switch (f.type) {
    case FindingType::cardiomegaly:
      return {"the heart is {adv} enlarged.", "there is {sev} cardiomegaly.",
              "{sev} cardiomegaly is present."};
    case FindingType::widened_mediastinum:
      return {"the mediastinum is widened.", "there is widening of the mediastinum.",
              "the superior mediastinum is widened."};
    case FindingType::pleural_effusion:
      if (f.side == Side::bilateral)
        return {"there are {size} bilateral pleural effusions.",
                "{size} bilateral pleural effusions.",
                "{size} bilateral pleural effusions are present."};
      return {"there is a {size} {side} pleural effusion.", "{size} {side} pleural effusion.",
              "a {size} {side} pleural effusion is present."};
    case FindingType::pneumothorax:
      return {"there is a {size} {side} pneumothorax.", "{size} {side} pneumothorax.",
              "a {size} {side} pneumothorax is present."};
    case FindingType::lobar_opacity:
      return {"there is a {side} {lobe} lobe opacity.", "{side} {lobe} lobe opacity.",
              "there is opacity in the {side} {lobe} lobe."};
    case FindingType::consolidation:
      return {"there is consolidation in the {side} {lobe} lobe.",
              "{side} {lobe} lobe consolidation.",
              "focal consolidation in the {side} {lobe} lobe."};
    case FindingType::nodule:
      return {"there is a {size} nodule in the {side} {zone} lung.",
              "a {size} {side} {zone} lung nodule is noted.",
              "{size} nodule in the {side} {zone} lung."};
    case FindingType::atelectasis:
      return {"there is {sev} {side} basilar atelectasis.", "{sev} {side} basilar atelectasis.",
              "{sev} atelectasis at the {side} lung base."};
    case FindingType::pulmonary_edema:
      return {"there is {sev} pulmonary edema.", "{sev} pulmonary edema.",
              "findings are consistent with {sev} pulmonary edema."};
    case FindingType::pleural_thickening:
      return {"there is {side} apical pleural thickening.", "{side} apical pleural thickening.",
              "{side} apical pleural thickening is noted."};
    case FindingType::rib_fracture:
      if (f.severity == Severity::mild)
        return {"there is a healed {side} rib fracture.", "healed {side} rib fracture.",
                "a healed {side} rib fracture is noted."};
      return {"there is an acute {side} rib fracture.", "acute {side} rib fracture.",
              "an acute {side} rib fracture is seen."};
    case FindingType::central_line:
      return {"a {side} central venous catheter is in place.", "there is a {side} central line.",
              "{side} central venous catheter in place."};
    case FindingType::pacemaker:
      return {"a {side} chest wall pacemaker is present.", "a pacemaker is present.",
              "there is a {side} pacemaker."};
    case FindingType::hyperinflation:
      return {"the lungs are hyperinflated.", "the lungs are hyperexpanded.",
              "there is hyperinflation of the lungs."};
    case FindingType::hiatal_hernia:
      return {"there is a {size} hiatal hernia.", "a {size} hiatal hernia is noted.",
              "{size} hiatal hernia."};
  }
  return {};
}

const std::vector<std::string> kNormalHeart = {
    "The heart is normal in size.", "Heart size is normal.",
    "The cardiac silhouette is normal in size.", "Normal heart size."};
const std::vector<std::string> kNormalMediastinum = {
    "The mediastinum is unremarkable.", "Mediastinal contours are normal.",
    "The mediastinal silhouette is within normal limits.", "Normal mediastinal contours."};
const std::vector<std::string> kNormalLungs = {
    "The lungs are clear.", "Lungs are clear bilaterally.",
    "The lungs are clear without focal airspace disease.", "No focal airspace consolidation."};
const std::vector<std::string> kNormalPleura = {"No pneumothorax or pleural effusion.",
                                                "No pleural effusion or pneumothorax.",
                                                "There is no pneumothorax or pleural effusion.",
                                                "No XXXX of pleural effusion or pneumothorax."};
const std::vector<std::string> kNormalBones = {"No acute bony abnormality.",
                                               "The osseous structures are intact.",
                                               "XXXX are intact.", "No acute osseous abnormality."};

std::string write_report(const std::vector<Finding>& findings, Writer& writer) {
  std::vector<std::string> sentences;
  auto has = [&](FindingType type) {
    return std::any_of(findings.begin(), findings.end(),
                       [&](const Finding& f) { return f.type == type; });
  };
  auto say = [&](FindingType type) {
    for (const auto& f : findings)
      if (f.type == type) sentences.push_back(fill(writer.choose(positive_paraphrases(f)), f));
  };
  // heart, mediastinum, lungs, pleura, bones, then devices and the abdomen, as IU X-Ray does.
  if (has(FindingType::cardiomegaly))
    say(FindingType::cardiomegaly);
  else
    sentences.push_back(writer.choose(kNormalHeart));
  if (has(FindingType::widened_mediastinum))
    say(FindingType::widened_mediastinum);
  else
    sentences.push_back(writer.choose(kNormalMediastinum));
  say(FindingType::hyperinflation);
  bool lung_finding = false;
  for (auto type : {FindingType::lobar_opacity, FindingType::consolidation, FindingType::nodule,
                    FindingType::atelectasis, FindingType::pulmonary_edema}) {
    lung_finding = lung_finding || has(type);
    say(type);
  }
  if (!lung_finding) sentences.push_back(writer.choose(kNormalLungs));
  const bool effusion = has(FindingType::pleural_effusion);
  const bool pneumothorax = has(FindingType::pneumothorax);
  if (!effusion && !pneumothorax) sentences.push_back(writer.choose(kNormalPleura));
  if (effusion && !pneumothorax) sentences.push_back("No pneumothorax.");
  if (pneumothorax && !effusion) sentences.push_back("No pleural effusion.");
  say(FindingType::pleural_effusion);
  say(FindingType::pneumothorax);
  say(FindingType::pleural_thickening);
  if (has(FindingType::rib_fracture))
    say(FindingType::rib_fracture);
  else
    sentences.push_back(writer.choose(kNormalBones));
  say(FindingType::central_line);
  say(FindingType::pacemaker);
  say(FindingType::hiatal_hernia);
  std::string report;
  for (const auto& sentence : sentences) report += (report.empty() ? "" : " ") + sentence;
  return report;
}

// ---------------------------------------------------------------- rendering

// Float canvas in [0, 1] (1 = dense/bright), coordinates in units of the image width.
struct Canvas {
  int size;
  std::vector<float> v;
  explicit Canvas(int size_, float background) : size(size_), v(size_ * size_, background) {}

  // Blends towards `value` inside an ellipse with a soft rim (softness in units).
  void ellipse(double cx, double cy, double rx, double ry, float value, double softness = 0.02,
               float opacity = 1.0f) {
    const double margin = softness * 2;
    for_box(cx - rx - margin, cy - ry - margin, cx + rx + margin, cy + ry + margin,
            [&](int x, int y, double u, double w) {
              const double d =
                  std::sqrt(((u - cx) * (u - cx)) / (rx * rx) + ((w - cy) * (w - cy)) / (ry * ry));
              const double edge = (d - 1.0) * std::min(rx, ry) / std::max(softness, 1e-6);
              const double coverage = std::clamp(0.5 - edge, 0.0, 1.0);
              blend(x, y, value, static_cast<float>(coverage) * opacity);
            });
  }
  // Adds `amount` with a Gaussian fall-off (sigma in units): haze, blobs, nodules.
  void glow(double cx, double cy, double sx, double sy, float amount) {
    for_box(cx - 3 * sx, cy - 3 * sy, cx + 3 * sx, cy + 3 * sy,
            [&](int x, int y, double u, double w) {
              const double e =
                  ((u - cx) * (u - cx)) / (2 * sx * sx) + ((w - cy) * (w - cy)) / (2 * sy * sy);
              v[y * size + x] += amount * static_cast<float>(std::exp(-e));
            });
  }
  // A segment of the given thickness blended towards `value`.
  void line(double x0, double y0, double x1, double y1, double thickness, float value,
            float opacity = 1.0f) {
    const double half = thickness / 2 + 1.0 / size;
    for_box(std::min(x0, x1) - half, std::min(y0, y1) - half, std::max(x0, x1) + half,
            std::max(y0, y1) + half, [&](int x, int y, double u, double w) {
              const double dx = x1 - x0, dy = y1 - y0;
              const double length2 = dx * dx + dy * dy;
              double t = length2 > 0 ? ((u - x0) * dx + (w - y0) * dy) / length2 : 0;
              t = std::clamp(t, 0.0, 1.0);
              const double distance = std::hypot(u - (x0 + t * dx), w - (y0 + t * dy));
              const double coverage = std::clamp((thickness / 2 - distance) * size + 0.5, 0.0, 1.0);
              blend(x, y, value, static_cast<float>(coverage) * opacity);
            });
  }
  // A quadratic curve through three points, as short segments.
  void curve(double x0, double y0, double xm, double ym, double x1, double y1, double thickness,
             float value, float opacity = 1.0f) {
    const int steps = 12;
    double px = x0, py = y0;
    for (int i = 1; i <= steps; ++i) {
      const double t = static_cast<double>(i) / steps;
      const double x = (1 - t) * (1 - t) * x0 + 2 * (1 - t) * t * xm + t * t * x1;
      const double y = (1 - t) * (1 - t) * y0 + 2 * (1 - t) * t * ym + t * t * y1;
      line(px, py, x, y, thickness, value, opacity);
      px = x;
      py = y;
    }
  }
  void rectangle(double x0, double y0, double x1, double y1, float value) {
    for_box(x0, y0, x1, y1, [&](int x, int y, double, double) { blend(x, y, value, 1.0f); });
  }

  template <typename F>
  void for_box(double u0, double w0, double u1, double w1, F&& f) {
    const int x0 = std::max(0, static_cast<int>(std::floor(u0 * size)));
    const int y0 = std::max(0, static_cast<int>(std::floor(w0 * size)));
    const int x1 = std::min(size - 1, static_cast<int>(std::ceil(u1 * size)));
    const int y1 = std::min(size - 1, static_cast<int>(std::ceil(w1 * size)));
    for (int y = y0; y <= y1; ++y)
      for (int x = x0; x <= x1; ++x) f(x, y, (x + 0.5) / size, (y + 0.5) / size);
  }
  void blend(int x, int y, float value, float alpha) {
    float& p = v[y * size + x];
    p += (value - p) * alpha;
  }
};

// Per-study anatomy: everything a finding needs to know where to draw.
struct Anatomy {
  double cx, cy, scale;
  double lung_dx, lung_rx, lung_ry, lung_cy;
  double heart_rx, heart_ry, heart_cx, heart_cy;
  double diaphragm_y;
  float lung_value, soft_tissue, bone;
  double gamma, noise;
  // Centre x of the lung on the patient's `side` (PA: patient's right on the image left).
  double lung_x(Side side) const { return side == Side::right ? cx - lung_dx : cx + lung_dx; }
  double outer_sign(Side side) const { return side == Side::right ? -1.0 : 1.0; }
  double zone_y(Location location) const {
    return location == Location::upper    ? lung_cy - 0.55 * lung_ry
           : location == Location::middle ? lung_cy
                                          : lung_cy + 0.5 * lung_ry;
  }
};

Anatomy draw_anatomy(const std::vector<Finding>& findings, Rng& rng) {
  Anatomy a{};
  a.scale = uniform(rng, 0.88, 1.04);
  a.cx = 0.5 + uniform(rng, -0.03, 0.03);
  a.cy = 0.5 + uniform(rng, -0.03, 0.03);
  a.lung_dx = 0.17 * a.scale;
  a.lung_rx = 0.135 * a.scale * uniform(rng, 0.93, 1.07);
  a.lung_ry = 0.29 * a.scale * uniform(rng, 0.95, 1.05);
  a.lung_cy = a.cy - 0.03 * a.scale;
  a.heart_rx = 0.145 * a.scale * uniform(rng, 0.92, 1.05);
  a.heart_ry = 0.125 * a.scale;
  a.heart_cx = a.cx + 0.04 * a.scale;
  a.heart_cy = a.cy + 0.12 * a.scale;
  a.lung_value = static_cast<float>(uniform(rng, 0.08, 0.16));
  a.soft_tissue = static_cast<float>(uniform(rng, 0.38, 0.5));
  a.bone = static_cast<float>(uniform(rng, 0.7, 0.85));
  a.gamma = uniform(rng, 0.8, 1.25);
  a.noise = uniform(rng, 0.01, 0.035);
  for (const auto& f : findings) {
    if (f.type == FindingType::cardiomegaly)
      a.heart_rx *= f.severity == Severity::mild       ? 1.3
                    : f.severity == Severity::moderate ? 1.45
                                                       : 1.6;
    if (f.type == FindingType::hyperinflation) {
      a.lung_ry *= 1.15;
      a.lung_cy += 0.03;
      a.heart_rx *= 0.85;
    }
  }
  a.diaphragm_y = a.lung_cy + a.lung_ry * 0.92;
  return a;
}

void finish(const Canvas& canvas, const Anatomy& a, Rng& rng, Image& out) {
  std::normal_distribution<double> noise(0.0, a.noise);
  out = Image::blank(canvas.size, canvas.size, 1);
  for (size_t i = 0; i < canvas.v.size(); ++i) {
    const double value = std::clamp(static_cast<double>(canvas.v[i]), 0.0, 1.0);
    const double shaped = std::pow(value, a.gamma) + noise(rng);
    out.pixels[i] = static_cast<uint8_t>(std::lround(std::clamp(shaped, 0.0, 1.0) * 255.0));
  }
}

Image render_frontal(const std::vector<Finding>& findings, const Anatomy& a, int size, Rng& rng) {
  Canvas c(size, 0.03f);
  const double s = a.scale;
  const bool flat_diaphragm = std::any_of(findings.begin(), findings.end(), [](const Finding& f) {
    return f.type == FindingType::hyperinflation;
  });
  c.ellipse(a.cx, 0.02, 0.1 * s, 0.2, a.soft_tissue, 0.03);               // neck
  c.ellipse(a.cx, a.cy + 0.06, 0.46 * s, 0.52 * s, a.soft_tissue, 0.04);  // torso
  for (Side side : {Side::right, Side::left}) {                           // lungs
    c.ellipse(a.lung_x(side), a.lung_cy, a.lung_rx, a.lung_ry, a.lung_value, 0.03);
    c.ellipse(a.lung_x(side) + a.outer_sign(side) * 0.02 * s, a.lung_cy + 0.12 * s,
              a.lung_rx * 1.05, a.lung_ry * 0.6, a.lung_value, 0.03);
  }
  // Vessels fanning out from the hila.
  for (Side side : {Side::right, Side::left}) {
    const double hx = a.lung_x(side) - a.outer_sign(side) * 0.06 * s, hy = a.lung_cy + 0.02;
    for (int i = 0; i < 6; ++i) {
      const double angle = uniform(rng, -1.2, 1.2) + (side == Side::right ? M_PI : 0.0);
      const double length = uniform(rng, 0.06, 0.14) * s;
      c.line(hx, hy, hx + std::cos(angle) * length, hy + std::sin(angle) * length, 0.006,
             a.lung_value + 0.15f, 0.6f);
    }
  }
  // Diaphragm domes (flattened when hyperinflated), the right one a little higher.
  for (Side side : {Side::right, Side::left}) {
    const double dome_y = a.diaphragm_y + (side == Side::right ? -0.015 : 0.0) + 0.1 * s;
    c.ellipse(a.lung_x(side), dome_y, a.lung_rx * 1.25, flat_diaphragm ? 0.07 * s : 0.11 * s,
              a.soft_tissue + 0.08f, 0.02);
  }
  c.ellipse(a.cx, a.diaphragm_y + 0.2, 0.45 * s, 0.14, a.soft_tissue + 0.08f, 0.03);
  // Mediastinum and heart (the heart extends to the patient's left, the image right).
  c.ellipse(a.cx, a.cy - 0.17 * s, 0.055 * s, 0.2 * s, a.soft_tissue + 0.12f, 0.02);
  c.ellipse(a.heart_cx, a.heart_cy, a.heart_rx, a.heart_ry, a.soft_tissue + 0.14f, 0.02);
  c.line(a.cx, 0.0, a.cx, a.diaphragm_y + 0.1, 0.035 * s, a.bone, 0.35f);  // spine through
  // Ribs: posterior arcs from the spine outwards and down, translucent bone.
  for (Side side : {Side::right, Side::left}) {
    const double sign = a.outer_sign(side);
    for (int i = 0; i < 9; ++i) {
      const double y0 = a.lung_cy - a.lung_ry * 0.95 + i * 0.062 * s;
      c.curve(a.cx + sign * 0.03, y0, a.cx + sign * 0.22 * s, y0 - 0.035 * s,
              a.cx + sign * 0.33 * s, y0 + 0.07 * s, 0.011 * s, a.bone, 0.2f);
    }
    c.line(a.cx + sign * 0.03, a.lung_cy - a.lung_ry * 0.95, a.cx + sign * 0.28 * s,
           a.lung_cy - a.lung_ry * 1.1, 0.018 * s, a.bone, 0.55f);  // clavicle
  }

  for (const auto& f : findings) {
    const double lx = a.lung_x(f.side), sign = a.outer_sign(f.side);
    switch (f.type) {
      case FindingType::widened_mediastinum:
        c.ellipse(a.cx, a.cy - 0.15 * s, 0.1 * s, 0.19 * s, a.soft_tissue + 0.14f, 0.02);
        break;
      case FindingType::pleural_effusion: {
        const double height = f.size == Size::small ? 0.18 : f.size == Size::moderate ? 0.32 : 0.5;
        for (Side side : {Side::right, Side::left}) {
          if (f.side != Side::bilateral && f.side != side) continue;
          const double x = a.lung_x(side);
          const double top = a.diaphragm_y - height * a.lung_ry * 1.2;
          // Dense fluid layering at the base with a meniscus rising laterally.
          c.ellipse(x, a.diaphragm_y + 0.02, a.lung_rx * 1.1, a.diaphragm_y + 0.02 - top,
                    a.soft_tissue + 0.1f, 0.03);
          c.ellipse(x + a.outer_sign(side) * a.lung_rx * 0.8, top + 0.02, 0.03 * s, 0.08 * s,
                    a.soft_tissue + 0.06f, 0.03, 0.7f);
        }
        break;
      }
      case FindingType::pneumothorax: {
        const double width = f.size == Size::small ? 0.25 : f.size == Size::moderate ? 0.45 : 0.7;
        // Black crescent without lung markings at the apex and lateral margin, with a thin
        // visceral pleural line.
        const double rim_x = lx + sign * a.lung_rx * (1.0 - width);
        c.ellipse(lx + sign * a.lung_rx * (1.0 - width / 2) * 0.6, a.lung_cy - a.lung_ry * 0.35,
                  a.lung_rx * width * 0.75, a.lung_ry * 0.7, 0.0f, 0.01);
        c.curve(rim_x, a.lung_cy - a.lung_ry * 0.95, rim_x - sign * 0.02, a.lung_cy - 0.1 * s,
                rim_x + sign * 0.01, a.lung_cy + a.lung_ry * 0.3, 0.004, a.lung_value + 0.35f);
        break;
      }
      case FindingType::lobar_opacity:
        c.glow(lx, a.zone_y(f.location), 0.05 * s, 0.06 * s, 0.22f);
        c.glow(lx + sign * 0.03, a.zone_y(f.location) + 0.02, 0.03 * s, 0.03 * s, 0.1f);
        break;
      case FindingType::consolidation:
        c.ellipse(lx, a.zone_y(f.location), a.lung_rx * 0.75, a.lung_ry * 0.28,
                  a.soft_tissue + 0.05f, 0.04, 0.85f);
        for (int i = 0; i < 3; ++i)  // air bronchograms
          c.line(lx - sign * 0.04, a.zone_y(f.location), lx + sign * 0.05,
                 a.zone_y(f.location) + (i - 1) * 0.02, 0.006, a.lung_value, 0.8f);
        break;
      case FindingType::nodule: {
        const double radius = (f.size == Size::small ? 0.014 : 0.026) * s;
        c.ellipse(lx + sign * 0.02, a.zone_y(f.location), radius, radius, a.bone - 0.05f, 0.004);
        break;
      }
      case FindingType::atelectasis: {
        const double thickness = f.severity == Severity::mild ? 0.012 : 0.022;
        c.line(lx - 0.08 * s, a.diaphragm_y - 0.08 * s, lx + 0.08 * s, a.diaphragm_y - 0.06 * s,
               thickness * s, a.soft_tissue + 0.1f, 0.9f);
        c.glow(lx, a.diaphragm_y - 0.03, 0.06 * s, 0.03 * s, 0.12f);
        break;
      }
      case FindingType::pulmonary_edema: {
        const float amount = f.severity == Severity::mild       ? 0.12f
                             : f.severity == Severity::moderate ? 0.2f
                                                                : 0.3f;
        for (Side side : {Side::right, Side::left}) {
          const double x = a.lung_x(side) - a.outer_sign(side) * 0.04 * s;
          c.glow(x, a.lung_cy + 0.02, 0.07 * s, 0.11 * s, amount);  // perihilar haze
          for (int i = 0; i < 4; ++i) {  // Kerley B lines at the periphery
            const double y = a.diaphragm_y - 0.03 - i * 0.02;
            const double edge = a.lung_x(side) + a.outer_sign(side) * a.lung_rx * 0.95;
            c.line(edge, y, edge - a.outer_sign(side) * 0.03, y, 0.004, a.lung_value + 0.3f, 0.8f);
          }
        }
        break;
      }
      case FindingType::pleural_thickening:
        c.ellipse(lx, a.lung_cy - a.lung_ry * 0.93, a.lung_rx * 0.7, 0.03 * s,
                  a.soft_tissue + 0.12f, 0.01);
        break;
      case FindingType::rib_fracture: {
        const double y0 = a.lung_cy - a.lung_ry * 0.95 + 4 * 0.062 * s;
        const double x = a.cx + sign * 0.3 * s, y = y0 + 0.045 * s;
        c.line(x - 0.008, y - 0.02, x + 0.008, y + 0.02, 0.008, a.lung_value, 0.9f);  // gap
        if (f.severity == Severity::mild)
          c.ellipse(x, y, 0.02 * s, 0.015 * s, a.bone, 0.005, 0.8f);  // callus
        else
          c.line(x + 0.01, y - 0.02, x + 0.02, y + 0.01, 0.005, a.bone, 0.9f);  // displaced end
        break;
      }
      case FindingType::central_line:
        c.curve(a.cx + sign * 0.2 * s, a.lung_cy - a.lung_ry * 1.1, a.cx + sign * 0.06 * s,
                a.lung_cy - a.lung_ry * 0.9, a.cx + sign * 0.015, a.cy - 0.02, 0.007, 0.95f);
        break;
      case FindingType::pacemaker: {
        const double gx = a.cx + sign * 0.25 * s, gy = a.lung_cy - a.lung_ry * 0.8;
        c.rectangle(gx - 0.045 * s, gy - 0.03 * s, gx + 0.045 * s, gy + 0.03 * s, 0.97f);
        c.curve(gx, gy, a.cx, a.lung_cy - 0.05, a.heart_cx + 0.02, a.heart_cy + 0.03, 0.006, 0.95f);
        break;
      }
      case FindingType::hiatal_hernia: {
        const double r = (f.size == Size::small      ? 0.035
                          : f.size == Size::moderate ? 0.05
                                                     : 0.07) *
                         s;
        const double hy = a.heart_cy + 0.02;
        c.ellipse(a.cx + 0.01, hy, r * 1.2, r, a.soft_tissue + 0.2f, 0.01);
        c.ellipse(a.cx + 0.01, hy - r * 0.45, r * 1.0, r * 0.45, a.lung_value + 0.05f,
                  0.005);  // air
        break;
      }
      case FindingType::cardiomegaly:
      case FindingType::hyperinflation:
        break;  // in the anatomy
    }
  }
  Image image;
  finish(c, a, rng, image);
  return image;
}

Image render_lateral(const std::vector<Finding>& findings, const Anatomy& a, int size, Rng& rng) {
  // Anterior on the image left, posterior (spine) on the right.
  Canvas c(size, 0.03f);
  const double s = a.scale;
  const double cx = a.cx, ly = a.lung_cy;
  c.ellipse(cx, a.cy + 0.05, 0.38 * s, 0.52 * s, a.soft_tissue, 0.04);
  c.ellipse(cx + 0.02, ly, 0.26 * s, a.lung_ry * 1.02, a.lung_value + 0.06f, 0.04);
  const double heart_rx = 0.12 * s * (a.heart_rx / (0.145 * s));
  c.ellipse(cx - 0.1 * s, a.heart_cy, heart_rx, 0.12 * s, a.soft_tissue + 0.1f, 0.03);
  c.ellipse(cx, a.diaphragm_y + 0.12 * s, 0.3 * s, 0.14 * s, a.soft_tissue + 0.08f, 0.03);
  for (int i = 0; i < 10; ++i) {  // vertebral bodies
    const double y = 0.12 + i * 0.075 * s;
    c.rectangle(cx + 0.27 * s, y, cx + 0.33 * s, y + 0.055 * s, a.bone - 0.1f);
  }
  c.line(cx - 0.33 * s, ly - 0.25 * s, cx - 0.31 * s, ly + 0.25 * s, 0.015, a.bone,
         0.5f);  // sternum
  for (const auto& f : findings) {
    switch (f.type) {
      case FindingType::pleural_effusion:
        c.ellipse(cx + 0.2 * s, a.diaphragm_y, 0.09 * s,
                  f.size == Size::small      ? 0.05
                  : f.size == Size::moderate ? 0.08
                                             : 0.12,
                  a.soft_tissue + 0.08f, 0.03);
        break;
      case FindingType::pneumothorax:
        c.ellipse(cx + 0.02, ly - a.lung_ry * 0.75, 0.12 * s, 0.06 * s, 0.0f, 0.02, 0.7f);
        break;
      case FindingType::lobar_opacity:
        c.glow(cx + 0.05, a.zone_y(f.location), 0.06 * s, 0.05 * s, 0.2f);
        break;
      case FindingType::consolidation:
        c.ellipse(cx + 0.03, a.zone_y(f.location), 0.13 * s, 0.07 * s, a.soft_tissue + 0.04f, 0.04,
                  0.85f);
        break;
      case FindingType::nodule: {
        const double r = (f.size == Size::small ? 0.014 : 0.026) * s;
        c.ellipse(cx + 0.08, a.zone_y(f.location), r, r, a.bone - 0.05f, 0.004);
        break;
      }
      case FindingType::atelectasis:
        c.line(cx - 0.05, a.diaphragm_y - 0.05, cx + 0.15, a.diaphragm_y - 0.07, 0.015 * s,
               a.soft_tissue + 0.1f, 0.9f);
        break;
      case FindingType::pulmonary_edema:
        c.glow(cx, ly + 0.03, 0.1 * s, 0.12 * s,
               f.severity == Severity::mild       ? 0.1f
               : f.severity == Severity::moderate ? 0.17f
                                                  : 0.25f);
        break;
      case FindingType::widened_mediastinum:
        c.ellipse(cx - 0.08 * s, ly - 0.12 * s, 0.09 * s, 0.12 * s, a.soft_tissue + 0.1f, 0.03);
        break;
      case FindingType::pleural_thickening:
        c.ellipse(cx + 0.02, ly - a.lung_ry * 0.95, 0.12 * s, 0.025 * s, a.soft_tissue + 0.1f,
                  0.01);
        break;
      case FindingType::central_line:
        c.curve(cx - 0.02, 0.05, cx - 0.06, ly - 0.2, cx - 0.08 * s, a.cy - 0.02, 0.007, 0.95f);
        break;
      case FindingType::pacemaker:
        c.rectangle(cx - 0.37 * s, ly - a.lung_ry * 0.8, cx - 0.3 * s, ly - a.lung_ry * 0.65,
                    0.97f);
        c.curve(cx - 0.33 * s, ly - a.lung_ry * 0.7, cx - 0.1, ly, cx - 0.1 * s, a.heart_cy + 0.05,
                0.006, 0.95f);
        break;
      case FindingType::hiatal_hernia: {
        const double r = (f.size == Size::small      ? 0.035
                          : f.size == Size::moderate ? 0.05
                                                     : 0.07) *
                         s;
        c.ellipse(cx + 0.12, a.diaphragm_y - 0.02, r * 1.2, r, a.soft_tissue + 0.2f, 0.01);
        c.ellipse(cx + 0.12, a.diaphragm_y - 0.02 - r * 0.45, r, r * 0.45, a.lung_value + 0.05f,
                  0.005);
        break;
      }
      case FindingType::cardiomegaly:
      case FindingType::hyperinflation:
      case FindingType::rib_fracture:  // not seen on the lateral
        break;
    }
  }
  Image image;
  finish(c, a, rng, image);
  return image;
}

std::vector<Finding> draw_findings(const SyntheticOptions& options, Rng& rng) {
  std::vector<Finding> findings;
  if (uniform(rng, 0, 1) < options.normal_fraction) return findings;
  // 1 finding most often, then 2, then 3 (60/30/10), capped by max_findings.
  const double r = uniform(rng, 0, 1);
  const int count = std::min(options.max_findings, r < 0.6 ? 1 : r < 0.9 ? 2 : 3);
  std::vector<int> types(kFindingTypes);
  for (int i = 0; i < kFindingTypes; ++i) types[i] = i;
  for (int i = 0; i < count; ++i) {
    const int j = i + pick(rng, kFindingTypes - i);
    std::swap(types[i], types[j]);
    findings.push_back(draw_finding(static_cast<FindingType>(types[i]), rng));
  }
  std::sort(findings.begin(), findings.end(),
            [](const Finding& x, const Finding& y) { return x.type < y.type; });
  return findings;
}

}  // namespace

SyntheticStudy generate_study(const SyntheticOptions& options, int index, bool render_images) {
  options.validate();
  if (index < 0 || index >= options.studies)
    throw std::out_of_range("synthetic study index " + std::to_string(index) + " outside 0.." +
                            std::to_string(options.studies - 1));
  SyntheticStudy out;
  out.study.id = fmt::format("synth_{:05}", index);
  out.study.image_paths = {out.study.id + "/0.png", out.study.id + "/1.png"};
  const int val = static_cast<int>(std::lround(options.studies * options.val_fraction));
  const int test = static_cast<int>(std::lround(options.studies * options.test_fraction));
  const int train = options.studies - val - test;
  out.study.split = index < train ? "train" : index < train + val ? "val" : "test";

  // Separate streams for content and pixels: rendering options never change the findings.
  Rng rng(sample_seed(options.seed, -1, static_cast<uint64_t>(index)));
  out.findings = draw_findings(options, rng);
  out.chexpert = chexpert_labels(out.findings);
  Writer writer{rng, pick(rng, 4)};
  out.study.report = write_report(out.findings, writer);
  if (render_images) {
    Rng pixels(sample_seed(options.seed, -2, static_cast<uint64_t>(index)));
    const Anatomy anatomy = draw_anatomy(out.findings, pixels);
    out.frontal = render_frontal(out.findings, anatomy, options.image_size, pixels);
    out.lateral = render_lateral(out.findings, anatomy, options.image_size, pixels);
  }
  return out;
}

std::vector<SyntheticStudy> generate_synthetic(const SyntheticOptions& options,
                                               bool render_images) {
  options.validate();
  std::vector<SyntheticStudy> studies;
  studies.reserve(static_cast<size_t>(options.studies));
  for (int i = 0; i < options.studies; ++i)
    studies.push_back(generate_study(options, i, render_images));
  return studies;
}

std::vector<Study> studies_of_split(const std::vector<SyntheticStudy>& studies,
                                    const std::string& split) {
  std::vector<Study> out;
  for (const auto& s : studies)
    if (s.study.split == split) out.push_back(s.study);
  return out;
}

std::vector<std::vector<Image>> images_of_split(const std::vector<SyntheticStudy>& studies,
                                                const std::string& split) {
  std::vector<std::vector<Image>> out;
  for (const auto& s : studies)
    if (s.study.split == split) {
      if (s.frontal.pixels.empty())
        throw std::invalid_argument("images_of_split: study " + s.study.id +
                                    " was generated without images (render_images = false)");
      out.push_back({s.frontal, s.lateral});
    }
  return out;
}

Annotation to_annotation(const std::vector<SyntheticStudy>& studies) {
  Annotation annotation;
  annotation.path = "<synthetic>";
  annotation.dataset = Dataset::iu_xray;
  annotation.train = studies_of_split(studies, "train");
  annotation.val = studies_of_split(studies, "val");
  annotation.test = studies_of_split(studies, "test");
  return annotation;
}

std::map<std::string, std::vector<std::vector<Image>>> images_by_split(
    const std::vector<SyntheticStudy>& studies) {
  std::map<std::string, std::vector<std::vector<Image>>> images;
  for (const char* split : {"train", "val", "test"})
    images[split] = images_of_split(studies, split);
  return images;
}

void write_synthetic(const std::vector<SyntheticStudy>& studies, const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code error;
  fs::create_directories(fs::path(dir) / "images", error);
  if (error) throw std::runtime_error("cannot create '" + dir + "/images': " + error.message());
  std::vector<Study> annotation;
  nlohmann::ordered_json labels;
  labels["chexpert_observations"] = kChexpertObservations;
  labels["label_values"] = "1 positive, 0 negative or absent";
  labels["studies"] = nlohmann::ordered_json::array();
  std::ofstream csv(fs::path(dir) / "labels.csv");
  csv << "id,split";
  for (const char* name : kChexpertObservations) csv << "," << name;
  csv << ",findings\n";
  for (const auto& s : studies) {
    annotation.push_back(s.study);
    if (s.frontal.pixels.empty())
      throw std::invalid_argument("write_synthetic: study " + s.study.id + " has no images");
    fs::create_directories(fs::path(dir) / "images" / s.study.id);
    write_png(s.frontal, (fs::path(dir) / "images" / s.study.image_paths[0]).string());
    write_png(s.lateral, (fs::path(dir) / "images" / s.study.image_paths[1]).string());
    nlohmann::ordered_json entry;
    entry["id"] = s.study.id;
    entry["split"] = s.study.split;
    entry["findings"] = nlohmann::ordered_json::array();
    std::string finding_list;
    for (const auto& f : s.findings) {
      nlohmann::ordered_json j;
      j["type"] = finding_type_name(f.type);
      if (f.side != Side::none) j["side"] = side_name(f.side);
      if (f.size != Size::none) j["size"] = size_name(f.size);
      if (f.location != Location::none) j["location"] = location_name(f.location);
      if (f.severity != Severity::none) j["severity"] = severity_name(f.severity);
      entry["findings"].push_back(j);
      finding_list += (finding_list.empty() ? "" : ";") + describe(f);
    }
    nlohmann::ordered_json chexpert;
    csv << s.study.id << "," << s.study.split;
    for (size_t i = 0; i < kChexpertObservations.size(); ++i) {
      chexpert[kChexpertObservations[i]] = s.chexpert[i];
      csv << "," << s.chexpert[i];
    }
    csv << ",\"" << finding_list << "\"\n";
    entry["chexpert"] = chexpert;
    labels["studies"].push_back(entry);
  }
  save_annotation(annotation, (fs::path(dir) / "annotation.json").string());
  std::ofstream labels_file(fs::path(dir) / "labels.json");
  labels_file << labels.dump(1) << "\n";
  if (!labels_file || !csv) throw std::runtime_error("writing labels into '" + dir + "' failed");
}

// ---------------------------------------------------------------- contact sheet and font

namespace {
// 5x7 glyphs, one string of 35 cells per character ('#' = on).
const std::map<char, const char*>& font() {
  static const std::map<char, const char*> glyphs = {
      {'A', " ### #   ##   #######   ##   ##   #"}, {'B', "#### #   ##   ##### #   ##   ##### "},
      {'C', " ### #   ##    #    #    #   # ### "}, {'D', "#### #   ##   ##   ##   ##   ##### "},
      {'E', "######    #    #### #    #    #####"}, {'F', "######    #    #### #    #    #    "},
      {'G', " ### #   ##    # ####   ##   # ####"}, {'H', "#   ##   ##   #######   ##   ##   #"},
      {'I', " ###   #    #    #    #    #   ### "}, {'J', "  ###   #    #    #    ##  #  ##   "},
      {'K', "#   ##  # # #  ##   # #  #  # #   #"}, {'L', "#    #    #    #    #    #    #####"},
      {'M', "#   ### ### # ## # ##   ##   ##   #"}, {'N', "#   ##   ###  ## # ##  ###   ##   #"},
      {'O', " ### #   ##   ##   ##   ##   # ### "}, {'P', "#### #   ##   ##### #    #    #    "},
      {'Q', " ### #   ##   ##   ## # ##  #  ## #"}, {'R', "#### #   ##   ##### # #  #  # #   #"},
      {'S', " #####    #     ###     #    ##### "}, {'T', "#####  #    #    #    #    #    #  "},
      {'U', "#   ##   ##   ##   ##   ##   # ### "}, {'V', "#   ##   ##   ##   ##   # # #   #  "},
      {'W', "#   ##   ##   ## # ## # ## # # # # "}, {'X', "#   ##   # # #   #   # # #   ##   #"},
      {'Y', "#   ##   # # #   #    #    #    #  "}, {'Z', "#####    #   #   #   #   #    #####"},
      {'0', " ### #   ##  ### # ###  ##   # ### "}, {'1', "  #   ##    #    #    #    #   ### "},
      {'2', " ### #   #    #   #   #   #   #####"}, {'3', "#####   #   #     #     ##   # ### "},
      {'4', "   #   ##  # # #  # #####   #    # "}, {'5', "######    ####     #    ##   # ### "},
      {'6', "  ##  #   #    #### #   ##   # ### "}, {'7', "#####    #   #   #   #    #    #   "},
      {'8', " ### #   ##   # ### #   ##   # ### "}, {'9', " ### #   ##   # ####    #   #  ##  "},
      {'.', "                          ##   ##  "}, {',', "                     ##    #   #   "},
      {'-', "               #####               "}, {':', "      ##   ##        ##   ##       "},
      {'/', "    #    #   #   #   #   #    #    "}, {'(', "   #   #   #    #    #     #     # "},
      {')', " #     #     #    #    #   #   #   "}, {'_', "                              #####"},
      {'=', "          #####     #####          "}, {'?', " ### #   #    #   #   #         #  "},
      {' ', "                                   "}};
  return glyphs;
}
}  // namespace

void draw_text(Image& image, int x, int y, const std::string& text, uint8_t value, int scale) {
  const auto& glyphs = font();
  for (char raw : text) {
    char ch = (raw >= 'a' && raw <= 'z') ? static_cast<char>(raw - 32) : raw;
    auto it = glyphs.find(ch);
    const char* glyph = it == glyphs.end() ? glyphs.at('?') : it->second;
    for (int row = 0; row < 7; ++row)
      for (int col = 0; col < 5; ++col) {
        if (glyph[row * 5 + col] != '#') continue;
        for (int dy = 0; dy < scale; ++dy)
          for (int dx = 0; dx < scale; ++dx) {
            const int px = x + col * scale + dx, py = y + row * scale + dy;
            if (px < 0 || py < 0 || px >= image.width || py >= image.height) continue;
            for (int c = 0; c < image.channels; ++c) image.at(px, py, c) = value;
          }
      }
    x += 6 * scale;
  }
}

Image contact_sheet(const std::vector<SyntheticStudy>& studies, int columns) {
  if (studies.empty()) throw std::invalid_argument("contact_sheet: no studies");
  if (columns < 1) throw std::invalid_argument("contact_sheet: columns must be >= 1");
  const int image_size = studies[0].frontal.width;
  const int margin = 6, line_height = 9;
  const int cell_width = 2 * image_size + margin;
  const int chars_per_line = std::max(10, cell_width / 6);
  // Word-wrap every report first to size the rows.
  std::vector<std::vector<std::string>> texts;
  size_t most_lines = 0;
  for (const auto& s : studies) {
    std::vector<std::string> lines;
    std::string heading = s.study.id + " " + s.study.split;
    lines.push_back(heading);
    std::string summary;
    for (const auto& f : s.findings)
      summary += (summary.empty() ? "" : ", ") + std::string(finding_type_name(f.type));
    lines.push_back("findings: " + (summary.empty() ? std::string("none") : summary));
    std::string line, word;
    std::string report = s.study.report + " ";
    for (char ch : report) {
      if (ch != ' ') {
        word += ch;
        continue;
      }
      if (!line.empty() && static_cast<int>(line.size() + 1 + word.size()) > chars_per_line) {
        lines.push_back(line);
        line.clear();
      }
      line += (line.empty() ? "" : " ") + word;
      word.clear();
    }
    if (!line.empty()) lines.push_back(line);
    most_lines = std::max(most_lines, lines.size());
    texts.push_back(std::move(lines));
  }
  const int cell_height = image_size + margin + static_cast<int>(most_lines) * line_height + margin;
  const int rows = (static_cast<int>(studies.size()) + columns - 1) / columns;
  Image sheet = Image::blank(columns * (cell_width + margin) + margin,
                             rows * (cell_height + margin) + margin, 1, 24);
  for (size_t i = 0; i < studies.size(); ++i) {
    const int x0 = margin + static_cast<int>(i % columns) * (cell_width + margin);
    const int y0 = margin + static_cast<int>(i / columns) * (cell_height + margin);
    const Image* views[2] = {&studies[i].frontal, &studies[i].lateral};
    for (int v = 0; v < 2; ++v)
      for (int y = 0; y < views[v]->height && y0 + y < sheet.height; ++y)
        for (int x = 0; x < views[v]->width; ++x)
          sheet.at(x0 + v * (image_size + margin) + x, y0 + y) = views[v]->at(x, y, 0);
    for (size_t l = 0; l < texts[i].size(); ++l)
      draw_text(sheet, x0, y0 + image_size + margin + static_cast<int>(l) * line_height,
                texts[i][l], l < 2 ? 160 : 235);
  }
  return sheet;
}

}  // namespace ihn_toolkit::data
