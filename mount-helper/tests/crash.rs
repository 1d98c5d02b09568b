//! Crash safety of layerctl around its daemon and its store (extends workflow.rs and
//! store.rs, which kill at a few fixed moments):
//! - daemon death: `ps` reports the stale mount, `umount` clears it, every byte the
//!   container wrote (and synced) is intact in its upper directory, a new mount shows it,
//!   and it commits;
//! - `commit` and `import` killed at many seeded-random moments: `fsck` passes after each,
//!   no half layer is referenced, and a final commit still produces the right content.
mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

/// Pseudo-random delays in 0..max_ms, seeded (no time dependence between runs).
fn delays(seed: u64, n: usize, max_ms: u64) -> Vec<u64> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % max_ms
        })
        .collect()
}

#[test]
fn daemon_death_keeps_upper_data() {
    let env = Env::new();
    env.import_rootfs("base");
    let (m, _guard) = env.mount_new("base", "m", "c");
    let mut written = Vec::new();
    for i in 0..50 {
        let p = format!("data/f{i}");
        let content = format!("{i}:").repeat(i * 100 + 1);
        write(&m.join(&p), &content);
        written.push((p, content));
    }
    // A change to a file from the image (copy-up) and a deletion (whiteout).
    write(&m.join("etc/hostname"), "changed\n");
    fs::remove_file(m.join("etc/passwd")).unwrap();
    let st = Command::new("sync").status().unwrap();
    assert!(st.success());

    let pids = daemon_pids(&m);
    assert!(!pids.is_empty(), "no daemon found for {}", m.display());
    kill9_all(&pids);
    // Whatever `ps` says, the mount is dead: commit refuses it.
    let o = env.run(&["commit", "c", "x"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.code() == Some(1) && (err.contains("stale") || err.contains("not connected")),
        "commit of a dead mount: {:?} {err}",
        o.status
    );
    let ps = env.ok(&["ps"]);
    assert!(
        ps.contains("stale"),
        "ps does not report the stale mount: {ps}"
    );
    env.ok(&["umount", "c"]);
    let ps = env.ok(&["ps"]);
    assert!(
        !ps.contains("stale"),
        "stale mount still reported after umount: {ps}"
    );
    let mi = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mi.contains(m.to_str().unwrap()),
        "mount point still in mountinfo"
    );

    // The upper directory holds everything.
    let info = env.json(&["inspect", "c"]);
    let upper = Path::new(
        info["container"]["upper_dir"]
            .as_str()
            .expect("upper_dir in inspect"),
    );
    for (p, content) in &written {
        assert_eq!(
            fs::read_to_string(upper.join(p)).unwrap(),
            *content,
            "{p} in upper"
        );
    }
    assert_eq!(
        fs::read_to_string(upper.join("etc/hostname")).unwrap(),
        "changed\n"
    );
    let wh = fs::symlink_metadata(upper.join("etc/passwd"))
        .map(|m| m.rdev() == 0 && m.mode() & libc::S_IFMT == libc::S_IFCHR)
        .unwrap_or(false)
        || upper.join("etc/.wh.passwd").exists();
    assert!(wh, "the deletion of etc/passwd left no whiteout in upper");

    // Mounted again, the container shows the same; it commits; the store is clean.
    env.ok(&["mount", "c", m.to_str().unwrap()]);
    for (p, content) in &written {
        assert_eq!(fs::read_to_string(m.join(p)).unwrap(), *content);
    }
    assert!(!m.join("etc/passwd").exists());
    env.ok(&["commit", "c", "after-crash"]);
    env.fsck_clean();
    env.ok(&["umount", "c"]);
}

#[test]
fn commit_and_import_killed_at_random_points() {
    let env = Env::new();
    let rootfs = env.path("rootfs");
    for i in 0..300 {
        write(
            &rootfs.join(format!("d{}/f{i}", i % 15)),
            &"z".repeat(i * 64),
        );
    }
    env.ok(&["import", rootfs.to_str().unwrap(), "base"]);
    let (m, _guard) = env.mount_new("base", "m", "c");
    for i in 0..200 {
        write(&m.join(format!("new/g{i}")), &"q".repeat(i * 80));
    }
    fs::remove_dir_all(m.join("d3")).unwrap();
    for (n, delay) in delays(0x5eed, 14, 250).into_iter().enumerate() {
        let (args, what): (Vec<String>, &str) = if n % 2 == 0 {
            (
                vec!["commit".into(), "c".into(), format!("k:{n}")],
                "commit",
            )
        } else {
            (
                vec![
                    "import".into(),
                    rootfs.to_str().unwrap().into(),
                    format!("i:{n}"),
                ],
                "import",
            )
        };
        let argv: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        env.kill_after(&argv, Duration::from_millis(delay));
        env.fsck_passes(&format!("{what} killed after {delay}ms"));
    }
    // After all that, a commit works and carries the changes.
    env.ok(&["commit", "c", "final"]);
    env.ok(&["umount", "c"]);
    let (m2, _guard2) = env.mount_new("final", "m2", "check");
    assert_eq!(
        fs::read_to_string(m2.join("new/g199")).unwrap(),
        "q".repeat(199 * 80)
    );
    assert!(!m2.join("d3").exists());
    env.ok(&["umount", "check"]);
    env.fsck_clean();
}
