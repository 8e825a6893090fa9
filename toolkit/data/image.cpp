// stb decoding, Pillow-compatible bilinear resize and R2Gen's transforms (see image.hpp).
#include "data/image.hpp"

#if IHN_STB_IMPLEMENTATION  // no libstb to link (data/CMakeLists.txt): compile stb here
#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_WRITE_IMPLEMENTATION
#endif
#include <stb_image.h>
#include <stb_image_write.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <memory>
#include <stdexcept>

namespace ihn_toolkit::data {

Image Image::blank(int width, int height, int channels, uint8_t value) {
  Image image;
  image.width = width;
  image.height = height;
  image.channels = channels;
  image.pixels.assign(static_cast<size_t>(width) * height * channels, value);
  return image;
}

namespace {

using Pixels = std::unique_ptr<stbi_uc, void (*)(void*)>;

std::string size_problem(int width, int height) {
  if (width <= 0 || height <= 0) return "corrupt or not an image: empty";
  if (width > kMaxImageSide || height > kMaxImageSide ||
      static_cast<int64_t>(width) * height > kMaxImagePixels)
    return "image is " + std::to_string(width) + "\u00d7" + std::to_string(height) +
           ", larger than the limit of " + std::to_string(kMaxImageSide) + " pixels per side and " +
           std::to_string(kMaxImagePixels >> 20) + " Mpixels (a corrupt or hostile header?)";
  return "";
}

/// stb_image 2.27 (Debian 12's libstb) writes past its Huffman tables when a JPEG's DHT segment
/// declares more than 256 codes (found by fuzz/fuzz_image; stb 2.28 refuses such tables). Every
/// DHT segment stb would read, in the headers or between the scans of a progressive JPEG, is
/// checked here first, walking the markers as stb does (segment lengths in the headers, the next
/// 0xFF that is not stuffing or a restart in entropy-coded data).
std::string jpeg_problem(const unsigned char* data, size_t size) {
  size_t at = 0;  // stb skips any number of 0xFF fill bytes before SOI too
  while (at < size && data[at] == 0xFF) ++at;
  if (at == 0 || at >= size || data[at] != 0xD8) return "";
  ++at;
  while (at + 1 < size) {
    if (data[at] != 0xFF || data[at + 1] == 0xFF) {  // entropy-coded data or a fill byte
      ++at;
      continue;
    }
    const unsigned marker = data[at + 1];
    if (marker == 0x00 || marker == 0x01 || (marker >= 0xD0 && marker <= 0xD7)) {
      at += 2;  // stuffed 0xFF, TEM, RSTn: no length
      continue;
    }
    if (marker == 0xD9 || at + 4 > size) break;  // EOI, or cut short: stb says so itself
    const size_t length = (size_t{data[at + 2]} << 8) | data[at + 3];
    if (marker == 0xC4) {
      // As stb: a table that starts inside the segment is read whole, past the segment's end
      // and the file's (missing bytes read as 0).
      const size_t end = std::min(size, at + 2 + length);
      for (size_t table = at + 4; table < end;) {
        size_t codes = 0;
        for (size_t i = 1; i <= 16 && table + i < size; ++i) codes += data[table + i];
        if (codes > 256)
          return "corrupt JPEG: a Huffman table declares " + std::to_string(codes) +
                 " codes (at most 256)";
        table += 17 + codes;
      }
    }
    at += 2 + std::max<size_t>(length, 2);
  }
  return "";
}

/// stb_image allocates what a PNG chunk declares before it reads the chunk (a 100-byte file with
/// an IDAT chunk claiming 2 GB made it allocate 2 GB, found by fuzz/fuzz_image): every chunk stb
/// reads, up to IEND, must lie inside the file. Then stb's buffers are bounded by the file's
/// size, and the decoded image by the size limits. An empty IDAT chunk before the image data is
/// refused too (below).
std::string png_problem(const unsigned char* data, size_t size) {
  if (size < 8 || std::memcmp(data, "\x89PNG\r\n\x1a\n", 8) != 0) return "";
  bool seen_image_data = false;
  for (size_t at = 8; at + 8 <= size;) {
    const uint64_t length = (uint64_t{data[at]} << 24) | (uint64_t{data[at + 1]} << 16) |
                            (uint64_t{data[at + 2]} << 8) | uint64_t{data[at + 3]};
    const std::string type(reinterpret_cast<const char*>(data + at + 4), 4);
    if (length > size - at - 8)
      return "corrupt PNG: chunk at byte " + std::to_string(at) + " declares " +
             std::to_string(length) + " bytes, past the file's end (" + std::to_string(size) +
             " bytes)";
    if (type == "IEND") break;
    // stb 2.27 copies an empty first IDAT into its not yet allocated buffer (memcpy to NULL,
    // undefined behaviour; found by fuzz/fuzz_image). No encoder writes one.
    if (type == "IDAT" && length == 0 && !seen_image_data)
      return "corrupt PNG: empty IDAT chunk at byte " + std::to_string(at) +
             " before any image data";
    seen_image_data = seen_image_data || (type == "IDAT" && length > 0);
    at += 12 + length;
  }
  return "";
}

/// The header's size, checked before anything is decoded: stb would allocate what it declares
/// (a 388 KB PNG declaring 20000x20000 cost 3.9 GB).
std::string header_problem(const unsigned char* data, size_t size, int* channels, int* width,
                           int* height) {
  if (size > static_cast<size_t>(std::numeric_limits<int>::max())) return "file too large";
  // PNG, JPEG (stb skips 0xFF fill bytes before SOI) or BMP only: stb's other decoders (GIF,
  // PSD, PIC, PNM, HDR, TGA, the last without a signature) are no input of a chest X-ray data
  // set, and left to any header they spend seconds per file on 64 Mpixels of nothing.
  size_t fill = 0;
  while (fill < size && data[fill] == 0xFF) ++fill;
  const bool png = size >= 8 && std::memcmp(data, "\x89PNG\r\n\x1a\n", 8) == 0;
  const bool jpeg = fill > 0 && fill < size && data[fill] == 0xD8;
  const bool bmp = size >= 2 && data[0] == 'B' && data[1] == 'M';
  if (!png && !jpeg && !bmp) return "corrupt or not an image: not a PNG, JPEG or BMP file";
  if (auto problem = jpeg_problem(data, size); !problem.empty()) return problem;  // before stb
  if (!stbi_info_from_memory(data, static_cast<int>(size), width, height, channels)) {
    // stb refuses some large PNG headers itself, then reports "unknown image type": read the
    // size from the IHDR chunk to say what is wrong.
    if (size >= 24 && std::memcmp(data, "\x89PNG\r\n\x1a\n", 8) == 0 &&
        std::memcmp(data + 12, "IHDR", 4) == 0) {
      auto be32 = [&](size_t at) {
        return (uint32_t{data[at]} << 24) | (uint32_t{data[at + 1]} << 16) |
               (uint32_t{data[at + 2]} << 8) | uint32_t{data[at + 3]};
      };
      const uint32_t w = be32(16), h = be32(20);
      if (w > static_cast<uint32_t>(kMaxImageSide) || h > static_cast<uint32_t>(kMaxImageSide))
        return size_problem(static_cast<int>(std::min<uint32_t>(w, INT32_MAX)),
                            static_cast<int>(std::min<uint32_t>(h, INT32_MAX)));
    }
    return std::string("corrupt or not an image: ") + stbi_failure_reason();
  }
  return size_problem(*width, *height);
}

std::string read_bytes(const std::string& path, std::string* problem) {
  std::error_code error;
  if (!std::filesystem::exists(path, error)) {
    *problem = "missing";
    return {};
  }
  if (std::filesystem::is_directory(path, error)) {
    *problem = "unreadable (a directory)";
    return {};
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    *problem = "unreadable (permission denied?)";
    return {};
  }
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) *problem = "unreadable (read error)";
  return bytes;
}

}  // namespace

