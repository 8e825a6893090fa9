// Hardness schedules: how fast the negatives get harder.
//
// A schedule gives λ(t) in [0, 1], the weight that stays on the easy end, with t counted in
// epochs (from 1, as the authors count) or optimiser steps. The hardness is 1 − λ(t); in the
// paper mode it widens the trust region around each negative's initial peer, in the
// official-compatible mode it is the interpolation weight of the synthesised negative.
// docs/method.md has the equations.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iomanip>
#include <locale>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <variant>

namespace ihn {
inline namespace v0 {

/// What t counts.
enum class ScheduleUnit { epoch, step };

/// λ(t) = exp(−α t): the authors' choice (α = 0.01 per epoch).
struct ExponentialHardness {
  double alpha = 0.01;
  ScheduleUnit unit = ScheduleUnit::epoch;
  double lambda(double t) const { return std::exp(-alpha * t); }
};

/// λ(t) = max(0, 1 − t / ramp): hardness reaches 1 after `ramp` units.
struct LinearHardness {
  double ramp = 100.0;
  ScheduleUnit unit = ScheduleUnit::epoch;
  double lambda(double t) const { return std::max(0.0, 1.0 - t / ramp); }
};

/// λ(t) = (1 + cos(π min(t, ramp) / ramp)) / 2: slow start, slow finish.
struct CosineHardness {
  double ramp = 100.0;
  ScheduleUnit unit = ScheduleUnit::epoch;
  double lambda(double t) const {
    const double x = std::min(t, ramp) / ramp;
    return 0.5 * (1.0 + std::cos(3.14159265358979323846 * x));
  }
};

/// λ(t) = value for every t (hardness 1 − value throughout).
struct ConstantHardness {
  double value = 0.5;
  ScheduleUnit unit = ScheduleUnit::epoch;
  double lambda(double /*t*/) const { return value; }
};

using HardnessSchedule =
    std::variant<ExponentialHardness, LinearHardness, CosineHardness, ConstantHardness>;

/// The unit a schedule counts in.
inline ScheduleUnit schedule_unit(const HardnessSchedule& schedule) {
  return std::visit([](const auto& s) { return s.unit; }, schedule);
}

/// λ at a point of training: epochs count from 1, steps from 0 (the number of optimiser
/// steps already taken).
inline double schedule_lambda(const HardnessSchedule& schedule, int64_t epoch, int64_t step) {
  return std::visit(
      [&](const auto& s) {
        const double t = static_cast<double>(s.unit == ScheduleUnit::epoch ? epoch : step);
        return std::clamp(s.lambda(t), 0.0, 1.0);
      },
      schedule);
}

/// 1 − λ: 0 = the initial (easiest) negatives, 1 = as hard as the constraints allow.
inline double schedule_hardness(const HardnessSchedule& schedule, int64_t epoch, int64_t step) {
  return 1.0 - schedule_lambda(schedule, epoch, step);
}

/// Checks a schedule's parameters; throws std::invalid_argument naming the bad one.
inline void validate_schedule(const HardnessSchedule& schedule) {
  std::visit(
      [](const auto& s) {
        using S = std::decay_t<decltype(s)>;
        if constexpr (std::is_same_v<S, ExponentialHardness>) {
          if (!(s.alpha >= 0.0) || !std::isfinite(s.alpha))
            throw std::invalid_argument("ihn::ExponentialHardness: alpha must be finite and >= 0");
        } else if constexpr (std::is_same_v<S, ConstantHardness>) {
          if (!(s.value >= 0.0 && s.value <= 1.0))
            throw std::invalid_argument("ihn::ConstantHardness: value must lie in [0, 1]");
        } else {
          if (!(s.ramp > 0.0) || !std::isfinite(s.ramp))
            throw std::invalid_argument("ihn hardness schedule: ramp must be finite and > 0");
        }
      },
      schedule);
}

/// A readable description, e.g. "exponential(alpha=0.01 per epoch)".
inline std::string describe(const HardnessSchedule& schedule) {
  return std::visit(
      [](const auto& s) {
        using S = std::decay_t<decltype(s)>;
        const std::string unit = s.unit == ScheduleUnit::epoch ? "epoch" : "step";
        if constexpr (std::is_same_v<S, ExponentialHardness>)
          return "exponential(alpha=" + std::to_string(s.alpha) + " per " + unit + ")";
        else if constexpr (std::is_same_v<S, LinearHardness>)
          return "linear(ramp=" + std::to_string(s.ramp) + " " + unit + "s)";
        else if constexpr (std::is_same_v<S, CosineHardness>)
          return "cosine(ramp=" + std::to_string(s.ramp) + " " + unit + "s)";
        else
          return "constant(lambda=" + std::to_string(s.value) + ")";
      },
      schedule);
}

/// The schedule as text that parse_schedule reads back: "exp:0.01", "linear:100",
/// "cosine:100", "const:0.5", with "/step" appended when t counts optimiser steps.
inline std::string to_string(const HardnessSchedule& schedule) {
  const auto number = [](double v) {
    // The shortest of 15, 16 or 17 significant digits that reads back as v (17 always does):
    // 0.1 prints as 0.1, not 0.10000000000000001.
    std::string text;
    for (int digits = 15; digits <= 17; ++digits) {
      std::ostringstream out;
      out.imbue(std::locale::classic());
      out << std::setprecision(digits) << v;
      text = out.str();
      std::istringstream in(text);
      in.imbue(std::locale::classic());
      double back = 0;
      if (in >> back && back == v) break;
    }
    return text;
  };
  return std::visit(
      [&](const auto& s) {
        using S = std::decay_t<decltype(s)>;
        std::string text;
        if constexpr (std::is_same_v<S, ExponentialHardness>)
          text = "exp:" + number(s.alpha);
        else if constexpr (std::is_same_v<S, LinearHardness>)
          text = "linear:" + number(s.ramp);
        else if constexpr (std::is_same_v<S, CosineHardness>)
          text = "cosine:" + number(s.ramp);
        else
          text = "const:" + number(s.value);
        return s.unit == ScheduleUnit::step ? text + "/step" : text;
      },
      schedule);
}

/// Reads "KIND:VALUE[/epoch|/step]" (KIND exp, linear, cosine or const; the unit defaults to
/// epochs), as to_string writes it, and validates it. Throws std::invalid_argument that quotes
/// the text and says what was expected.
inline HardnessSchedule parse_schedule(const std::string& text) {
  const auto fail = [&](const std::string& why) {
    return std::invalid_argument("schedule '" + text + "': " + why +
                                 " (expected exp:ALPHA, linear:RAMP, cosine:RAMP or "
                                 "const:LAMBDA, optionally /step; e.g. exp:0.01)");
  };
  const auto colon = text.find(':');
  if (colon == std::string::npos) throw fail("no ':'");
  const std::string kind = text.substr(0, colon);
  std::string value_text = text.substr(colon + 1);
  ScheduleUnit unit = ScheduleUnit::epoch;
  if (const auto slash = value_text.find('/'); slash != std::string::npos) {
    const std::string unit_text = value_text.substr(slash + 1);
    if (unit_text == "step")
      unit = ScheduleUnit::step;
    else if (unit_text != "epoch")
      throw fail("unknown unit '" + unit_text + "'");
    value_text.resize(slash);
  }
  std::istringstream in(value_text);
  in.imbue(std::locale::classic());
  double value = 0;
  if (value_text.empty() || !(in >> value) || in.peek() != std::char_traits<char>::eof())
    throw fail("'" + value_text + "' is not a number");
  HardnessSchedule schedule;
  if (kind == "exp")
    schedule = ExponentialHardness{value, unit};
  else if (kind == "linear")
    schedule = LinearHardness{value, unit};
  else if (kind == "cosine")
    schedule = CosineHardness{value, unit};
  else if (kind == "const")
    schedule = ConstantHardness{value, unit};
  else
    throw fail("unknown kind '" + kind + "'");
  try {
    validate_schedule(schedule);
  } catch (const std::invalid_argument& e) {
    throw fail(e.what());
  }
  return schedule;
}

}  // namespace v0
}  // namespace ihn
