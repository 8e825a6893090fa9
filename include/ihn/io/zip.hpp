// Reading the zip archives that torch.save and torch::pickle_save write, defensively.
//
// PyTorch's own reader (caffe2's PyTorchStreamReader on miniz) trusts the sizes an archive
// declares (a 3 MB file whose data.pkl claims 3 GiB gets 3 GiB allocated) and is built with
// CRC checks off (flipped weight bytes load silently). This reader parses the central
// directory itself, checks every declared size against the file's real size before reading,
// refuses compressed or encrypted records (PyTorch writes every record uncompressed, "stored",
// so nothing is ever inflated and no zip bomb is possible), and verifies the CRC-32 of every
// record it returns. LibTorch-free: it needs only zlib (crc32).
//
//   ihn::io::ZipReader zip(ihn::io::ByteSource::file("best.pt"));
//   std::string pickle = zip.read("data.pkl", 64 << 20);   // <archive>/data.pkl, at most 64 MiB
#pragma once

#include <zlib.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace ihn {
inline namespace v0 {
namespace io {

/// A malformed, truncated or corrupt archive; the message names the file and the record.
struct zip_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// Random-access bytes: a file on disk, or a buffer (fuzzing, tests).
class ByteSource {
 public:
  virtual ~ByteSource() = default;
  virtual uint64_t size() const = 0;
  /// Copies [offset, offset + n) to `out`; the caller checked the range against size().
  virtual void read(uint64_t offset, void* out, size_t n) const = 0;
  const std::string& name() const { return name_; }

  static std::shared_ptr<ByteSource> file(const std::string& path);
  static std::shared_ptr<ByteSource> memory(const void* data, size_t size, std::string name);

 protected:
  explicit ByteSource(std::string name) : name_(std::move(name)) {}

 private:
  std::string name_;
};

namespace detail {

class FileSource final : public ByteSource {
 public:
  explicit FileSource(const std::string& path) : ByteSource(path), in_(path, std::ios::binary) {
    if (!in_) throw zip_error(path + ": cannot open");
    in_.seekg(0, std::ios::end);
    const auto end = in_.tellg();
    if (end < 0) throw zip_error(path + ": cannot determine its size");
    size_ = static_cast<uint64_t>(end);
  }
  uint64_t size() const override { return size_; }
  void read(uint64_t offset, void* out, size_t n) const override {
    in_.clear();
    in_.seekg(static_cast<std::streamoff>(offset));
    in_.read(static_cast<char*>(out), static_cast<std::streamsize>(n));
    if (static_cast<size_t>(in_.gcount()) != n)
      throw zip_error(name() + ": read error at byte " + std::to_string(offset) +
                      " (file changed while reading?)");
  }

 private:
  mutable std::ifstream in_;
  uint64_t size_ = 0;
};

class MemorySource final : public ByteSource {
 public:
  MemorySource(const void* data, size_t size, std::string name)
      : ByteSource(std::move(name)), data_(static_cast<const char*>(data)), size_(size) {}
  uint64_t size() const override { return size_; }
  void read(uint64_t offset, void* out, size_t n) const override {
    if (n) std::memcpy(out, data_ + offset, n);
  }

 private:
  const char* data_;
  size_t size_;
};

inline uint64_t read_le(const unsigned char* p, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
  return v;
}

/// zlib's crc32 takes at most 4 GiB - 1 at a time (uInt).
inline uint32_t crc32_update(uint32_t crc, const void* data, size_t n) {
  auto* p = static_cast<const Bytef*>(data);
  uLong c = crc;
  while (n > 0) {
    const size_t chunk = std::min<size_t>(n, 1u << 30);
    c = ::crc32(c, p, static_cast<uInt>(chunk));
    p += chunk;
    n -= chunk;
  }
  return static_cast<uint32_t>(c);
}

inline std::string hex32(uint32_t v) {
  char buf[11];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

}  // namespace detail

inline std::shared_ptr<ByteSource> ByteSource::file(const std::string& path) {
  return std::make_shared<detail::FileSource>(path);
}
inline std::shared_ptr<ByteSource> ByteSource::memory(const void* data, size_t size,
                                                      std::string name) {
  return std::make_shared<detail::MemorySource>(data, size, std::move(name));
}

/// One record of the central directory, with its data located and range-checked.
struct ZipEntry {
  std::string name;  ///< full name, "<archive>/data.pkl"
  uint64_t data_offset = 0;
  uint64_t size = 0;
  uint32_t crc32 = 0;
};

class ZipReader {
 public:
  /// Limits on what a central directory may declare (a real checkpoint has a few thousand
  /// records; one per storage).
  static constexpr uint64_t kMaxEntries = 1u << 20;
  static constexpr uint64_t kMaxCentralDirectoryBytes = 64u << 20;

  explicit ZipReader(std::shared_ptr<ByteSource> source) : source_(std::move(source)) {
    parse_central_directory();
  }

  const std::string& file() const { return source_->name(); }
  /// The archive's folder name (the first record's first path component), as PyTorch uses it.
  const std::string& archive_name() const { return archive_; }
  const std::vector<ZipEntry>& entries() const { return entries_; }

  /// `record` is relative to the archive folder ("data.pkl", "data/0").
  bool has(const std::string& record) const { return index_.count(archive_ + "/" + record) > 0; }
  const ZipEntry& entry(const std::string& record) const {
    auto it = index_.find(archive_ + "/" + record);
    if (it == index_.end())
      throw zip_error(file() + ": record '" + archive_ + "/" + record + "' missing");
    return entries_[it->second];
  }

  /// The record's bytes; throws (before reading) when it declares more than `max_size`.
  std::string read(const std::string& record, uint64_t max_size) const {
    const ZipEntry& e = entry(record);
    if (e.size > max_size)
      throw zip_error(file() + ": record '" + e.name + "' declares " + std::to_string(e.size) +
                      " bytes, more than the limit of " + std::to_string(max_size) +
                      " (corrupt or hostile file?)");
    std::string out(static_cast<size_t>(e.size), '\0');
    read_into(e, out.data(), out.size());
    return out;
  }

  /// Reads the whole record `e` (whose size must be `n`) into `out` and checks its CRC-32.
  void read_into(const ZipEntry& e, void* out, size_t n) const {
    if (n != e.size)
      throw zip_error(file() + ": record '" + e.name + "': asked for " + std::to_string(n) +
                      " bytes of " + std::to_string(e.size));
    source_->read(e.data_offset, out, n);
    const uint32_t crc = detail::crc32_update(0, out, n);
    if (crc != e.crc32)
      throw zip_error(file() + ": record '" + e.name + "' fails its CRC-32 check (stored " +
                      detail::hex32(e.crc32) + ", computed " + detail::hex32(crc) +
                      "): the file is corrupt");
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw zip_error(file() + ": truncated or corrupt zip archive: " + what);
  }
  std::vector<unsigned char> bytes_at(uint64_t offset, uint64_t n, const char* what) const {
    const uint64_t size = source_->size();
    if (offset > size || n > size - offset) fail(std::string(what) + " lies beyond the file's end");
    std::vector<unsigned char> buf(static_cast<size_t>(n));
    source_->read(offset, buf.data(), buf.size());
    return buf;
  }

  void parse_central_directory() {
    using detail::read_le;
    const uint64_t size = source_->size();
    // The end-of-central-directory record (22 bytes + a comment of at most 64 KiB) ends the file.
    const uint64_t tail_size = std::min<uint64_t>(size, 22 + 0xffff);
    if (tail_size < 22) fail("shorter than an end-of-central-directory record");
    const auto tail = bytes_at(size - tail_size, tail_size, "the end record");
    int64_t eocd = -1;
    for (int64_t i = static_cast<int64_t>(tail_size) - 22; i >= 0; --i)
      if (read_le(&tail[static_cast<size_t>(i)], 4) == 0x06054b50) {
        eocd = i;
        break;
      }
    if (eocd < 0) fail("no end-of-central-directory record (cut short?)");
    const unsigned char* end = &tail[static_cast<size_t>(eocd)];
    const uint64_t eocd_offset = size - tail_size + static_cast<uint64_t>(eocd);
    uint64_t count = read_le(end + 10, 2);
    uint64_t cd_size = read_le(end + 12, 4);
    uint64_t cd_offset = read_le(end + 16, 4);
    if (count == 0xffff || cd_size == 0xffffffff || cd_offset == 0xffffffff) {
      // Zip64: a locator just before the end record points at the zip64 end record.
      if (eocd_offset < 20) fail("zip64 locator missing");
      const auto locator = bytes_at(eocd_offset - 20, 20, "the zip64 locator");
      if (read_le(locator.data(), 4) != 0x07064b50) fail("zip64 locator missing");
      const auto record = bytes_at(read_le(locator.data() + 8, 8), 56, "the zip64 end record");
      if (read_le(record.data(), 4) != 0x06064b50) fail("bad zip64 end record");
      count = read_le(record.data() + 32, 8);
      cd_size = read_le(record.data() + 40, 8);
      cd_offset = read_le(record.data() + 48, 8);
    }
    if (count > kMaxEntries)
      fail("declares " + std::to_string(count) + " records, more than " +
           std::to_string(kMaxEntries));
    if (cd_size > kMaxCentralDirectoryBytes) fail("central directory too large");
    const auto cd = bytes_at(cd_offset, cd_size, "the central directory");
    size_t pos = 0;
    for (uint64_t i = 0; i < count; ++i) {
      if (cd.size() - pos < 46 || read_le(&cd[pos], 4) != 0x02014b50)
        fail("central directory entry " + std::to_string(i) + " is malformed");
      const unsigned char* h = &cd[pos];
      const uint64_t flags = read_le(h + 8, 2), method = read_le(h + 10, 2);
      ZipEntry e;
      e.crc32 = static_cast<uint32_t>(read_le(h + 16, 4));
      uint64_t compressed = read_le(h + 20, 4);
      e.size = read_le(h + 24, 4);
      const size_t name_len = read_le(h + 28, 2), extra_len = read_le(h + 30, 2),
                   comment_len = read_le(h + 32, 2);
      uint64_t local = read_le(h + 42, 4);
      if (cd.size() - pos - 46 < name_len + extra_len + comment_len)
        fail("central directory entry " + std::to_string(i) + " runs past the directory");
      e.name.assign(reinterpret_cast<const char*>(h + 46), name_len);
      // Zip64 extended information: the 64-bit values of the fields that hold 0xffffffff.
      const unsigned char* extra = h + 46 + name_len;
      for (size_t x = 0; x + 4 <= extra_len;) {
        const uint64_t id = read_le(extra + x, 2), len = read_le(extra + x + 2, 2);
        if (x + 4 + len > extra_len) fail("record '" + e.name + "': malformed extra field");
        if (id == 1) {
          size_t y = x + 4;
          auto next = [&](uint64_t& field) {
            if (field != 0xffffffff) return;
            if (y + 8 > x + 4 + len) fail("record '" + e.name + "': short zip64 field");
            field = read_le(extra + y, 8);
            y += 8;
          };
          next(e.size);
          next(compressed);
          next(local);
        }
        x += 4 + static_cast<size_t>(len);
      }
      pos += 46 + name_len + extra_len + comment_len;
      if (flags & 1) fail("record '" + e.name + "' is encrypted");
      if (method != 0)
        fail("record '" + e.name + "' is compressed (method " + std::to_string(method) +
             "); PyTorch writes records uncompressed");
      if (compressed != e.size) fail("record '" + e.name + "': sizes disagree");
      // The local header repeats the name; its own extra field may differ in length.
      const auto lh = bytes_at(local, 30, ("the local header of '" + e.name + "'").c_str());
      if (read_le(lh.data(), 4) != 0x04034b50) fail("record '" + e.name + "': bad local header");
      e.data_offset = local + 30 + read_le(lh.data() + 26, 2) + read_le(lh.data() + 28, 2);
      if (e.data_offset > size || e.size > size - e.data_offset)
        fail("record '" + e.name + "' declares " + std::to_string(e.size) +
             " bytes, beyond the file's end (" + std::to_string(size) + " bytes)");
      if (!index_.emplace(e.name, entries_.size()).second)
        fail("record '" + e.name + "' appears twice");
      entries_.push_back(std::move(e));
    }
    if (entries_.empty()) fail("no records");
    const std::string& first = entries_.front().name;
    archive_ = first.substr(0, first.find('/'));
  }

  std::shared_ptr<ByteSource> source_;
  std::vector<ZipEntry> entries_;
  std::map<std::string, size_t> index_;
  std::string archive_;
};

}  // namespace io
}  // namespace v0
}  // namespace ihn
