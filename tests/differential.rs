//! Differential fuzzer: the same operation scripts run on a kernel overlayfs mount and on
//! a layerfs mount of identical freshly built layers. Every call's errno (and what reads,
//! stats and listings observe) must match after each step; at checkpoints (every remount
//! and the end) the whole merged trees (names, types, modes, owners, sizes, content
//! hashes, symlink targets, nlink, xattrs; not st_ino or times) must match, also after
//! unmounting and mounting again.
//!
//! A divergence is shrunk (delta debugging over the op sequence, then the data of each
//! write) to a minimal reproducer, printed with the seed as a `script(&[...])` literal
//! ready to paste into a test here.
//!
//! Environment (defaults are the bounded CI run; `scripts/fuzz-diff` drives long runs):
//! - `LAYERFS_DIFF_SEEDS` (default 12): how many random scripts run.
//! - `LAYERFS_DIFF_SEED_START` (default 0): the first seed.
//! - `LAYERFS_DIFF_OPS` (default 250): ops per script.
//! - `LAYERFS_DIFF_KEEP_GOING=1`: do not stop at the first divergent seed; shrink the
//!   first seed of every new kind of divergence, count repeats, fail at the end.
//! - `LAYERFS_DIFF_SHRINK_SECS` (default 300): time budget for shrinking one divergence.
//! - `LAYERFS_DIFF_HANG_SECS` (default 120): a single op or (un)mount making no progress
//!   for this long aborts the run loudly (a hung FUSE request cannot be cancelled).
mod common;
use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(Clone, Debug, PartialEq)]
enum Op {
    Write(String, Vec<u8>),
    /// pwrite at an offset without truncating (creates the file if missing).
    WriteAt(String, u64, Vec<u8>),
    Append(String, Vec<u8>),
    Truncate(String, u64),
    Unlink(String),
    Mkdir(String, u32),
    Rmdir(String),
    Rename(String, String, u32),
    Link(String, String),
    Symlink(String, String),
    Chmod(String, u32),
    Chown(String, u32, u32),
    /// lsetxattr with flags 0, XATTR_CREATE or XATTR_REPLACE.
    SetXattr(String, String, Vec<u8>, i32),
    RemoveXattr(String, String),
    Mkfifo(String, u32),
    Read(String),
    ListDir(String),
    /// lstat plus the xattrs: what one entry looks like right now.
    Stat(String),
    /// open (creating if missing), unlink, pwrite at an offset, fchmod and read back
    /// through the still-open descriptor, then close.
    OpenUnlinkWrite(String, u64, Vec<u8>),
    /// Checkpoint: compare the trees, unmount both and mount the same dirs again.
    Remount,
}

fn flags_name(fl: i32) -> &'static str {
    match fl {
        libc::XATTR_CREATE => "create",
        libc::XATTR_REPLACE => "replace",
        _ => "0",
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Write(p, d) => write!(f, "write {p} ({} bytes)", d.len()),
            Op::WriteAt(p, o, d) => write!(f, "pwrite {p} @{o} ({} bytes)", d.len()),
            Op::Append(p, d) => write!(f, "append {p} ({} bytes)", d.len()),
            Op::Truncate(p, n) => write!(f, "truncate {p} {n}"),
            Op::Unlink(p) => write!(f, "unlink {p}"),
            Op::Mkdir(p, m) => write!(f, "mkdir {p} {m:o}"),
            Op::Rmdir(p) => write!(f, "rmdir {p}"),
            Op::Rename(a, b, fl) => write!(f, "rename {a} {b} flags={fl}"),
            Op::Link(a, b) => write!(f, "link {a} {b}"),
            Op::Symlink(t, p) => write!(f, "symlink {t} {p}"),
            Op::Chmod(p, m) => write!(f, "chmod {p} {m:o}"),
            Op::Chown(p, u, g) => write!(f, "lchown {p} {u}:{g}"),
            Op::SetXattr(p, n, v, fl) => write!(
                f,
                "lsetxattr {p} {n}=({} bytes) flags={}",
                v.len(),
                flags_name(*fl)
            ),
            Op::RemoveXattr(p, n) => write!(f, "lremovexattr {p} {n}"),
            Op::Mkfifo(p, m) => write!(f, "mkfifo {p} {m:o}"),
            Op::Read(p) => write!(f, "read {p}"),
            Op::ListDir(p) => write!(f, "readdir {p}"),
            Op::Stat(p) => write!(f, "lstat {p}"),
            Op::OpenUnlinkWrite(p, o, d) => {
                write!(f, "open-unlink-pwrite-close {p} @{o} ({} bytes)", d.len())
            }
            Op::Remount => write!(f, "remount"),
        }
    }
}

