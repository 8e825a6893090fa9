#!/usr/bin/env bash
# The Debian packages ihn builds with, for a GPU machine that has CUDA, PyTorch, CMake and a
# compiler but none of them and no network (the lent device machines).
#
#   benchmarks/gpu/deps.sh fetch          here (Debian 12, network): the .debs into .gpu-deps/
#                                         (git-ignored; about 3.5 MB)
#   eval "$(benchmarks/gpu/deps.sh env)"  there: unpacks them under $IHN_DEPS (/tmp/ihn-deps) and
#                                         sets IHN_DEPS_CMAKE_ARGS (prefix, header-only fmt) and
#                                         LD_LIBRARY_PATH (libstemmer)
#
# Headers only where possible: fmt is used header-only (IHN_FMT_HEADER_ONLY), so no library built
# for Debian's C++ runtime is linked; only libstemmer (C) and libstb (C) are.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
debs="$root/.gpu-deps"
# Not gloo: c10d's Gloo backend must be compiled against the gloo its LibTorch was built with,
# and PyTorch's wheels ship those headers (torch/include/gloo), which CMake finds first.
packages=(libfmt-dev libfmt9 nlohmann-json3-dev libcli11-dev libeigen3-dev libstb-dev libstb0
          libstemmer-dev libstemmer0d zlib1g-dev zlib1g catch2)

case "${1:-}" in
fetch)
  mkdir -p "$debs"
  (cd "$debs" && apt-get download "${packages[@]}")
  ls -l "$debs"
  ;;
env)
  [ -d "$debs" ] || { echo "echo 'no $debs: run benchmarks/gpu/deps.sh fetch first' >&2; false"; exit 0; }
  prefix=${IHN_DEPS:-/tmp/ihn-deps}
  mkdir -p "$prefix"
  for deb in "$debs"/*.deb; do
    if command -v dpkg-deb > /dev/null; then
      dpkg-deb -x "$deb" "$prefix"
    else  # a .deb is an ar archive holding data.tar.xz (Debian 12)
      ar p "$deb" data.tar.xz | tar -xJ -C "$prefix"
    fi
  done
  libdir="$prefix/usr/lib/x86_64-linux-gnu"
  # Debian's stb.pc names /usr: the headers are found through the prefix instead.
  echo "export IHN_DEPS=$prefix"
  echo "export LD_LIBRARY_PATH=$libdir\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
  echo "export IHN_DEPS_CMAKE_ARGS='-DIHN_FMT_HEADER_ONLY=ON -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF'"
  echo "export IHN_DEPS_PREFIX='$prefix/usr;$libdir'"
  ;;
*)
  echo "usage: $0 fetch | env" >&2
  exit 2
  ;;
esac
