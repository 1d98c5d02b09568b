# shellcheck shell=bash
# What the build and the test suite need from the machine: the one list, sourced by
# scripts/test (which installs what is missing before building) and .ci/run. Debian
# package names. Each line: PACKAGE THING, where THING is a command looked up on PATH or an
# absolute path that must exist. The checks use shell builtins only, so they answer the
# same whatever PATH holds (mount-helper/tests/fresh_machine.rs runs them that way).
LAYERFS_DEPS='
fuse3 fusermount3
attr getfattr
attr setfattr
acl setfacl
fuse-overlayfs fuse-overlayfs
util-linux setpriv
util-linux unshare
util-linux mountpoint
bsdutils script
pkg-config pkg-config
libfuse3-dev /usr/include/fuse3/fuse.h
libacl1-dev /usr/include/sys/acl.h
build-essential cc
ca-certificates /etc/ssl/certs/ca-certificates.crt
skopeo skopeo
umoci umoci
podman podman
docker-registry docker-registry
fio fio
uidmap newuidmap
passwd useradd
passwd usermod
crun crun
runc runc
bubblewrap bwrap
busybox-static busybox
file file
tar tar
tmux tmux
apache2-utils htpasswd
openssl openssl
buildah buildah
'

# Prints "PACKAGE THING" for each missing thing.
deps_missing() {
    local pkg what
    while read -r pkg what; do
        [ -n "$pkg" ] || continue
        case $what in
            /*) [ -e "$what" ] || printf '%s %s\n' "$pkg" "$what" ;;
            *) command -v "$what" >/dev/null 2>&1 || printf '%s %s\n' "$pkg" "$what" ;;
        esac
    done <<<"$LAYERFS_DEPS"
}

# Every package of the list, once each.
deps_packages() {
    local pkg what seen=' '
    while read -r pkg what; do
        [ -n "$pkg" ] || continue
        case $seen in *" $pkg "*) continue ;; esac
        seen="$seen$pkg "
        printf '%s\n' "$pkg"
    done <<<"$LAYERFS_DEPS"
}

# One line on stderr per missing thing ("WHO: missing THING (apt-get install PACKAGE)");
# status 1 if anything is missing.
deps_check() {
    local who=${1:-scripts/test} pkg what bad=0
    while read -r pkg what; do
        [ -n "$pkg" ] || continue
        printf '%s: missing %s (apt-get install %s)\n' "$who" "$what" "$pkg" >&2
        bad=1
    done <<<"$(deps_missing)"
    return $bad
}

# Installs the missing packages with apt-get when it can (root, apt-get present, and
# LAYERFS_NO_INSTALL unset), then checks again: status 1, with one line per thing still
# missing, if that did not help.
deps_ensure() {
    local who=${1:-scripts/test} missing pkgs=' ' pkg what
    missing=$(deps_missing)
    [ -n "$missing" ] || return 0
    while read -r pkg what; do
        case $pkgs in *" $pkg "*) ;; *) pkgs="$pkgs$pkg " ;; esac
    done <<<"$missing"
    if [ -z "${LAYERFS_NO_INSTALL:-}" ] && [ "${EUID:-1}" = 0 ] && command -v apt-get >/dev/null; then
        echo "$who: installing $pkgs" >&2
        # A fresh machine's package lists may be stale (a dependency of a newer version
        # than the lists know): update first.
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || true
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $pkgs >&2 ||
            echo "$who: apt-get install failed" >&2
    fi
    deps_check "$who"
}
