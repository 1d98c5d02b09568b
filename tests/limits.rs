//! The daemon under a low open file limit (`LimitNOFILE=` services, containers): the
//! descriptors it keeps for itself (cached directory handles) are sized from the limit,
//! and when the table fills anyway (files held open through the mount) it drops cached
//! handles and retries, so no request fails with EMFILE and nothing stays stuck.

mod common;

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;

const HARD_LIMIT: u32 = 256;

/// A program that starts layerfs with the open file limit at `HARD_LIMIT` (soft and hard),
/// for `Stack::mount_program`.
fn limited_layerfs(dir: &Path) -> std::path::PathBuf {
    rootless::require_tool("prlimit", "util-linux");
    let wrapper = dir.join("layerfs-limited");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec prlimit --nofile={HARD_LIMIT}:{HARD_LIMIT} {} \"$@\"\n",
            layerfs_bin().display()
        ),
    )
    .unwrap();
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    wrapper
}

fn nofile_of(pid: i32) -> String {
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .skip(3)
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Walks every directory below `dir` (lstat of each entry), iteratively; returns how many
/// directories it listed.
fn walk(dir: &Path) -> usize {
    let mut todo = vec![dir.to_path_buf()];
    let mut n = 0;
    while let Some(d) = todo.pop() {
        n += 1;
        for e in fs::read_dir(&d).unwrap_or_else(|e| panic!("readdir {}: {e}", d.display())) {
            let e = e.unwrap_or_else(|e| panic!("readdir {}: {e}", d.display()));
            let md = fs::symlink_metadata(e.path())
                .unwrap_or_else(|err| panic!("lstat {}: {err}", e.path().display()));
            if md.is_dir() {
                todo.push(e.path());
            }
        }
    }
    n
}

/// 10^4 lower directories walked under a hard limit of 256 descriptors, then files read
/// and created in directories all over the tree, then 150 files held open through the
/// mount while more directories are walked and written: everything works, and the daemon
/// never holds more descriptors than the limit leaves it. Before, the directory-handle
/// cache (1,024 per layer) filled the table during the walk and every later open or
/// create answered EMFILE, for good.
#[test]
fn ten_thousand_directories_under_a_hard_limit_of_256() {
    let s = Stack::new(2);
    for top in 0..100 {
        for sub in 0..50 {
            for layer in 0..2 {
                let d = s.l(layer, &format!("t{top:03}/s{sub:02}{layer}"));
                fs::create_dir_all(&d).unwrap();
                if sub % 10 == 0 {
                    put(d.join("f"), format!("{top} {sub} {layer}\n").as_bytes());
                }
            }
        }
    }
    let bin = limited_layerfs(s.root.path());
    let m = s.mount_program(&bin, &[], true);
    let pid = daemon_pid(&m.path);
    assert_eq!(nofile_of(pid), format!("{HARD_LIMIT} {HARD_LIMIT}"));

    // 100 + 100 x 100 directories, plus the root.
    assert_eq!(walk(&m.path), 10_101);
    let (_, fds) = rss_and_fds(pid);
    assert!(fds < HARD_LIMIT as usize, "{fds} fds open after the walk");

    for top in (0..100).step_by(7) {
        let d = m.p(&format!("t{top:03}/s101"));
        assert_eq!(read(d.join("f")), format!("{top} 10 1\n").as_bytes());
        put(d.join("new"), b"made under the limit\n");
        fs::create_dir(d.join("newdir")).unwrap();
        assert_eq!(read(d.join("new")), b"made under the limit\n");
    }

    // Files held open through the mount take the daemon's descriptors too (150 of them,
    // more than the caches leave room for): the caches give way, nothing fails.
    let mut held = Vec::new();
    for top in 0..75 {
        for layer in 0..2 {
            let p = m.p(&format!("t{top:03}/s00{layer}/f"));
            held.push(fs::File::open(&p).unwrap_or_else(|e| panic!("open {}: {e}", p.display())));
        }
    }
    for top in 0..100 {
        let d = m.p(&format!("t{top:03}/s49{}", top % 2));
        assert_eq!(walk(&d), 1);
        put(d.join("while-held"), b"x");
        let mut buf = String::new();
        fs::File::open(m.p(&format!("t{top:03}/s20{}/f", top % 2)))
            .unwrap()
            .read_to_string(&mut buf)
            .unwrap();
        assert_eq!(buf, format!("{top} 20 {}\n", top % 2));
    }
    for (i, f) in held.iter_mut().enumerate() {
        let mut buf = String::new();
        f.read_to_string(&mut buf).unwrap();
        assert_eq!(buf, format!("{} 0 {}\n", i / 2, i % 2));
    }
    drop(held);
    assert_eq!(walk(&m.path), 10_101 + 15);
    let (_, fds) = rss_and_fds(pid);
    assert!(fds < HARD_LIMIT as usize, "{fds} fds open at the end");
    m.unmount();
    assert!(s.u("t000/s490/while-held").exists());
}
