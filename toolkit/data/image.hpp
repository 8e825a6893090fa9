// The image pipeline of R2Gen's data loader: PNG/JPEG decoding through stb (grayscale -> three
// equal channels, as PIL's convert('RGB')), PIL's antialiased bilinear resize, and the train
// transform (Resize shorter side 256, RandomCrop 224, RandomHorizontalFlip, ImageNet
// normalisation) and eval transform (Resize to 224x224, normalisation) with configurable sizes.
//
// The resize reimplements Pillow's ImagingResample for 8-bit images (triangle filter whose
// support scales with the downscale factor, 22-bit fixed-point coefficients, horizontal then
// vertical pass rounded to uint8), so it matches torchvision on PIL images; docs/data.md has
// the measured difference.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace ihn_toolkit::data {

/// 8-bit interleaved pixels, row-major, `channels` = 1 (gray) or 3 (RGB).
struct Image {
  int width = 0;
  int height = 0;
  int channels = 0;
  std::vector<uint8_t> pixels;

  uint8_t& at(int x, int y, int c = 0) {
    return pixels[(static_cast<size_t>(y) * width + x) * channels + c];
  }
  uint8_t at(int x, int y, int c = 0) const {
    return pixels[(static_cast<size_t>(y) * width + x) * channels + c];
  }
  static Image blank(int width, int height, int channels, uint8_t value = 0);
};

/// The largest image decoded: 16384 pixels per side and 64 Mpixels in all (192 MB as RGB; stb
/// needs about twice that while decoding). Chest X-rays are at most ~4000x4000 (MIMIC-CXR's
/// JPEGs; IU X-Ray's PNGs are ~2000x2500), so this leaves a 4x margin while a hostile header
/// (a 388 KB PNG declaring 20000x20000) is refused before stb allocates anything.
inline constexpr int kMaxImageSide = 16384;
inline constexpr int64_t kMaxImagePixels = int64_t{64} << 20;

/// Decodes an encoded image in memory (`name` stands for the file in messages) after checking
/// the size its header declares. `components` 3: RGB (gray replicated); 1: gray; 0: gray stays
/// gray, everything else RGB. Throws std::runtime_error naming `name` and the problem.
Image decode_image(const unsigned char* data, size_t size, const std::string& name, int components);
/// The header check of probe_image on bytes in memory: the problem, or empty with the declared
/// width and height (within the limits).
std::string probe_image_data(const unsigned char* data, size_t size, int* width, int* height);
/// Decodes a PNG/JPEG/BMP file to RGB (gray replicated to three channels). Throws
/// std::runtime_error naming the file and stb's reason (missing, unreadable, corrupt).
Image load_image_rgb(const std::string& path);
/// Decodes keeping gray images gray (1 channel) and everything else RGB: the transforms
/// replicate gray into three channels at the end, which gives load_image_rgb's result faster.
Image load_image(const std::string& path);
/// Header-only check (stbi_info): empty string when `path` looks like a readable image,
/// otherwise the problem ("missing", "unreadable", "corrupt or not an image: <reason>",
/// "image is WxH, larger than the limit ...").
std::string probe_image(const std::string& path, bool full_decode = false);
/// Writes a PNG (1 or 3 channels). Throws std::runtime_error naming the file.
void write_png(const Image& image, const std::string& path);
/// Gray -> RGB by replicating the channel; RGB unchanged.
/// JPEG bytes of a gray or RGB image (stb's baseline encoder), for thumbnails.
std::string encode_jpeg(const Image& image, int quality = 85);

Image to_rgb(const Image& image);

/// Pillow's Image.resize((width, height), BILINEAR) with its antialiasing (reducing_gap None).
Image resize_bilinear(const Image& image, int width, int height);
/// torchvision Resize(size) with an int: shorter side -> size, longer int(size * long / short).
Image resize_shorter_side(const Image& image, int size);

struct TransformOptions {
  bool train = false;
  int resize = 256;  ///< train: shorter side; eval: resize to crop x crop (R2Gen's (224, 224))
  int crop = 224;    ///< train: random crop size; eval: output size
  double flip_probability = 0.5;
  std::array<float, 3> mean{0.485f, 0.456f, 0.406f};
  std::array<float, 3> std{0.229f, 0.224f, 0.225f};

  static TransformOptions r2gen_train() { return TransformOptions{true}; }
  static TransformOptions r2gen_eval() { return TransformOptions{false}; }
};

/// The transform (on gray or RGB images) as a function of an image and a random engine (only train
/// draws from it: crop top, crop left, flip). Returns a float tensor [3, crop, crop], normalised.
class ImageTransform {
 public:
  explicit ImageTransform(TransformOptions options = {}) : options_(options) {}
  at::Tensor operator()(const Image& image, std::mt19937_64& rng) const;
  const TransformOptions& options() const { return options_; }

 private:
  TransformOptions options_;
};

/// uint8 RGB (or gray, replicated) image -> float tensor [3, H, W] in [0, 1] then (x - mean) / std.
at::Tensor to_normalized_tensor(const Image& rgb, const std::array<float, 3>& mean,
                                const std::array<float, 3>& std);

/// A 64-bit seed for one sample's augmentation, mixed (SplitMix64) from the run seed, the epoch
/// and the sample index: the same image gets the same crop/flip whatever worker loads it.
uint64_t sample_seed(uint64_t seed, int64_t epoch, uint64_t index);

}  // namespace ihn_toolkit::data
