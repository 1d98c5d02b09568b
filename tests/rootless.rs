//! layerfs as an ordinary user: inside a user namespace (`unshare`, mounting directly) and
//! outside one (through the setuid fusermount3), plus the id mapping options. Every test
//! runs real operations through the mount as the unprivileged test user, then checks what
//! landed in the upper directory: whiteouts, `user.overlay.*` xattrs, owners.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::rootless::*;
use common::{assert_success, lgetxattr_str, llistxattr, ls, lstat, read_str, type_tree};

/// Overlay xattrs on a path, excluding the daemon's own inode-number record.
fn overlay_xattrs(path: &Path) -> Vec<String> {
    let mut v: Vec<String> = llistxattr(path)
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.contains(".overlay."))
        .collect();
    v.sort();
    v
}

/// l0: a (file), d/f, keep/k, ren/r1, hard1 = hard2 (one inode), sym -> a. Owned by
/// uid:gid.
fn lower_layer(dir: &UserDir, uid: u32, gid: u32) {
    let l0 = dir.p("l0");
    for d in ["l0/d", "l0/keep", "l0/ren", "upper", "work", "mnt"] {
        fs::create_dir_all(dir.p(d)).unwrap();
    }
    fs::write(l0.join("a"), "hello\n").unwrap();
    fs::write(l0.join("d/f"), "f\n").unwrap();
    fs::write(l0.join("keep/k"), "k\n").unwrap();
    fs::write(l0.join("ren/r1"), "r1\n").unwrap();
    fs::write(l0.join("hard1"), "h\n").unwrap();
    fs::hard_link(l0.join("hard1"), l0.join("hard2")).unwrap();
    std::os::unix::fs::symlink("a", l0.join("sym")).unwrap();
    for d in ["l0", "upper", "mnt"] {
        fs::set_permissions(dir.p(d), fs::Permissions::from_mode(0o755)).unwrap();
    }
    chown_tree(dir.path(), uid, gid);
}

/// The changes every scenario makes through the mount at $M, and the checks of what the
/// merged tree shows afterwards. Needs $M.
const CHANGES: &str = r#"
cd "$M"
echo new > b
echo more >> a
rm keep/k
rm -r d
mkdir d
echo g > d/g
chmod 600 b
setfattr -n user.note -v hi b
ln b b2
echo h2 >> hard1
mkfifo fifo
ln -s b sym2
# what the merged tree shows
test "$(cat a)" = "hello
more"
test ! -e keep/k
test "$(ls d)" = g
test "$(cat hard2)" = "h
h2"
test "$(stat -c %i hard1)" = "$(stat -c %i hard2)"
test "$(stat -c %h b)" = 2
test "$(getfattr --only-values -n user.note b)" = hi
# overlay bookkeeping never shows through the mount
case "$(ls -a keep d)" in *.wh.*) echo "whiteout visible" >&2; exit 1;; esac
if getfattr -d -m - d 2>/dev/null | grep -q overlay; then echo "overlay xattr visible" >&2; exit 1; fi
cd /
"#;

/// The directory rename of a lower directory (redirect) and its checks; needs $M.
const RENAME_DIR: &str = r#"
cd "$M"
mv ren ren2
test "$(cat ren2/r1)" = r1
test ! -e ren
cd /
"#;