impl Op {
    /// The op as an entry of `script(&[...])`, for pasting a reproducer into a test.
    fn to_script(&self) -> String {
        let s = |v: &[u8]| format!("{:?}", String::from_utf8_lossy(v));
        let q = |v: &str| format!("{v:?}");
        let (name, args): (&str, Vec<String>) = match self {
            Op::Write(p, d) => ("write", vec![q(p), s(d)]),
            Op::WriteAt(p, o, d) => ("pwrite", vec![q(p), q(&o.to_string()), s(d)]),
            Op::Append(p, d) => ("append", vec![q(p), s(d)]),
            Op::Truncate(p, n) => ("truncate", vec![q(p), q(&n.to_string())]),
            Op::Unlink(p) => ("unlink", vec![q(p)]),
            Op::Mkdir(p, m) => ("mkdir", vec![q(p), q(&format!("{m:o}"))]),
            Op::Rmdir(p) => ("rmdir", vec![q(p)]),
            Op::Rename(a, b, fl) => (
                match *fl {
                    libc::RENAME_NOREPLACE => "noreplace",
                    libc::RENAME_EXCHANGE => "exchange",
                    _ => "rename",
                },
                vec![q(a), q(b)],
            ),
            Op::Link(a, b) => ("link", vec![q(a), q(b)]),
            Op::Symlink(t, p) => ("symlink", vec![q(t), q(p)]),
            Op::Chmod(p, m) => ("chmod", vec![q(p), q(&format!("{m:o}"))]),
            Op::Chown(p, u, g) => ("chown", vec![q(p), q(&u.to_string()), q(&g.to_string())]),
            Op::SetXattr(p, n, v, fl) => ("setxattr", vec![q(p), q(n), s(v), q(flags_name(*fl))]),
            Op::RemoveXattr(p, n) => ("rmxattr", vec![q(p), q(n)]),
            Op::Mkfifo(p, m) => ("mkfifo", vec![q(p), q(&format!("{m:o}"))]),
            Op::Read(p) => ("read", vec![q(p)]),
            Op::ListDir(p) => ("ls", vec![q(p)]),
            Op::Stat(p) => ("stat", vec![q(p)]),
            Op::OpenUnlinkWrite(p, o, d) => ("ouw", vec![q(p), q(&o.to_string()), s(d)]),
            Op::Remount => ("remount", vec![]),
        };
        format!("(\"{name}\", &[{}]),", args.join(", "))
    }

    fn kind(&self) -> &'static str {
        match self {
            Op::Write(..) => "write",
            Op::WriteAt(..) => "pwrite",
            Op::Append(..) => "append",
            Op::Truncate(..) => "truncate",
            Op::Unlink(..) => "unlink",
            Op::Mkdir(..) => "mkdir",
            Op::Rmdir(..) => "rmdir",
            Op::Rename(..) => "rename",
            Op::Link(..) => "link",
            Op::Symlink(..) => "symlink",
            Op::Chmod(..) => "chmod",
            Op::Chown(..) => "chown",
            Op::SetXattr(..) => "setxattr",
            Op::RemoveXattr(..) => "rmxattr",
            Op::Mkfifo(..) => "mkfifo",
            Op::Read(..) => "read",
            Op::ListDir(..) => "ls",
            Op::Stat(..) => "stat",
            Op::OpenUnlinkWrite(..) => "ouw",
            Op::Remount => "remount",
        }
    }

    /// A copy with shorter data, if it has data to shorten (shrinking step).
    fn with_short_data(&self) -> Option<Op> {
        let short = |d: &Vec<u8>| (d.len() > 1).then(|| b"x".to_vec());
        Some(match self {
            Op::Write(p, d) => Op::Write(p.clone(), short(d)?),
            Op::WriteAt(p, o, d) => Op::WriteAt(p.clone(), *o, short(d)?),
            Op::Append(p, d) => Op::Append(p.clone(), short(d)?),
            Op::OpenUnlinkWrite(p, o, d) => Op::OpenUnlinkWrite(p.clone(), *o, short(d)?),
            Op::SetXattr(p, n, v, fl) => Op::SetXattr(p.clone(), n.clone(), short(v)?, *fl),
            _ => return None,
        })
    }
}

fn open_flags() -> OpenOptions {
    let mut o = OpenOptions::new();
    // Never block on a FIFO: opening one for writing without a reader is ENXIO.
    o.custom_flags(libc::O_NONBLOCK);
    o
}

fn describe_stat(path: &Path) -> std::io::Result<String> {
    let md = fs::symlink_metadata(path)?;
    let e = entry(path);
    // Directory sizes and link counts legitimately differ (see `comparable`).
    let (size, nlink) = if md.is_dir() {
        (0, 0)
    } else {
        (md.size(), md.nlink())
    };
    Ok(format!(
        "{} {:o} {}:{} size={size} nlink={nlink} rdev={} xattrs={:?}",
        e.kind, e.mode, e.uid, e.gid, e.rdev, e.xattrs
    ))
}