std::string probe_image_data(const unsigned char* data, size_t size, int* width, int* height) {
  int channels = 0;
  return header_problem(data, size, &channels, width, height);
}

std::string probe_image(const std::string& path, bool full_decode) {
  std::string problem;
  const std::string bytes = read_bytes(path, &problem);
  if (!problem.empty()) return problem;
  if (!full_decode) {
    int width = 0, height = 0;
    return probe_image_data(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(),
                            &width, &height);
  }
  try {
    decode_image(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(), path, 3);
  } catch (const std::runtime_error& e) {
    const std::string what = e.what(), prefix = "cannot load image '" + path + "': ";
    return what.compare(0, prefix.size(), prefix) == 0 ? what.substr(prefix.size()) : what;
  }
  return "";
}

Image decode_image(const unsigned char* data, size_t size, const std::string& name,
                   int components) {
  auto fail = [&](const std::string& problem) -> Image {
    throw std::runtime_error("cannot load image '" + name + "': " + problem);
  };
  int channels = 0, width = 0, height = 0;
  auto problem = header_problem(data, size, &channels, &width, &height);
  if (problem.empty()) problem = png_problem(data, size);  // what stb would allocate
  if (!problem.empty()) return fail(problem);
  // 0: gray (and gray + alpha) stays one channel, everything else becomes RGB.
  if (components == 0) components = channels <= 2 ? 1 : 3;
  Pixels pixels(
      stbi_load_from_memory(data, static_cast<int>(size), &width, &height, &channels, components),
      stbi_image_free);
  if (!pixels) return fail(std::string("corrupt or not an image: ") + stbi_failure_reason());
  const auto decoded = size_problem(width, height);  // the header told the truth?
  if (!decoded.empty()) return fail(decoded);
  Image image;
  image.width = width;
  image.height = height;
  image.channels = components;
  image.pixels.assign(pixels.get(),
                      pixels.get() + static_cast<size_t>(width) * height * components);
  return image;
}