/// Shared checks of the upper layer after CHANGES (+ RENAME_DIR when `renamed`).
fn check_upper(dir: &UserDir, whiteout: &str, renamed: bool) {
    let upper = dir.p("upper");
    let wh = |parent: &str, name: &str| -> String {
        let rel = if parent.is_empty() {
            String::new()
        } else {
            format!("{parent}/")
        };
        match whiteout {
            "file" => format!("f {rel}.wh.{name}"),
            _ => format!("c0:0 {rel}{name}"),
        }
    };
    let mut want = vec![
        "f a".to_string(),
        "f b".to_string(),
        "f b2".to_string(),
        "d d".to_string(),
        "f d/g".to_string(),
        "p fifo".to_string(),
        // Only the written name: the other name of the lower hard-link pair is linked to
        // the copy through work/index when it is itself changed (kernel overlayfs with
        // index=on does the same).
        "f hard1".to_string(),
        "d keep".to_string(),
        wh("keep", "k"),
        "l sym2".to_string(),
    ];
    if renamed {
        want.push("d ren2".to_string());
        want.push(wh("", "ren"));
    }
    want.sort_by(|a, b| a[2..].trim_start().cmp(b[2..].trim_start()));
    let mut got = type_tree(&upper);
    got.sort_by(|a, b| a[2..].trim_start().cmp(b[2..].trim_start()));
    // Type letters differ in width ("c0:0"); compare whole entries as sets.
    let mut w = want.clone();
    w.sort();
    got.sort();
    assert_eq!(got, w, "upper layer contents (whiteouts as {whiteout})");
    // Unprivileged: overlay markers in the user namespace, never trusted.*.
    assert_eq!(
        lgetxattr_str(upper.join("d"), "user.overlay.opaque").as_deref(),
        Some("y")
    );
    assert_eq!(
        overlay_xattrs(&upper.join("d")),
        vec!["user.overlay.opaque"]
    );
    if renamed {
        assert_eq!(
            lgetxattr_str(upper.join("ren2"), "user.overlay.redirect").as_deref(),
            Some("ren")
        );
    }
    for entry in type_tree(&upper) {
        let rel = entry.split_once(' ').unwrap().1;
        let names = llistxattr(upper.join(rel)).unwrap_or_default();
        assert!(
            !names.iter().any(|n| n.starts_with("trusted.")),
            "{rel} has trusted.* xattrs {names:?} although the mount is unprivileged"
        );
    }
    assert_eq!(read_str(upper.join("a")), "hello\nmore\n");
    assert_eq!(
        lgetxattr_str(upper.join("b"), "user.note").as_deref(),
        Some("hi")
    );
    assert_eq!(lstat(upper.join("b")).mode() & 0o7777, 0o600);
    // The copy of the lower hard-link pair is indexed so that hard2 can join it.
    assert_eq!(
        lstat(upper.join("hard1")).nlink(),
        2,
        "hard1 + its work/index entry"
    );
    assert_eq!(lstat(upper.join("b")).ino(), lstat(upper.join("b2")).ino());
    // Lower layer untouched.
    assert_eq!(ls(dir.p("l0/keep")), vec!["k"]);
    assert_eq!(read_str(dir.p("l0/a")), "hello\n");
}

/// A temp dir of the user's with `lower_layer` (owned by the user), upper, work and mnt.
fn user_layers(user: &TestUser) -> UserDir {
    let dir = UserDir::new(user);
    lower_layer(&dir, user.uid, user.gid);
    dir
}

/// Script lines: mount layerfs over `dir`'s layers (`extra` options appended) on
/// `$M` = dir/mnt, and unmount it with `unmount` on exit.
fn mount_lines(dir: &UserDir, extra: &str, unmount: &str) -> String {
    format!(
        "M={}\nlayerfs -o {} \"$M\"\ntrap 'cd /; {unmount} \"$M\"' EXIT",
        dir.p("mnt").display(),
        mount_opts(dir, extra)
    )
}

fn mount_opts(dir: &UserDir, extra: &str) -> String {
    format!(
        "lowerdir={},upperdir={},workdir={}{extra}",
        dir.p("l0").display(),
        dir.p("upper").display(),
        dir.p("work").display()
    )
}

