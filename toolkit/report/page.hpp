// The HTML report as data (Page) and its rendering: one self-contained file with the results
// table, the charts (inline SVG) and a gallery of studies whose sentences carry the labeller's
// findings, marked against the reference. Nothing here reads files: see collect.hpp.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace ihn_toolkit::report {

/// One of the closest reports to a study's image, from the model's features.
struct Neighbour {
  std::string id;      ///< the study the report belongs to
  std::string report;  ///< its reference report
  double similarity = 0;
};

struct ArmOutput {
  std::string report;                 ///< the generated report
  std::vector<Neighbour> neighbours;  ///< closest reports to the image (may be empty)
  long own_rank = 0;                  ///< rank of the study's own report (1 = closest; 0 = unknown)
};

struct StudyCard {
  std::string id;
  std::vector<std::pair<std::string, std::string>> views;  ///< (name, data: URI of the image)
  std::string reference;
  std::vector<ArmOutput> arms;  ///< one per Page::arms
};

struct Page {
  std::string title, subtitle;
  std::vector<std::string> arms;  ///< "off", "paper", ... or one run's name
  std::string results_html;       ///< the results table (an HTML fragment)
  std::vector<std::pair<std::string, std::string>> charts;  ///< (file name, SVG)
  std::string gallery_note;  ///< which studies the gallery shows, from which run
  std::vector<StudyCard> studies;
  std::vector<std::pair<std::string, std::string>> about;  ///< command, versions, config
};

/// The whole page. Deterministic: the same Page gives the same bytes.
std::string render_html(const Page& page);

/// The sentences of a tokenised report ("a b . c d ." -> {"a b .", "c d ."}).
std::vector<std::string> sentences_of(const std::string& report);

}  // namespace ihn_toolkit::report
