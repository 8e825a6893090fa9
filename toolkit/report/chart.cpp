// SVG by hand: the charts are a few dozen elements each, and writing them directly keeps the
// report free of a plotting dependency (gnuplot stays optional for the PNGs).
#include "report/chart.hpp"

#include <fmt/core.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <set>

namespace ihn_toolkit::report {

namespace {

// Okabe & Ito's palette (distinguishable with the common colour-vision deficiencies).
constexpr std::array<const char*, 6> kColours = {"#0072B2", "#D55E00", "#009E73",
                                                 "#CC79A7", "#E69F00", "#56B4E9"};
constexpr std::array<const char*, 4> kDashes = {"", "7 3", "2 3", "9 3 2 3"};

const char* colour(int style) {
  return kColours[static_cast<size_t>(style) % kColours.size()];
}
const char* dash(int style) {
  return kDashes[static_cast<size_t>(style) % kDashes.size()];
}

/// A marker of shape `style` (circle, square, triangle, diamond, cross, plus) centred on (x, y).
std::string marker(int style, double x, double y, const char* fill) {
  const double r = 4;
  switch (style % 6) {
    case 0:
      return fmt::format(R"(<circle cx="{:.1f}" cy="{:.1f}" r="{}" fill="{}"/>)", x, y, r, fill);
    case 1:
      return fmt::format(R"(<rect x="{:.1f}" y="{:.1f}" width="{}" height="{}" fill="{}"/>)", x - r,
                         y - r, 2 * r, 2 * r, fill);
    case 2:
      return fmt::format(R"(<path d="M{:.1f} {:.1f}L{:.1f} {:.1f}L{:.1f} {:.1f}Z" fill="{}"/>)", x,
                         y - r - 1, x + r + 1, y + r, x - r - 1, y + r, fill);
    case 3:
      return fmt::format(
          R"(<path d="M{:.1f} {:.1f}L{:.1f} {:.1f}L{:.1f} {:.1f}L{:.1f} {:.1f}Z" fill="{}"/>)", x,
          y - r - 1, x + r + 1, y, x, y + r + 1, x - r - 1, y, fill);
    case 4:
      return fmt::format(
          R"(<path d="M{:.1f} {:.1f}L{:.1f} {:.1f}M{:.1f} {:.1f}L{:.1f} {:.1f}" stroke="{}" stroke-width="2.5"/>)",
          x - r, y - r, x + r, y + r, x - r, y + r, x + r, y - r, fill);
    default:
      return fmt::format(
          R"(<path d="M{:.1f} {:.1f}L{:.1f} {:.1f}M{:.1f} {:.1f}L{:.1f} {:.1f}" stroke="{}" stroke-width="2.5"/>)",
          x - r - 1, y, x + r + 1, y, x, y - r - 1, x, y + r + 1, fill);
  }
}

std::string format_tick(double v, double step) {
  const int decimals = step >= 1 ? 0 : static_cast<int>(std::ceil(-std::log10(step) - 1e-9));
  return fmt::format("{:.{}f}", v, std::clamp(decimals, 0, 6));
}

std::string svg_open(int width, int height, const std::string& title) {
  return fmt::format(
      R"(<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {0} {1}" width="{0}" height="{1}" role="img" aria-label="{2}" font-family="sans-serif" font-size="12"><title>{2}</title><rect width="{0}" height="{1}" fill="#fff"/><text x="{3}" y="18" font-size="14" font-weight="bold" text-anchor="middle">{2}</text>)",
      width, height, escape_xml(title), width / 2);
}

}  // namespace

std::string escape_xml(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  return out;
}

std::vector<double> nice_ticks(double lo, double hi, int target) {
  if (!(hi > lo)) hi = lo + 1;
  const double raw = (hi - lo) / std::max(target, 1);
  const double power = std::pow(10.0, std::floor(std::log10(raw)));
  double step = power;
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (m * power >= raw) {
      step = m * power;
      break;
    }
  // From the multiple of `step` at or below lo to the one at or above hi.
  const long first = static_cast<long>(std::floor(lo / step + 1e-9));
  const long last = std::max(first + 1, static_cast<long>(std::ceil(hi / step - 1e-9)));
  std::vector<double> ticks;
  for (long i = first; i <= last; ++i) ticks.push_back(static_cast<double>(i) * step);
  return ticks;
}

