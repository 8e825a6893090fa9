// The fuzz entry points that need LibTorch, in one translation unit (each TU that includes
// torch costs ~30 s under clang with sanitizers): the .pth reader, the ihn checkpoint reader and
// the image decoder (whose Image type lives in a LibTorch header). fuzz_<target>.cpp forwards
// libFuzzer's entry point to one of them.
#include <torch/torch.h>

#include <ihn/io/pth.hpp>
#include <ihn/state.hpp>

#include "data/image.hpp"
#include "data/tokenizer.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <string>

#include "fuzz_entries.hpp"

namespace {

/// A uint8 tensor's bytes (the checkpoint stores config.json and vocab.json that way).
bool tensor_text(const ihn::StateDict& state, const std::string& key, std::string* out) {
  auto it = state.find(key);
  if (it == state.end() || it->second.scalar_type() != at::kByte) return false;
  const auto t = it->second.contiguous();
  out->assign(static_cast<const char*>(t.data_ptr()), static_cast<size_t>(t.numel()));
  return true;
}

}  // namespace

// Only pth_error may leave the reader: anything else (c10::Error, bad_alloc, a crash, a sanitizer
// report, a leak) is a finding.
int ihn_fuzz_pth(const uint8_t* data, size_t size) {
  try {
    auto root = ihn::io::read_pth_bytes(data, size, "input.pth");
    ihn::io::PyObject const* sd = root.get();
    for (const char* key : {"state_dict", "model"})
      if (root->is_dict() && root->contains(key) && root->at(key).is_dict()) sd = &root->at(key);
    for (const auto& [k, v] : sd->entries)
      if (v->kind == ihn::io::PyObject::Kind::Tensor) (void)v->tensor.sum().item<double>();
  } catch (const ihn::io::pth_error&) {
  }
  return 0;
}

// load_state's only error is std::runtime_error naming the file; then what ihn's trainer reads
// from a checkpoint: the vocabulary and the config JSON.
int ihn_fuzz_checkpoint(const uint8_t* data, size_t size) {
  ihn::StateDict state;
  try {
    state = ihn::load_state_bytes(data, size, "input.pt");
  } catch (const std::runtime_error&) {
    return 0;
  }
  for (const auto& [name, tensor] : state)
    if (tensor.numel() > 0 && tensor.is_floating_point()) (void)tensor.sum().item<double>();
  std::string text;
  if (tensor_text(state, "vocab.json", &text)) {
    try {
      auto tokenizer = ihn_toolkit::data::Tokenizer::from_json(text);
      tokenizer.decode(tokenizer.encode("the heart is normal in size ."));
    } catch (const std::invalid_argument&) {
    }
  }
  if (tensor_text(state, "config.json", &text))
    (void)nlohmann::json::parse(text, nullptr, false).is_discarded();
  return 0;
}

int ihn_fuzz_image(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  // The first byte picks the components asked for: 0 (gray stays gray), 1 or 3.
  const int components[] = {0, 1, 3};
  // Images within the limits but above 4 Mpixels decode for seconds under the sanitizers, which
  // is the limit's cost, not a defect: skipped, so that a run is not spent (or timed out) on them.
  int width = 0, height = 0;
  if (ihn_toolkit::data::probe_image_data(data + 1, size - 1, &width, &height).empty() &&
      int64_t{width} * height > (int64_t{1} << 22))
    return 0;
  try {
    auto image =
        ihn_toolkit::data::decode_image(data + 1, size - 1, "input.png", components[data[0] % 3]);
    if (image.width > 0 && image.height > 0 && image.width <= 512 && image.height <= 512)
      (void)ihn_toolkit::data::resize_bilinear(image, 7, 5);
  } catch (const std::runtime_error&) {
  }
  return 0;
}
