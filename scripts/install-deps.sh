#!/usr/bin/env bash
# Install what firesandbox needs on a Debian 12 (bookworm) host, as root:
# QEMU 10 and friends from bookworm-backports, image tools, and Go if absent.
# With --test, also what the tests need (PostgreSQL, HAProxy, Node.js).
# Safe to run again.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: run as root (sudo make setup)" >&2
  exit 1
fi
. /etc/os-release
export DEBIAN_FRONTEND=noninteractive

backports=""
if [ "${ID:-}" = debian ] && [ "${VERSION_CODENAME:-}" = bookworm ]; then
  if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo "install-deps: enabling bookworm-backports (QEMU 10, kernel 6.12)"
    cat > /etc/apt/sources.list.d/firesandbox-backports.sources <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  fi
  backports="-t bookworm-backports"
elif [ "${ID:-}" != debian ] && [ "${ID:-}" != ubuntu ]; then
  echo "install-deps: ${PRETTY_NAME:-this OS} is not Debian or Ubuntu; install QEMU (microvm), squashfs-tools, erofs-utils, debootstrap, e2fsprogs and Go yourself" >&2
  exit 1
fi

apt-get update -q
# shellcheck disable=SC2086
apt-get install -y -q --no-install-recommends $backports qemu-system-x86 qemu-system-data
apt-get install -y -q --no-install-recommends \
  squashfs-tools erofs-utils debootstrap e2fsprogs zstd xz-utils ca-certificates make git gcc libc6-dev \
  iproute2 nftables passt dmsetup
if [ "${1:-}" = --test ]; then
  # The cluster tests (make test-cluster) run a throwaway PostgreSQL and an
  # HAProxy on loopback; they start their own servers, not these packages'.
  # The SDK tests run the npm packages with Node.js.
  apt-get install -y -q --no-install-recommends postgresql-15 haproxy
  command -v node >/dev/null 2>&1 || apt-get install -y -q --no-install-recommends nodejs npm
fi

if ! command -v go >/dev/null 2>&1 && [ ! -x /usr/local/go/bin/go ]; then
  # Debian's Go fetches the toolchain go.mod asks for from the module proxy.
  # shellcheck disable=SC2086
  apt-get install -y -q --no-install-recommends $backports golang-go
fi
echo "install-deps: done ($(qemu-system-x86_64 --version | head -1))"