namespace {
Image load_with_components(const std::string& path, int components) {
  std::string problem;
  const std::string bytes = read_bytes(path, &problem);
  if (!problem.empty()) throw std::runtime_error("cannot load image '" + path + "': " + problem);
  return decode_image(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(), path,
                      components);
}
}  // namespace

Image load_image_rgb(const std::string& path) {
  // Asking stb for 3 components replicates gray into R, G, B, as PIL's convert('RGB').
  return load_with_components(path, 3);
}

Image load_image(const std::string& path) {
  // Gray (and gray + alpha) stays one channel: every later step is per channel, so replicating
  // at the end gives the same numbers as PIL's convert('RGB') first, for a third of the work.
  return load_with_components(path, 0);
}

namespace {
/// stb's write callback: the encoded bytes go into the std::string `context`.
void append_to_string(void* context, void* data, int size) {
  static_cast<std::string*>(context)->append(static_cast<const char*>(data),
                                             static_cast<size_t>(size));
}
}  // namespace

void write_png(const Image& image, const std::string& path) {
  if (image.channels != 1 && image.channels != 3 && image.channels != 4)
    throw std::invalid_argument("write_png '" + path + "': unsupported channel count " +
                                std::to_string(image.channels));
  // Encoded in memory and written with every step checked: stbi_write_png ignores fwrite's
  // result, so a full disk would leave an empty file and report success.
  std::string png;
  if (!stbi_write_png_to_func(append_to_string, &png, image.width, image.height, image.channels,
                              image.pixels.data(), image.width * image.channels))
    throw std::runtime_error("cannot encode PNG '" + path + "'");
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out)
    throw std::runtime_error("cannot write PNG '" + path + "': " + std::strerror(errno) +
                             " (does the folder exist and is it writable?)");
  out.write(png.data(), static_cast<std::streamsize>(png.size()));
  out.close();
  if (out.fail())
    throw std::runtime_error("writing PNG '" + path + "' failed: " + std::strerror(errno) +
                             " (disk full?)");
}

std::string encode_jpeg(const Image& image, int quality) {
  if (image.channels != 1 && image.channels != 3)
    throw std::invalid_argument("encode_jpeg: unsupported channel count " +
                                std::to_string(image.channels));
  std::string jpeg;
  if (!stbi_write_jpg_to_func(append_to_string, &jpeg, image.width, image.height, image.channels,
                              image.pixels.data(), quality))
    throw std::runtime_error("cannot encode a JPEG of " + std::to_string(image.width) + "x" +
                             std::to_string(image.height));
  return jpeg;
}