fn open_unlink_write(path: &Path, off: u64, data: &[u8]) -> std::io::Result<String> {
    let h = open_flags()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o644)
        .open(path)?;
    fs::remove_file(path)?;
    h.write_all_at(data, off)?;
    h.set_permissions(fs::Permissions::from_mode(0o640))?;
    let md = h.metadata()?;
    let mut buf = vec![0u8; md.size() as usize];
    h.read_exact_at(&mut buf, 0)?;
    Ok(format!(
        "size={} nlink={} mode={:o} sha={}",
        md.size(),
        md.nlink(),
        md.mode() & 0o7777,
        sha256_hex(&buf)
    ))
}

/// Apply one op under `root`; returns (errno, observed output for reads). `Remount` is
/// the runner's business.
fn apply(root: &Path, op: &Op) -> (i32, String) {
    let p = |s: &str| root.join(s);
    let e = |r: std::io::Result<()>| (errno_of(&r), String::new());
    let out = |r: std::io::Result<String>| match r {
        Ok(s) => (0, s),
        Err(err) => (err.raw_os_error().unwrap_or(-1), String::new()),
    };
    match op {
        Op::Write(f, d) => e((|| {
            let mut h = open_flags()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o644)
                .open(p(f))?;
            h.write_all(d)
        })()),
        Op::WriteAt(f, o, d) => e((|| {
            let h = open_flags()
                .write(true)
                .create(true)
                .mode(0o644)
                .open(p(f))?;
            h.write_all_at(d, *o)
        })()),
        Op::Append(f, d) => e((|| {
            let mut h = open_flags().append(true).open(p(f))?;
            h.write_all(d)
        })()),
        Op::Truncate(f, n) => e((|| open_flags().write(true).open(p(f))?.set_len(*n))()),
        Op::Unlink(f) => e(fs::remove_file(p(f))),
        Op::Mkdir(f, m) => e(mkdir(p(f), *m)),
        Op::Rmdir(f) => e(fs::remove_dir(p(f))),
        Op::Rename(a, b, fl) => e(renameat2(p(a), p(b), *fl)),
        Op::Link(a, b) => e(fs::hard_link(p(a), p(b))),
        Op::Symlink(t, f) => e(std::os::unix::fs::symlink(t, p(f))),
        Op::Chmod(f, m) => e(chmod(p(f), *m)),
        Op::Chown(f, u, g) => e(lchown(p(f), *u, *g)),
        Op::SetXattr(f, n, v, fl) => e(lsetxattr_flags(p(f), n, v, *fl)),
        Op::RemoveXattr(f, n) => e(lremovexattr(p(f), n)),
        Op::Mkfifo(f, m) => e(mknod(p(f), libc::S_IFIFO, *m, 0)),
        Op::Read(f) => out(open_flags().read(true).open(p(f)).and_then(|mut h| {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut h, &mut v)?;
            Ok(sha256_hex(&v))
        })),
        Op::ListDir(d) => out(fs::read_dir(p(d)).and_then(|rd| {
            let mut names: Vec<String> = rd
                .map(|x| x.map(|x| x.file_name().to_string_lossy().into_owned()))
                .collect::<Result<_, _>>()?;
            names.sort();
            Ok(names.join(","))
        })),
        Op::Stat(f) => out(describe_stat(&p(f))),
        Op::OpenUnlinkWrite(f, o, d) => out(open_unlink_write(&p(f), *o, d)),
        Op::Remount => unreachable!("the runner handles remount"),
    }
}

const DIRS: [&str; 6] = ["", "d1", "d1/s", "d2", "d2/s", "x"];
const NAMES: [&str; 6] = ["a", "b", "c", "d1", "e", "s"];
const XATTRS: [&str; 5] = ["user.a", "user.b", "trusted.t", "security.s", "user.c"];

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
}

/// A path: mostly DIR/NAME, sometimes one level deeper (inside dirs the script made).
fn path(r: &mut Rng) -> String {
    let d = *r.pick(&DIRS);
    let mut n = r.pick(&NAMES).to_string();
    if r.below(6) == 0 {
        n = format!("{n}/{}", r.pick(&NAMES));
    }
    if d.is_empty() {
        n
    } else {
        format!("{d}/{n}")
    }
}

