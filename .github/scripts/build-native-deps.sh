#!/usr/bin/env bash
# Build ISA-L, xxHash, LMDB and zstd from their release sources into /usr/local for manylinux
# wheels (cibuildwheel before-all); OpenSSL's libcrypto (ext/seal.pyx) comes from the image's
# package (1.1.1 or 3.x: the EVP calls used exist in both). No library source is kept here.
set -euo pipefail
ISAL_VERSION=2.31.0
XXHASH_VERSION=0.8.2
LMDB_VERSION=0.9.31
ZSTD_VERSION=1.5.5
work=$(mktemp -d)
cd "$work"
yum install -y nasm autoconf automake libtool zlib-devel openssl-devel >/dev/null 2>&1 || \
  (apt-get update && apt-get install -y nasm autoconf automake libtool zlib1g-dev libssl-dev)

curl -fsSL "https://github.com/intel/isa-l/archive/refs/tags/v${ISAL_VERSION}.tar.gz" | tar xz
(cd "isa-l-${ISAL_VERSION}" && ./autogen.sh && ./configure --prefix=/usr/local && make -j"$(nproc)" && make install)

curl -fsSL "https://github.com/Cyan4973/xxHash/archive/refs/tags/v${XXHASH_VERSION}.tar.gz" | tar xz
# DISPATCH=1 (x86-64): XXH3 picks AVX2/AVX-512 at run time (used by ext/seal.pyx, setup.py)
dispatch=0; [ "$(uname -m)" = x86_64 ] && dispatch=1
(cd "xxHash-${XXHASH_VERSION}" && make -j"$(nproc)" lib DISPATCH=$dispatch \
  && make install PREFIX=/usr/local DISPATCH=$dispatch)

curl -fsSL "https://github.com/LMDB/lmdb/archive/refs/tags/LMDB_${LMDB_VERSION}.tar.gz" | tar xz
(cd "lmdb-LMDB_${LMDB_VERSION}/libraries/liblmdb" && make -j"$(nproc)" && make install prefix=/usr/local)
# libzstd (ext/compress.pyx: the zstd chunk codec, docs/FORMAT.md §11.6); the library only
curl -fsSL "https://github.com/facebook/zstd/releases/download/v${ZSTD_VERSION}/zstd-${ZSTD_VERSION}.tar.gz" | tar xz
(cd "zstd-${ZSTD_VERSION}/lib" && make -j"$(nproc)" lib-release && make install PREFIX=/usr/local)
ldconfig || true
