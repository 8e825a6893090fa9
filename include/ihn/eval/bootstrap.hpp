// Bootstrap confidence intervals over examples for any metric, and a paired bootstrap
// comparison of two systems scored on the same examples.
//
// A resample draws n example indices with replacement from a std::mt19937_64 seeded by the
// caller; indices come from the generator's raw output by rejection sampling (not
// std::uniform_int_distribution, whose algorithm differs between standard libraries), so a seed
// gives the same intervals everywhere. The statistic is recomputed on each resample (corpus
// BLEU from the resampled counts, a mean for per-example metrics). The interval is the
// percentile interval with numpy's default linear interpolation between order statistics.
//
// Also student_t_quantile(), for t intervals over a few seeds (ihn compare).
#pragma once

#include <ihn/eval/text.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace ihn {
inline namespace v0 {
namespace eval {

struct BootstrapOptions {
  int resamples = 1000;
  std::uint64_t seed = 0;
  double level = 0.95;  ///< two-sided coverage of the interval
};

struct ConfidenceInterval {
  double estimate = 0;  ///< the statistic on all examples
  double lower = 0, upper = 0;
  int resamples = 0;
  double level = 0;
  std::uint64_t seed = 0;
};

struct PairedComparison {
  double difference = 0;        ///< statistic(A) - statistic(B) on all examples
  double lower = 0, upper = 0;  ///< percentile interval of the resampled differences
  double p_value = 1;           ///< two-sided: 2 * min(share(d <= 0), share(d >= 0)), at most 1
  int resamples = 0;
  double level = 0;
  std::uint64_t seed = 0;
};

/// A statistic of a resample: receives the example indices (with repeats).
using ResampleStatistic = std::function<double(const std::vector<std::size_t>&)>;

namespace detail {

/// Uniform index in [0, n) from the generator's raw 64-bit output, by rejection.
inline std::size_t uniform_index(std::mt19937_64& rng, std::size_t n) {
  const std::uint64_t range = static_cast<std::uint64_t>(n);
  const std::uint64_t limit =
      std::numeric_limits<std::uint64_t>::max() - std::numeric_limits<std::uint64_t>::max() % range;
  std::uint64_t r;
  do {
    r = rng();
  } while (r >= limit);
  return static_cast<std::size_t>(r % range);
}

/// numpy.percentile's default ("linear") on sorted values, q in [0, 1].
inline double quantile_sorted(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return std::numeric_limits<double>::quiet_NaN();
  const double pos = q * static_cast<double>(sorted.size() - 1);
  const auto lo = static_cast<std::size_t>(std::floor(pos));
  const std::size_t hi = std::min(lo + 1, sorted.size() - 1);
  const double frac = pos - static_cast<double>(lo);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * frac;
}

inline void check_bootstrap(std::size_t n, const BootstrapOptions& o) {
  if (n == 0) throw EvalError("bootstrap: no examples");
  if (o.resamples < 1) throw EvalError("bootstrap: resamples must be >= 1");
  if (!(o.level > 0 && o.level < 1)) throw EvalError("bootstrap: level must be in (0, 1)");
}

}  // namespace detail

namespace detail {

/// Continued fraction of the regularised incomplete beta function (modified Lentz); converges
/// quickly for x < (a + 1) / (a + b + 2).
inline double incomplete_beta_fraction(double a, double b, double x) {
  constexpr double tiny = 1e-300, epsilon = 1e-16;
  auto guard = [](double v) { return std::abs(v) < tiny ? tiny : v; };
  double c = 1, d = 1 / guard(1 - (a + b) * x / (a + 1));
  double h = d;
  for (int m = 1; m <= 1000; ++m) {
    const double m2 = 2.0 * m;
    double term = m * (b - m) * x / ((a + m2 - 1) * (a + m2));
    d = 1 / guard(1 + term * d);
    c = guard(1 + term / c);
    h *= d * c;
    term = -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1));
    d = 1 / guard(1 + term * d);
    c = guard(1 + term / c);
    const double step = d * c;
    h *= step;
    if (std::abs(step - 1) < epsilon) break;
  }
  return h;
}

/// The regularised incomplete beta function I_x(a, b).
inline double regularized_incomplete_beta(double a, double b, double x) {
  if (x <= 0) return 0;
  if (x >= 1) return 1;
  const double front = std::exp(std::lgamma(a + b) - std::lgamma(a) - std::lgamma(b) +
                                a * std::log(x) + b * std::log1p(-x));
  if (x < (a + 1) / (a + b + 2)) return front * incomplete_beta_fraction(a, b, x) / a;
  return 1 - front * incomplete_beta_fraction(b, a, 1 - x) / b;
}

/// P(T > t) for Student's t with `df` degrees of freedom, t >= 0.
inline double student_t_upper_tail(double t, double df) {
  return 0.5 * regularized_incomplete_beta(df / 2, 0.5, df / (df + t * t));
}

/// The density of Student's t with `df` degrees of freedom.
inline double student_t_density(double t, double df) {
  const double pi = std::acos(-1.0);
  return std::exp(std::lgamma((df + 1) / 2) - std::lgamma(df / 2) - 0.5 * std::log(df * pi) -
                  (df + 1) / 2 * std::log1p(t * t / df));
}

}  // namespace detail