fn random_script(seed: u64, n: usize) -> Vec<Op> {
    let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let modes = [
        0o644, 0o600, 0o755, 0o4755, 0o1777, 0o2755, 0o000, 0o700, 0o6711,
    ];
    let offsets = [0u64, 1, 3, 4095, 4096, 65_537, 1 << 20];
    (0..n)
        .map(|i| match r.below(30) {
            0 | 1 => Op::Write(
                path(&mut r),
                format!("w{seed}-{i}").repeat(r.below(50)).into_bytes(),
            ),
            2 | 3 => Op::WriteAt(
                path(&mut r),
                *r.pick(&offsets),
                format!("p{i}").repeat(1 + r.below(20)).into_bytes(),
            ),
            4 => Op::Append(path(&mut r), format!("+{i}").into_bytes()),
            5 => Op::Truncate(path(&mut r), *r.pick(&[0, 1, 5, 4096, 100_000])),
            6 | 7 => Op::Unlink(path(&mut r)),
            8 => Op::Mkdir(path(&mut r), *r.pick(&[0o755, 0o1777, 0o700, 0o2775])),
            9 => Op::Rmdir(path(&mut r)),
            10 | 11 => Op::Rename(
                path(&mut r),
                path(&mut r),
                *r.pick(&[0, 0, libc::RENAME_NOREPLACE, libc::RENAME_EXCHANGE]),
            ),
            // Directory renames: a known directory (lower, merged or opaque) to a new
            // or existing name elsewhere.
            12 => {
                let from = r.pick(&DIRS[1..]).to_string();
                Op::Rename(
                    from,
                    path(&mut r),
                    *r.pick(&[0, 0, libc::RENAME_NOREPLACE, libc::RENAME_EXCHANGE]),
                )
            }
            13 => Op::Link(path(&mut r), path(&mut r)),
            14 => Op::Symlink(
                r.pick(&["a", "../a", "/nonexistent-layerfs-test/target", "d1/s", "."])
                    .to_string(),
                path(&mut r),
            ),
            15 => Op::Chmod(path(&mut r), *r.pick(&modes)),
            16 => Op::Chmod(r.pick(&DIRS).to_string(), *r.pick(&modes)),
            17 => {
                let (u, g) = *r.pick(&[
                    (0, 0),
                    (1000, 1000),
                    (1, 2),
                    (65534, 65534),
                    (u32::MAX, 7),
                    (9, u32::MAX),
                ]);
                let p = if r.below(3) == 0 {
                    r.pick(&DIRS).to_string()
                } else {
                    path(&mut r)
                };
                Op::Chown(p, u, g)
            }
            18 | 19 => {
                let value = match r.below(4) {
                    0 => Vec::new(),
                    1 => vec![b'L'; 3000],
                    _ => format!("v{i}").into_bytes(),
                };
                let mut p = if r.below(3) == 0 {
                    r.pick(&DIRS).to_string()
                } else {
                    path(&mut r)
                };
                if p.is_empty() && avoid("rootxattr") {
                    p = "d1".into();
                }
                Op::SetXattr(
                    p,
                    r.pick(&XATTRS).to_string(),
                    value,
                    *r.pick(&[0, 0, libc::XATTR_CREATE, libc::XATTR_REPLACE]),
                )
            }
            20 => Op::RemoveXattr(path(&mut r), r.pick(&XATTRS).to_string()),
            21 => Op::Mkfifo(path(&mut r), 0o640),
            22 => Op::Read(path(&mut r)),
            23 => Op::ListDir(r.pick(&DIRS).to_string()),
            24 | 25 => Op::Stat(path(&mut r)),
            26 | 27 => Op::OpenUnlinkWrite(
                path(&mut r),
                *r.pick(&offsets),
                format!("u{i}").repeat(1 + r.below(10)).into_bytes(),
            ),
            28 if r.below(3) == 0 => Op::Remount,
            _ => Op::Stat(r.pick(&DIRS).to_string()),
        })
        .collect()
}

/// The reference: kernel overlayfs, always.
fn reference(s: &Stack) -> Mount {
    s.mount_kernel(&[], true)
}

/// Why a script failed. `sig` classifies the divergence (what shrinking must preserve and
/// what a long run deduplicates on); `at` is the op that diverged, if one did.
#[derive(Debug, Clone)]
struct Failure {
    sig: String,
    msg: String,
    at: Option<usize>,
}

fn report(ops: &[Op], a: &[(i32, String)], b: &[(i32, String)]) -> String {
    let mut out = String::from("op sequence (kernel result | layerfs result):\n");
    for (i, op) in ops.iter().enumerate().take(a.len()) {
        let mark = if a[i] != b[i] { ">>" } else { "  " };
        out += &format!("{mark}{i:4}: {op}  => {:?} | {:?}\n", a[i], b[i]);
    }
    out
}

/// Which fields differ between two snapshots, as a stable classification.
fn tree_sig(a: &Snapshot, b: &Snapshot) -> String {
    let mut what = BTreeSet::new();
    for (k, e) in a {
        match b.get(k) {
            None => {
                what.insert(format!("missing {}", e.kind));
            }
            Some(f) => {
                let fields = [
                    ("kind", e.kind != f.kind),
                    ("mode", e.mode != f.mode),
                    ("owner", (e.uid, e.gid) != (f.uid, f.gid)),
                    ("size", e.size != f.size),
                    ("content", e.sha256 != f.sha256),
                    ("target", e.target != f.target),
                    ("rdev", e.rdev != f.rdev),
                    ("nlink", e.nlink != f.nlink),
                    ("xattrs", e.xattrs != f.xattrs),
                ];
                for (n, d) in fields {
                    if d {
                        what.insert(n.to_string());
                    }
                }
            }
        }
    }
    for (k, e) in b {
        if !a.contains_key(k) {
            what.insert(format!("extra {}", e.kind));
        }
    }
    what.into_iter().collect::<Vec<_>>().join("+")
}

