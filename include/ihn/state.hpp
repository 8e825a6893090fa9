// Named tensors that make up a resumable state, and writing them to disk atomically.
//
// A StateDict maps names to tensors (integers and RNG states are stored as tensors too), so
// one checkpoint format serves the augmenter, a trainer and the model. save_state writes to
// a temporary file beside the target and renames it over the target: a run killed while
// saving leaves the previous checkpoint intact.
#pragma once

#include <torch/serialize.h>
#include <torch/types.h>

#include <ihn/io/pth.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
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
    out.close();
    if (out.fail()) {
      std::error_code ignored;
      std::filesystem::remove(tmp, ignored);  // a partial file would keep a full disk full
      throw std::runtime_error("writing " + tmp.string() + " failed (disk full?)");
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::filesystem::remove(tmp);
    throw std::runtime_error("cannot move " + tmp.string() + " to " + path.string() + ": " +
                             ec.message());
  }
}

namespace detail {

/// The dict of a state file, read by ihn::io's hardened reader (io/pth.hpp): a checkpoint is
/// untrusted input, and LibTorch's own unpickler (torch::pickle_load) crashes on malformed
/// files (a stride changed by one byte, a list that contains itself) and checks no CRC. Reading
/// the file with our reader only, rather than validating it and then handing it to LibTorch,
/// keeps one parser to harden and fuzz, and reads each storage once, straight into its tensor.
inline StateDict state_from_pickle(const io::PyObjectPtr& root, const std::string& name) {
  if (!root->is_dict()) throw std::runtime_error(name + ": expected a dict of tensors");
  StateDict state;
  for (const auto& [key, value] : root->entries) {
    if (key->kind != io::PyObject::Kind::String || value->kind != io::PyObject::Kind::Tensor)
      throw std::runtime_error(name + ": entries must map names to tensors");
    state.emplace(key->text, value->tensor);
  }
  return state;
}

inline StateDict load_state_from(const std::function<io::PyObjectPtr()>& read,
                                 const std::string& name) {
  io::PyObjectPtr root;
  try {
    root = read();
  } catch (const std::exception& e) {
    throw std::runtime_error(name + ": not a readable ihn state file (truncated or corrupt): " +
                             std::string(e.what()).substr(0, 400));
  }
  return state_from_pickle(root, name);
}

}  // namespace detail

/// Reads a file written by save_state; the error names the file when it is missing,
/// truncated, corrupt (a zip record whose CRC-32 fails, a tensor outside its storage) or not a
/// state file.
inline StateDict load_state(const std::filesystem::path& path) {
  {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error(path.string() + ": cannot open (missing file?)");
  }
  return detail::load_state_from([&] { return io::read_pth(path.string()); }, path.string());
}

/// The same from bytes in memory (`name` stands for the file in messages): fuzzing, tests.
inline StateDict load_state_bytes(const void* data, size_t size, const std::string& name) {
  return detail::load_state_from([&] { return io::read_pth_bytes(data, size, name); }, name);
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
