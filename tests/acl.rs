//! POSIX ACLs through the mount, compared with kernel overlayfs on identical layers: the
//! kernel enforces them (an ACL entry grants or denies a user what the mode bits alone
//! would not), getfacl shows the same entries before and after setfacl, setfacl -b and
//! chmod (the kernel's cached ACL is dropped on every change), a default ACL is inherited
//! on create in place of the umask, copy-up keeps both ACL xattrs, and nothing inherits
//! the workdir's ACL; under `uidmapping=` entries are translated like owners and enforced
//! against the inside ids. Needs setfacl/getfacl (the `acl` package); never skipped.
mod common;
use common::rootless::*;
use common::*;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output};

/// The unprivileged user the ACL entries name.
const UID: u32 = 1000;

fn tool(cmd: &str, args: &[&str], path: &Path) -> Output {
    Command::new(cmd)
        .args(args)
        .arg(path)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {cmd} ({e}): install the `acl` package; these tests never skip")
        })
}

fn setfacl(args: &[&str], path: &Path) {
    let out = tool("setfacl", args, path);
    assert!(
        out.status.success(),
        "setfacl {args:?} {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The ACL as `getfacl` prints it (numeric ids, no header), one line.
fn getfacl(path: &Path) -> String {
    let out = tool("getfacl", &["-cn", "--"], path);
    assert!(
        out.status.success(),
        "getfacl {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `args` as uid/gid 1000 without groups or capabilities: `ok: STDOUT` or `denied`.
fn as_user(args: &[&str]) -> String {
    let out = Command::new("setpriv")
        .arg(format!("--reuid={UID}"))
        .arg(format!("--regid={UID}"))
        .args(["--clear-groups", "--inh-caps=-all", "--"])
        .args(args)
        .output()
        .expect("run setpriv (util-linux)");
    if out.status.success() {
        format!("ok: {}", String::from_utf8_lossy(&out.stdout).trim())
    } else {
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
            "{args:?} as uid {UID}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        "denied".to_string()
    }
}

fn sh(script: &str) {
    let out = Command::new("sh").args(["-euc", script]).output().unwrap();
    assert_success(&out);
}

/// Lower-layer files whose ACL lets uid 1000 read them (mode 0600 root:root).
const READABLE: &[&str] = &["r_lower", "r_copied", "r_chmod", "r_revoke"];
/// Lower-layer directories (0755) whose ACL denies uid 1000 everything.
const DENYING: &[&str] = &["deny_lower", "deny_copied"];

fn build(s: &Stack) {
    // uid 1000 must reach the mount.
    chmod(s.root.path(), 0o755).unwrap();
    for n in READABLE {
        put(s.l(0, n), b"secret\n");
        chmod(s.l(0, n), 0o600).unwrap();
        setfacl(&["-m", "u:1000:r"], &s.l(0, n));
    }
    put(s.l(0, "r_plain"), b"secret\n");
    chmod(s.l(0, "r_plain"), 0o600).unwrap();
    for n in DENYING {
        put(s.l(0, &format!("{n}/x")), b"x\n");
        chmod(s.l(0, n), 0o755).unwrap();
        setfacl(&["-m", "u:1000:---"], &s.l(0, n));
    }
    // A directory with a default ACL, only in the lower layer, holding names to delete and
    // create again (over whiteouts); and one without.
    for d in ["inherit", "plain"] {
        put(s.l(0, &format!("{d}/old_f")), b"o\n");
        mkdirs(s.l(0, &format!("{d}/old_d")));
        chmod(s.l(0, d), 0o755).unwrap();
    }
    setfacl(&["-d", "-m", "u:1000:rwx,g::rx,o::r"], &s.l(0, "inherit"));
    put(s.l(0, "noacl"), b"n\n");
    chmod(s.l(0, "noacl"), 0o644).unwrap();
    // What is created in the workdir must not inherit from it.
    setfacl(&["-d", "-m", "u:1000:rwx,o::rwx"], &s.work);
}

/// Copies `name` up without changing its mode or ACL.
fn copy_up(m: &Mount, name: &str) {
    lsetxattr(m.p(name), "user.copied", b"1").unwrap();
}

/// Runs every case on `m` and returns what was observed, one line per observation.
fn scenario(m: &Mount) -> Vec<String> {
    let mut log = Vec::new();
    let p = |n: &str| m.p(n).display().to_string();
    let mode = |n: &str| format!("{:o}", lstat(m.p(n)).mode() & 0o7777);

    // ACLs from the lower layer, on the lower file and on its copy.
    copy_up(m, "r_copied");
    copy_up(m, "deny_copied");
    for n in ["r_lower", "r_copied"] {
        log.push(format!("{n}: read {}", as_user(&["cat", &p(n)])));
        log.push(format!("{n}: {}", getfacl(&m.p(n))));
    }
    for n in DENYING {
        log.push(format!("{n}: ls {}", as_user(&["ls", &p(n)])));
        let x = format!("{n}/x");
        log.push(format!("{x}: read {}", as_user(&["cat", &p(&x)])));
    }

    // ACLs set through the mount, on a new file and on a lower one (copied up by setfacl).
    put(m.p("r_new"), b"secret\n");
    chmod(m.p("r_new"), 0o600).unwrap();
    log.push(format!("r_new: read {}", as_user(&["cat", &p("r_new")])));
    for n in ["r_new", "r_plain"] {
        setfacl(&["-m", "u:1000:r"], &m.p(n));
        log.push(format!("{n}: read {}", as_user(&["cat", &p(n)])));
        log.push(format!("{n}: {} {}", mode(n), getfacl(&m.p(n))));
    }
    fs_mkdir(&m.p("deny_new"));
    log.push(format!("deny_new: ls {}", as_user(&["ls", &p("deny_new")])));
    setfacl(&["-m", "u:1000:---"], &m.p("deny_new"));
    log.push(format!("deny_new: ls {}", as_user(&["ls", &p("deny_new")])));
    setfacl(&["-x", "u:1000"], &m.p("deny_new"));
    log.push(format!("deny_new: ls {}", as_user(&["ls", &p("deny_new")])));

    // Changes after the kernel has cached an ACL (each read and getfacl fills its cache).
    setfacl(&["-b"], &m.p("r_new"));
    log.push(format!(
        "r_new -b: {} {}",
        mode("r_new"),
        getfacl(&m.p("r_new"))
    ));
    log.push(format!("r_new -b: read {}", as_user(&["cat", &p("r_new")])));
    log.push(format!(
        "r_revoke: read {}",
        as_user(&["cat", &p("r_revoke")])
    ));
    setfacl(&["-x", "u:1000"], &m.p("r_revoke"));
    log.push(format!(
        "r_revoke -x: read {}",
        as_user(&["cat", &p("r_revoke")])
    ));
    log.push(format!("r_revoke -x: {}", getfacl(&m.p("r_revoke"))));
    log.push(format!("r_chmod: {}", getfacl(&m.p("r_chmod"))));
    for (m_, label) in [(0o640, "640"), (0o600, "600"), (0o644, "644")] {
        chmod(m.p("r_chmod"), m_).unwrap();
        log.push(format!("r_chmod {label}: {}", getfacl(&m.p("r_chmod"))));
        log.push(format!(
            "r_chmod {label}: read {}",
            as_user(&["cat", &p("r_chmod")])
        ));
    }
    setfacl(&["-m", "u:1000:rw"], &m.p("r_chmod"));
    log.push(format!(
        "r_chmod rw: {} {}",
        mode("r_chmod"),
        getfacl(&m.p("r_chmod"))
    ));

    // Creating under a default ACL (the directory is copied up by the first create) and
    // without one, with a umask that would take everything from group and others.
    let (i, pl) = (p("inherit"), p("plain"));
    sh(&format!(
        "umask 077
         touch {i}/f; mkdir {i}/d; mkfifo {i}/p; mknod {i}/c c 1 3; ln -s f {i}/s
         touch {i}/d/f; mkdir {i}/d/d
         rm {i}/old_f; rmdir {i}/old_d; touch {i}/old_f; mkdir {i}/old_d
         touch {pl}/f; mkdir {pl}/d
         rm {pl}/old_f; rmdir {pl}/old_d; touch {pl}/old_f; mkdir {pl}/old_d"
    ));
    for d in ["inherit", "plain"] {
        log.push(format!("{d}: {} {}", mode(d), getfacl(&m.p(d))));
        for n in ["f", "d", "p", "c", "d/f", "d/d", "old_f", "old_d"] {
            let n = format!("{d}/{n}");
            if exists(m.p(&n)) {
                log.push(format!("{n}: {} {}", mode(&n), getfacl(&m.p(&n))));
            }
        }
    }
    log.push(format!("inherit/s: {}", mode("inherit/s")));
    let w = format!("echo w >> {i}/f && cat {i}/f");
    log.push(format!("inherit/f: write {}", as_user(&["sh", "-c", &w])));
    copy_up(m, "noacl");
    log.push(format!("noacl: {}", getfacl(&m.p("noacl"))));
    log
}

/// ACLs of the copies in the upper layer.
fn upper_acls(s: &Stack) -> Vec<String> {
    [
        "r_copied",
        "deny_copied",
        "r_plain",
        "r_chmod",
        "inherit",
        "inherit/f",
        "inherit/d",
        "inherit/old_f",
        "inherit/old_d",
        "plain/old_f",
        "plain/old_d",
        "noacl",
    ]
    .iter()
    .map(|n| format!("upper {n}: {}", getfacl(&s.u(n))))
    .collect()
}

fn fs_mkdir(p: &Path) {
    std::fs::create_dir(p).unwrap();
    chmod(p, 0o755).unwrap();
}

fn run(backend: Backend) -> Vec<String> {
    let s = Stack::new(1);
    build(&s);
    let m = match backend {
        Backend::Layerfs => s.mount_layerfs(&[], true),
        Backend::Kernel => s.mount_kernel(&[], true),
    };
    let mut log = scenario(&m);
    m.unmount();
    log.extend(upper_acls(&s));
    log
}

fn assert_same(ours: &[String], kernel: &[String]) {
    if ours != kernel {
        let mut msg = String::from("layerfs | kernel overlayfs:\n");
        for i in 0..ours.len().max(kernel.len()) {
            let (a, b) = (ours.get(i), kernel.get(i));
            let mark = if a != b { ">>" } else { "  " };
            msg += &format!("{mark} {a:?}\n   {b:?}\n");
        }
        panic!("{msg}");
    }
}

#[test]
fn acls_match_kernel_overlayfs() {
    require_mount_privileges();
    let ours = run(Backend::Layerfs);
    let kernel = run(Backend::Kernel);
    // The points the comparison rests on, stated outright so that a reference that went
    // wrong the same way cannot hide them.
    for want in [
        "r_lower: read ok: secret",
        "r_copied: read ok: secret",
        "deny_lower: ls denied",
        "deny_copied/x: read denied",
        "r_plain: read ok: secret",
        "deny_new: ls denied",
        "r_new -b: read denied",
        "r_revoke -x: read denied",
        "r_chmod 640: user::rw- user:1000:r-- group::--- mask::r-- other::---",
        "r_chmod 600: read denied",
        "inherit/f: 664 user::rw- user:1000:rwx #effective:rw- group::r-x #effective:r-- \
         mask::rw- other::r--",
        "inherit/d: 774 user::rwx user:1000:rwx group::r-x mask::rwx other::r-- \
         default:user::rwx default:user:1000:rwx default:group::r-x default:mask::rwx \
         default:other::r--",
        "inherit/old_f: 664 user::rw- user:1000:rwx #effective:rw- group::r-x \
         #effective:r-- mask::rw- other::r--",
        "plain/f: 600 user::rw- group::--- other::---",
        "plain/old_d: 700 user::rwx group::--- other::---",
        "inherit/f: write ok: w",
        "noacl: user::rw- group::r-- other::r--",
    ] {
        assert!(
            ours.iter().any(|l| l == want),
            "layerfs: no `{want}` in:\n{}",
            ours.join("\n")
        );
    }
    assert_same(&ours, &kernel);
}

/// The same ACL operations as the user inside a podman-like user namespace (root is the
/// user, 1..65536 its subordinate ids), mounting layerfs and kernel overlayfs
/// (`userxattr`) directly: ACL entries name namespace ids, which land on subordinate ids
/// on disk.
#[test]
fn userns_acls_match_kernel_overlayfs() {
    let user = fuse_user();
    let ops = r#"
cd "$M"
r() { if out=$(setpriv --reuid=1000 --regid=1000 --clear-groups "$@" 2>&1); then echo "$* => $out"; else echo "$* => denied"; fi; }
echo s > f; chmod 600 f; r cat f
setfacl -m u:1000:r f; r cat f; getfacl -cn f
chmod 640 f; getfacl -cn f
r cat low; getfacl -cn low
setfacl -x u:1000 low; r cat low
setfacl -d -m u:1000:rwx,g::rx,o::r ld
umask 077; touch ld/n; mkdir ld/nd; umask 022
stat -c '%n %a' ld/n ld/nd; getfacl -cn ld/n ld/nd
r sh -c 'echo w >> ld/n'
cd /
"#;
    let lower = |d: &UserDir| {
        let script = "cd l0; echo s > low; chmod 600 low; setfacl -m u:1000:r low; mkdir ld";
        format!("cd {}; {}", d.path().display(), script)
    };
    let dirs = [UserDir::new(&user), UserDir::new(&user)];
    let mut outs = Vec::new();
    for (i, d) in dirs.iter().enumerate() {
        for sub in ["l0", "upper", "work", "mnt"] {
            std::fs::create_dir(d.p(sub)).unwrap();
        }
        chown_tree(d.path(), user.uid, user.gid);
        let opts = format!(
            "lowerdir={0}/l0,upperdir={0}/upper,workdir={0}/work",
            d.path().display()
        );
        let mount = if i == 0 {
            format!("layerfs -o {opts} \"$M\"")
        } else {
            format!("mount -t overlay overlay -o userxattr,{opts} \"$M\"")
        };
        let script = format!(
            "{}\nM={}\n{mount}\ntrap 'cd /; umount \"$M\"' EXIT\n{ops}",
            lower(d),
            d.p("mnt").display()
        );
        outs.push(user_ok(
            &user,
            &in_userns(&subid_userns_args(&user), &script),
            &[],
        ));
    }
    let (ours, kernel) = (&outs[0], &outs[1]);
    for want in [
        "cat f => denied",
        "cat f => s",
        "user:1000:r--",
        "cat low => s",
        "cat low => denied",
        "ld/n 664",
        "ld/nd 774",
        "sh -c echo w >> ld/n => ",
    ] {
        assert!(ours.contains(want), "layerfs: no `{want}` in:\n{ours}");
    }
    assert_eq!(ours, kernel, "layerfs (left) and kernel overlayfs (right)");
}

/// The named entries of a raw `system.posix_acl_*` value: (tag, id).
fn raw_named_entries(path: &Path, name: &str) -> Vec<(u16, u32)> {
    let v = lgetxattr(path, name).unwrap_or_else(|e| panic!("{name} of {}: {e}", path.display()));
    assert_eq!(v[..4], 2u32.to_le_bytes(), "{v:?}");
    v[4..]
        .chunks_exact(8)
        .map(|e| {
            let tag = u16::from_le_bytes([e[0], e[1]]);
            (tag, u32::from_le_bytes([e[4], e[5], e[6], e[7]]))
        })
        .filter(|(tag, _)| matches!(tag, 0x02 | 0x08))
        .collect()
}

/// Under `uidmapping=`/`gidmapping=` ACL entries are translated like owners, and the kernel
/// enforces them (FUSE_POSIX_ACL) against callers' inside ids: an entry for on-disk uid
/// 101000 is inside uid 1000's, one for on-disk uid 1000 (unmapped) is nobody's; setfacl
/// through the mount stores on-disk ids and refuses an inside id outside the mapping.
#[test]
fn id_mapped_acl_entries_are_translated() {
    const ACCESS: &str = "system.posix_acl_access";
    let s = Stack::new(1);
    chmod(s.root.path(), 0o755).unwrap();
    for (name, entry) in [("mapped", "u:101000:r,g:101001:r"), ("stray", "u:1000:r")] {
        put(s.l(0, name), b"secret\n");
        chmod(s.l(0, name), 0o600).unwrap();
        lchown(s.l(0, name), 100000, 100000).unwrap();
        setfacl(&["-m", entry], &s.l(0, name));
    }
    put(s.l(0, "later"), b"secret\n");
    chmod(s.l(0, "later"), 0o600).unwrap();
    lchown(s.l(0, "later"), 100000, 100000).unwrap();
    let m = s.mount_layerfs(
        &[
            "uidmapping=100000:0:65536",
            "gidmapping=100000:0:65536",
            "allow_other",
        ],
        true,
    );
    let p = |name: &str| m.p(name).display().to_string();
    assert_eq!(lstat(m.p("mapped")).uid(), 0);

    let mapped = getfacl(&m.p("mapped"));
    assert!(mapped.contains("user:1000:r--"), "{mapped}");
    assert!(mapped.contains("group:1001:r--"), "{mapped}");
    assert_eq!(as_user(&["cat", &p("mapped")]), "ok: secret");

    let stray = getfacl(&m.p("stray"));
    assert!(stray.contains("user:65534:r--"), "{stray}");
    assert!(!stray.contains("user:1000:"), "{stray}");
    assert_eq!(as_user(&["cat", &p("stray")]), "denied");

    // setfacl through the mount: copy-up, then the entry stored with its on-disk id.
    assert_eq!(as_user(&["cat", &p("later")]), "denied");
    setfacl(&["-m", "u:1000:r,g:1001:r"], &m.p("later"));
    assert_eq!(
        raw_named_entries(&s.u("later"), ACCESS),
        [(0x02, 101000), (0x08, 101001)]
    );
    assert!(getfacl(&m.p("later")).contains("user:1000:r--"));
    assert_eq!(as_user(&["cat", &p("later")]), "ok: secret");

    // A file made through the mount, and an entry the mapping cannot store.
    put(m.p("new"), b"new\n");
    chmod(m.p("new"), 0o600).unwrap();
    assert_eq!(lstat(s.u("new")).uid(), 100000);
    let out = tool("setfacl", &["-m", "u:70000:r"], &m.p("new"));
    assert!(
        !out.status.success(),
        "setfacl u:70000 through the mount succeeded"
    );
    let out = tool("setfacl", &["-m", "g:70000:r"], &m.p("new"));
    assert!(
        !out.status.success(),
        "setfacl g:70000 through the mount succeeded"
    );
    assert!(lgetxattr(s.u("new"), ACCESS).is_err());
    assert_eq!(as_user(&["cat", &p("new")]), "denied");

    // A default ACL set through the mount is stored with on-disk ids and inherited so.
    mkdir(m.p("d"), 0o755).unwrap();
    setfacl(&["-d", "-m", "u:1000:rw"], &m.p("d"));
    assert_eq!(
        raw_named_entries(&s.u("d"), "system.posix_acl_default"),
        [(0x02, 101000)]
    );
    put(m.p("d/n"), b"inherited\n");
    assert_eq!(raw_named_entries(&s.u("d/n"), ACCESS), [(0x02, 101000)]);
    assert!(getfacl(&m.p("d/n")).contains("user:1000:rw-"));
    assert_eq!(as_user(&["cat", &p("d/n")]), "ok: inherited");
}