/// Runs `ops` on both sides; the first divergence, if any.
fn run_script(ops: &[Op], wd: &Watchdog) -> Result<(), Failure> {
    let k = Stack::new(2);
    let l = Stack::new(2);
    build_base(&k);
    build_base(&l);
    wd.beat("mounting");
    let mut km = Some(reference(&k));
    let mut lm = Some(l.mount());
    let mut kr: Vec<(i32, String)> = Vec::new();
    let mut lr: Vec<(i32, String)> = Vec::new();
    let compare = |when: &str, km: &Mount, lm: &Mount, kr: &[_], lr: &[_]| {
        let a = comparable(&snapshot(&km.path));
        let b = comparable(&snapshot(&lm.path));
        if a == b {
            return Ok(());
        }
        Err(Failure {
            // Where the trees were compared is not part of the signature: shrinking may
            // drop the remount that exposed the difference.
            sig: format!("trees differ: {}", tree_sig(&a, &b)),
            msg: format!(
                "merged trees differ {when}:\n{}{}",
                diff(&a, &b, "kernel", "layerfs"),
                report(ops, kr, lr)
            ),
            at: None,
        })
    };
    for (i, op) in ops.iter().enumerate() {
        wd.beat(&format!("op {i}: {op}"));
        if *op == Op::Remount {
            kr.push((0, String::new()));
            lr.push((0, String::new()));
            compare(
                &format!("before the remount at op {i}"),
                km.as_ref().unwrap(),
                lm.as_ref().unwrap(),
                &kr,
                &lr,
            )
            .map_err(|mut f| {
                f.at = Some(i);
                f
            })?;
            km.take().unwrap().unmount();
            lm.take().unwrap().unmount();
            km = Some(reference(&k));
            lm = Some(l.mount());
            continue;
        }
        kr.push(apply(&km.as_ref().unwrap().path, op));
        lr.push(apply(&lm.as_ref().unwrap().path, op));
        if kr[i] != lr[i] {
            let what = if kr[i].0 != lr[i].0 {
                format!("errno {} vs {}", kr[i].0, lr[i].0)
            } else {
                "output".to_string()
            };
            return Err(Failure {
                sig: format!("{}: {what}", op.kind()),
                msg: format!(
                    "op {i} ({op}) diverged: kernel {:?}, layerfs {:?}\n{}",
                    kr[i],
                    lr[i],
                    report(ops, &kr, &lr)
                ),
                at: Some(i),
            });
        }
    }
    wd.beat("final compare");
    let (km, lm) = (km.unwrap(), lm.unwrap());
    compare("after the script", &km, &lm, &kr, &lr)?;
    km.unmount();
    lm.unmount();
    wd.beat("final remount");
    let km = reference(&k);
    let lm = l.mount();
    compare("after unmount and remount", &km, &lm, &kr, &lr)
}

/// `run_script`, with a panic (a mount that failed, a daemon that died) as a failure too.
fn try_script(ops: &[Op], wd: &Watchdog) -> Result<(), Failure> {
    match catch_unwind(AssertUnwindSafe(|| run_script(ops, wd))) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            Err(Failure {
                sig: format!("panic: {}", msg.lines().next().unwrap_or("")),
                msg,
                at: None,
            })
        }
    }
}

/// `LAYERFS_DIFF_AVOID` (comma-separated) steers long runs around divergences already
/// reported, so they do not hide others: `hardlinks` (no hard-linked pair in the lower
/// layer), `rootxattr` (no xattr changes on the mount root).
fn avoid(what: &str) -> bool {
    std::env::var("LAYERFS_DIFF_AVOID")
        .map(|v| v.split(',').any(|x| x == what))
        .unwrap_or(false)
}

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Delta debugging: the smallest op sequence (then the shortest data) that still fails
/// with the same signature. Returns it, its failure, and how many runs it took.
fn shrink(ops: &[Op], first: &Failure, wd: &Watchdog) -> (Vec<Op>, Failure, usize) {
    let budget = Duration::from_secs(env_num("LAYERFS_DIFF_SHRINK_SECS", 300));
    let start = Instant::now();
    let cut = |ops: &[Op], f: &Failure| match f.at {
        Some(at) => ops[..=at].to_vec(),
        None => ops.to_vec(),
    };
    let mut best = cut(ops, first);
    let mut best_f = first.clone();
    let mut runs = 0;
    let attempt = |cand: &[Op], runs: &mut usize| -> Option<Failure> {
        *runs += 1;
        match try_script(cand, wd) {
            Err(f) if f.sig == first.sig => Some(f),
            _ => None,
        }
    };
    let mut n = 2;
    while best.len() >= 2 && start.elapsed() < budget {
        let chunk = best.len().div_ceil(n);
        let mut reduced = false;
        for c in 0..n {
            let lo = c * chunk;
            if lo >= best.len() {
                break;
            }
            let hi = (lo + chunk).min(best.len());
            let cand: Vec<Op> = best[..lo].iter().chain(&best[hi..]).cloned().collect();
            if cand.is_empty() {
                continue;
            }
            if let Some(f) = attempt(&cand, &mut runs) {
                best = cut(&cand, &f);
                best_f = f;
                reduced = true;
                break;
            }
            if start.elapsed() >= budget {
                break;
            }
        }
        if reduced {
            n = (n - 1).max(2);
        } else {
            if n >= best.len() {
                break;
            }
            n = (n * 2).min(best.len());
        }
    }
    for i in 0..best.len() {
        if start.elapsed() >= budget {
            break;
        }
        if let Some(short) = best[i].with_short_data() {
            let mut cand = best.clone();
            cand[i] = short;
            if let Some(f) = attempt(&cand, &mut runs) {
                best = cand;
                best_f = f;
            }
        }
    }
    (best, best_f, runs)
}

