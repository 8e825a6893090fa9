// report.html for the commands that end with results (train, evaluate, compare, report).
#pragma once

#include "command.hpp"
#include "report/collect.hpp"

#include <fmt/core.h>

#include <string>

namespace ihn::cli {

/// Writes DIR/report.html and its charts, prints where, and returns the page's path.
inline std::string write_html_report(const std::string& dir, const std::string& label = "",
                                     bool quiet = false) {
  try {
    const auto files = ihn_toolkit::report::write_report(dir);
    if (quiet) return files.html;
    for (const auto& note : files.notes) fmt::print("{}report: {}\n", label, note);
    fmt::print("{}report: {} (charts: {} SVG files beside it)\n", label, files.html,
               files.charts.size());
    return files.html;
  } catch (const ihn_toolkit::report::ReportError& e) {
    throw CommandError(e.what());
  }
}

}  // namespace ihn::cli
