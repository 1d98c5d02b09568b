//! Set-id bits and file capabilities after a write, truncate or chown, compared with
//! kernel overlayfs: an unprivileged writer clears set-uid (and set-gid when group-exec
//! is set); root (CAP_FSETID) keeps them; chown clears them whoever does it; any write
//! drops `security.capability`. Covers files in a lower layer (copied up by the write),
//! files already in the upper layer (which may be opened with FUSE passthrough), and a
//! file whose writes go through the daemon because it was opened on the lower layer first.
mod common;
use common::*;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

const NOBODY: u32 = 65534;

/// A `security.capability` value (revision 2, cap_net_raw (13) in permitted and effective):
/// what `setcap cap_net_raw+ep` writes.
fn file_caps() -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&(0x0200_0000u32 | 1).to_le_bytes());
    v.extend_from_slice(&(1u32 << 13).to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v
}

fn has_caps(p: &std::path::Path) -> bool {
    let name = cstr("security.capability");
    let path = cstr(p);
    // SAFETY: both strings are NUL-terminated and live across the call; a NULL buffer of
    // size 0 only asks for the value's size.
    let n = unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
    n > 0
}

fn set_caps(p: &std::path::Path) {
    let name = cstr("security.capability");
    let path = cstr(p);
    let v = file_caps();
    // SAFETY: NUL-terminated strings and a buffer of v.len() bytes, all alive for the call.
    let r = unsafe { libc::lsetxattr(path.as_ptr(), name.as_ptr(), v.as_ptr().cast(), v.len(), 0) };
    assert_eq!(r, 0, "setting security.capability on {}", p.display());
}

/// (name, mode in the lower layer) of the files every scenario starts from; all owned by
/// nobody, who may write them.
const FILES: &[(&str, u32)] = &[
    ("w_lower", 0o6775),
    ("w_lower_nogx", 0o6765),
    ("w_cached", 0o6775),
    ("t_lower", 0o6775),
    ("otrunc_lower", 0o6775),
    ("root_w", 0o6775),
    ("root_t", 0o6775),
    ("chown", 0o6775),
    ("chown_nogx", 0o6765),
    ("caps_nobody", 0o0775),
    ("caps_root", 0o0775),
];

fn build(s: &Stack) {
    for (name, mode) in FILES {
        let p = s.l(0, name);
        put(&p, b"0123456789");
        lchown(&p, NOBODY, NOBODY).unwrap();
        chmod(&p, *mode).unwrap();
    }
    set_caps(&s.l(0, "caps_nobody"));
    set_caps(&s.l(0, "caps_root"));
}

/// Runs every case on mount `m` and reports (name, octal mode, has security.capability).
fn scenario(m: &Mount) -> Vec<(String, String, bool)> {
    let q = |n: &str| m.p(n).display().to_string();
    // Files made through the mount live in the upper layer (passthrough where the kernel
    // offers it).
    for (name, mode) in [("w_upper", 0o6775), ("t_upper", 0o6775)] {
        put(m.p(name), b"0123456789");
        lchown(m.p(name), NOBODY, NOBODY).unwrap();
        chmod(m.p(name), mode).unwrap();
    }
    let nobody = |script: String| assert_eq!(as_nobody(&script), 0, "as nobody: {script}");
    nobody(format!("printf x >> {}", q("w_lower")));
    nobody(format!("printf x >> {}", q("w_lower_nogx")));
    nobody(format!("printf x >> {}", q("w_upper")));
    nobody(format!("truncate -s 3 {}", q("t_lower")));
    nobody(format!("truncate -s 3 {}", q("t_upper")));
    nobody(format!(": > {}", q("otrunc_lower")));
    nobody(format!("printf x >> {}", q("caps_nobody")));
    {
        // Opened on the lower file first: the writer's I/O goes through the daemon.
        let _reader = File::open(m.p("w_cached")).unwrap();
        nobody(format!("printf x >> {}", q("w_cached")));
    }
    // Root has CAP_FSETID.
    let mut f = OpenOptions::new()
        .append(true)
        .custom_flags(0)
        .open(m.p("root_w"))
        .unwrap();
    f.write_all(b"x").unwrap();
    drop(f);
    OpenOptions::new()
        .write(true)
        .open(m.p("root_t"))
        .unwrap()
        .set_len(2)
        .unwrap();
    let mut f = OpenOptions::new()
        .append(true)
        .open(m.p("caps_root"))
        .unwrap();
    f.write_all(b"x").unwrap();
    drop(f);
    lchown(m.p("chown"), 1000, u32::MAX).unwrap();
    lchown(m.p("chown_nogx"), 1000, u32::MAX).unwrap();
    let mut names: Vec<&str> = FILES.iter().map(|f| f.0).collect();
    names.extend(["w_upper", "t_upper"]);
    names
        .into_iter()
        .map(|n| {
            let md = lstat(m.p(n));
            (
                n.to_string(),
                format!("{:o}", md.mode() & 0o7777),
                has_caps(&m.p(n)),
            )
        })
        .collect()
}

fn run(backend: Backend) -> Vec<(String, String, bool)> {
    let s = Stack::new(1);
    build(&s);
    let m = match backend {
        Backend::Layerfs => s.mount_layerfs(&[], true),
        Backend::Kernel => s.mount_kernel(&[], true),
    };
    let r = scenario(&m);
    m.unmount();
    r
}

#[test]
fn privileges_dropped_like_kernel_overlayfs() {
    require_mount_privileges();
    let ours = run(Backend::Layerfs);
    let expected: Vec<(String, String, bool)> = [
        ("w_lower", 0o775, false),
        // set-gid without group-exec is a mandatory-locking marker, not a privilege.
        ("w_lower_nogx", 0o2765, false),
        ("w_cached", 0o775, false),
        ("t_lower", 0o775, false),
        ("otrunc_lower", 0o775, false),
        ("root_w", 0o6775, false),
        ("root_t", 0o6775, false),
        ("chown", 0o775, false),
        ("chown_nogx", 0o2765, false),
        ("caps_nobody", 0o775, false),
        ("caps_root", 0o775, false),
        ("w_upper", 0o775, false),
        ("t_upper", 0o775, false),
    ]
    .into_iter()
    .map(|(n, m, c): (&str, u32, bool)| (n.to_string(), format!("{m:o}"), c))
    .collect();
    assert_eq!(ours, expected, "layerfs");
    let kernel = run(Backend::Kernel);
    assert_eq!(ours, kernel, "layerfs vs kernel overlayfs");
}
