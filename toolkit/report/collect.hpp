// `report.html` from what a folder holds: an `ihn compare` folder (compare.json and its runs),
// an `ihn evaluate` folder (evaluation.json) or an `ihn train` run folder (test.json). The
// charts are also written beside it as SVG files, for papers.
#pragma once

#include <stdexcept>
#include <string>
#include <vector>

namespace ihn_toolkit::report {

struct ReportError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct ReportFiles {
  std::string html;                 ///< DIR/report.html
  std::vector<std::string> charts;  ///< DIR/*.svg
  std::vector<std::string> notes;   ///< what could not be shown (e.g. an unreadable image)
};

/// Builds DIR/report.html (written atomically) and the chart files; throws ReportError naming
/// the file when DIR holds none of the three kinds of results or one of them is unreadable.
ReportFiles write_report(const std::string& dir);

/// RFC 4648 base64, for the images embedded as data: URIs.
std::string base64(const std::string& bytes);

}  // namespace ihn_toolkit::report
