// The fixtures' deterministic weight fill; see deterministic_fill.hpp. This TU is compiled with
// -ffp-contract=off (CMakeLists.txt): 0.37*i + 1.3*k must not become a fused multiply-add.
#include "deterministic_fill.hpp"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <stdexcept>

namespace ihn_toolkit::nn {

namespace {

std::vector<std::string> split_key(const std::string& key) {
  std::vector<std::string> parts;
  size_t start = 0;
  for (;;) {
    auto dot = key.find('.', start);
    parts.push_back(key.substr(start, dot == std::string::npos ? std::string::npos : dot - start));
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  return parts;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string fill_rule(const std::string& key, const torch::Tensor& t,
                      const std::set<std::string>& keys, FillRuleset ruleset) {
  if (ends_with(key, ".running_var")) return "bn_running_var";
  if (ends_with(key, ".running_mean")) return "bn_running_mean";
  if (t.dim() == 1) {
    auto parts = split_key(key);
    const auto& last = parts.back();
    bool gamma = last == "gamma" || last == "a_2" ||
                 (last == "weight" && parts.size() >= 2 &&
                  parts[parts.size() - 2].find("norm") != std::string::npos);
    // Rule B: BatchNorm affine weights (the module also has running_var) count as gammas.
    if (!gamma && ruleset == FillRuleset::B && last == "weight") {
      auto prefix = key.substr(0, key.size() - std::string("weight").size());
      gamma = keys.count(prefix + "running_var") > 0;
    }
    if (gamma) return "gamma_like";
  }
  if (t.dim() >= 2) return "scaled";
  return "vector";
}

}  // namespace

std::vector<FilledEntry> deterministic_fill(torch::nn::Module& module, FillRuleset ruleset) {
  std::map<std::string, torch::Tensor> entries;  // std::map: byte-wise sorted keys
  for (const auto& p : module.named_parameters(/*recurse=*/true)) entries[p.key()] = p.value();
  for (const auto& b : module.named_buffers(/*recurse=*/true)) entries[b.key()] = b.value();
  std::set<std::string> all_keys;
  for (const auto& e : entries) all_keys.insert(e.first);

  torch::NoGradGuard no_grad;
  std::vector<FilledEntry> filled;
  int64_t k = 0;
  for (const auto& [key, tensor] : entries) {
    if (!tensor.is_floating_point()) continue;  // num_batches_tracked: skipped, not counted
    FilledEntry entry;
    entry.key = key;
    entry.k = k;
    entry.rule = fill_rule(key, tensor, all_keys, ruleset);
    const int64_t n = tensor.numel();
    const int64_t fan_in = tensor.dim() >= 2 ? n / tensor.size(0) : 1;
    auto values = torch::empty({n}, torch::kFloat);
    float* v = values.data_ptr<float>();
    for (int64_t i = 0; i < n; ++i) {
      double ph = 0.37 * static_cast<double>(i) + 1.3 * static_cast<double>(k) + 0.5;
      if (ruleset == FillRuleset::B) ph += 0.73 * static_cast<double>((i * i) % 1009);
      const double s = std::sin(ph);
      double x;
      if (entry.rule == "bn_running_var")
        x = 1.0 + 0.5 * std::fabs(s);
      else if (entry.rule == "bn_running_mean")
        x = 0.1 * s;
      else if (entry.rule == "gamma_like")
        x = 1.0 + 0.1 * s;
      else if (entry.rule == "scaled")
        x = (1.0 / std::sqrt(static_cast<double>(fan_in))) * s;
      else
        x = 0.1 * s;
      v[i] = static_cast<float>(x);
      entry.checksum += static_cast<double>(v[i]);
      entry.wchecksum += static_cast<double>(v[i]) * static_cast<double>((i % 97) + 1);
    }
    tensor.copy_(values.view(tensor.sizes()).to(tensor.device(), tensor.scalar_type()));
    filled.push_back(std::move(entry));
    ++k;
  }
  return filled;
}

}  // namespace ihn_toolkit::nn