fn reproducer(seed: Option<u64>, nops: usize, ops: &[Op], f: &Failure, runs: usize) -> String {
    let mut s = String::new();
    match seed {
        Some(seed) => {
            s += &format!(
                "=== DIVERGENCE seed {seed} (of a {nops}-op script): {}\n",
                f.sig
            );
            s += &format!(
                "rerun: LAYERFS_DIFF_SEED_START={seed} LAYERFS_DIFF_SEEDS=1 LAYERFS_DIFF_OPS={nops} \
                 cargo test --test differential random_scripts\n"
            );
        }
        None => s += &format!("=== DIVERGENCE: {}\n", f.sig),
    }
    s += &format!(
        "minimal reproducer ({} ops, {runs} shrinking runs):\n",
        ops.len()
    );
    s += "    check_script(\"repro\", &script(&[\n";
    for op in ops {
        s += &format!("        {}\n", op.to_script());
    }
    s += "    ]));\n";
    s += &f.msg;
    s += "\n=== END\n";
    s
}

/// Runs a fixed script; on a divergence shrinks it and panics with the reproducer.
fn check_script(name: &str, ops: &[Op]) {
    let wd = Watchdog::new(
        name,
        Duration::from_secs(env_num("LAYERFS_DIFF_HANG_SECS", 120)),
    );
    if let Err(f) = try_script(ops, &wd) {
        let (min, mf, runs) = shrink(ops, &f, &wd);
        panic!("{name}: {}", reproducer(None, ops.len(), &min, &mf, runs));
    }
}

/// Identical base layers: two lowers with files, dirs, hard links, symlinks, xattrs, a
/// whiteout and an opaque dir (kernel encodings, which both sides read), and an upper
/// with some content of its own.
fn build_base(s: &Stack) {
    put(s.l(1, "a"), b"bottom a");
    put(s.l(1, "b"), b"bottom b");
    put(s.l(1, "d1/a"), b"d1 a");
    put(s.l(1, "d1/s/b"), b"d1 s b");
    put(s.l(1, "d1/s/c"), &vec![7u8; 70_000]);
    put(s.l(1, "d2/c"), b"d2 c");
    put(s.l(1, "d2/s/a"), b"d2 s a");
    put(s.l(1, "x/a"), b"hidden by opaque");
    if !avoid("hardlinks") {
        fs::hard_link(s.l(1, "d1/a"), s.l(1, "d2/e")).unwrap();
    } else {
        put(s.l(1, "d2/e"), b"d1 a");
    }
    std::os::unix::fs::symlink("a", s.l(1, "d1/e")).unwrap();
    lsetxattr(s.l(1, "b"), "user.a", b"low").unwrap();
    lsetxattr(s.l(1, "d2"), "user.b", b"dir").unwrap();
    chmod(s.l(1, "d2/c"), 0o600).unwrap();
    lchown(s.l(1, "d2/c"), 1000, 1000).unwrap();
    put(s.l(0, "c"), b"top c");
    put(s.l(0, "d1/b"), b"top d1 b");
    put(s.l(0, "x/b"), b"opaque x b");
    opaque_trusted(s.l(0, "x"));
    whiteout_chardev(s.l(0, "d2"), "s");
    put(s.l(0, "d1/s/a"), b"top s a");
    put(s.u("d1/c"), b"upper d1 c");
    put(s.u("e"), b"upper e");
}

