// The benchmarks' `profile` mode: one step under LibTorch's legacy autograd profiler, printed
// as self CPU time per op (the profiler's own cost inflates ops called many times).
#pragma once
#include <torch/csrc/autograd/profiler.h>
#include <algorithm>
#include <cstdio>
#include <map>
#include <string>
#include <vector>
namespace ihn_bench {
// Self CPU time per op name (time inside the op minus the ops it called), from the legacy
// profiler's push/pop events, which nest per thread; printed as PROFILE lines, largest first.
inline void print_self_times(const torch::autograd::profiler::thread_event_lists& threads) {
  using torch::autograd::profiler::EventKind;
  std::map<std::string, std::pair<double, int64_t>> self;         // name -> (microseconds, calls)
  std::map<std::string, std::map<std::string, int64_t>> parents;  // name -> caller -> calls
  double total = 0;
  for (const auto& events : threads) {
    struct Open {
      std::string name;
      double start, children;
    };
    std::vector<Open> stack;
    for (const auto& e : events) {
      if (e.kind() == EventKind::PushRange) {
        stack.push_back({e.name(), e.cpuUs(), 0.0});
      } else if (e.kind() == EventKind::PopRange && !stack.empty()) {
        const auto open = stack.back();
        stack.pop_back();
        const double elapsed = e.cpuUs() - open.start;
        if (!stack.empty()) parents[open.name][stack.back().name] += 1;
        auto& entry = self[open.name];
        entry.first += elapsed - open.children;
        entry.second += 1;
        total += elapsed - open.children;
        if (!stack.empty()) stack.back().children += elapsed;
      }
    }
  }
  std::vector<std::pair<std::string, std::pair<double, int64_t>>> rows(self.begin(), self.end());
  std::sort(rows.begin(), rows.end(),
            [](const auto& a, const auto& b) { return a.second.first > b.second.first; });
  std::printf("PROFILE total self CPU %.3f s\n", total * 1e-6);
  for (size_t i = 0; i < rows.size() && i < 30; ++i) {
    const auto& callers = parents[rows[i].first];
    auto top = std::max_element(callers.begin(), callers.end(),
                                [](const auto& a, const auto& b) { return a.second < b.second; });
    std::printf("PROFILE %-40s %6ld calls %8.3f s %5.1f%%  (mostly in %s)\n", rows[i].first.c_str(),
                static_cast<long>(rows[i].second.second), rows[i].second.first * 1e-6,
                100.0 * rows[i].second.first / total,
                top == callers.end() ? "-" : top->first.c_str());
  }
}

/// Runs `work` once under the CPU profiler and prints its self times.
template <class Work>
void profile_once(Work&& work) {
  namespace prof = torch::autograd::profiler;
  prof::thread_event_lists events;
  {
    prof::TLSLegacyProfilerGuard guard(
        torch::profiler::impl::ProfilerConfig(torch::profiler::impl::ProfilerState::CPU),
        [&](const prof::thread_event_lists& e) { events = e; });
    work();
  }
  print_self_times(events);
}

}  // namespace ihn_bench