std::string render_svg(const LineChart& chart) {
  const int width = 640, height = 360;
  const double left = 64, right = 624, top = 52, bottom = 312;
  double x_lo = std::numeric_limits<double>::infinity(), x_hi = -x_lo, y_lo = x_lo, y_hi = -x_lo;
  for (const auto& s : chart.series)
    for (const auto& [x, y] : s.points) {
      if (!std::isfinite(x) || !std::isfinite(y)) continue;
      x_lo = std::min(x_lo, x), x_hi = std::max(x_hi, x);
      y_lo = std::min(y_lo, y), y_hi = std::max(y_hi, y);
    }
  std::string svg = svg_open(width, height, chart.title);
  if (!std::isfinite(x_lo)) {
    svg += fmt::format(R"(<text x="{}" y="{}" text-anchor="middle">no data</text></svg>)",
                       width / 2, height / 2);
    return svg;
  }
  const auto xt = nice_ticks(x_lo, x_hi), yt = nice_ticks(y_lo, y_hi);
  x_lo = xt.front(), x_hi = xt.back(), y_lo = yt.front(), y_hi = yt.back();
  auto px = [&](double x) { return left + (x - x_lo) / (x_hi - x_lo) * (right - left); };
  auto py = [&](double y) { return bottom - (y - y_lo) / (y_hi - y_lo) * (bottom - top); };
  for (double t : yt)
    svg += fmt::format(
        R"(<line x1="{0}" x2="{1}" y1="{2:.1f}" y2="{2:.1f}" stroke="#ddd"/><text x="{3}" y="{4:.1f}" text-anchor="end">{5}</text>)",
        left, right, py(t), left - 6, py(t) + 4, format_tick(t, yt[1] - yt[0]));
  for (double t : xt)
    svg += fmt::format(
        R"(<line x1="{0:.1f}" x2="{0:.1f}" y1="{1}" y2="{2}" stroke="#999"/><text x="{0:.1f}" y="{3}" text-anchor="middle">{4}</text>)",
        px(t), bottom, bottom + 5, bottom + 18, format_tick(t, xt[1] - xt[0]));
  svg += fmt::format(
      R"~(<rect x="{0}" y="{1}" width="{2}" height="{3}" fill="none" stroke="#333"/><text x="{4}" y="{5}" text-anchor="middle">{6}</text><text transform="translate(16 {7}) rotate(-90)" text-anchor="middle">{8}</text>)~",
      left, top, right - left, bottom - top, (left + right) / 2, height - 12,
      escape_xml(chart.x_label), (top + bottom) / 2, escape_xml(chart.y_label));
  std::vector<std::pair<std::string, int>> legend;
  for (const auto& s : chart.series) {
    if (std::none_of(legend.begin(), legend.end(),
                     [&](const auto& l) { return l.first == s.name; }))
      legend.emplace_back(s.name, s.style);
    std::string path, markers;
    // Markers on at most ~25 points per series, so long curves stay legible.
    const size_t every = std::max<size_t>(1, s.points.size() / 25);
    for (size_t i = 0; i < s.points.size(); ++i) {
      const auto [x, y] = s.points[i];
      if (!std::isfinite(x) || !std::isfinite(y)) continue;
      path += fmt::format("{}{:.1f} {:.1f}", path.empty() ? "M" : "L", px(x), py(y));
      if (i % every == 0 || i + 1 == s.points.size())
        markers += marker(s.style, px(x), py(y), colour(s.style));
    }
    svg += fmt::format(
        R"(<g><title>{}</title><path d="{}" fill="none" stroke="{}" stroke-width="1.8" stroke-dasharray="{}"/>{}</g>)",
        escape_xml(s.name), path, colour(s.style), dash(s.style), markers);
  }
  double lx = left;
  for (const auto& [name, style] : legend) {
    svg += fmt::format(
        R"(<line x1="{0:.1f}" x2="{1:.1f}" y1="38" y2="38" stroke="{2}" stroke-width="1.8" stroke-dasharray="{3}"/>{4}<text x="{5:.1f}" y="42">{6}</text>)",
        lx, lx + 28, colour(style), dash(style), marker(style, lx + 14, 38, colour(style)), lx + 34,
        escape_xml(name));
    lx += 44 + 7.0 * static_cast<double>(name.size());
  }
  return svg + "</svg>";
}

