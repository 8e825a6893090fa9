#!/usr/bin/env python3
"""Writes fuzz/regressions/: one input per crash or blow-up of issue 13 (item 3, 8, 9), each a
few KB. Run from fuzz/ (needs only Python's standard library and fuzz/corpus/checkpoint/
pickle_save.pt, a checkpoint written by ihn::save_state). The seeds in fuzz/corpus were written
by torch.save / Pillow / ihn::save_state once; libFuzzer adds to its own copy, not to them. The
inputs libFuzzer found (regressions/image/jpeg_*.jpg, regressions/annotation/*.json) are kept as
it wrote them."""
import struct
import zipfile

STORED = zipfile.ZIP_STORED


def write_zip(path, records, archive="archive"):
    with zipfile.ZipFile(path, "w", STORED) as z:
        for name, data in records:
            z.writestr(f"{archive}/{name}", data)


def records_of(path):
    with zipfile.ZipFile(path) as z:
        return [(n.split("/", 1)[1], z.read(n)) for n in z.namelist()]


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


# A list that contains itself: PROTO 2, EMPTY_LIST, BINPUT 0, BINGET 0, APPEND, STOP.
cycle = b"\x80\x02]q\x00h\x00a."
write_zip("regressions/pth/self_referencing_list.pt", [("data.pkl", cycle)])
write_zip("regressions/checkpoint/self_referencing_list.pt", [("data.pkl", cycle)])
# 100k nested lists (the materialiser recursed once per level).
depth = 100000
write_zip("regressions/pth/nested_100k_lists.pt",
          [("data.pkl", b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b".")])
# L(i+1) = [L(i), L(i)], 60 times: 2^60 paths through 61 lists.
laughs = b"\x80\x02(]q\x00"
for i in range(60):
    laughs += b"](h" + bytes([i]) + b"h" + bytes([i]) + b"eq" + bytes([i + 1])
write_zip("regressions/pth/shared_lists_2pow60_paths.pt", [("data.pkl", laughs + b"l.")])

good = "corpus/checkpoint/pickle_save.pt"  # {"big": arange(1000), "w": arange(15).reshape(3, 5)}
recs = records_of(good)
pkl = dict(recs)["data.pkl"]

# data.pkl whose central directory entry declares 3 GiB (compressed and uncompressed).
data = bytearray(open(good, "rb").read())
at = 0
while True:
    at = data.find(b"PK\x01\x02", at)
    assert at >= 0
    name_len = struct.unpack_from("<H", data, at + 28)[0]
    if data[at + 46:at + 46 + name_len].endswith(b"/data.pkl"):
        break
    at += 1
struct.pack_into("<II", data, at + 20, 0xC0000000, 0xC0000000)
write("regressions/pth/data_pkl_declares_3GiB.pt", bytes(data))

# w's strides (5, 1) -> (6, 1): the view reads past its storage (CRCs recomputed).
i = pkl.index(b"(K\x05K\x01t")
strided = pkl[:i + 2] + b"\x06" + pkl[i + 3:]
write_zip("regressions/checkpoint/stride_plus_one.pt",
          [(n, strided if n == "data.pkl" else d) for n, d in recs])
# big's storage declares 0x7fe8 elements, its record holds 1000.
i = pkl.index(b"M\xe8\x03tQ")
numel = pkl[:i + 2] + b"\x7f" + pkl[i + 3:]
write_zip("regressions/checkpoint/storage_numel_past_record.pt",
          [(n, numel if n == "data.pkl" else d) for n, d in recs])
# 32 weight bytes overwritten in place (the CRC no longer matches).
data = bytearray(open(good, "rb").read())
with zipfile.ZipFile(good) as z:
    info = next(x for x in z.infolist() if x.file_size == 4000)
    name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
    start = info.header_offset + 30 + name_len + extra_len + 1000
data[start:start + 32] = b"\x42" * 32
write("regressions/checkpoint/32_overwritten_weight_bytes.pt", bytes(data))
# Cut short by 100 bytes.
write("regressions/checkpoint/truncated.pt", open(good, "rb").read()[:-100])


# PNG headers declaring 20000 x 20000 (gray: 400 MB, RGB: 1.2 GB); the first byte is the
# fuzz target's choice of components.
def png_header(colour_type):
    ihdr = struct.pack(">II", 20000, 20000) + bytes([8, colour_type, 0, 0, 0])
    return (b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x0dIHDR" + ihdr + b"\x00" * 4 +
            b"\x00\x00\x00\x00IEND\xae\x42\x60\x82")


write("regressions/image/png_header_20000x20000_gray.png", b"\x00" + png_header(0))
write("regressions/image/png_header_20000x20000_rgb.png", b"\x02" + png_header(2))