/// The quantile of Student's t distribution with `degrees_of_freedom` (> 0, need not be an
/// integer) at `probability` in (0, 1): the t of a t confidence interval, e.g.
/// student_t_quantile(0.975, n - 1) for a 95% interval of a mean over n seeds. Exact to about
/// 1e-12 relative: the distribution function is the regularised incomplete beta function
/// (continued fraction), inverted by Newton's method kept inside a bisection bracket. Written
/// here rather than taken from Boost.Math (boost/math/distributions/students_t.hpp) so that
/// ihn::eval stays a header-only library whose consumers need no Boost for one function.
inline double student_t_quantile(double probability, double degrees_of_freedom) {
  const double df = degrees_of_freedom;
  if (!(probability > 0 && probability < 1))
    throw EvalError("student_t_quantile: probability " + std::to_string(probability) +
                    " is not in (0, 1)");
  if (!(df > 0) || !std::isfinite(df))
    throw EvalError("student_t_quantile: degrees of freedom " + std::to_string(df) +
                    " must be positive and finite");
  if (probability < 0.5) return -student_t_quantile(1 - probability, df);
  const double tail = 1 - probability;  // P(T > t) wanted
  if (tail == 0.5) return 0;
  // Bracket the root: the upper tail falls from 0.5 at t = 0 towards 0.
  double lo = 0, hi = 1;
  while (detail::student_t_upper_tail(hi, df) > tail) {
    lo = hi;
    hi *= 2;
    if (!std::isfinite(hi)) return std::numeric_limits<double>::infinity();
  }
  double t = (lo + hi) / 2;
  for (int iteration = 0; iteration < 200; ++iteration) {
    const double excess = detail::student_t_upper_tail(t, df) - tail;
    if (excess == 0) return t;
    (excess > 0 ? lo : hi) = t;
    double next = t + excess / detail::student_t_density(t, df);  // Newton: d tail/dt = -density
    if (!(next > lo && next < hi)) next = (lo + hi) / 2;
    if (std::abs(next - t) <= 1e-15 * t || hi - lo <= 1e-15 * hi) return next;
    t = next;
  }
  return t;
}

/// Percentile bootstrap interval of `statistic` over n examples.
inline ConfidenceInterval bootstrap_ci(std::size_t n, const ResampleStatistic& statistic,
                                       const BootstrapOptions& options = {}) {
  detail::check_bootstrap(n, options);
  std::vector<std::size_t> all(n);
  for (std::size_t i = 0; i < n; ++i) all[i] = i;
  ConfidenceInterval ci;
  ci.estimate = statistic(all);
  ci.resamples = options.resamples;
  ci.level = options.level;
  ci.seed = options.seed;
  std::mt19937_64 rng(options.seed);
  std::vector<double> values;
  values.reserve(options.resamples);
  std::vector<std::size_t> idx(n);
  for (int b = 0; b < options.resamples; ++b) {
    for (auto& i : idx) i = detail::uniform_index(rng, n);
    values.push_back(statistic(idx));
  }
  std::sort(values.begin(), values.end());
  const double tail = (1 - options.level) / 2;
  ci.lower = detail::quantile_sorted(values, tail);
  ci.upper = detail::quantile_sorted(values, 1 - tail);
  return ci;
}

/// The mean of per-example scores as a resample statistic.
inline ResampleStatistic mean_of(const std::vector<double>& per_example) {
  return [&per_example](const std::vector<std::size_t>& idx) {
    double sum = 0;
    for (auto i : idx) sum += per_example[i];
    return sum / static_cast<double>(idx.size());
  };
}

/// Paired bootstrap of A - B: both statistics see the same resampled examples.
inline PairedComparison paired_bootstrap(std::size_t n, const ResampleStatistic& a,
                                         const ResampleStatistic& b,
                                         const BootstrapOptions& options = {}) {
  detail::check_bootstrap(n, options);
  std::vector<std::size_t> all(n);
  for (std::size_t i = 0; i < n; ++i) all[i] = i;
  PairedComparison c;
  c.difference = a(all) - b(all);
  c.resamples = options.resamples;
  c.level = options.level;
  c.seed = options.seed;
  std::mt19937_64 rng(options.seed);
  std::vector<double> diffs;
  diffs.reserve(options.resamples);
  std::vector<std::size_t> idx(n);
  long long at_most_zero = 0, at_least_zero = 0;
  for (int r = 0; r < options.resamples; ++r) {
    for (auto& i : idx) i = detail::uniform_index(rng, n);
    const double value_a = a(idx), value_b = b(idx);
    const double d = value_a - value_b;
    diffs.push_back(d);
    // Equal systems can differ by rounding (the same scores summed in another order); such a
    // difference is a tie, not evidence, or a constant 1e-17 would read as p = 0.
    const double tie = 1e-12 * std::max({1.0, std::abs(value_a), std::abs(value_b)});
    at_most_zero += d <= tie;
    at_least_zero += d >= -tie;
  }
  std::sort(diffs.begin(), diffs.end());
  const double tail = (1 - options.level) / 2;
  c.lower = detail::quantile_sorted(diffs, tail);
  c.upper = detail::quantile_sorted(diffs, 1 - tail);
  c.p_value = std::min(1.0, 2.0 * static_cast<double>(std::min(at_most_zero, at_least_zero)) /
                                static_cast<double>(options.resamples));
  return c;
}

}  // namespace eval
}  // namespace v0
}  // namespace ihn
