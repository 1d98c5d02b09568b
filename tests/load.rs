//! Load: N threads of mixed operations on one layerfs mount for a bounded time
//! (fsstress-like), then every byte verified against each thread's model, also after a
//! remount. Any errno other than the races a shared directory legitimately produces fails
//! the test; a thread making no progress for 60 s aborts it (a deadlock, not slowness).
//! The daemon's VmRSS and open fds are sampled over the run and must stay flat (generous
//! bounds). `fio` with verification runs through `scripts/stress-fio`.
//!
//! `LAYERFS_LOAD_SECS` (default 20) and `LAYERFS_LOAD_THREADS` (default 8).
mod common;
use common::*;
use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const LOWER_FILES: usize = 12;
const LOWER_SIZE: usize = 200_000;

fn lower_content(t: usize, k: usize) -> Vec<u8> {
    (0..LOWER_SIZE)
        .map(|j| ((j * 31 + t * 7 + k) % 253) as u8)
        .collect()
}

/// Errors a shared directory produces when threads race on the same names.
fn race_ok(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOENT) | Some(libc::EEXIST) | Some(libc::ENOTEMPTY)
    )
}

/// One thread: its own directory `t{t}` (starting with lower files to copy up) and a
/// model of what every file in it holds; plus racy traffic in the shared directory.
fn worker(
    mnt: PathBuf,
    t: usize,
    deadline: Instant,
    ops: Arc<AtomicU64>,
) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let wd = Watchdog::new(&format!("load thread {t}"), Duration::from_secs(60));
    let mut r = Rng((t as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let dir = mnt.join(format!("t{t}"));
    let mut model: BTreeMap<String, Vec<u8>> = (0..LOWER_FILES)
        .map(|k| (format!("lf{k}"), lower_content(t, k)))
        .collect();
    let mut n = 0u64;
    let fail = |what: String, e: io::Error| Err(format!("thread {t}: {what}: {e}"));
    while Instant::now() < deadline {
        n += 1;
        let names: Vec<String> = model.keys().cloned().collect();
        let pick = |r: &mut Rng| names[r.below(names.len() as u64) as usize].clone();
        let op = r.below(14);
        wd.beat(&format!("op {n} kind {op}"));
        match op {
            0 | 1 => {
                let name = format!("f{}", r.below(40));
                let data = format!("t{t}n{n}")
                    .repeat(1 + r.below(500) as usize)
                    .into_bytes();
                if let Err(e) = fs::write(dir.join(&name), &data) {
                    return fail(format!("write {name}"), e);
                }
                model.insert(name, data);
            }
            2 | 3 if !names.is_empty() => {
                let name = pick(&mut r);
                let off = r.below(300_000);
                let data = format!("[{n}]").into_bytes();
                let res = OpenOptions::new()
                    .write(true)
                    .open(dir.join(&name))
                    .and_then(|f| f.write_all_at(&data, off));
                if let Err(e) = res {
                    return fail(format!("pwrite {name}@{off}"), e);
                }
                let m = model.get_mut(&name).unwrap();
                let end = off as usize + data.len();
                if m.len() < end {
                    m.resize(end, 0);
                }
                m[off as usize..end].copy_from_slice(&data);
            }
            4 if !names.is_empty() => {
                let name = pick(&mut r);
                let len = r.below(250_000);
                let res = OpenOptions::new()
                    .write(true)
                    .open(dir.join(&name))
                    .and_then(|f| f.set_len(len));
                if let Err(e) = res {
                    return fail(format!("truncate {name}"), e);
                }
                model.get_mut(&name).unwrap().resize(len as usize, 0);
            }
            5 if !names.is_empty() => {
                let name = pick(&mut r);
                let data = format!("+{n}").into_bytes();
                let res = OpenOptions::new()
                    .append(true)
                    .open(dir.join(&name))
                    .and_then(|mut f| f.write_all(&data));
                if let Err(e) = res {
                    return fail(format!("append {name}"), e);
                }
                model.get_mut(&name).unwrap().extend_from_slice(&data);
            }
            6 if !names.is_empty() => {
                let (a, b) = (pick(&mut r), format!("f{}", r.below(40)));
                if let Err(e) = fs::rename(dir.join(&a), dir.join(&b)) {
                    return fail(format!("rename {a} {b}"), e);
                }
                let v = model.remove(&a).unwrap();
                model.insert(b, v);
            }
            7 if names.len() > 4 => {
                let name = pick(&mut r);
                if let Err(e) = fs::remove_file(dir.join(&name)) {
                    return fail(format!("unlink {name}"), e);
                }
                model.remove(&name);
            }
            8 if !names.is_empty() => {
                let name = pick(&mut r);
                let mode = [0o600, 0o644, 0o640][r.below(3) as usize];
                let res = fs::set_permissions(dir.join(&name), fs::Permissions::from_mode(mode));
                let res = res.and_then(|_| lsetxattr(dir.join(&name), "user.n", &n.to_le_bytes()));
                if let Err(e) = res {
                    return fail(format!("chmod/setxattr {name}"), e);
                }
            }
            9 if !names.is_empty() => {
                // Read back and check against the model.
                let name = pick(&mut r);
                match fs::read(dir.join(&name)) {
                    Ok(got) if got == model[&name] => {}
                    Ok(got) => {
                        return Err(format!(
                            "thread {t}: {name} holds {} bytes that differ from the {} written",
                            got.len(),
                            model[&name].len()
                        ))
                    }
                    Err(e) => return fail(format!("read {name}"), e),
                }
            }
            10 => {
                // Shared directory: racy creates, renames, unlinks, listings.
                let shared = mnt.join("shared");
                let a = shared.join(format!("s{}", r.below(16)));
                let b = shared.join(format!("s{}", r.below(16)));
                let res = match r.below(5) {
                    0 => fs::write(&a, b"shared"),
                    1 => fs::rename(&a, &b),
                    2 => fs::remove_file(&a),
                    3 => fs::hard_link(&a, &b),
                    _ => fs::read_dir(&shared).map(|rd| {
                        rd.count();
                    }),
                };
                if let Err(e) = res {
                    if !race_ok(&e) {
                        return fail(format!("shared op on {}", a.display()), e);
                    }
                }
            }
            11 => {
                let sub = dir.join(format!("d{}", r.below(4)));
                let res = match fs::create_dir(&sub) {
                    Ok(()) => fs::write(sub.join("x"), b"x")
                        .and_then(|_| fs::remove_file(sub.join("x")))
                        .and_then(|_| fs::remove_dir(&sub)),
                    Err(e) => Err(e),
                };
                if let Err(e) = res {
                    return fail(format!("mkdir/rmdir {}", sub.display()), e);
                }
            }
            12 => {
                if let Err(e) = fs::read_dir(&dir).map(|rd| rd.count()) {
                    return fail("readdir".into(), e);
                }
            }
            _ => {
                // fsync a file and stat it.
                if let Some(name) = names.first() {
                    let res = OpenOptions::new()
                        .write(true)
                        .custom_flags(0)
                        .open(dir.join(name))
                        .and_then(|f| f.sync_all().and_then(|_| f.metadata()));
                    match res {
                        Ok(md) if md.len() == model[name].len() as u64 => {}
                        Ok(md) => {
                            return Err(format!(
                                "thread {t}: {name} size {} expected {}",
                                md.len(),
                                model[name].len()
                            ))
                        }
                        Err(e) => return fail(format!("fsync {name}"), e),
                    }
                }
            }
        }
        ops.fetch_add(1, Ordering::Relaxed);
    }
    Ok(model)
}

fn verify(root: &Path, models: &[BTreeMap<String, Vec<u8>>], when: &str) {
    for (t, model) in models.iter().enumerate() {
        let dir = root.join(format!("t{t}"));
        let mut on_disk: Vec<String> = ls(&dir)
            .into_iter()
            .filter(|n| !n.starts_with('d'))
            .collect();
        on_disk.sort();
        let want: Vec<String> = model.keys().cloned().collect();
        assert_eq!(on_disk, want, "{when}: thread {t}'s names");
        for (name, data) in model {
            let got = read(dir.join(name));
            assert!(
                got == *data,
                "{when}: t{t}/{name}: {} bytes, expected {}",
                got.len(),
                data.len()
            );
        }
    }
}

#[test]
fn mixed_load_threads_then_verify() {
    let secs = env_num("LAYERFS_LOAD_SECS", 20);
    let threads = env_num("LAYERFS_LOAD_THREADS", 8) as usize;
    let s = Stack::new(1);
    for t in 0..threads {
        for k in 0..LOWER_FILES {
            put(s.l(0, &format!("t{t}/lf{k}")), &lower_content(t, k));
        }
    }
    mkdirs(s.l(0, "shared"));
    let m = s.mount();
    let pid = daemon_pid(&m.path);
    let start = rss_and_fds(pid);
    let ops = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let mnt = m.path.clone();
            let ops = ops.clone();
            std::thread::spawn(move || worker(mnt, t, deadline, ops))
        })
        .collect();
    // Sample the daemon while the load runs.
    let done = Arc::new(AtomicBool::new(false));
    let mut samples = Vec::new();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        samples.push(rss_and_fds(pid));
    }
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    done.store(true, Ordering::SeqCst);
    let models: Vec<_> = results
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("{e}")))
        .collect();
    let total = ops.load(Ordering::Relaxed);
    let after = rss_and_fds(pid);
    eprintln!(
        "load: {threads} threads, {secs}s, {total} ops; daemon VmRSS kB / fds: start {start:?}, \
         samples {samples:?}, after {after:?}"
    );
    assert!(total > 0, "no operation completed");
    // Flat: after warm-up (the first quarter), the later samples stay within a generous
    // bound of it, and once every file is closed the fds are back near the start.
    let warm = samples[samples.len() / 4];
    let peak_rss = samples.iter().map(|s| s.0).max().unwrap();
    let peak_fds = samples.iter().map(|s| s.1).max().unwrap();
    assert!(
        peak_rss <= warm.0 * 3 + 64 * 1024,
        "daemon memory grows under load: warm {} kB, peak {peak_rss} kB",
        warm.0
    );
    assert!(
        peak_fds <= start.1 + 64 * threads,
        "daemon fds grow under load: start {}, peak {peak_fds}",
        start.1
    );
    verify(&m.path, &models, "after the load");
    // Drop the kernel's caches so forgotten nodes release what they hold, then check fds.
    let _ = fs::write("/proc/sys/vm/drop_caches", b"2");
    std::thread::sleep(Duration::from_millis(300));
    let idle = rss_and_fds(pid);
    eprintln!("load: after verify and drop_caches: {idle:?}");
    assert!(
        idle.1 <= start.1 + 32,
        "daemon keeps fds after the load: {} at start, {} when idle",
        start.1,
        idle.1
    );
    m.unmount();
    let m = s.mount();
    verify(&m.path, &models, "after remount");
}