Image to_rgb(const Image& image) {
  if (image.channels == 3) return image;
  if (image.channels != 1)
    throw std::invalid_argument("to_rgb: expected 1 or 3 channels, got " +
                                std::to_string(image.channels));
  Image rgb = Image::blank(image.width, image.height, 3);
  for (size_t i = 0; i < image.pixels.size(); ++i)
    for (int c = 0; c < 3; ++c) rgb.pixels[i * 3 + c] = image.pixels[i];
  return rgb;
}

namespace {

// Pillow (src/libImaging/Resample.c): bilinear filter, support 1.0.
constexpr int kPrecisionBits = 32 - 8 - 2;

double bilinear_filter(double x) {
  x = std::abs(x);
  return x < 1.0 ? 1.0 - x : 0.0;
}

struct Coefficients {
  int taps = 0;                  // coefficients per output pixel (ksize)
  std::vector<int> bounds;       // [xmin, count] per output pixel
  std::vector<int32_t> weights;  // fixed point, taps per output pixel
};

// precompute_coeffs + normalize_coeffs_8bpc of Pillow 9.
Coefficients precompute(int in_size, int out_size) {
  const double scale = static_cast<double>(in_size) / out_size;
  const double filter_scale = std::max(scale, 1.0);
  const double support = 1.0 * filter_scale;
  Coefficients c;
  c.taps = static_cast<int>(std::ceil(support)) * 2 + 1;
  c.bounds.resize(static_cast<size_t>(out_size) * 2);
  c.weights.assign(static_cast<size_t>(out_size) * c.taps, 0);
  std::vector<double> k(c.taps);
  const double inverse = 1.0 / filter_scale;
  for (int x = 0; x < out_size; ++x) {
    const double center = (x + 0.5) * scale;
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double total = 0.0;
    for (int i = 0; i < xmax; ++i) {
      const double w = bilinear_filter((i + xmin - center + 0.5) * inverse);
      k[i] = w;
      total += w;
    }
    for (int i = 0; i < xmax; ++i) {
      const double normalized = total != 0.0 ? k[i] / total : k[i];
      const double fixed = normalized * (1 << kPrecisionBits);
      c.weights[static_cast<size_t>(x) * c.taps + i] =
          static_cast<int32_t>(normalized < 0 ? std::trunc(-0.5 + fixed) : std::trunc(0.5 + fixed));
    }
    c.bounds[x * 2] = xmin;
    c.bounds[x * 2 + 1] = xmax;
  }
  return c;
}

inline uint8_t clip8(int64_t value) {
  value >>= kPrecisionBits;
  return static_cast<uint8_t>(value < 0 ? 0 : value > 255 ? 255 : value);
}

Image resample_horizontal(const Image& in, int out_width) {
  const auto c = precompute(in.width, out_width);
  Image out = Image::blank(out_width, in.height, in.channels);
  for (int y = 0; y < in.height; ++y)
    for (int x = 0; x < out_width; ++x) {
      const int xmin = c.bounds[x * 2], count = c.bounds[x * 2 + 1];
      const int32_t* w = &c.weights[static_cast<size_t>(x) * c.taps];
      for (int ch = 0; ch < in.channels; ++ch) {
        int64_t sum = 1 << (kPrecisionBits - 1);
        for (int i = 0; i < count; ++i) sum += static_cast<int64_t>(in.at(xmin + i, y, ch)) * w[i];
        out.at(x, y, ch) = clip8(sum);
      }
    }
  return out;
}

Image resample_vertical(const Image& in, int out_height) {
  const auto c = precompute(in.height, out_height);
  Image out = Image::blank(in.width, out_height, in.channels);
  const size_t row = static_cast<size_t>(in.width) * in.channels;
  std::vector<int64_t> sums(row);
  for (int y = 0; y < out_height; ++y) {
    const int ymin = c.bounds[y * 2], count = c.bounds[y * 2 + 1];
    const int32_t* w = &c.weights[static_cast<size_t>(y) * c.taps];
    std::fill(sums.begin(), sums.end(), int64_t{1} << (kPrecisionBits - 1));
    for (int i = 0; i < count; ++i) {
      const uint8_t* src = &in.pixels[(ymin + i) * row];
      for (size_t j = 0; j < row; ++j) sums[j] += static_cast<int64_t>(src[j]) * w[i];
    }
    uint8_t* dst = &out.pixels[y * row];
    for (size_t j = 0; j < row; ++j) dst[j] = clip8(sums[j]);
  }
  return out;
}

}  // namespace

