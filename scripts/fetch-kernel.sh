#!/usr/bin/env bash
# Download Debian's cloud kernel package (6.12 from bookworm-backports on
# Debian 12) into a cache directory and print the .deb's path. The cloud
# flavour has virtio built in and boots fastest.
#
# The kernel runs every guest, so the .deb is only used when its SHA256 is
# the one in the package index that apt verified against the archive's
# signed Release file, whether it was just downloaded or found in the
# cache. `apt-get download` checks that too, and refuses packages it cannot
# authenticate; the cache is never writable by other users.
set -euo pipefail
umask 022
cache=${1:-/var/cache/firesandbox}
fail() { echo "fetch-kernel: $*" >&2; exit 1; }

mkdir -p "$cache"
# Older versions of this script made the cache world-writable: undo that.
if [ -O "$cache" ]; then chmod go-w "$cache"; fi
if [ -n "$(find "$cache" -maxdepth 0 -perm /022)" ]; then
  fail "$cache is writable by other users; fix its owner and mode (chmod go-w)"
fi

target=()
# shellcheck source=/dev/null
. /etc/os-release
if [ "${VERSION_CODENAME:-}" = bookworm ]; then target=(-t bookworm-backports); fi
pkg=$(apt-cache depends "${target[@]}" linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
if [ -z "$pkg" ]; then
  echo "fetch-kernel: no linux-image-cloud-amd64 in this host's apt sources." >&2
  echo "fetch-kernel: download a Debian linux-image-*-cloud-amd64 .deb and run: firesandbox kernel prepare --deb FILE" >&2
  exit 1
fi

# What the verified index says: 'URI' FILE SIZE SHA256:HEX
read -r _ file size hash < <(apt-get download --print-uris "${target[@]}" "$pkg") || fail "apt has no download for $pkg"
want=${hash#SHA256:}
if [ "$want" = "$hash" ] || ! [[ $want =~ ^[0-9a-f]{64}$ ]] || ! [[ $file =~ ^[A-Za-z0-9][A-Za-z0-9.+~_-]*\.deb$ ]]; then
  fail "unexpected answer from apt-get download --print-uris: $file $size $hash"
fi

# verify FILE: the size and SHA256 the index gives.
verify() {
  [ -f "$1" ] && [ ! -L "$1" ] && [ "$(stat -c %s "$1")" = "$size" ] &&
    [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$want" ]
}

deb=$cache/$file
if verify "$deb"; then echo "$deb"; exit 0; fi
if [ -e "$deb" ] || [ -L "$deb" ]; then
  echo "fetch-kernel: $deb does not match the signed package index; downloading it again" >&2
  rm -f "$deb"
fi

# Download into a private directory, which apt's unprivileged download
# user (_apt) may write to and nobody else may enter.
tmp=$(mktemp -d "$cache/.download.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
if [ "$(id -u)" = 0 ] && id _apt >/dev/null 2>&1; then chown _apt "$tmp"; fi
(cd "$tmp" && apt-get download -o APT::Get::AllowUnauthenticated=false "${target[@]}" "$pkg" >&2)
verify "$tmp/$file" || fail "downloaded $file does not match the SHA256 in the signed package index ($want)"
chmod 0644 "$tmp/$file"
mv -f "$tmp/$file" "$deb"
echo "$deb"