/// fio with verification through scripts/stress-fio (small sizes for CI).
#[test]
fn fio_verify() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/stress-fio");
    let out = std::process::Command::new(&script)
        .env("LAYERFS_BIN", layerfs_bin())
        .env("FIO_SIZE", "32M")
        .env("FIO_RUNTIME", "10")
        .output()
        .expect("run scripts/stress-fio");
    eprintln!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "scripts/stress-fio failed: {:?}",
        out.status
    );
}

/// Found by the load test: threads that each create and remove a directory in their own
/// parent directory get ESTALE from mkdir (or a create inside) within a few hundred
/// rounds. The upper filesystem reuses a removed directory's inode number for the other
/// thread's new directory while the kernel still holds the old node.
#[test]
fn concurrent_mkdir_rmdir_in_sibling_dirs() {
    let s = Stack::new(1);
    for t in 0..4 {
        mkdirs(s.l(0, &format!("t{t}")));
    }
    let m = s.mount();
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let dir = m.p(&format!("t{t}/d"));
            std::thread::spawn(move || -> Result<(), String> {
                let wd = Watchdog::new("mkdir/rmdir thread", Duration::from_secs(60));
                for i in 0..3000 {
                    wd.beat(&format!("round {i}"));
                    let step = |what: &str, r: io::Result<()>| {
                        r.map_err(|e| format!("thread {t} round {i}: {what}: {e}"))
                    };
                    step("mkdir", fs::create_dir(&dir))?;
                    step("create", fs::write(dir.join("x"), b"x"))?;
                    step("unlink", fs::remove_file(dir.join("x")))?;
                    step("rmdir", fs::remove_dir(&dir))?;
                }
                Ok(())
            })
        })
        .collect();
    let errors: Vec<String> = handles
        .into_iter()
        .filter_map(|h| h.join().unwrap().err())
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
}
