#!/usr/bin/env bash
# A package manager on a layerfs mount (issue 4): on a Debian base, inside a container
# (bubblewrap, no network), install .debs fetched beforehand with `apt-get download`;
# in a second layer purge some, remove and reinstall others; `dpkg --audit` and
# `dpkg --verify` must be clean after each layer, and the final merged tree must equal the
# same steps run on a plain copy of the base (names, types, modes, owners, sizes, link
# targets, content hashes).
#
#   scripts/dpkg-scenario.sh [WORKDIR]
#
# Environment: DEBIAN_ROOTFS=DIR reuses a base built by scripts/debian-rootfs.sh (else one
# is built in WORKDIR); LAYERFS_BIN picks the daemon (default: target/debug/layerfs);
# DPKG_SCENARIO_USER=NAME runs the layerfs part rootless: as that user, in a user namespace
# mapping root to the user and 1..65536 to its subordinate ids (podman's layout), on a copy
# of the base whose owners are shifted into that range (as podman's import does).
# Runs as root. Takes 45-65 s with a fresh debootstrap, 11-15 s with DEBIAN_ROOTFS set
# (2 cores; see docs/ROOTLESS.md).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
fail() { echo "dpkg-scenario: FAIL: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "run as root (debootstrap, device nodes, owners)"
for tool in bwrap dpkg-deb apt-get fusermount3 sha256sum; do
    command -v $tool >/dev/null || fail "$tool is missing (apt-get install bubblewrap fuse3 ...)"
done
layerfs=${LAYERFS_BIN:-$repo/target/debug/layerfs}
if [ ! -x "$layerfs" ]; then
    (cd "$repo" && cargo build --quiet --bin layerfs)
fi

work=${1:-$(mktemp -d /tmp/layerfs-dpkg-XXXXXX)}
mkdir -p "$work"
t0=$(date +%s)
phase() { echo "dpkg-scenario: [$(( $(date +%s) - t0 ))s] $*" >&2; }

base=${DEBIAN_ROOTFS:-$work/base}
if [ ! -d "$base/var/lib/dpkg" ]; then
    phase "building the Debian base in $base"
    "$repo/scripts/debian-rootfs.sh" "$base"
fi

# The packages: small, with dependencies among themselves, maintainer scripts
# (update-alternatives in less), and shared libraries (ldconfig triggers).
pkgs="hello tree less jq libjq1 libonig5"
debs=$work/debs
if [ -z "$(ls "$debs"/*.deb 2>/dev/null)" ]; then
    phase "apt-get download $pkgs"
    mkdir -p "$debs"
    (cd "$debs" && apt-get download $pkgs >/dev/null) || fail "apt-get download $pkgs"
fi

# Runs a shell script as root in a container on ROOT: own pid/ipc/uts/net namespaces
# (no network), the .debs read-only on /mnt.
in_container() {
    local root=$1 script=$2
    bwrap --unshare-pid --unshare-ipc --unshare-uts --unshare-net --die-with-parent \
        --bind "$root" / --proc /proc --dev /dev --ro-bind "$debs" /mnt --chdir / \
        --clearenv --setenv PATH /usr/sbin:/usr/bin:/sbin:/bin \
        --setenv DEBIAN_FRONTEND noninteractive --setenv LC_ALL C \
        -- /bin/sh -euc "$script"
}

# Both checks must be silent.
checks='out=$(dpkg --audit); [ -z "$out" ] || { echo "dpkg --audit: $out" >&2; exit 1; }
out=$(dpkg --verify); [ -z "$out" ] || { echo "dpkg --verify: $out" >&2; exit 1; }'
step1="dpkg -i /mnt/*.deb >/dev/null
$checks"
step2="dpkg --purge jq libjq1 libonig5 tree >/dev/null
dpkg -r hello >/dev/null
dpkg -i /mnt/hello_*.deb /mnt/libonig5_*.deb /mnt/libjq1_*.deb /mnt/jq_*.deb >/dev/null
test \"\$(hello)\" = 'Hello, world!'
echo '{\"a\":[1,2]}' | jq -c .a | grep -qx '\\[1,2\\]'
! command -v tree >/dev/null
$checks"

mnt=$work/mnt
mkdir -p "$mnt"
mounted=
cleanup() { [ -z "$mounted" ] || fusermount3 -u "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true; }
trap cleanup EXIT
mount_stack() {
    "$layerfs" -o "$1" "$mnt" || fail "layerfs -o $1"
    mounted=1
}
unmount_stack() {
    # fusermount3 for mounts it made; umount for direct mounts (root, user namespaces).
    fusermount3 -u "$mnt" 2>/dev/null || umount "$mnt" || fail "unmount $mnt"
    mounted=
}

# One line per entry: path, type, mode, owner, size (files), link target, sha256 (files).
# Left out: logs with timestamps and ldconfig's cache of inode/ctime data.
snapshot() {
    (cd "$1" && find . -xdev \( -path ./proc -o -path ./dev -o -path ./sys \
        -o -path ./var/log/dpkg.log -o -path ./var/log/alternatives.log \
        -o -path ./var/cache/ldconfig/aux-cache \) -prune -o \
        -printf '%p %y %m %U:%G %s %l\n' \
        | awk '$2 == "d" { $5 = "-" } { print }' | sort
     cd "$1" && find . -xdev \( -path ./proc -o -path ./dev -o -path ./sys \
        -o -path ./var/log/dpkg.log -o -path ./var/log/alternatives.log \
        -o -path ./var/cache/ldconfig/aux-cache \) -prune -o -type f -print0 \
        | sort -z | xargs -0 sha256sum)
}

# Both layers on layerfs, then the merged tree's snapshot in layered.txt.
layered_run() {
    local base=$1
    phase "layer 1 on layerfs: dpkg -i $pkgs"
    mount_stack "lowerdir=$base,upperdir=$work/u1,workdir=$work/w1"
    in_container "$mnt" "$step1" || fail "layer 1 (install) failed on layerfs"
    unmount_stack
    phase "layer 2 on layerfs: purge, remove, reinstall"
    mount_stack "lowerdir=$work/u1:$base,upperdir=$work/u2,workdir=$work/w2"
    in_container "$mnt" "$step2" || fail "layer 2 (purge/reinstall) failed on layerfs"
    unmount_stack
    mount_stack "lowerdir=$work/u2:$work/u1:$base"
    snapshot "$mnt" >"$work/layered.txt"
    unmount_stack
}

if [ "${DPKG_SCENARIO_INNER:-}" = 1 ]; then
    # Re-executed as the user inside its namespace: only the layered part.
    layered_run "$base"
    exit 0
fi

rm -rf "$work"/u1 "$work"/w1 "$work"/u2 "$work"/w2 "$work"/plain
mkdir -p "$work"/u1 "$work"/w1 "$work"/u2 "$work"/w2
if [ -n "${DPKG_SCENARIO_USER:-}" ]; then
    user=$DPKG_SCENARIO_USER
    uid=$(id -u "$user") gid=$(id -g "$user") || fail "no user $user"
    sub=$(awk -F: -v u="$user" '$1 == u { print $2; exit }' /etc/subuid)
    subg=$(awk -F: -v u="$user" '$1 == u { print $2; exit }' /etc/subgid)
    [ -n "$sub" ] && [ -n "$subg" ] || fail "$user has no subordinate ids in /etc/subuid, /etc/subgid"
    shifted=$work/base-$user
    if [ ! -e "$shifted/.shifted" ]; then
        phase "shifting the base's owners into $user's namespace ids"
        rm -rf "$shifted"
        cp -a "$base" "$shifted"
        python3 - "$shifted" "$uid" "$gid" "$sub" "$subg" <<'PY'
import os, sys
root, uid, gid, sub, subg = sys.argv[1], *map(int, sys.argv[2:])
# Namespace id 0 is the user, 1..65536 its subordinate ids (podman's layout).
shift = lambda i, me, base: me if i == 0 else base + i - 1
def entries():
    for d, dirs, files in os.walk(root):
        yield d
        # Symlinks to directories are listed among dirs but never walked into.
        for x in files + [x for x in dirs if os.path.islink(os.path.join(d, x))]:
            yield os.path.join(d, x)
# Each inode exactly once: hard links share one, and a directory comes up again as its
# own walk root.
seen = set()
for n in entries():
    st = os.lstat(n)
    if (st.st_dev, st.st_ino) in seen:
        continue
    seen.add((st.st_dev, st.st_ino))
    mode = st.st_mode & 0o7777
    os.lchown(n, shift(st.st_uid, uid, sub), shift(st.st_gid, gid, subg))
    if not os.path.islink(n) and mode & 0o6000:
        os.chmod(n, mode)  # chown clears setuid/setgid bits
PY
        touch "$shifted/.shifted"
    fi
    chown "$uid:$gid" "$work" "$work"/u1 "$work"/w1 "$work"/u2 "$work"/w2 "$mnt"
    chmod 755 "$work"
    chmod -R a+rX "$debs"
    # Copies the user can reach wherever the repository lives.
    self=$work/dpkg-scenario.sh
    cp "$0" "$self" && chmod 755 "$self"
    cp "$layerfs" "$work/layerfs" && chmod 755 "$work/layerfs"
    phase "rootless: as $user in a user namespace (root = $uid, 1..65536 = $sub..)"
    setpriv --reuid="$uid" --regid="$gid" --clear-groups \
        env DPKG_SCENARIO_INNER=1 DEBIAN_ROOTFS="$shifted" LAYERFS_BIN="$work/layerfs" \
        unshare --map-root-user --map-users="$sub,1,65536" --map-groups="$subg,1,65536" -m \
        "$self" "$work" || fail "the rootless layered run failed"
    rm -f "$work/layerfs" "$self"
    # Taken inside the namespace, owners read as unshifted ids, except the marker.
    sed -i '/\.\/\.shifted/d' "$work/layered.txt"
else
    layered_run "$base"
fi


phase "the same steps on a plain copy of the base"
cp -a "$base" "$work/plain"
in_container "$work/plain" "$step1" || fail "layer 1 failed on the plain directory"
in_container "$work/plain" "$step2" || fail "layer 2 failed on the plain directory"

phase "comparing the merged tree with the plain one"
snapshot "$work/plain" >"$work/plain.txt"
if ! diff -u "$work/plain.txt" "$work/layered.txt" >"$work/tree.diff"; then
    head -n 40 "$work/tree.diff" >&2
    fail "the merged tree differs from the plain directory (full diff: $work/tree.diff)"
fi
entries=$(wc -l <"$work/plain.txt")
phase "PASS: dpkg --audit/--verify clean in both layers; merged tree equals the plain run ($entries lines compared); upper sizes: $(du -sh "$work/u1" | cut -f1) + $(du -sh "$work/u2" | cut -f1)"