/// Inside `unshare -Urm` (the user is root of a one-id namespace), mounting directly.
/// With `-o whiteout=file` deletions are `.wh.` files, opaque/redirect markers
/// `user.overlay.*`; privileged requests fail with the kernel's errnos.
#[test]
fn userns_mount_with_file_whiteouts() {
    let user = fuse_user();
    let dir = user_layers(&user);
    let script = format!(
        r#"{SH_PRELUDE}
{mount}
grep -q " $M .*fuse.layerfs" /proc/self/mountinfo
{CHANGES}
{RENAME_DIR}
cd "$M"
# privileges the namespace's root lacks: the kernel's answers
fails "Operation not permitted" setfattr -n trusted.x -v 1 b
fails "Invalid argument" chown 5:5 b
fails "Operation not permitted" mknod dev c 1 3
fails "Invalid argument" touch .wh.sneaky
chown 0:0 b
cd /
umount "$M"
trap - EXIT
# remount: the same tree comes back
{mount}
test "$(cat $M/a)" = "hello
more"
test ! -e $M/keep/k
test ! -e $M/ren
test "$(ls $M/d)" = g
test "$(ls $M/ren2)" = r1
"#,
        mount = mount_lines(&dir, ",whiteout=file", "umount"),
    );
    user_ok(&user, &in_userns("-Urm", &script), &[]);
    check_upper(&dir, "file", true);
    // Files the namespace's root created belong to the user outside.
    assert_eq!(lstat(dir.p("upper/b")).uid(), user.uid);
}

/// The default whiteout probe as an unprivileged user: Linux >= 5.8 lets anyone mknod a
/// 0:0 character device (the whiteout), so the upper layer gets the kernel's encoding and
/// kernel overlayfs (`userxattr`, mounted in the same namespace) reads it identically.
#[test]
fn userns_auto_whiteouts_read_by_kernel_overlayfs() {
    let user = fuse_user();
    let dir = user_layers(&user);
    fs::create_dir(dir.p("kmnt")).unwrap();
    chown_tree(&dir.p("kmnt"), user.uid, user.gid);
    let script = format!(
        r#"{SH_PRELUDE}
{mount}
{CHANGES}
(cd "$M" && find . | sort && stat -c '%n %s %a' a b d/g keep) > {d}/fuse.txt
umount "$M"
trap - EXIT
# the reference: kernel overlayfs over the same layers, read-only, user.* xattrs
mount -t overlay overlay -o ro,userxattr,lowerdir={d}/upper:{d}/l0 {d}/kmnt
(cd {d}/kmnt && find . | sort && stat -c '%n %s %a' a b d/g keep) > {d}/kernel.txt
umount {d}/kmnt
"#,
        mount = mount_lines(&dir, "", "umount"),
        d = dir.path().display(),
    );
    let probe = run_as_user(
        &user,
        "unshare -Urm mknod /tmp/.lfs-probe-$$ c 0 0 && rm /tmp/.lfs-probe-$$",
        &[],
    );
    assert!(
        probe.status.success(),
        "this kernel refuses an unprivileged 0:0 whiteout mknod ({}); the expectation below \
         assumes Linux >= 5.8",
        String::from_utf8_lossy(&probe.stderr)
    );
    user_ok(&user, &in_userns("-Urm", &script), &[]);
    check_upper(&dir, "chardev", false);
    let fuse = read_str(dir.p("fuse.txt"));
    let kernel = read_str(dir.p("kernel.txt"));
    assert_eq!(
        fuse, kernel,
        "layerfs and kernel overlayfs disagree on the merged tree"
    );
}