fn script(ops: &[(&str, &[&str])]) -> Vec<Op> {
    ops.iter()
        .map(|(op, a)| {
            let s = |i: usize| a[i].to_string();
            let oct = |i: usize| u32::from_str_radix(a[i], 8).unwrap();
            let num = |i: usize| a[i].parse::<u64>().unwrap();
            match *op {
                "write" => Op::Write(s(0), a[1].as_bytes().to_vec()),
                "pwrite" => Op::WriteAt(s(0), num(1), a[2].as_bytes().to_vec()),
                "append" => Op::Append(s(0), a[1].as_bytes().to_vec()),
                "truncate" => Op::Truncate(s(0), num(1)),
                "unlink" => Op::Unlink(s(0)),
                "mkdir" => Op::Mkdir(s(0), oct(1)),
                "rmdir" => Op::Rmdir(s(0)),
                "rename" => Op::Rename(s(0), s(1), 0),
                "noreplace" => Op::Rename(s(0), s(1), libc::RENAME_NOREPLACE),
                "exchange" => Op::Rename(s(0), s(1), libc::RENAME_EXCHANGE),
                "link" => Op::Link(s(0), s(1)),
                "symlink" => Op::Symlink(s(0), s(1)),
                "chmod" => Op::Chmod(s(0), oct(1)),
                "chown" => Op::Chown(s(0), a[1].parse().unwrap(), a[2].parse().unwrap()),
                "setxattr" => Op::SetXattr(
                    s(0),
                    s(1),
                    a[2].as_bytes().to_vec(),
                    match a.get(3).copied() {
                        Some("create") => libc::XATTR_CREATE,
                        Some("replace") => libc::XATTR_REPLACE,
                        _ => 0,
                    },
                ),
                "rmxattr" => Op::RemoveXattr(s(0), s(1)),
                "mkfifo" => Op::Mkfifo(s(0), oct(1)),
                "read" => Op::Read(s(0)),
                "ls" => Op::ListDir(s(0)),
                "stat" => Op::Stat(s(0)),
                "ouw" => Op::OpenUnlinkWrite(s(0), num(1), a[2].as_bytes().to_vec()),
                "remount" => Op::Remount,
                other => panic!("unknown op {other}"),
            }
        })
        .collect()
}

#[test]
fn script_deletes_and_recreates() {
    check_script(
        "deletes",
        &script(&[
            ("unlink", &["a"]),
            ("read", &["a"]),
            ("write", &["a", "new a"]),
            ("rmdir", &["d1/s"]),
            ("unlink", &["d1/s/a"]),
            ("unlink", &["d1/s/b"]),
            ("unlink", &["d1/s/c"]),
            ("rmdir", &["d1/s"]),
            ("mkdir", &["d1/s", "755"]),
            ("ls", &["d1/s"]),
            ("rmdir", &["d2/s"]),
            ("mkdir", &["d2/s", "700"]),
            ("ls", &["d2"]),
            ("unlink", &["d1"]),
            ("rmdir", &["c"]),
            ("rmdir", &["x"]),
            ("unlink", &["x/b"]),
            ("rmdir", &["x"]),
            ("ls", &[""]),
        ]),
    );
}

#[test]
fn script_renames() {
    check_script(
        "renames",
        &script(&[
            ("rename", &["a", "b"]),
            ("unlink", &["b"]),
            ("noreplace", &["c", "e"]),
            ("noreplace", &["c", "f"]),
            ("exchange", &["f", "e"]),
            ("exchange", &["d1", "d2"]),
            ("ls", &["d1"]),
            ("ls", &["d2"]),
            ("rename", &["d1/s", "x/moved"]),
            ("ls", &["x/moved"]),
            ("mkdir", &["d2/s", "755"]),
            ("ls", &["d2/s"]),
            ("rename", &["x/moved", "d1"]),
            ("rename", &["d2", "x"]),
            ("rename", &["e", "d1/s/nested"]),
            ("rename", &["f", "f"]),
            ("rename", &["nothing", "g"]),
        ]),
    );
}

#[test]
fn script_metadata_and_links() {
    check_script(
        "metadata",
        &script(&[
            ("chmod", &["b", "4750"]),
            ("chown", &["b", "12", "34"]),
            ("setxattr", &["b", "user.z", "zz"]),
            ("rmxattr", &["b", "user.a"]),
            ("rmxattr", &["b", "user.a"]),
            ("chmod", &["d2", "1777"]),
            ("append", &["d2/e", "!"]),
            ("read", &["d1/a"]),
            ("chmod", &["d1/a", "600"]),
            ("link", &["d2/c", "d2/c2"]),
            ("truncate", &["d2/c2", "2"]),
            ("link", &["d1", "dl"]),
            ("symlink", &["d1/b", "sl"]),
            ("read", &["sl"]),
            ("append", &["d1/e", "via symlink"]),
            ("mkfifo", &["fifo", "640"]),
            ("write", &["fifo", "x"]),
            ("truncate", &["d1/s/c", "100"]),
            ("chown", &["d1/e", "5", "5"]),
        ]),
    );
}

#[test]
fn script_new_ops() {
    check_script(
        "new ops",
        &script(&[
            ("pwrite", &["b", "4096", "sparse tail"]),
            ("pwrite", &["d1/s/c", "3", "mid"]),
            ("stat", &["d1/s/c"]),
            ("ouw", &["d2/c", "5", "gone"]),
            ("stat", &["d2/c"]),
            ("ouw", &["new", "0", "never named"]),
            ("setxattr", &["e", "user.q", "1", "create"]),
            ("setxattr", &["e", "user.q", "2", "create"]),
            ("setxattr", &["d1", "user.r", "3", "replace"]),
            ("remount", &[]),
            ("stat", &["b"]),
            ("rename", &["d1/s", "d2/moved"]),
            ("remount", &[]),
            ("ls", &["d2/moved"]),
            ("chown", &["d2", "4294967295", "7"]),
            ("stat", &["d2"]),
        ]),
    );
}

