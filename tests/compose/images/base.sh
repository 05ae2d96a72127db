#!/usr/bin/env bash
# Builds natter-test/debian-base:bookworm-2, the base of the local stand-ins for the
# official images (which cannot be pulled here): a Debian bookworm made with
# debootstrap and `docker import`, with Postgres, HAProxy, wget, and Patroni and etcd
# (for the HA stack, `tests/compose/run ha`) inside. Skipped when the image already
# exists, so only the first run on a machine pays for it; the tag's number goes up when
# what is inside changes.
#
# The mirror is the machine's own Debian mirror, read from its apt sources.
set -euo pipefail

IMAGE="natter-test/debian-base:bookworm-2"
if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    exit 0
fi

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v debootstrap >/dev/null; then
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq debootstrap >/dev/null
fi

mirror="$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -n1 || true)"
if [ -z "$mirror" ]; then
    mirror="$(grep -hs '^deb ' /etc/apt/sources.list | awk '{print $2}' | grep -v security | head -n1 || true)"
fi
[ -n "$mirror" ] || { echo "no Debian mirror in the apt sources" >&2; exit 1; }

root="$(mktemp -d /tmp/natter-base.XXXXXX)"
trap 'as_root rm -rf "$root"' EXIT
echo "[base] debootstrap bookworm from $mirror (first run only)" >&2
as_root debootstrap --variant=minbase \
    --include=postgresql-15,haproxy,wget,ca-certificates,procps,patroni,etcd-server \
    bookworm "$root" "$mirror" >/dev/null
as_root rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
as_root tar -C "$root" -c . | docker import - "$IMAGE" >/dev/null
echo "[base] built $IMAGE" >&2