/// Outside any user namespace, mounted through the setuid fusermount3 by the user.
#[test]
fn fusermount3_mount_as_user() {
    require_tool("fusermount3", "fuse3");
    let user = fuse_user();
    let dir = user_layers(&user);
    // One lower file and dir the user does not own: changes to them need privileges.
    fs::write(dir.p("l0/rootfile"), "r\n").unwrap();
    fs::create_dir(dir.p("l0/rootdir")).unwrap();
    fs::write(dir.p("l0/rootdir/x"), "x\n").unwrap();
    let script = format!(
        r#"{SH_PRELUDE}
{mount}
grep " $M " /proc/self/mountinfo | grep -q "user_id={uid}"
{CHANGES}
{RENAME_DIR}
cd "$M"
test "$(stat -c %U rootfile)" = root
fails "Permission denied" sh -c 'echo x >> rootfile'
fails "Operation not permitted" chmod 600 rootfile
fails "Permission denied" touch rootdir/new
fails "Operation not permitted" chown root b
fails "Operation not permitted" setfattr -n trusted.x -v 1 b
cat rootfile rootdir/x >/dev/null
cd /
fusermount3 -u "$M"
trap - EXIT
"#,
        mount = mount_lines(&dir, "", "fusermount3 -u"),
        uid = user.uid,
    );
    let out = user_ok(&user, &script, &[]);
    let _ = out;
    check_upper(&dir, "chardev", true);
    // Nothing was written for the refused changes.
    assert!(!dir.p("upper/rootfile").exists());
    assert!(!dir.p("upper/rootdir").exists());
}

/// A podman-like namespace: root is the user, ids 1..65536 are the user's subordinate
/// ids (newuidmap). chown inside works and lands on the subordinate ids on disk.
#[test]
fn userns_with_subordinate_ids() {
    let user = fuse_user();
    let dir = user_layers(&user);
    // A lower file owned by container uid 1000 (subordinate id start + 999).
    let (sub, len) = user.subuid;
    let (subg, leng) = user.subgid;
    assert!(len >= 65536 && leng >= 65536, "need 65536 subordinate ids");
    fs::write(dir.p("l0/owned1000"), "o\n").unwrap();
    common::lchown(dir.p("l0/owned1000"), sub + 999, subg + 999).unwrap();
    let script = format!(
        r#"{SH_PRELUDE}
{mount}
{CHANGES}
cd "$M"
test "$(stat -c %u:%g owned1000)" = 1000:1000
chown 5:6 b
chown 7:8 owned1000
mkdir -m 1777 tmpdir
chown 65535:65535 tmpdir
fails "Invalid argument" chown 70000 b
fails "Operation not permitted" mknod dev c 1 3
fails "Operation not permitted" setfattr -n trusted.x -v 1 b
cd /
"#,
        mount = mount_lines(&dir, "", "umount"),
    );
    user_ok(&user, &in_userns(&subid_userns_args(&user), &script), &[]);
    let up = |r: &str| lstat(dir.p("upper").join(r));
    assert_eq!((up("b").uid(), up("b").gid()), (sub + 4, subg + 5));
    assert_eq!(
        (up("owned1000").uid(), up("owned1000").gid()),
        (sub + 6, subg + 7)
    );
    assert_eq!(up("tmpdir").uid(), sub + 65534);
    assert_eq!(up("tmpdir").mode() & 0o7777, 0o1777);
    assert_eq!(up("a").uid(), user.uid);
}

