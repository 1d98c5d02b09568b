//! Validation of a parsed [`Config`] against the system: every layer an existing
//! directory, the writable ones apart from the lowers and from each other, the mount point
//! a free directory outside every layer. Each refusal names the path and the fix.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::Config;
use crate::error::{Error, Result};
use crate::sys::mountinfo;

impl Config {
    /// Checks every path against the file system and replaces them by their canonical form
    /// (symlinks resolved), so that the daemon never depends on the caller's directory.
    pub fn validate(&mut self) -> Result<()> {
        self.validate_paths()?;
        let lowers = std::mem::take(&mut self.lowers);
        for lower in lowers {
            self.lowers.push(existing_dir("lowerdir", &lower)?);
        }
        if let (Some(upper), Some(work)) = (&self.upper, &self.work) {
            let upper = existing_dir("upperdir", upper)?;
            let work = existing_dir("workdir", work)?;
            let (udev, wdev) = (dev_of(&upper)?, dev_of(&work)?);
            if udev != wdev {
                return Err(Error::usage(format!(
                    "workdir {} is not on the same filesystem as upperdir {}; choose a workdir next to the upperdir",
                    work.display(),
                    upper.display()
                )));
            }
            if overlaps(&upper, &work) {
                return Err(Error::usage(format!(
                    "workdir {} and upperdir {} overlap; use two separate sibling directories",
                    work.display(),
                    upper.display()
                )));
            }
            for (kind, dir) in [("upperdir", &upper), ("workdir", &work)] {
                for lower in &self.lowers {
                    if overlaps(dir, lower) {
                        return Err(Error::usage(format!(
                            "{kind} {} overlaps lowerdir {}; writable directories must lie outside every lower layer",
                            dir.display(),
                            lower.display()
                        )));
                    }
                }
            }
            self.upper = Some(upper);
            self.work = Some(work);
        }
        self.mountpoint = self.check_mountpoint()?;
        Ok(())
    }

    /// Checks that need no file system access.
    fn validate_paths(&self) -> Result<()> {
        if self.lowers.is_empty() {
            return Err(Error::usage(
                "missing lowerdir; pass -o lowerdir=DIR (several layers separated by colons, top-most first)",
            ));
        }
        match (&self.upper, &self.work) {
            (Some(_), None) => Err(Error::usage(
                "upperdir given without workdir; add -o workdir=DIR on the same filesystem as upperdir",
            )),
            (None, Some(_)) => Err(Error::usage(
                "workdir given without upperdir; add -o upperdir=DIR, or drop workdir for a read-only mount",
            )),
            _ => Ok(()),
        }
    }

