#!/usr/bin/env bash
# Installs the Debian 12 packages ihn needs to build, test and run its tools.
# Idempotent: silent when everything is present; uses sudo when not root.
set -euo pipefail

packages=(
  build-essential cmake pkg-config
  libtorch-dev            # LibTorch 1.13 (CPU)
  libgloo-dev             # gloo's headers: c10d's Gloo process group (ihn train --nproc, torchrun)
  libopenblas0-openmp     # without it libtorch falls back to reference BLAS (~10x slower)
  libdnnl-dev             # oneDNN sgemm for the Linear layers (faster than OpenBLAS on them)
  libeigen3-dev libfmt-dev nlohmann-json3-dev libcli11-dev libstb-dev
  zlib1g-dev              # crc32: every checkpoint record's CRC-32 is verified
  clang-14 libclang-rt-14-dev  # the libFuzzer targets and the ASan/UBSan tests (fuzz/)
  catch2                  # Catch2 v2 single header
  wordnet-base            # synonym stage of the METEOR variant
  libstemmer-dev          # Snowball English stemmer: stem stage of the METEOR variant (ihn::eval)
  gnuplot-nox             # curves.png of ihn train / compare (report.html draws its own SVG)
  python3                 # tests/report/check_report.py reads report.html
)
if [[ "${IHN_WITH_BROWSER:-0}" == 1 ]]; then
  # The test that opens report.html in headless Chromium (scripts/test.sh sets this).
  packages+=(chromium)
fi
if [[ "${IHN_WITH_PYTHON:-0}" == 1 ]]; then
  # The tests that read Python-written checkpoints and compare with Pillow (scripts/test.sh
  # sets this), and the parity/benchmark scripts that run the official Python code.
  packages+=(python3-torch python3-torchvision python3-pil)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

sudo=""
if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
echo "ihn: installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
