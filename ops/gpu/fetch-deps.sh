#!/usr/bin/env bash
# ops/gpu/fetch-deps.sh: the build's libraries as Debian bookworm packages in .deps/ (git-ignored
# through .git/info/exclude), for a GPU machine whose bare CUDA image lacks them and that can reach
# no package registry. Run here, on the Debian machine; carry .deps to the device machine, where
# ops/gpu/run.sh unpacks them into a private prefix (dpkg -x, never into /) when pkg-config cannot
# find the libraries. Bookworm's glibc (2.36) is older than the device image's, so its binaries
# load there. Only what the build links and what those libraries need beyond a CUDA image; no
# PostgreSQL server (the tests that start one are informational in run.sh's ctest_all, and the
# server with its LLVM and ICU would not fit the 64 MiB that travels).
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.deps/' .git/info/exclude 2>/dev/null || echo '/.deps/' >>"$(git rev-parse --git-common-dir)/info/exclude"
mkdir -p .deps
cd .deps
PKGS=(libjansson-dev libjansson4 libmicrohttpd-dev libmicrohttpd12 libpcre2-dev libpcre2-8-0
      libpcre2-16-0 libpcre2-32-0 libpcre2-posix3 libargon2-dev libargon2-1 libpq-dev libpq5
      libcurl4-openssl-dev libcurl4 libssl-dev libssl3 libgnutls30 libnghttp2-14 librtmp1
      libssh2-1 libpsl5 libldap-2.5-0 libsasl2-2 libbrotli1 libidn2-0 libunistring2
      libgssapi-krb5-2 libkrb5-3 libk5crypto3 libkrb5support0 libkeyutils1 libp11-kit0
      libtasn1-6 libnettle8 libhogweed6 libgmp10 libffi8 libzstd1 node-llhttp)
apt-get download "${PKGS[@]}"
du -sh .
