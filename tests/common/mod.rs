//! Shared helpers for the integration tests, one file per concern:
//! - `mount`: a test's layer directories ([`Stack`]) and the [`Mount`] guard that always
//!   unmounts;
//! - `daemon`: starting layerfs (or another fuse-overlayfs compatible program) on a
//!   stack, waiting for, finding, killing and measuring its process;
//! - `kernel`: kernel overlayfs reference mounts;
//! - `layers`: writing layer trees in each encoding (whiteouts, opaque dirs) and reading
//!   trees back;
//! - `tree`: tree snapshots and their comparison;
//! - `sys`: the path-named syscalls tests make, as calls into `layerfs::sys`;
//! - `watchdog`: hang detection;
//! - here: the environment (backend, binary, temp dir) and assertions on results.
//!
//! Everything is re-exported here, so a test says `use common::*`. The helpers for tests
//! that act as an unprivileged user are in [`rootless`] (shared with layerctl's tests).
//!
//! Environment:
//! - `LAYERFS_BIN`: the daemon under test (default: this workspace's `layerfs`).
//!   Any fuse-overlayfs compatible binary works, e.g. `/usr/bin/fuse-overlayfs`.
//! - `LAYERFS_TEST_BACKEND=kernel`: mount kernel overlayfs instead (to validate the
//!   tests themselves against the reference implementation).
//! - `LAYERFS_TEST_TMPDIR`: where temp dirs go (default: the system temp dir).
#![allow(dead_code)]

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

pub mod daemon;
pub mod kernel;
pub mod layers;
pub mod mount;
pub mod rootless;
pub mod sys;
pub mod tree;
pub mod watchdog;

// Each test binary uses some of these; the rest would be warned of in each.
#[allow(unused_imports)]
pub use self::{daemon::*, layers::*, mount::*, sys::*, tree::*, watchdog::*};

/// Mount tests need root and /dev/fuse. They never skip: they fail loudly.
pub fn require_mount_privileges() {
    let euid = layerfs::sys::process::geteuid();
    assert_eq!(
        euid, 0,
        "these tests mount filesystems and must run as root (euid is {euid}); \
         they are never skipped"
    );
    if backend() == Backend::Layerfs {
        assert!(
            Path::new("/dev/fuse").exists(),
            "/dev/fuse is missing: FUSE tests cannot run (they are never skipped)"
        );
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Layerfs,
    Kernel,
}

pub fn backend() -> Backend {
    match std::env::var("LAYERFS_TEST_BACKEND").as_deref() {
        Ok("kernel") => Backend::Kernel,
        Ok("layerfs") | Ok("") | Err(_) => Backend::Layerfs,
        Ok(other) => panic!("LAYERFS_TEST_BACKEND={other}: expected `layerfs` or `kernel`"),
    }
}

pub fn layerfs_bin() -> PathBuf {
    match std::env::var_os("LAYERFS_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_layerfs")),
    }
}

pub fn tmp_base() -> PathBuf {
    std::env::var_os("LAYERFS_TEST_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

/// Asserts that a finished command succeeded; its stderr is the failure message.
#[track_caller]
pub fn assert_success(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn errno_of<T>(r: &io::Result<T>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

#[track_caller]
pub fn assert_errno<T: std::fmt::Debug>(r: io::Result<T>, errno: i32) {
    match r {
        Ok(v) => panic!("expected errno {errno}, got success {v:?}"),
        Err(e) => assert_eq!(
            e.raw_os_error(),
            Some(errno),
            "expected errno {errno}, got {e}"
        ),
    }
}

/// Run a shell command as an unprivileged user (65534) and return its exit status.
pub fn as_nobody(script: &str) -> i32 {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "sh",
            "-c",
            script,
        ])
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run setpriv")
        .code()
        .unwrap_or(-1)
}