/// uidmapping=/gidmapping= (FROM:TO:LEN, FROM on disk, TO seen through the mount) and the
/// squash options, on a root mount (allow_other, so a second caller can be tested).
#[test]
fn id_mapping_options() {
    let user = fuse_user();
    let dir = UserDir::new(&user);
    lower_layer(&dir, 100000, 100000);
    fs::write(dir.p("l0/u5"), "5\n").unwrap();
    common::lchown(dir.p("l0/u5"), 100005, 100006).unwrap();
    fs::write(dir.p("l0/unmapped"), "x\n").unwrap();
    common::lchown(dir.p("l0/unmapped"), 5000, 5000).unwrap();
    let mnt = dir.p("mnt");
    let stack_opts = mount_opts(&dir, ",uidmapping=100000:0:65536,gidmapping=100000:0:65536");
    let m = Mounted::new(&mnt, &stack_opts);
    let st = |r: &str| {
        let m = lstat(mnt.join(r));
        (m.uid(), m.gid())
    };
    assert_eq!(st(""), (0, 0));
    assert_eq!(st("a"), (0, 0));
    assert_eq!(st("u5"), (5, 6));
    assert_eq!(
        st("unmapped"),
        (65534, 65534),
        "unmapped on-disk ids show as overflow"
    );
    // Root creates: inside 0 -> on disk 100000.
    fs::write(mnt.join("new"), "n").unwrap();
    assert_eq!(st("new"), (0, 0));
    common::lchown(mnt.join("new"), 7, 8).unwrap();
    assert_eq!(st("new"), (7, 8));
    // An id outside the mapping is written as the overflow id, as fuse-overlayfs does.
    fs::write(mnt.join("over"), "o").unwrap();
    common::lchown(mnt.join("over"), 70000, 8).unwrap();
    fs::create_dir(mnt.join("open")).unwrap();
    common::chmod(mnt.join("open"), 0o777).unwrap();
    // The test user's uid is inside the mapped range: its files land on 100000 + uid.
    user_ok(&user, &format!("touch {}/open/byuser", mnt.display()), &[]);
    // A caller outside the mapping creates files owned by the overflow id on disk, as in
    // fuse-overlayfs (podman's root outside `--uidmap 0:1:N` creates /etc/mtab so).
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=70000",
            "--regid=70000",
            "--clear-groups",
            "sh",
            "-euc",
        ])
        .arg(format!(
            ": > {0}/open/x\ncat {0}/a >/dev/null",
            mnt.display()
        ))
        .output()
        .unwrap();
    assert_success(&out);
    m.unmount();
    let up = |r: &str| {
        let m = lstat(dir.p("upper").join(r));
        (m.uid(), m.gid())
    };
    assert_eq!(up("new"), (100007, 100008));
    assert_eq!(up("open"), (100000, 100000));
    assert_eq!(up("open/x"), (65534, 65534));
    assert_eq!(up("over"), (65534, 100008));
    assert_eq!(up("open/byuser"), (100000 + user.uid, 100000 + user.gid));

    // squash_to_root reports everything as root; writes are unchanged.
    let m = Mounted::new(&mnt, &mount_opts(&dir, ",squash_to_root"));
    assert_eq!(st("u5"), (0, 0));
    assert_eq!(st("unmapped"), (0, 0));
    fs::write(mnt.join("sq"), "s").unwrap();
    m.unmount();
    assert_eq!(up("sq"), (0, 0));
    // squash_to_uid/gid name the ids.
    let m = Mounted::new(
        &mnt,
        &mount_opts(&dir, ",squash_to_uid=42,squash_to_gid=43"),
    );
    assert_eq!(st("u5"), (42, 43));
    assert_eq!(st("new"), (42, 43));
    m.unmount();
}

/// A root mount of `opts` on `mnt`, unmounted on drop.
struct Mounted<'a> {
    mnt: &'a Path,
    live: bool,
}

impl<'a> Mounted<'a> {
    fn new(mnt: &'a Path, opts: &str) -> Mounted<'a> {
        let out = std::process::Command::new(common::layerfs_bin())
            .args(["-o", opts])
            .arg(mnt)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Mounted { mnt, live: true }
    }

    fn unmount(mut self) {
        self.live = false;
        let st = std::process::Command::new("fusermount3")
            .arg("-u")
            .arg(self.mnt)
            .status()
            .unwrap();
        assert!(st.success(), "fusermount3 -u {}", self.mnt.display());
    }
}

impl Drop for Mounted<'_> {
    fn drop(&mut self) {
        if self.live {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.mnt)
                .status();
        }
    }
}

