// The synthetic chest X-ray data set, the embedded default of the main job: generated from a
// seed, two views per study (frontal PA + lateral) with chest-like anatomy that varies per
// study (size, position, contrast, noise), 15 finding types drawn visibly with attributes
// (side, size, location, severity), reports in IU X-Ray findings style with paraphrases and
// de-identified `XXXX` tokens, and exact ground truth: the findings and the 14 CheXpert labels.
//
// About two thirds of the studies are normal, so many reports coincide — the setting hard
// negatives address. Positive findings are phrased plainly ("the heart is enlarged", "there is
// a small left pleural effusion") and negatives with standard negations ("no pneumothorax or
// pleural effusion", "the lungs are clear"), so a rule-based CheXpert-style labeller can
// reproduce the labels from the text alone; docs/data.md lists every phrase and its label.
//
// Frontal images follow the PA convention: the patient's right is on the image's left.
#pragma once

#include "data/annotation.hpp"
#include "data/image.hpp"

#include <ihn/eval/chexpert.hpp>

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace ihn_toolkit::data {

/// The 14 CheXpert observations, in CheXpert's order: the clinical-efficacy labeller's list,
/// so the ground truth and the labeller can never disagree on names or order.
inline constexpr const auto& kChexpertObservations = ihn::eval::kObservations;

enum class FindingType {
  cardiomegaly,         // Cardiomegaly
  widened_mediastinum,  // Enlarged Cardiomediastinum
  pleural_effusion,     // Pleural Effusion (side incl. bilateral, size)
  pneumothorax,         // Pneumothorax (side, size)
  lobar_opacity,        // Lung Opacity (side, lobe)
  consolidation,        // Consolidation (side, lobe)
  nodule,               // Lung Lesion (side, zone, size)
  atelectasis,          // Atelectasis (side, severity), basilar
  pulmonary_edema,      // Edema (severity)
  pleural_thickening,   // Pleural Other (side), apical
  rib_fracture,         // Fracture (side, healed/acute as severity)
  central_line,         // Support Devices (side)
  pacemaker,            // Support Devices (side)
  hyperinflation,       // no CheXpert label
  hiatal_hernia,        // no CheXpert label (size)
};
constexpr int kFindingTypes = 15;

enum class Side { none, right, left, bilateral };
enum class Size { none, small, moderate, large };
enum class Location { none, upper, middle, lower };
enum class Severity { none, mild, moderate, marked };

struct Finding {
  FindingType type;
  Side side = Side::none;
  Size size = Size::none;
  Location location = Location::none;  ///< lobe (opacity, consolidation) or zone (nodule)
  Severity severity = Severity::none;  ///< rib fracture: mild = healed, marked = acute
};

const char* finding_type_name(FindingType type);
const char* side_name(Side side);
const char* size_name(Size size);
const char* location_name(Location location);
const char* severity_name(Severity severity);
/// "pleural_effusion(side=left, size=small)"
std::string describe(const Finding& finding);

/// CheXpert labels implied by findings: 1 positive, 0 negative/absent, in kChexpertObservations
/// order. No Finding = 1 exactly when none of the 12 pathology labels (all but No Finding and
/// Support Devices) is positive; hyperinflation and hiatal hernia map to no label.
std::array<int, 14> chexpert_labels(const std::vector<Finding>& findings);

struct SyntheticOptions {
  int studies = 300;
  uint64_t seed = 0;
  int image_size = 128;  ///< square images, pixels per side
  double normal_fraction = 2.0 / 3.0;
  double val_fraction = 0.1;  ///< studies [train | val | test] in index order
  double test_fraction = 0.2;
  int max_findings = 3;   ///< per abnormal study (1 to max_findings, fewer more likely)
  void validate() const;  ///< throws std::invalid_argument naming the bad option
};

struct SyntheticStudy {
  Study study;  ///< id synth_00000..., report, image_paths {"<id>/0.png", "<id>/1.png"}, split
  std::vector<Finding> findings;
  std::array<int, 14> chexpert{};
  Image frontal;  ///< gray, image_size x image_size (empty when not rendered)
  Image lateral;
};

/// Study `index` of the data set: depends only on (options, index), so any subset can be
/// generated in any order or in parallel.
SyntheticStudy generate_study(const SyntheticOptions& options, int index,
                              bool render_images = true);
std::vector<SyntheticStudy> generate_synthetic(const SyntheticOptions& options,
                                               bool render_images = true);

/// Writes `dir/annotation.json` (R2Gen format), `dir/images/<id>/{0,1}.png`,
/// `dir/labels.json` (findings with attributes + CheXpert labels) and `dir/labels.csv`.
void write_synthetic(const std::vector<SyntheticStudy>& studies, const std::string& dir);

/// The studies as a loaded annotation (IU X-Ray, two views) and their in-memory images per
/// split, e.g. for make_r2gen_data(to_annotation(s), images_by_split(s)).
Annotation to_annotation(const std::vector<SyntheticStudy>& studies);
std::map<std::string, std::vector<std::vector<Image>>> images_by_split(
    const std::vector<SyntheticStudy>& studies);

/// Studies of one split and their in-memory images, ready for ReportDataset.
std::vector<Study> studies_of_split(const std::vector<SyntheticStudy>& studies,
                                    const std::string& split);
std::vector<std::vector<Image>> images_of_split(const std::vector<SyntheticStudy>& studies,
                                                const std::string& split);

/// A contact sheet: each study's two views with its id, findings and report rendered with a
/// built-in 5x7 bitmap font. Gray image.
Image contact_sheet(const std::vector<SyntheticStudy>& studies, int columns = 2);
/// Draws text (upper-cased; unknown characters as '?') at (x, y) with the 5x7 font.
void draw_text(Image& image, int x, int y, const std::string& text, uint8_t value = 255,
               int scale = 1);

}  // namespace ihn_toolkit::data