// Divergences the fuzzer found (shrunk reproducers). They fail until the daemon is fixed.

/// Two names of one lower inode, both copied up: after a remount the merged nlink counts
/// the index link too (layerfs 3, kernel 2).
#[test]
fn repro_lower_hardlink_nlink_after_remount() {
    check_script(
        "repro nlink",
        &script(&[("append", &["d2/e", "!"]), ("chmod", &["d1/a", "600"])]),
    );
}

/// Open-unlink-write of one name of a lower hard-link pair, then a write to the other:
/// after a remount the survivor reports nlink 2 (kernel 1).
#[test]
fn repro_unlinked_hardlink_nlink_after_remount() {
    check_script(
        "repro nlink after open-unlink",
        &script(&[
            ("ouw", &["d2/e", "65537", "x"]),
            ("pwrite", &["d1/a", "65537", "x"]),
        ]),
    );
}

/// After a remount, the other name of a copied-up lower hard link cannot be renamed
/// (ENOENT; kernel succeeds). `d1/e` is a symlink to `a`.
#[test]
fn repro_hardlink_rename_enoent_after_remount() {
    check_script(
        "repro rename ENOENT",
        &script(&[
            ("write", &["d1/a", ""]),
            ("remount", &[]),
            ("pwrite", &["d1/e", "4095", "x"]),
            ("rename", &["d2/e", "d2/a"]),
        ]),
    );
}

/// After a remount and a rename of a copied-up lower hard link, opening it fails ENOENT.
#[test]
fn repro_hardlink_open_enoent_after_rename() {
    check_script(
        "repro open ENOENT",
        &script(&[
            ("append", &["d1/a", "x"]),
            ("remount", &[]),
            ("rename", &["d1/a", "x/a"]),
            ("read", &["d2/e"]),
            ("ouw", &["x/a", "4096", "x"]),
        ]),
    );
}

/// xattrs on the mount root: layerfs refuses (EPERM for user.*, EOPNOTSUPP for
/// trusted.*/security.*, also instead of ENODATA for XATTR_REPLACE); kernel allows.
#[test]
fn repro_setxattr_on_mount_root() {
    check_script(
        "repro root user xattr",
        &script(&[("setxattr", &["", "user.a", "x", "create"])]),
    );
}

#[test]
fn repro_trusted_xattr_on_mount_root() {
    check_script(
        "repro root trusted xattr",
        &script(&[("setxattr", &["", "trusted.t", "x", "0"])]),
    );
}

/// The seeded random run: CI runs the defaults (a few thousand ops); `scripts/fuzz-diff`
/// sets the environment for long runs.
#[test]
fn random_scripts() {
    let seeds: u64 = env_num("LAYERFS_DIFF_SEEDS", 12);
    let first: u64 = env_num("LAYERFS_DIFF_SEED_START", 0);
    let nops: usize = env_num("LAYERFS_DIFF_OPS", 250);
    let keep_going = std::env::var("LAYERFS_DIFF_KEEP_GOING").as_deref() == Ok("1");
    let wd = Watchdog::new(
        "differential random_scripts",
        Duration::from_secs(env_num("LAYERFS_DIFF_HANG_SECS", 120)),
    );
    // signature -> (first seed, how many seeds hit it)
    let mut found: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut reports = Vec::new();
    let started = Instant::now();
    let mut total_ops = 0usize;
    for seed in first..first + seeds {
        let ops = random_script(seed, nops);
        total_ops += ops.len();
        let Err(f) = try_script(&ops, &wd) else {
            continue;
        };
        if let Some(e) = found.get_mut(&f.sig) {
            e.1 += 1;
            eprintln!("seed {seed}: known divergence again: {}", f.sig);
            continue;
        }
        let (min, mf, runs) = shrink(&ops, &f, &wd);
        let rep = reproducer(Some(seed), nops, &min, &mf, runs);
        eprintln!("{rep}");
        found.insert(f.sig.clone(), (seed, 1));
        reports.push(rep);
        if !keep_going {
            break;
        }
    }
    eprintln!(
        "differential: seeds {first}..{}, {total_ops} ops in {:.1?}; {} kind(s) of divergence",
        first + seeds,
        started.elapsed(),
        found.len()
    );
    for (sig, (seed, n)) in &found {
        eprintln!("  {n:5} seed(s), first {seed}: {sig}");
    }
    assert!(
        found.is_empty(),
        "layerfs diverged from kernel overlayfs:\n{}",
        reports.join("\n")
    );
}