    fn check_mountpoint(&self) -> Result<PathBuf> {
        let raw = &self.mountpoint;
        let shown = raw.display();
        let meta = match fs::metadata(raw) {
            Ok(meta) => meta,
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
                return Err(Error::usage(format!(
                    "mount point {shown} is a stale FUSE mount whose daemon is gone; run `fusermount3 -u {shown}` and retry"
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::usage(format!(
                    "mount point {shown} does not exist; create it with `mkdir -p {shown}`"
                )))
            }
            Err(e) => {
                // A live mount whose daemon refuses the stat is still busy; say so rather
                // than blame permissions.
                if is_mount_point(&absolute(raw)).unwrap_or(false) {
                    return Err(busy(raw));
                }
                return Err(Error::usage(format!(
                    "mount point {shown} cannot be used ({e}); check its permissions"
                )));
            }
        };
        if !meta.is_dir() {
            return Err(Error::usage(format!(
                "mount point {shown} is not a directory; mount on a directory"
            )));
        }
        let mountpoint = fs::canonicalize(raw).map_err(|e| {
            Error::usage(format!(
                "mount point {shown} cannot be resolved ({e}); check its permissions"
            ))
        })?;
        let shown = mountpoint.display();
        // The mount point may be a lower itself, as with kernel overlayfs: the layers are
        // opened before the mount covers them. Anything else nested would loop through the
        // mount or hide a layer behind it.
        let writable = self.upper.iter().map(|p| ("upperdir", p));
        let work = self.work.iter().map(|p| ("workdir", p));
        for (kind, layer) in self
            .lowers
            .iter()
            .map(|p| ("lowerdir", p))
            .chain(writable)
            .chain(work)
        {
            let same = layer == &mountpoint;
            if same && kind == "lowerdir" {
                continue;
            }
            if same || mountpoint.starts_with(layer) {
                return Err(Error::usage(format!(
                    "mount point {shown} is inside {kind} {}; choose a mount point outside every layer",
                    layer.display()
                )));
            }
            if layer.starts_with(&mountpoint) {
                return Err(Error::usage(format!(
                    "{kind} {} is inside mount point {shown}, which would hide it; choose a mount point outside every layer",
                    layer.display()
                )));
            }
        }
        if is_mount_point(&mountpoint)? {
            return Err(busy(&mountpoint));
        }
        Ok(mountpoint)
    }
}

fn busy(mountpoint: &Path) -> Error {
    let shown = mountpoint.display();
    Error::usage(format!(
        "mount point {shown} is already a mount point; unmount it first (`umount {shown}`) or choose another directory"
    ))
}

/// `path` made absolute without touching it (it may not answer a stat), with `.` and `..`
/// removed lexically.
fn absolute(path: &Path) -> PathBuf {
    let joined = match std::env::current_dir() {
        Ok(cwd) if path.is_relative() => cwd.join(path),
        _ => path.to_path_buf(),
    };
    let mut out = PathBuf::new();
    for part in joined.components() {
        match part {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

fn existing_dir(kind: &str, path: &Path) -> Result<PathBuf> {
    let shown = path.display();
    let resolved = fs::canonicalize(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => Error::usage(format!(
            "{kind} {shown} does not exist; check the path or create the directory"
        )),
        _ => Error::usage(format!(
            "{kind} {shown} cannot be opened ({e}); check its permissions"
        )),
    })?;
    let meta = fs::metadata(&resolved).map_err(|e| {
        Error::usage(format!(
            "{kind} {shown} cannot be opened ({e}); check its permissions"
        ))
    })?;
    if !meta.is_dir() {
        return Err(Error::usage(format!(
            "{kind} {shown} is not a directory; every layer must be a directory"
        )));
    }
    Ok(resolved)
}

fn dev_of(path: &Path) -> Result<u64> {
    fs::metadata(path).map(|m| m.dev()).map_err(|e| {
        Error::usage(format!(
            "{} cannot be opened ({e}); check its permissions",
            path.display()
        ))
    })
}

/// Two canonical paths overlap when one is the other or lies beneath it.
fn overlaps(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// Whether something is mounted at `path` (a canonical path), from /proc/self/mountinfo.
fn is_mount_point(path: &Path) -> Result<bool> {
    match mountinfo::own() {
        Ok(mounts) => Ok(mounts.iter().any(|m| m.point == path)),
        // Without /proc, a mount point is a directory on another device than its parent;
        // this misses bind mounts within one file system, which is the best we can do.
        Err(_) => {
            let parent = path.parent().unwrap_or(Path::new("/"));
            Ok(path == Path::new("/") || dev_of(path)? != dev_of(parent)?)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use tempfile::TempDir;

    use super::*;
    use crate::config::{parse_args_unchecked, Invocation};

    fn parse(args: &[&str]) -> Result<Config> {
        match parse_args_unchecked(args, false)? {
            Invocation::Mount(config) => Ok(*config),
            other => panic!("expected a mount, got {other:?}"),
        }
    }

    /// A stack of fresh directories: l1, l2, u, w, m.
    struct Stack {
        dir: TempDir,
    }

    impl Stack {
        fn new() -> Stack {
            let dir = TempDir::new().unwrap();
            for d in ["l1", "l2", "u", "w", "m"] {
                fs::create_dir(dir.path().join(d)).unwrap();
            }
            Stack { dir }
        }

        fn p(&self, name: &str) -> String {
            self.dir.path().join(name).to_str().unwrap().to_string()
        }

        fn validate(&self, opts: &str, mountpoint: &str) -> Result<Config> {
            let mut config = parse(&["-o", opts, mountpoint])?;
            config.validate()?;
            Ok(config)
        }

        fn validate_err(&self, opts: &str, mountpoint: &str) -> String {
            let message = self.validate(opts, mountpoint).unwrap_err().to_string();
            assert!(!message.contains('\n'), "not one line: {message}");
            message
        }

        fn rw(&self) -> String {
            format!(
                "lowerdir={}:{},upperdir={},workdir={}",
                self.p("l1"),
                self.p("l2"),
                self.p("u"),
                self.p("w")
            )
        }
    }

    #[test]
    fn valid_stack_is_canonicalized() {
        let s = Stack::new();
        let link = s.p("link");
        symlink(s.p("l2"), &link).unwrap();
        let opts = format!(
            "lowerdir={}:{link},upperdir={},workdir={}",
            s.p("l1"),
            s.p("u"),
            s.p("w")
        );
        let c = s.validate(&opts, &s.p("m")).unwrap();
        let real = |n: &str| fs::canonicalize(s.p(n)).unwrap();
        assert_eq!(c.lowers, [real("l1"), real("l2")]);
        assert_eq!(c.upper, Some(real("u")));
        assert_eq!(c.mountpoint, real("m"));
    }

    #[test]
    fn missing_lowerdir() {
        let s = Stack::new();
        let e = s.validate_err(
            &format!("upperdir={},workdir={}", s.p("u"), s.p("w")),
            &s.p("m"),
        );
        assert!(e.starts_with("missing lowerdir"), "{e}");
    }

    #[test]
    fn layer_missing_or_not_a_directory() {
        let s = Stack::new();
        let e = s.validate_err(
            &format!("lowerdir={}:{}", s.p("l1"), s.p("nope")),
            &s.p("m"),
        );
        assert!(
            e.contains("lowerdir") && e.contains("does not exist"),
            "{e}"
        );
        fs::write(s.p("file"), b"").unwrap();
        let e = s.validate_err(&format!("lowerdir={}", s.p("file")), &s.p("m"));
        assert!(
            e.contains("lowerdir") && e.contains("not a directory"),
            "{e}"
        );
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            s.p("l1"),
            s.p("nope"),
            s.p("w")
        );
        let e = s.validate_err(&opts, &s.p("m"));
        assert!(
            e.contains("upperdir") && e.contains("does not exist"),
            "{e}"
        );
    }

    #[test]
    fn upper_and_work_come_together() {
        let s = Stack::new();
        let e = s.validate_err(
            &format!("lowerdir={},upperdir={}", s.p("l1"), s.p("u")),
            &s.p("m"),
        );
        assert!(
            e.contains("without workdir") && e.contains("workdir=DIR"),
            "{e}"
        );
        let e = s.validate_err(
            &format!("lowerdir={},workdir={}", s.p("l1"), s.p("w")),
            &s.p("m"),
        );
        assert!(e.contains("without upperdir"), "{e}");
    }

    #[test]
    fn workdir_on_another_filesystem() {
        let s = Stack::new();
        let other = TempDir::new_in("/dev/shm").unwrap();
        assert_ne!(dev_of(other.path()).unwrap(), dev_of(s.dir.path()).unwrap());
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            s.p("l1"),
            s.p("u"),
            other.path().display()
        );
        let e = s.validate_err(&opts, &s.p("m"));
        assert!(e.contains("not on the same filesystem as upperdir"), "{e}");
    }

    #[test]
    fn writable_layers_must_not_overlap_lowers_or_each_other() {
        let s = Stack::new();
        fs::create_dir(s.p("l1/u")).unwrap();
        fs::create_dir(s.p("u/l")).unwrap();
        fs::create_dir(s.p("u/w")).unwrap();
        let cases = [
            (s.p("l1"), s.p("l1/u"), s.p("w"), "upperdir"),
            (s.p("u/l"), s.p("u"), s.p("w"), "upperdir"),
            (s.p("l1"), s.p("u"), s.p("l1"), "workdir"),
            (s.p("l1"), s.p("u"), s.p("u/w"), "overlap"),
            (s.p("l1"), s.p("u"), s.p("u"), "overlap"),
        ];
        for (lower, upper, work, expect) in cases {
            let opts = format!("lowerdir={lower},upperdir={upper},workdir={work}");
            let e = s.validate_err(&opts, &s.p("m"));
            assert!(
                e.contains(expect) && e.contains("overlap"),
                "{opts} gave {e}"
            );
        }
    }

    #[test]
    fn mount_point_must_be_outside_layers() {
        let s = Stack::new();
        fs::create_dir(s.p("u/m")).unwrap();
        fs::create_dir(s.p("l1/m")).unwrap();
        fs::create_dir(s.p("m/l")).unwrap();
        let e = s.validate_err(&s.rw(), &s.p("u/m"));
        assert!(e.contains("is inside upperdir"), "{e}");
        let e = s.validate_err(&s.rw(), &s.p("l1/m"));
        assert!(e.contains("is inside lowerdir"), "{e}");
        let e = s.validate_err(&s.rw(), &s.p("u"));
        assert!(e.contains("is inside upperdir"), "{e}");
        let e = s.validate_err(&s.rw(), &s.p("w"));
        assert!(e.contains("is inside workdir"), "{e}");
        let opts = format!("lowerdir={}", s.p("m/l"));
        let e = s.validate_err(&opts, &s.p("m"));
        assert!(e.contains("is inside mount point"), "{e}");
        // Mounting over a lower, as kernel overlayfs allows, is fine.
        s.validate(&s.rw(), &s.p("l1")).unwrap();
    }

    #[test]
    fn mount_point_must_exist_and_be_a_directory() {
        let s = Stack::new();
        let e = s.validate_err(&s.rw(), &s.p("nope"));
        assert!(e.contains("does not exist") && e.contains("mkdir"), "{e}");
        fs::write(s.p("file"), b"").unwrap();
        let e = s.validate_err(&s.rw(), &s.p("file"));
        assert!(e.contains("not a directory"), "{e}");
    }

    #[test]
    fn busy_mount_point() {
        let s = Stack::new();
        let e = s.validate_err(&s.rw(), "/proc");
        assert!(
            e.contains("already a mount point") && e.contains("umount"),
            "{e}"
        );
    }

    #[test]
    fn from_options_validates() {
        let s = Stack::new();
        let c = Config::from_options(&s.rw(), s.p("m")).unwrap();
        assert_eq!(c.lowers.len(), 2);
        assert!(Config::from_options("upperdir=/x", s.p("m")).is_err());
    }
}
