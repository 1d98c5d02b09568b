//! Crash safety: SIGKILL the daemon in the middle of heavy copy-up and write load, then
//! mount the same directories again. After every crash:
//! - the workdir's temporaries (`work/work`) are gone once the new mount is up,
//! - no half-copied file is visible: every file that came from a lower layer still holds
//!   all of its lower content (copy-up is prepared in `work/work` and renamed in),
//! - whatever was appended afterwards is a prefix of what was written, and at least
//!   everything up to the last successful fsync,
//! - every new file whose fsync returned is there with its full content,
//! - the new daemon answers.
mod common;
use common::*;
use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const THREADS: usize = 6;
const APPEND_FILES: usize = 60;
const CHMOD_FILES: usize = 60;
const LOWER_SIZE: usize = 384 * 1024;
const NEW_SIZE: usize = 48 * 1024;

fn pattern(seed: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|j| ((j * 7 + seed * 13) % 251) as u8)
        .collect()
}

/// What one worker did to the files it owns (file k belongs to worker k % THREADS).
#[derive(Default)]
struct Journal {
    /// Appended data per append file: everything attempted, and the length that was
    /// covered by a successful fsync.
    attempted: BTreeMap<usize, Vec<u8>>,
    synced: BTreeMap<usize, usize>,
    /// New files whose write and fsync both returned.
    durable: Vec<(String, Vec<u8>)>,
}

fn worker(mnt: std::path::PathBuf, t: usize, round: usize, stop: Arc<AtomicBool>) -> Journal {
    let mut j = Journal::default();
    let mut n = 0usize;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        // Append to a lower file (copy-up of LOWER_SIZE bytes the first time).
        let k = (t + THREADS * (n % (APPEND_FILES / THREADS))) % APPEND_FILES;
        let marker = format!("|r{round}t{t}n{n}").into_bytes();
        let r = (|| -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .append(true)
                .open(mnt.join(format!("a/f{k}")))?;
            j.attempted.entry(k).or_default().extend_from_slice(&marker);
            f.write_all(&marker)?;
            if n % 3 == 0 {
                f.sync_all()?;
                j.synced.insert(k, j.attempted[&k].len());
            }
            Ok(())
        })();
        if r.is_err() {
            break;
        }
        // Metadata-only change of another lower file: still a full data copy-up.
        let g = (t + THREADS * n) % CHMOD_FILES;
        let mode = if n % 2 == 0 { 0o600 } else { 0o640 };
        if fs::set_permissions(
            mnt.join(format!("c/g{g}")),
            fs::Permissions::from_mode(mode),
        )
        .is_err()
        {
            break;
        }
        // A new file, fsync-ed.
        let name = format!("new/r{round}t{t}n{n}");
        let data = pattern(round * 1000 + t * 100 + n, NEW_SIZE);
        let r = (|| -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(mnt.join(&name))?;
            f.write_all(&data)?;
            f.sync_all()
        })();
        match r {
            Ok(()) => j.durable.push((name, data)),
            Err(_) => break,
        }
    }
    j
}

