// SVG charts for the HTML report and for papers: line charts of training curves and grouped
// bar charts of per-observation F1. Each series has a colour from a palette safe for colour
// blindness *and* its own marker shape and dash pattern, so a chart printed in grey still reads.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace ihn_toolkit::report {

struct Series {
  std::string name;  ///< legend entry; series with the same name share one entry
  int style = 0;     ///< colour, marker and dash: series of one arm share a style
  std::vector<std::pair<double, double>> points;  ///< (x, y), NaN y values are skipped
};

struct LineChart {
  std::string title, x_label, y_label;
  std::vector<Series> series;
};

struct BarChart {
  std::string title, value_label;
  std::vector<std::string> series_names;    ///< one bar per series in every group
  std::vector<std::string> groups;          ///< e.g. the 14 observations
  std::vector<std::vector<double>> values;  ///< values[group][series]
  double max_value = 1.0;
};

/// A standalone SVG document (also valid inline in HTML5).
std::string render_svg(const LineChart& chart);
std::string render_svg(const BarChart& chart);

/// "Nice" axis ticks covering [lo, hi]: 1, 2 or 5 times a power of ten, about `target` of them.
std::vector<double> nice_ticks(double lo, double hi, int target = 5);

/// Text safe inside HTML or SVG elements and attribute values.
std::string escape_xml(const std::string& text);

}  // namespace ihn_toolkit::report
