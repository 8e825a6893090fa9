// Named tensors that make up a resumable state, and writing them to disk atomically.
//
// A StateDict maps names to tensors (integers and RNG states are stored as tensors too), so
// one checkpoint format serves the augmenter, a trainer and the model. save_state writes to
// a temporary file beside the target and renames it over the target: a run killed while
// saving leaves the previous checkpoint intact.
#pragma once

#include <torch/serialize.h>
#include <torch/types.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace ihn {
inline namespace v0 {

using StateDict = std::map<std::string, at::Tensor>;

/// Entries of `state` under `prefix` + "." with the prefix removed.
inline StateDict sub_state(const StateDict& state, const std::string& prefix) {
  StateDict out;
  const std::string p = prefix + ".";
  for (auto it = state.lower_bound(p); it != state.end() && it->first.rfind(p, 0) == 0; ++it)
    out.emplace(it->first.substr(p.size()), it->second);
  return out;
}

/// Adds `part` to `state` under `prefix` + ".".
inline void merge_state(StateDict& state, const std::string& prefix, const StateDict& part) {
  for (const auto& [name, tensor] : part) state[prefix + "." + name] = tensor;
}

/// Writes `state` to `path` atomically (temporary file + rename), as a pickled dict that
/// torch.load in Python can read too.
inline void save_state(const StateDict& state, const std::filesystem::path& path) {
  c10::Dict<std::string, at::Tensor> dict;
  for (const auto& [name, tensor] : state) dict.insert(name, tensor.detach().cpu());
  const std::vector<char> bytes = torch::pickle_save(c10::IValue(dict));
  auto tmp = path;
  tmp += ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw std::runtime_error("cannot write " + tmp.string());
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.flush();
    if (!out) throw std::runtime_error("writing " + tmp.string() + " failed (disk full?)");
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::filesystem::remove(tmp);
    throw std::runtime_error("cannot move " + tmp.string() + " to " + path.string() + ": " +
                             ec.message());
  }
}

/// Reads a file written by save_state; the error names the file when it is missing,
/// truncated or not a state file.
inline StateDict load_state(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path.string() + ": cannot open (missing file?)");
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  c10::IValue value;
  try {
    value = torch::pickle_load(bytes);
  } catch (const std::exception& e) {
    throw std::runtime_error(path.string() +
                             ": not a readable ihn state file (truncated or corrupt): " +
                             std::string(e.what()).substr(0, 200));
  }
  if (!value.isGenericDict())
    throw std::runtime_error(path.string() + ": expected a dict of tensors");
  StateDict state;
  for (const auto& entry : value.toGenericDict()) {
    if (!entry.key().isString() || !entry.value().isTensor())
      throw std::runtime_error(path.string() + ": entries must map names to tensors");
    state.emplace(entry.key().toStringRef(), entry.value().toTensor());
  }
  return state;
}

namespace detail {

/// Fetches a required entry, naming it when it is missing.
inline const at::Tensor& require(const StateDict& state, const std::string& name,
                                 const std::string& owner) {
  auto it = state.find(name);
  if (it == state.end()) throw std::invalid_argument(owner + ": state has no entry '" + name + "'");
  return it->second;
}

}  // namespace detail
}  // namespace v0
}  // namespace ihn