Image resize_bilinear(const Image& image, int width, int height) {
  if (width <= 0 || height <= 0)
    throw std::invalid_argument("resize_bilinear: target size " + std::to_string(width) + "x" +
                                std::to_string(height) + " must be positive");
  if (image.width <= 0 || image.height <= 0)
    throw std::invalid_argument("resize_bilinear: empty image");
  // Pillow resamples horizontally first, and skips a pass whose size does not change.
  Image out = image.width != width ? resample_horizontal(image, width) : image;
  if (image.height != height) out = resample_vertical(out, height);
  return out;
}

Image resize_shorter_side(const Image& image, int size) {
  if (image.width <= image.height) {
    const int height = static_cast<int>(static_cast<int64_t>(size) * image.height / image.width);
    return resize_bilinear(image, size, height);
  }
  const int width = static_cast<int>(static_cast<int64_t>(size) * image.width / image.height);
  return resize_bilinear(image, width, size);
}

at::Tensor to_normalized_tensor(const Image& rgb, const std::array<float, 3>& mean,
                                const std::array<float, 3>& std) {
  if (rgb.channels != 3 && rgb.channels != 1)
    throw std::invalid_argument("to_normalized_tensor: expected a gray or RGB image, got " +
                                std::to_string(rgb.channels) + " channels");
  const int stride = rgb.channels;  // gray is replicated into R, G and B here
  auto tensor = at::empty({3, rgb.height, rgb.width}, at::kFloat);
  float* out = tensor.data_ptr<float>();
  const size_t plane = static_cast<size_t>(rgb.width) * rgb.height;
  for (int c = 0; c < 3; ++c) {
    // ToTensor divides by 255, then Normalize; one multiply-add per pixel.
    const float scale = 1.0f / (255.0f * std[c]);
    const float shift = -mean[c] / std[c];
    for (size_t i = 0; i < plane; ++i)
      out[c * plane + i] = rgb.pixels[i * stride + (stride == 3 ? c : 0)] * scale + shift;
  }
  return tensor;
}

at::Tensor ImageTransform::operator()(const Image& image, std::mt19937_64& rng) const {
  // Gray stays one channel until the tensor (see load_image); RGB is handled as is.
  const Image& rgb = image;
  if (image.channels != 1 && image.channels != 3)
    throw std::invalid_argument("ImageTransform: expected a gray or RGB image, got " +
                                std::to_string(image.channels) + " channels");
  if (!options_.train)
    return to_normalized_tensor(resize_bilinear(rgb, options_.crop, options_.crop), options_.mean,
                                options_.std);
  const Image resized = resize_shorter_side(rgb, options_.resize);
  const int crop = options_.crop;
  if (resized.width < crop || resized.height < crop)
    throw std::invalid_argument("RandomCrop " + std::to_string(crop) + " larger than the resized " +
                                std::to_string(resized.width) + "x" +
                                std::to_string(resized.height) + " image (raise resize)");
  // torchvision RandomCrop: top then left, each uniform over the valid offsets.
  const int top = std::uniform_int_distribution<int>(0, resized.height - crop)(rng);
  const int left = std::uniform_int_distribution<int>(0, resized.width - crop)(rng);
  const bool flip =
      std::uniform_real_distribution<double>(0.0, 1.0)(rng) < options_.flip_probability;
  Image cropped = Image::blank(crop, crop, resized.channels);
  for (int y = 0; y < crop; ++y)
    for (int x = 0; x < crop; ++x) {
      const int source_x = flip ? left + crop - 1 - x : left + x;
      for (int c = 0; c < resized.channels; ++c)
        cropped.at(x, y, c) = resized.at(source_x, top + y, c);
    }
  return to_normalized_tensor(cropped, options_.mean, options_.std);
}

uint64_t sample_seed(uint64_t seed, int64_t epoch, uint64_t index) {
  auto mix = [](uint64_t z) {
    z += 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  };
  return mix(mix(mix(seed) ^ static_cast<uint64_t>(epoch)) ^ index);
}

}  // namespace ihn_toolkit::data
