#!/usr/bin/env bash
# Download Debian's cloud kernel package (6.12 from bookworm-backports on
# Debian 12) into a cache directory and print the .deb's path. The cloud
# flavour has virtio built in and boots fastest.
set -euo pipefail
cache=${1:-/var/cache/firesandbox}
mkdir -p "$cache"
target=""
. /etc/os-release
if [ "${VERSION_CODENAME:-}" = bookworm ]; then target="-t bookworm-backports"; fi
# shellcheck disable=SC2086
pkg=$(apt-cache depends $target linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
if [ -z "$pkg" ]; then
  echo "fetch-kernel: no linux-image-cloud-amd64 in this host's apt sources." >&2
  echo "fetch-kernel: download a Debian linux-image-*-cloud-amd64 .deb and run: firesandbox kernel prepare --deb FILE" >&2
  exit 1
fi
existing=$(ls "$cache/${pkg}_"*.deb 2>/dev/null | head -1 || true)
if [ -n "$existing" ]; then echo "$existing"; exit 0; fi
( cd "$cache" && apt-get download $target "$pkg" >&2 ) || { chmod 777 "$cache"; ( cd "$cache" && apt-get download $target "$pkg" >&2 ); }
ls "$cache/${pkg}_"*.deb | head -1
