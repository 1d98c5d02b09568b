#!/usr/bin/env bash
# Run pjdfstest (the POSIX file system test suite, `cargo install pjdfstest`) on a layerfs
# mount of a lower + upper stack, print a `N passed, N failed` summary and compare the
# failures with tests/pjdfstest-expected-failures.txt (one test name and reason a line).
# Exits non-zero when a test fails that is not listed there. Needs root and /dev/fuse.
#
# Environment:
#   LAYERFS_BIN         daemon to test (default: target/debug/layerfs, built if missing);
#                       any fuse-overlayfs compatible binary works
#   PJDFSTEST_BACKEND   `kernel` runs on kernel overlayfs instead (reference run)
#   PJDFSTEST_EXPECTED  expected-failures file (default: tests/pjdfstest-expected-failures.txt)
#   PJDFSTEST_VERSION   version to install when pjdfstest is missing (default 0.2.2)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
expected=${PJDFSTEST_EXPECTED:-$root/tests/pjdfstest-expected-failures.txt}
backend=${PJDFSTEST_BACKEND:-layerfs}

die() { echo "pjdfstest.sh: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (pjdfstest switches users and makes devices)"
[ -e /dev/fuse ] || [ "$backend" = kernel ] || die "/dev/fuse is missing"

export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v pjdfstest >/dev/null; then
    echo "pjdfstest.sh: installing pjdfstest ${PJDFSTEST_VERSION:-0.2.2}" >&2
    cargo install --locked pjdfstest --version "${PJDFSTEST_VERSION:-0.2.2}" >&2
fi

# pjdfstest switches to two dummy users; `nobody` exists, `tests` may not.
getent group nogroup >/dev/null || groupadd -r nogroup
if ! getent passwd tests >/dev/null; then
    # A `tests` group may exist without the user (left by another tool): join it then.
    if getent group tests >/dev/null; then useradd -M -g tests -s /usr/sbin/nologin tests
    else useradd -M -U -s /usr/sbin/nologin tests; fi
fi

bin=${LAYERFS_BIN:-$root/target/debug/layerfs}
if [ "$backend" != kernel ] && [ -z "${LAYERFS_BIN:-}" ] && [ ! -x "$bin" ]; then
    (cd "$root" && cargo build --bin layerfs >&2)
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/layerfs-pjdfstest.XXXXXX")
chmod 755 "$tmp"   # the dummy users must reach the mount
mnt=$tmp/mnt
cleanup() {
    if mountpoint -q "$mnt"; then
        if [ "$backend" = kernel ]; then umount "$mnt" || umount -l "$mnt"
        else fusermount3 -u "$mnt" || fusermount3 -uz "$mnt"; fi
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

mkdir -p "$tmp"/{lower1,lower2,upper,work,mnt}
# The suite runs inside a directory that exists in a lower layer, next to lower content,
# so its first change copies the directory up.
mkdir -p "$tmp/lower2/pjd/old" "$tmp/lower1/pjd"
echo data > "$tmp/lower2/pjd/old/file"
echo data > "$tmp/lower1/lowerfile"

cat > "$tmp/pjdfstest.toml" <<'TOML'
[features]
posix_fallocate = {}
utimensat = {}
utime_now = {}
rename_ctime = {}

[settings]
naptime = 0.01
allow_remount = false

[dummy_auth]
entries = [["nobody", "nogroup"], ["tests", "tests"]]
TOML

opts="lowerdir=$tmp/lower1:$tmp/lower2,upperdir=$tmp/upper,workdir=$tmp/work"
if [ "$backend" = kernel ]; then
    mount -t overlay overlay -o "$opts,index=on,redirect_dir=on,metacopy=off" "$mnt"
else
    "$bin" -o "$opts" "$mnt" || die "$bin failed to mount"
fi
mountpoint -q "$mnt" || die "$mnt is not mounted"

log=$tmp/pjdfstest.log
set +e
RUST_BACKTRACE=0 pjdfstest -c "$tmp/pjdfstest.toml" -p "$mnt/pjd" >"$log" 2>&1
status=$?
set -e
if [ -n "${PJDFSTEST_LOG:-}" ]; then cp "$log" "$PJDFSTEST_LOG"; fi

grep -q '^Summary:' "$log" || { tail -50 "$log" >&2; die "pjdfstest did not finish (exit $status)"; }
passed=$(grep -cE '^[^[:space:]]+[[:space:]]+ok$' "$log" || true)
failed_list=$(grep -E '^[^[:space:]]+[[:space:]]+FAILED$' "$log" | awk '{print $1}' | sort -u)
skipped=$(grep -cE '^[^[:space:]]+[[:space:]]+skipped$' "$log" || true)
failed=$(printf '%s' "$failed_list" | grep -c . || true)

expected_list=$(grep -vE '^[[:space:]]*(#|$)' "$expected" | awk '{print $1}' | sort -u)
unexpected=$(comm -23 <(printf '%s\n' "$failed_list" | grep .) <(printf '%s\n' "$expected_list") || true)
fixed=$(comm -13 <(printf '%s\n' "$failed_list" | grep .) <(printf '%s\n' "$expected_list") || true)

echo "pjdfstest on $backend: $passed passed, $failed failed ($skipped skipped; $(printf '%s' "$expected_list" | grep -c . || true) failures expected)"
if [ -n "$fixed" ]; then
    echo "expected to fail but passed (remove from $(basename "$expected")):"
    printf '  %s\n' $fixed
fi
if [ -n "$unexpected" ]; then
    echo "UNEXPECTED failures:"
    for t in $unexpected; do
        echo "  $t"
        grep -A3 -E "^$t[[:space:]]+FAILED$" "$log" | sed -n '2,4p' | sed 's/^/      /'
    done
    exit 1
fi