std::string render_svg(const BarChart& chart) {
  const size_t n_series = std::max<size_t>(1, chart.series_names.size());
  const double bar = 11, gap = 10, label_width = 200, left = label_width + 8, right = 560;
  const double top = 48, group_height = bar * static_cast<double>(n_series) + gap;
  const int width = 640;
  const int height =
      static_cast<int>(top + group_height * static_cast<double>(chart.groups.size()) + 40);
  std::string svg = svg_open(width, height, chart.title);
  // One fill pattern per series: solid, hatched, dotted, cross-hatched (readable in grey).
  svg += "<defs>";
  for (size_t s = 0; s < n_series; ++s) {
    const char* c = colour(static_cast<int>(s));
    std::string body;
    switch (s % 4) {
      case 0:
        body = fmt::format(R"(<rect width="6" height="6" fill="{}"/>)", c);
        break;
      case 1:
        body = fmt::format(
            R"(<rect width="6" height="6" fill="#fff"/><path d="M0 6L6 0M-1 1L1 -1M5 7L7 5" stroke="{}" stroke-width="2"/>)",
            c);
        break;
      case 2:
        body = fmt::format(
            R"(<rect width="6" height="6" fill="#fff"/><circle cx="3" cy="3" r="1.6" fill="{}"/>)",
            c);
        break;
      default:
        body = fmt::format(
            R"(<rect width="6" height="6" fill="#fff"/><path d="M0 3H6M3 0V6" stroke="{}" stroke-width="1.5"/>)",
            c);
    }
    svg += fmt::format(
        R"(<pattern id="bar-fill-{}" width="6" height="6" patternUnits="userSpaceOnUse">{}</pattern>)",
        s, body);
  }
  svg += "</defs>";
  const double max_value = chart.max_value > 0 ? chart.max_value : 1.0;
  auto px = [&](double v) { return left + std::clamp(v / max_value, 0.0, 1.0) * (right - left); };
  for (double t : nice_ticks(0, max_value))
    svg += fmt::format(
        R"(<line x1="{0:.1f}" x2="{0:.1f}" y1="{1}" y2="{2:.1f}" stroke="#ddd"/><text x="{0:.1f}" y="{3:.1f}" text-anchor="middle">{4}</text>)",
        px(t), top - 4, static_cast<double>(height) - 30, static_cast<double>(height) - 16,
        format_tick(t, 0.1));
  for (size_t g = 0; g < chart.groups.size(); ++g) {
    const double y0 = top + group_height * static_cast<double>(g);
    svg += fmt::format(R"(<text x="{}" y="{:.1f}" text-anchor="end">{}</text>)", label_width,
                       y0 + group_height / 2, escape_xml(chart.groups[g]));
    for (size_t s = 0; s < chart.series_names.size(); ++s) {
      const double v =
          g < chart.values.size() && s < chart.values[g].size() ? chart.values[g][s] : std::nan("");
      const double y = y0 + bar * static_cast<double>(s);
      if (!std::isfinite(v)) continue;
      svg += fmt::format(
          R"~(<rect x="{0}" y="{1:.1f}" width="{2:.1f}" height="{3}" fill="url(#bar-fill-{4})" stroke="{5}"><title>{6}, {7}: {8:.3f}</title></rect><text x="{9:.1f}" y="{10:.1f}" font-size="10">{8:.2f}</text>)~",
          left, y, px(v) - left, bar - 1, s, colour(static_cast<int>(s)),
          escape_xml(chart.groups[g]), escape_xml(chart.series_names[s]), v, px(v) + 3,
          y + bar - 2);
    }
  }
  double lx = left;
  for (size_t s = 0; s < chart.series_names.size(); ++s) {
    svg += fmt::format(
        R"~(<rect x="{0:.1f}" y="30" width="16" height="10" fill="url(#bar-fill-{1})" stroke="{2}"/><text x="{3:.1f}" y="39">{4}</text>)~",
        lx, s, colour(static_cast<int>(s)), lx + 20, escape_xml(chart.series_names[s]));
    lx += 34 + 7.0 * static_cast<double>(chart.series_names[s].size());
  }
  svg += fmt::format(R"(<text x="{:.1f}" y="{}" text-anchor="middle">{}</text>)",
                     (left + right) / 2, height - 2, escape_xml(chart.value_label));
  return svg + "</svg>";
}

}  // namespace ihn_toolkit::report