/// Operations run through the mount by `ROOTLESS_OPS`: each prints its outcome (`ok` or
/// the error text), so two file systems can be compared call by call.
const ROOTLESS_OPS: &str = r#"
op() { if out=$("$@" 2>&1 </dev/null); then echo "$* => ok"; else echo "$* => ${out##*: }"; fi; }
py() {
    if out=$(python3 -c "import os, sys, errno, fcntl
try: $1
except OSError as e: sys.exit(errno.errorcode[e.errno])" 2>&1 </dev/null); then echo "$1 => ok"; else echo "$1 => $out"; fi
}
cd "$M"
op sh -c 'echo x >> a'
op truncate -s 2 hard1
op touch -d @100000 keep
op chmod 700 d
op chown 0:0 a
op chown 5 a
op ln a a.link
op ln -s a s2
op mkfifo f
op mknod dev c 1 3
op mknod w c 0 0
op mkdir newdir
op rmdir ren
op rmdir newdir
op rm keep/k
op mknod keep/k c 0 0
op rmdir keep
op mkdir keep
op setfattr -n user.x -v 1 hard2
op getfattr -n user.x hard2
op setfattr -x user.x hard2
op setfattr -n trusted.x -v 1 hard2
py 'os.rename("ren", "ren2")'
py 'os.rename("a", "d/a2")'
py 'os.rename("hard2", "sym")'
py 'os.link("nope", "x")'
py 'os.utime("sym", (1, 1), follow_symlinks=False)'
py 'os.truncate("d/f", 0)'
py 'f = os.open("big", os.O_CREAT | os.O_WRONLY, 0o640); os.posix_fallocate(f, 0, 8192); os.close(f)'
py 'fd = os.open("d/f", os.O_RDWR); fcntl.lockf(fd, fcntl.LOCK_EX); os.close(fd)'
py 'os.mkdir("d/sub", 0o2775); os.chmod("d/sub", 0o2775)'
py 'os.unlink("d")'
py 'os.rmdir("a.link")'
py 'print(os.statvfs(".").f_bsize > 0)'
cd /
"#;

/// Every operation above as the unprivileged user inside `unshare -Urm`, on layerfs
/// (`redirect_dir=off`, the behaviour kernel overlayfs has with `userxattr`) and on kernel
/// overlayfs (`userxattr`) over identical layers: the same outcome for every call, and the
/// same merged tree afterwards.
#[test]
fn userns_operations_match_kernel_overlayfs() {
    let user = fuse_user();
    let dirs = [user_layers(&user), user_layers(&user)];
    let snapshot = r#"(cd "$M" && find . -printf '%p %y %m %U:%G %l\n' | sort && find . -type f -exec sha256sum {} + | sort && getfattr -R -d -m - . 2>/dev/null | grep -v '^#' | sort)"#;
    let fuse = format!(
        r#"{mount}
{ROOTLESS_OPS}
{snapshot} > {d}/tree.txt
"#,
        mount = mount_lines(&dirs[0], ",redirect_dir=off", "umount"),
        d = dirs[0].path().display(),
    );
    let kernel = format!(
        r#"M={m}
mount -t overlay overlay -o userxattr,lowerdir={d}/l0,upperdir={d}/upper,workdir={d}/work "$M"
trap 'cd /; umount "$M"' EXIT
{ROOTLESS_OPS}
{snapshot} > {d}/tree.txt
"#,
        m = dirs[1].p("mnt").display(),
        d = dirs[1].path().display(),
    );
    let fuse_ops = user_ok(&user, &in_userns("-Urm", &fuse), &[]);
    let kernel_ops = user_ok(&user, &in_userns("-Urm", &kernel), &[]);
    eprintln!("outcomes:\n{fuse_ops}");
    assert_eq!(
        fuse_ops, kernel_ops,
        "call outcomes differ (left layerfs, right kernel)"
    );
    // Paths differ only in the temp dir names.
    let norm =
        |d: &UserDir| read_str(d.p("tree.txt")).replace(&d.path().display().to_string(), "D");
    let (f, k) = (norm(&dirs[0]), norm(&dirs[1]));
    if f != k {
        let fl: Vec<&str> = f.lines().collect();
        let kl: Vec<&str> = k.lines().collect();
        let only_f: Vec<&&str> = fl.iter().filter(|l| !kl.contains(l)).collect();
        let only_k: Vec<&&str> = kl.iter().filter(|l| !fl.contains(l)).collect();
        panic!("merged trees differ:\nonly layerfs: {only_f:#?}\nonly kernel: {only_k:#?}\nops:\n{fuse_ops}");
    }
}
