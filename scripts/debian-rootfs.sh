#!/usr/bin/env bash
# Builds a minimal Debian root file system (a working dpkg database included) for the
# heavier container scenarios (scripts/dpkg-scenario.sh).
#
#   scripts/debian-rootfs.sh TARGET [SUITE]
#
# SUITE defaults to the host's codename. The only network used is the Debian mirror apt
# is configured with (the first deb.debian.org-style URI in /etc/apt/sources*):
#   1. debootstrap --variant=minbase against that mirror, when debootstrap is installed
#      and the mirror answers;
#   2. otherwise the "required" packages fetched with `apt-get download` (apt's own
#      configured sources) and unpacked with dpkg-deb -x, with a dpkg status database
#      written from their control files. Maintainer scripts do not run in this mode; the
#      script prints which mode it used.
# DEBIAN_ROOTFS_FALLBACK=1 forces the second way. Runs as root (device nodes, owners).
# debootstrap took 34-53 s here.
set -euo pipefail

target=${1:?usage: debian-rootfs.sh TARGET [SUITE]}
suite=${2:-$(. /etc/os-release && echo "${VERSION_CODENAME:?no codename in /etc/os-release}")}
[ "$(id -u)" = 0 ] || { echo "debian-rootfs.sh: must run as root" >&2; exit 1; }
if [ -e "$target" ] && [ -n "$(ls -A "$target" 2>/dev/null)" ]; then
    echo "debian-rootfs.sh: $target exists and is not empty" >&2
    exit 1
fi

# The mirror apt uses: deb822 sources first, then one-line sources.
mirror=$(grep -hoE '^URIs:[[:space:]]*[^[:space:]]+' /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | awk '{print $2}' | grep -v security | head -n1 || true)
if [ -z "$mirror" ]; then
    mirror=$(grep -hoE '^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?[^[:space:]]+' /etc/apt/sources.list 2>/dev/null \
        | awk '{print $NF}' | grep -v security | head -n1 || true)
fi

start=$(date +%s)
mkdir -p "$target"
if [ "${DEBIAN_ROOTFS_FALLBACK:-0}" != 1 ] && command -v debootstrap >/dev/null && [ -n "$mirror" ] \
    && curl -fsS -m 20 -o /dev/null "$mirror/dists/$suite/Release" 2>/dev/null; then
    echo "debian-rootfs.sh: debootstrap --variant=minbase $suite from $mirror" >&2
    debootstrap --variant=minbase "$suite" "$target" "$mirror" >"$target.debootstrap.log" 2>&1 || {
        tail -n 30 "$target.debootstrap.log" >&2
        echo "debian-rootfs.sh: debootstrap failed (log: $target.debootstrap.log)" >&2
        exit 1
    }
    rm -f "$target.debootstrap.log"
    mode=debootstrap
else
    echo "debian-rootfs.sh: debootstrap unavailable or mirror ${mirror:-<none>} unreachable;" \
        "building from apt-get download + dpkg-deb -x (maintainer scripts do not run)" >&2
    debs=$(mktemp -d)
    trap 'rm -rf "$debs"' EXIT
    apt-get update -qq
    # Priority: required, plus what they depend on (apt resolves it for a fresh system).
    required=$(dpkg-query -W -f='${Package} ${Priority}\n' | awk '$2=="required"{print $1}')
    (cd "$debs" && apt-get download $(apt-cache depends --recurse --no-recommends --no-suggests \
        --no-conflicts --no-breaks --no-replaces --no-enhances $required \
        | grep -E '^[a-z0-9]' | sort -u | grep -v ':i386$') >/dev/null)
    mkdir -p "$target/var/lib/dpkg/info" "$target/var/lib/dpkg/updates"
    : >"$target/var/lib/dpkg/status"
    : >"$target/var/lib/dpkg/available"
    for deb in "$debs"/*.deb; do
        pkg=$(dpkg-deb -f "$deb" Package)
        dpkg-deb -x "$deb" "$target"
        ctl=$(mktemp -d)
        dpkg-deb -e "$deb" "$ctl"
        { sed '/^$/d' "$ctl/control" | sed '/^Package:/a Status: install ok installed'; echo; } \
            >>"$target/var/lib/dpkg/status"
        dpkg-deb -c "$deb" | awk '{print substr($0, index($0, "./") + 1)}' \
            | sed -e 's#/$##' -e 's#^$#/.#' -e 's# -> .*##' -e 's# link to .*##' >"$target/var/lib/dpkg/info/$pkg.list"
        [ -f "$ctl/md5sums" ] && cp "$ctl/md5sums" "$target/var/lib/dpkg/info/$pkg.md5sums"
        [ -f "$ctl/conffiles" ] && cp "$ctl/conffiles" "$target/var/lib/dpkg/info/$pkg.conffiles"
        rm -rf "$ctl"
    done
    # What base-passwd's postinst would have done.
    for f in passwd group; do
        [ -e "$target/etc/$f" ] || cp "$target/usr/share/base-passwd/$f.master" "$target/etc/$f"
    done
    mode=apt-get-download
fi
echo "debian-rootfs.sh: $target built by $mode in $(( $(date +%s) - start ))s" >&2