#[test]
fn sigkill_during_copy_up_and_writes() {
    let s = Stack::new(1);
    for k in 0..APPEND_FILES {
        put(s.l(0, &format!("a/f{k}")), &pattern(k, LOWER_SIZE));
    }
    for g in 0..CHMOD_FILES {
        put(s.l(0, &format!("c/g{g}")), &pattern(500 + g, LOWER_SIZE));
    }
    mkdirs(s.l(0, "new"));
    let wd = Watchdog::new("crash test", Duration::from_secs(120));

    // Current verified content of each append file (grows round by round).
    let mut base: BTreeMap<usize, Vec<u8>> = (0..APPEND_FILES)
        .map(|k| (k, pattern(k, LOWER_SIZE)))
        .collect();
    let mut durable: Vec<(String, Vec<u8>)> = Vec::new();
    let mut leftovers_seen = 0;
    let delays = [20u64, 60, 120, 200, 350, 600];
    let mut m = s.mount();
    for (round, delay) in delays.iter().enumerate() {
        wd.beat(&format!("round {round}: load"));
        let stop = Arc::new(AtomicBool::new(false));
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let mnt = m.path.clone();
                let stop = stop.clone();
                std::thread::spawn(move || worker(mnt, t, round, stop))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(*delay));
        wd.beat(&format!("round {round}: kill"));
        kill9(daemon_pid(&m.path));
        stop.store(true, Ordering::SeqCst);
        let journals: Vec<Journal> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        m.clear_stale();

        // What the crash left in the workdir; plant one more leftover of our own so the
        // cleaning at mount is exercised every round.
        let work_tmp = s.work.join("work");
        if let Ok(rd) = fs::read_dir(&work_tmp) {
            leftovers_seen += rd.count();
        }
        mkdirs(&work_tmp);
        put(work_tmp.join("#planted-leftover"), b"half a copy");

        wd.beat(&format!("round {round}: remount"));
        m = s.mount();
        let left: Vec<_> = fs::read_dir(&work_tmp)
            .map(|rd| rd.map(|e| e.unwrap().file_name()).collect())
            .unwrap_or_default();
        assert!(
            left.is_empty(),
            "round {round}: work/work not cleaned at mount: {left:?}"
        );

        wd.beat(&format!("round {round}: verify"));
        let mut attempted: BTreeMap<usize, Vec<u8>> = BTreeMap::new();
        let mut synced: BTreeMap<usize, usize> = BTreeMap::new();
        for j in &journals {
            for (k, v) in &j.attempted {
                attempted.insert(*k, v.clone());
            }
            synced.extend(j.synced.iter().map(|(k, v)| (*k, *v)));
            durable.extend(j.durable.iter().cloned());
        }
        for k in 0..APPEND_FILES {
            let got = read(m.p(&format!("a/f{k}")));
            let old = &base[&k];
            assert!(
                got.len() >= old.len() && got[..old.len()] == old[..],
                "round {round}: a/f{k} lost content it had before the crash (half copy-up?): \
                 {} bytes, expected at least {}",
                got.len(),
                old.len()
            );
            let rest = &got[old.len()..];
            let tried = attempted.get(&k).map(|v| &v[..]).unwrap_or(&[]);
            let must = synced.get(&k).copied().unwrap_or(0);
            assert!(
                tried.starts_with(rest),
                "round {round}: a/f{k} has data nobody wrote after its old content: {:?}",
                String::from_utf8_lossy(rest)
            );
            assert!(
                rest.len() >= must,
                "round {round}: a/f{k} lost fsync-ed data: {} bytes appended, {must} were synced",
                rest.len()
            );
            base.insert(k, got);
        }
        for g in 0..CHMOD_FILES {
            let p = m.p(&format!("c/g{g}"));
            assert_eq!(
                read(&p),
                pattern(500 + g, LOWER_SIZE),
                "round {round}: c/g{g} content changed by chmod copy-up"
            );
            let mode = lstat(&p).permissions().mode() & 0o777;
            assert!(
                [0o644, 0o600, 0o640].contains(&mode),
                "round {round}: c/g{g} mode {mode:o}"
            );
        }
        for (name, data) in &durable {
            assert!(
                read(m.p(name)) == *data,
                "round {round}: fsync-ed file {name} is not intact"
            );
        }
        // Also straight in the upper layer: nothing there is a truncated lower file.
        for k in 0..APPEND_FILES {
            let up = s.u(&format!("a/f{k}"));
            if exists(&up) {
                assert!(read(&up).len() >= LOWER_SIZE, "upper a/f{k} is short");
            }
        }
        eprintln!(
            "round {round}: killed after {delay}ms; {} files fsync-ed so far",
            durable.len()
        );
    }
    assert!(
        !durable.is_empty(),
        "the load never got a file to disk: the test did not test anything"
    );
    eprintln!("workdir leftovers found after crashes (cleaned at mount): {leftovers_seen}");
    m.unmount();
}
