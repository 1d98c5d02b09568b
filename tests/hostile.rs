//! Hostile layers: layer contents chosen to make the daemon step outside its layers, hang,
//! or crash. Each test keeps a canary directory next to the layers (outside all of them)
//! and watches it with inotify: any open, read, write, attribute change or directory
//! listing of it by anybody while the test runs fails the test. The test itself never
//! follows a symlink (lstat/readlink only), so the daemon is the only suspect.
//! After every hostile case the daemon must still answer. docs/SECURITY.md describes what
//! each case does.
mod common;
use common::*;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A directory outside every layer with a secret file, watched with inotify.
struct Canary {
    dir: PathBuf,
    fd: OwnedFd,
}

impl Canary {
    fn new(s: &Stack) -> Canary {
        let dir = s.root.path().join("canary");
        put(dir.join("secret"), b"host secret");
        mkdirs(dir.join("sub"));
        put(dir.join("sub/deep"), b"deeper secret");
        // SAFETY: plain syscall; the fd is checked and owned below.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(raw >= 0, "inotify_init1: {}", io::Error::last_os_error());
        // SAFETY: the kernel just returned this fd.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mask = libc::IN_ACCESS
            | libc::IN_OPEN
            | libc::IN_MODIFY
            | libc::IN_ATTRIB
            | libc::IN_CREATE
            | libc::IN_DELETE
            | libc::IN_MOVED_FROM
            | libc::IN_MOVED_TO
            | libc::IN_DELETE_SELF
            | libc::IN_MOVE_SELF;
        for p in [
            dir.clone(),
            dir.join("secret"),
            dir.join("sub"),
            dir.join("sub/deep"),
        ] {
            let c = cstr(&p);
            // SAFETY: valid fd and NUL-terminated path.
            let w = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), mask) };
            assert!(
                w >= 0,
                "inotify_add_watch {}: {}",
                p.display(),
                io::Error::last_os_error()
            );
        }
        Canary { dir, fd }
    }

    /// Panics if anything touched the canary since it was set up (or last checked).
    #[track_caller]
    fn assert_untouched(&self, when: &str) {
        let mut buf = [0u8; 4096];
        // SAFETY: buf is writable for its length; the fd is non-blocking.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            assert_eq!(e.raw_os_error(), Some(libc::EAGAIN), "inotify read: {e}");
            return;
        }
        let mut events = Vec::new();
        let mut off = 0usize;
        while off + 16 <= n as usize {
            let mask = u32::from_ne_bytes(buf[off + 4..off + 8].try_into().unwrap());
            let len = u32::from_ne_bytes(buf[off + 12..off + 16].try_into().unwrap()) as usize;
            let name = String::from_utf8_lossy(&buf[off + 16..off + 16 + len]);
            events.push(format!(
                "mask={mask:#x} name={:?}",
                name.trim_end_matches('\0')
            ));
            off += 16 + len;
        }
        panic!("{when}: something reached the canary outside the layers: {events:?}");
    }
}

/// The daemon is alive and answering: a stat and a read through the mount.
#[track_caller]
fn assert_answers(m: &Mount) {
    if m.backend == Backend::Layerfs {
        let pids = daemon_pids(&m.path);
        assert_eq!(
            pids.len(),
            1,
            "daemon gone (crashed or panicked?): {pids:?}"
        );
    }
    assert!(lstat(&m.path).is_dir(), "mount root not a directory");
    assert_eq!(read(m.p("alive")), b"yes", "daemon no longer serves reads");
}

fn alive_file(s: &Stack) {
    put(s.u("alive"), b"yes");
}

/// Walks a tree that may be inconsistent (layers changed underneath), reading every
/// regular file, ignoring every error; never follows a symlink.
fn walk_tolerant(dir: &Path, depth: usize) {
    if depth > 8 {
        return;
    }
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(md) = fs::symlink_metadata(&p) else {
            continue;
        };
        if md.is_dir() {
            walk_tolerant(&p, depth + 1);
        } else if md.is_file() {
            let _ = fs::read(&p);
        } else if md.file_type().is_symlink() {
            let _ = fs::read_link(&p);
        }
    }
}

/// Every name the merged tree shows, walked without following symlinks.
fn all_names(root: &Path) -> Vec<String> {
    snapshot(root).keys().cloned().collect()
}

#[test]
fn symlinked_directories_in_lowers_never_lead_outside() {
    let s = Stack::new(2);
    let canary = Canary::new(&s);
    let cdir = canary.dir.to_str().unwrap().to_string();
    alive_file(&s);
    // Upper has real directories where the top lower has symlinks to /, .., the canary.
    for (name, target) in [
        ("root", "/"),
        ("up", ".."),
        ("upup", "../../.."),
        ("abs", cdir.as_str()),
        ("rel", "../canary"),
    ] {
        std::os::unix::fs::symlink(target, s.l(0, name)).unwrap();
        put(s.u(&format!("{name}/own")), b"upper's own");
        // And the bottom lower has a real directory there too: the symlink in between
        // must end the merge, not be merged through.
        put(s.l(1, &format!("{name}/bottom")), b"bottom");
    }
    // A lower-only symlink to the canary and to /, and a lower-only dir whose lower-lower
    // twin is a symlink.
    std::os::unix::fs::symlink(&cdir, s.l(0, "lonely")).unwrap();
    std::os::unix::fs::symlink("/", s.l(0, "slash")).unwrap();
    put(s.l(0, "real/file"), b"top real");
    std::os::unix::fs::symlink(&cdir, s.l(1, "real")).unwrap();
    canary.assert_untouched("building the layers");

    let m = s.mount();
    for name in ["root", "up", "upup", "abs", "rel"] {
        assert!(
            lstat(m.p(name)).is_dir(),
            "{name}: the upper directory must win"
        );
        assert_eq!(ls(m.p(name)), vec!["own"], "{name}: merged with what?");
        // Writes, copy-up of the directory and a rename inside it stay in upper.
        put(m.p(&format!("{name}/new")), b"new");
        chmod(m.p(name), 0o700).unwrap();
        fs::rename(m.p(&format!("{name}/new")), m.p(&format!("{name}/new2"))).unwrap();
        assert_eq!(read(s.u(&format!("{name}/new2"))), b"new");
    }
    assert_eq!(fs::read_link(m.p("lonely")).unwrap(), Path::new(&cdir));
    assert_eq!(fs::read_link(m.p("slash")).unwrap(), Path::new("/"));
    assert_eq!(ls(m.p("real")), vec!["file"]);
    // Operations on the symlinks themselves (never following them).
    lchown(m.p("lonely"), 1, 1).unwrap();
    assert_eq!(lstat(m.p("lonely")).uid(), 1);
    assert!(lstat(s.u("lonely")).file_type().is_symlink());
    let _ = lsetxattr(m.p("slash"), "trusted.t", b"x");
    fs::rename(m.p("slash"), m.p("slash2")).unwrap();
    put(m.p("real/new"), b"n");
    chmod(m.p("real"), 0o711).unwrap();
    fs::remove_file(m.p("lonely")).unwrap();
    let names = all_names(&m.path);
    assert!(
        !names
            .iter()
            .any(|n| n.contains("secret") || n.contains("bottom")),
        "{names:?}"
    );
    canary.assert_untouched("working through symlinked lower directories");
    assert_answers(&m);
    m.unmount();
    canary.assert_untouched("after unmount");
    // Nothing was created outside the layers either.
    assert_eq!(ls(&canary.dir), vec!["secret", "sub"]);
}

#[test]
fn whiteout_names_are_refused_through_the_mount() {
    let s = Stack::new(1);
    alive_file(&s);
    put(s.l(0, "f"), b"f");
    put(s.l(0, "dir/x"), b"x");
    whiteout_file(s.l(0, "dir"), "gone");
    let m = s.mount();
    for name in [".wh.a", ".wh..wh..opq", ".wh.f", ".wh.", ".wh.dir"] {
        assert_errno(fs::write(m.p(name), b"x"), libc::EINVAL);
        assert_errno(mkdir(m.p(name), 0o755), libc::EINVAL);
        assert_errno(std::os::unix::fs::symlink("f", m.p(name)), libc::EINVAL);
        assert_errno(fs::hard_link(m.p("f"), m.p(name)), libc::EINVAL);
        assert_errno(fs::rename(m.p("f"), m.p(name)), libc::EINVAL);
        assert_errno(mknod(m.p(name), libc::S_IFIFO, 0o644, 0), libc::EINVAL);
        assert_errno(fs::write(m.p(&format!("dir/{name}")), b"x"), libc::EINVAL);
        assert!(!exists(m.p(name)));
    }
    // Whiteout files in layers are not visible, not openable, not removable.
    assert_eq!(ls(m.p("dir")), vec!["x"]);
    assert_errno(fs::read(m.p("dir/.wh.gone")), libc::ENOENT);
    assert_errno(fs::remove_file(m.p("dir/.wh.gone")), libc::ENOENT);
    // The refused calls left nothing in upper.
    let up: Vec<String> = all_names(&s.upper)
        .into_iter()
        .filter(|n| n.contains(".wh."))
        .collect();
    assert!(up.is_empty(), "{up:?}");
    assert_eq!(read(m.p("f")), b"f");
    assert_answers(&m);
}

fn long_name(c: char, len: usize) -> String {
    std::iter::repeat_n(c, len).collect()
}

#[test]
fn names_of_255_bytes_in_both_whiteout_encodings() {
    for enc in ["whiteout=chardev", "whiteout=file"] {
        let s = Stack::new(1);
        alive_file(&s);
        let n255 = long_name('a', 255);
        let d255 = long_name('d', 255);
        put(s.l(0, &n255), b"long lower");
        put(s.l(0, &format!("{d255}/{n255}")), b"long inside");
        let m = s.mount_opts(&[enc]);
        assert_eq!(read(m.p(&n255)), b"long lower");
        assert_eq!(read(m.p(&format!("{d255}/{n255}"))), b"long inside");
        // Copy-up of a 255-byte name.
        chmod(m.p(&n255), 0o600).unwrap();
        // Too long is ENAMETOOLONG, as everywhere.
        assert_errno(
            fs::write(m.p(&long_name('z', 256)), b"x"),
            libc::ENAMETOOLONG,
        );
        // Deleting a 255-byte lower name: with char-device whiteouts the whiteout has the
        // same name; a `.wh.` file would need 259 bytes, so that encoding must fail
        // cleanly and leave the file in place, or succeed and hide it for good.
        let r = fs::remove_file(m.p(&format!("{d255}/{n255}")));
        let visible = exists(m.p(&format!("{d255}/{n255}")));
        match (&r, enc) {
            (Ok(()), _) => assert!(!visible, "{enc}: unlink succeeded, name still there"),
            (Err(e), "whiteout=file") => {
                assert_eq!(e.raw_os_error(), Some(libc::ENAMETOOLONG), "{enc}: {e}");
                assert!(visible, "{enc}: failed unlink removed the name");
            }
            (Err(e), _) => panic!("{enc}: unlink of a 255-byte name: {e}"),
        }
        // Renaming the copied-up 255-byte lower name: the same rule, and a failed rename
        // changes nothing (source still there with its content, target absent).
        let b255 = long_name('b', 255);
        let rr = fs::rename(m.p(&n255), m.p(&b255));
        eprintln!("{enc}: rename of a 255-byte lower name: {rr:?}");
        match (&rr, enc) {
            (Ok(()), _) => {
                assert_eq!(read(m.p(&b255)), b"long lower", "{enc}");
                assert!(!exists(m.p(&n255)), "{enc}: renamed source still visible");
            }
            (Err(e), "whiteout=file") => {
                assert_eq!(e.raw_os_error(), Some(libc::ENAMETOOLONG), "{enc}: {e}");
                let mut want = vec![d255.clone(), n255.clone(), "alive".to_string()];
                want.sort();
                assert_eq!(ls(&m.path), want, "{enc}: listing after a failed rename");
                assert!(
                    exists(m.p(&n255)) && !exists(m.p(&b255)),
                    "{enc}: a failed rename changed the tree: source visible {}, target visible {}",
                    exists(m.p(&n255)),
                    exists(m.p(&b255))
                );
            }
            (Err(e), _) => panic!("{enc}: rename of a 255-byte name: {e}"),
        }
        assert_answers(&m);
        m.unmount();
        // The deletion (if any) holds after a remount.
        let m = s.mount_opts(&[enc]);
        assert_eq!(exists(m.p(&format!("{d255}/{n255}"))), r.is_err(), "{enc}");
        let name = if rr.is_ok() {
            long_name('b', 255)
        } else {
            n255.clone()
        };
        assert_eq!(read(m.p(&name)), b"long lower", "{enc}");
        assert_eq!(exists(m.p(&n255)), rr.is_err(), "{enc}: after remount");
        assert_eq!(exists(m.p(&b255)), rr.is_ok(), "{enc}: after remount");
        assert_answers(&m);
    }
}

#[test]
fn non_utf8_names() {
    let s = Stack::new(1);
    alive_file(&s);
    let bad = |b: &[u8]| OsString::from_vec(b.to_vec());
    let f = bad(b"\xff\xfe-file");
    let d = bad(b"\x80dir\xc3");
    let nl = bad(b"new\nline\x01");
    fs::write(s.lowers[0].join(&f), b"latin").unwrap();
    fs::create_dir(s.lowers[0].join(&d)).unwrap();
    fs::write(s.lowers[0].join(&d).join(&f), b"inner").unwrap();
    let m = s.mount();
    let names: Vec<OsString> = fs::read_dir(&m.path)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(names.contains(&f) && names.contains(&d), "{names:?}");
    assert_eq!(fs::read(m.path.join(&d).join(&f)).unwrap(), b"inner");
    // Copy-up, create, rename and delete with such names.
    fs::write(m.path.join(&d).join(&nl), b"created").unwrap();
    chmod(m.path.join(&f), 0o600).unwrap();
    fs::rename(m.path.join(&f), m.path.join(&d).join(bad(b"\xee"))).unwrap();
    fs::remove_file(m.path.join(&d).join(&f)).unwrap();
    let mut inner: Vec<OsString> = fs::read_dir(m.path.join(&d))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    inner.sort();
    let mut want = vec![bad(b"\xee"), nl.clone()];
    want.sort();
    assert_eq!(inner, want);
    assert_eq!(fs::read(s.upper.join(&d).join(&nl)).unwrap(), b"created");
    assert_answers(&m);
    m.unmount();
    let m = s.mount();
    assert_eq!(
        fs::read(m.path.join(&d).join(bad(b"\xee"))).unwrap(),
        b"latin"
    );
    assert!(!m.path.join(&d).join(&f).exists());
    assert_answers(&m);
}

// --- Paths deeper than PATH_MAX: walked with *at calls one component at a time. ---

fn openat_dir(dir: &OwnedFd, name: &OsStr) -> io::Result<OwnedFd> {
    let c = cstr(name);
    // SAFETY: valid fd and NUL-terminated name.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn mkdirat(dir: &OwnedFd, name: &OsStr) -> io::Result<()> {
    let c = cstr(name);
    // SAFETY: valid fd and NUL-terminated name.
    if unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), 0o755) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn open_root(p: &Path) -> OwnedFd {
    fs::File::open(p).unwrap().into()
}

/// Opens (creating with `create`) the chain of `depth` directories below `root`.
fn deep_dir(root: &Path, depth: usize, create: bool) -> io::Result<OwnedFd> {
    let mut fd = open_root(root);
    for i in 0..depth {
        let name = OsString::from(format!("{i:03}{}", long_name('p', 200)));
        if create {
            match mkdirat(&fd, &name) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(e),
            }
        }
        fd = openat_dir(&fd, &name)?;
    }
    Ok(fd)
}

fn file_at(dir: &OwnedFd, name: &str, flags: i32) -> io::Result<fs::File> {
    let c = cstr(name);
    // SAFETY: valid fd and NUL-terminated name.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags | libc::O_CLOEXEC, 0o644) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd.
    Ok(unsafe { fs::File::from_raw_fd(fd) })
}

#[test]
fn paths_deeper_than_path_max() {
    const DEPTH: usize = 40; // 40 x 204 bytes: about twice PATH_MAX
    let s = Stack::new(1);
    alive_file(&s);
    let deep = deep_dir(&s.lowers[0], DEPTH, true).unwrap();
    {
        use std::io::Write;
        let mut f = file_at(&deep, "leaf", libc::O_WRONLY | libc::O_CREAT).unwrap();
        f.write_all(b"deep lower").unwrap();
    }
    let m = s.mount();
    let mdeep = deep_dir(&m.path, DEPTH, false).unwrap();
    let mut buf = String::new();
    io::Read::read_to_string(
        &mut file_at(&mdeep, "leaf", libc::O_RDONLY).unwrap(),
        &mut buf,
    )
    .unwrap();
    assert_eq!(buf, "deep lower");
    // A write copies up all 40 parents and the file.
    {
        use std::io::Write;
        let mut f = file_at(&mdeep, "leaf", libc::O_WRONLY | libc::O_APPEND).unwrap();
        f.write_all(b" + upper").unwrap();
        let mut g = file_at(&mdeep, "made", libc::O_WRONLY | libc::O_CREAT).unwrap();
        g.write_all(b"made deep").unwrap();
    }
    // Deeper still, made through the mount.
    let deeper = {
        let mut fd = mdeep;
        for i in 0..10 {
            let name = OsString::from(format!("x{i}{}", long_name('q', 200)));
            mkdirat(&fd, &name).unwrap();
            fd = openat_dir(&fd, &name).unwrap();
        }
        fd
    };
    drop(file_at(&deeper, "bottom", libc::O_WRONLY | libc::O_CREAT).unwrap());
    // An open directory inside the mount would keep it busy at unmount.
    drop(deeper);
    let udeep = deep_dir(&s.upper, DEPTH, false).unwrap();
    let mut buf = String::new();
    io::Read::read_to_string(
        &mut file_at(&udeep, "leaf", libc::O_RDONLY).unwrap(),
        &mut buf,
    )
    .unwrap();
    assert_eq!(buf, "deep lower + upper");
    assert_answers(&m);
    m.unmount();
    let m = s.mount();
    let mdeep = deep_dir(&m.path, DEPTH, false).unwrap();
    let mut buf = String::new();
    io::Read::read_to_string(
        &mut file_at(&mdeep, "made", libc::O_RDONLY).unwrap(),
        &mut buf,
    )
    .unwrap();
    assert_eq!(buf, "made deep");
    assert_answers(&m);
}

#[test]
fn device_nodes_fifos_and_sockets_are_never_opened_by_copy_up() {
    let s = Stack::new(1);
    alive_file(&s);
    // /dev/zero and /dev/urandom as char devices: a copy-up that read data from them
    // would never end; a FIFO without a writer would block an open forever.
    mknod(s.l(0, "zero"), libc::S_IFCHR, 0o666, makedev(1, 5)).unwrap();
    mknod(s.l(0, "urandom"), libc::S_IFCHR, 0o644, makedev(1, 9)).unwrap();
    mknod(s.l(0, "loop"), libc::S_IFBLK, 0o600, makedev(7, 0)).unwrap();
    mknod(s.l(0, "fifo"), libc::S_IFIFO, 0o644, 0).unwrap();
    let sock = std::os::unix::net::UnixListener::bind(s.l(0, "sock")).unwrap();
    drop(sock);
    let wd = Watchdog::new("device copy-up", Duration::from_secs(60));
    let m = s.mount();
    for (name, kind, rdev) in [
        ("zero", 'c', makedev(1, 5)),
        ("urandom", 'c', makedev(1, 9)),
        ("loop", 'b', makedev(7, 0)),
        ("fifo", 'p', 0),
        ("sock", 's', 0),
    ] {
        wd.beat(&format!("copy-up of {name}"));
        chmod(m.p(name), 0o640).unwrap();
        lchown(m.p(name), 7, 8).unwrap();
        lsetxattr(m.p(name), "trusted.x", b"y").unwrap();
        let e = entry(&m.p(name));
        assert_eq!(
            (e.kind, e.rdev, e.mode, e.uid, e.gid),
            (kind, rdev, 0o640, 7, 8),
            "{name}"
        );
        let u = lstat(s.u(name));
        assert_eq!(u.rdev(), rdev, "{name} in upper");
        let ft = u.file_type();
        assert!(
            ft.is_char_device() || ft.is_block_device() || ft.is_fifo() || ft.is_socket(),
            "{name} copied up as {ft:?}"
        );
        // Renames and hard links of special files.
        fs::hard_link(m.p(name), m.p(&format!("{name}.link"))).unwrap();
        fs::rename(m.p(name), m.p(&format!("{name}.moved"))).unwrap();
    }
    // Creating device nodes through the mount works like on any filesystem (root here).
    mknod(m.p("null2"), libc::S_IFCHR, 0o666, makedev(1, 3)).unwrap();
    assert_eq!(lstat(s.u("null2")).rdev(), makedev(1, 3));
    assert_answers(&m);
}

#[test]
fn a_lower_that_is_itself_a_fuse_mount() {
    // Inner: an ordinary layerfs mount. Outer: layerfs with the inner mount as its lower.
    let inner = Stack::new(1);
    put(inner.l(0, "dir/file"), b"from the inner mount");
    put(inner.u("inner-upper"), b"inner upper");
    let im = inner.mount();
    let s = Stack::new(1);
    alive_file(&s);
    let o = format!(
        "lowerdir={},upperdir={},workdir={}",
        im.path.display(),
        s.upper.display(),
        s.work.display()
    );
    let out = std::process::Command::new(layerfs_bin())
        .args(["-o", &o])
        .arg(&s.mnt)
        .output()
        .unwrap();
    assert_success(&out);
    let m = OuterMount(s.mnt.clone());
    let mp = |r: &str| s.mnt.join(r);
    assert_eq!(read(mp("dir/file")), b"from the inner mount");
    assert_eq!(read(mp("inner-upper")), b"inner upper");
    // Copy-up from a FUSE lower, delete, rename, create.
    fs::OpenOptions::new()
        .append(true)
        .open(mp("dir/file"))
        .and_then(|mut f| io::Write::write_all(&mut f, b" + outer"))
        .unwrap();
    assert_eq!(read(s.u("dir/file")), b"from the inner mount + outer");
    fs::remove_file(mp("inner-upper")).unwrap();
    fs::rename(mp("dir"), mp("dir2")).unwrap();
    assert_eq!(ls(&s.mnt), vec!["alive", "dir2"]);
    // The inner layer is unchanged.
    assert_eq!(read(im.p("dir/file")), b"from the inner mount");
    // Kill the inner daemon: the outer one reports errors for lower-only data and keeps
    // serving everything else.
    kill9(daemon_pid(&im.path));
    put(s.u("late"), b"late");
    let r = fs::read_dir(&s.mnt).map(|rd| rd.count());
    let _ = r; // listing may fail (lower dead) but must not hang or kill the daemon
    assert_eq!(read(mp("alive")), b"yes");
    assert!(
        daemon_pids(&s.mnt).len() == 1,
        "outer daemon died with its lower"
    );
    drop(m);
    im.clear_stale();
}

struct OuterMount(PathBuf);
impl Drop for OuterMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("fusermount3")
            .arg("-u")
            .arg(&self.0)
            .status();
        if is_mounted(&self.0) {
            let _ = std::process::Command::new("fusermount3")
                .arg("-uz")
                .arg(&self.0)
                .status();
        }
    }
}

#[test]
fn layers_changed_while_mounted() {
    let s = Stack::new(2);
    let canary = Canary::new(&s);
    let cdir = canary.dir.to_str().unwrap().to_string();
    alive_file(&s);
    put(s.l(0, "d/f"), b"top f");
    put(s.l(0, "swap/a"), b"swap a");
    put(s.l(1, "d/g"), b"bottom g");
    put(s.l(1, "gone/x"), b"gone x");
    let m = s.mount();
    // Look everything up so the daemon holds what it holds.
    walk_tolerant(&m.path, 0);
    let fd_before = fs::File::open(m.p("d/f")).unwrap();

    // 1. A looked-up lower directory is replaced by a symlink to the canary.
    fs::rename(s.l(0, "swap"), s.root.path().join("swap-away")).unwrap();
    std::os::unix::fs::symlink(&cdir, s.l(0, "swap")).unwrap();
    // 2. A lower dir in the merge is replaced by a symlink to `..` (escape attempt).
    fs::remove_dir_all(s.l(1, "gone")).unwrap();
    std::os::unix::fs::symlink("../..", s.l(1, "gone")).unwrap();
    // 3. Files appear, vanish and change type underneath.
    put(s.l(1, "d/new"), b"new below");
    fs::remove_file(s.l(0, "d/f")).unwrap();
    fs::create_dir(s.l(0, "d/f")).unwrap();
    std::os::unix::fs::symlink(format!("{cdir}/secret"), s.l(1, "d/secretlink")).unwrap();

    canary.assert_untouched("changing the layers");
    for p in [
        "swap",
        "swap/a",
        "swap/secret",
        "gone",
        "gone/x",
        "gone/canary",
        "d",
        "d/f",
        "d/g",
        "d/new",
        "d/secretlink",
    ] {
        // A path through a symlinked ancestor would be followed by the test's own
        // path walk, so those are only looked at up to the symlink.
        let parts: Vec<&str> = p.split('/').collect();
        let through_symlink = (1..parts.len()).any(|i| {
            fs::symlink_metadata(m.p(&parts[..i].join("/")))
                .map(|md| md.file_type().is_symlink())
                .unwrap_or(true)
        });
        if through_symlink {
            continue;
        }
        let md = fs::symlink_metadata(m.p(p));
        canary.assert_untouched(&format!("lstat {p}"));
        // Only what the mount does not call a symlink is used with calls that follow
        // symlinks (else the test itself would follow it to the canary).
        if md.map(|md| md.file_type().is_symlink()).unwrap_or(true) {
            let _ = fs::read_link(m.p(p));
            canary.assert_untouched(&format!("readlink {p}"));
            continue;
        }
        let _ = fs::read_dir(m.p(p)).map(|rd| rd.count());
        canary.assert_untouched(&format!("readdir {p}"));
        let _ = fs::read(m.p(p));
        canary.assert_untouched(&format!("read {p}"));
        let _ = chmod(m.p(p), 0o700);
        canary.assert_untouched(&format!("chmod {p}"));
        let _ = lsetxattr(m.p(p), "user.x", b"1");
        canary.assert_untouched(&format!("setxattr {p}"));
        let _ = fs::write(m.p(&format!("{p}/w")), b"w");
        canary.assert_untouched(&format!("create {p}/w"));
    }
    let mut b = Vec::new();
    let _ = io::Read::read_to_end(&mut &fd_before, &mut b);
    drop(fd_before);
    walk_tolerant(&m.path, 0);
    canary.assert_untouched("layers changed while mounted");
    assert_answers(&m);
    m.unmount();
    let m = s.mount();
    walk_tolerant(&m.path, 0);
    canary.assert_untouched("remount after the changes");
    assert_answers(&m);
    // Nothing was written into the lowers through the mount.
    assert!(!exists(s.l(0, "d/f/w")) && !exists(s.root.path().join("swap-away/w")));
    let _ = fs::metadata(s.lowers[0].join("d")).map(|m| m.permissions().mode());
}

/// Opens the chain of `depth` directories named `d` below `dir` (creating them with
/// `create`), one component at a time, keeping one directory fd open.
fn d_chain(dir: OwnedFd, depth: usize, create: bool) -> io::Result<OwnedFd> {
    let mut fd = dir;
    for _ in 0..depth {
        if create {
            mkdirat(&fd, OsStr::new("d"))?;
        }
        fd = openat_dir(&fd, OsStr::new("d"))?;
    }
    Ok(fd)
}

/// A file 3,000 directories deep in a lower layer (a path of 6,000 bytes), appended to
/// through the mount: the copy-up of its 3,000 ancestors must not overflow a thread's
/// stack (it once aborted the daemon, and every user of the mount got ENOTCONN). Kernel
/// overlayfs copies it up (`LAYERFS_TEST_BACKEND=kernel`); so does layerfs. Then the tree
/// is renamed and removed through the mount, bottom up, and the daemon still answers.
#[test]
fn copy_up_3000_directories_deep() {
    const DEPTH: usize = 3000;
    let s = Stack::new(1);
    alive_file(&s);
    mkdirs(s.l(0, "top"));
    {
        use std::io::Write;
        let deep = d_chain(open_root(&s.l(0, "top")), DEPTH, true).unwrap();
        let mut f = file_at(&deep, "leaf", libc::O_WRONLY | libc::O_CREAT).unwrap();
        f.write_all(b"deep lower").unwrap();
    }
    let m = s.mount();
    {
        use std::io::Write;
        let mdeep = d_chain(open_root(&m.p("top")), DEPTH, false).unwrap();
        let mut f = file_at(&mdeep, "leaf", libc::O_WRONLY | libc::O_APPEND)
            .expect("open for append 3000 directories deep");
        f.write_all(b" + upper").unwrap();
        drop(f);
        let mut buf = String::new();
        io::Read::read_to_string(
            &mut file_at(&mdeep, "leaf", libc::O_RDONLY).unwrap(),
            &mut buf,
        )
        .unwrap();
        assert_eq!(buf, "deep lower + upper");
    }
    assert_answers(&m);
    let udeep = d_chain(open_root(&s.u("top")), DEPTH, false).unwrap();
    let mut buf = String::new();
    io::Read::read_to_string(
        &mut file_at(&udeep, "leaf", libc::O_RDONLY).unwrap(),
        &mut buf,
    )
    .unwrap();
    assert_eq!(buf, "deep lower + upper");
    drop(udeep);

    // Rename the whole deep tree, then remove it bottom up through the mount.
    fs::rename(m.p("top"), m.p("moved")).unwrap();
    assert!(!exists(m.p("top")));
    walk_tolerant(&m.path, 0);
    {
        let mut dirs = vec![open_root(&m.p("moved"))];
        for _ in 0..DEPTH {
            let next = openat_dir(dirs.last().unwrap(), OsStr::new("d")).unwrap();
            // Only a window of fds stays open: the rest are reopened through "..".
            if dirs.len() > 16 {
                dirs.remove(0);
            }
            dirs.push(next);
        }
        let bottom = dirs.pop().unwrap();
        let c = cstr("leaf");
        // SAFETY: valid fd and NUL-terminated name.
        assert_eq!(
            unsafe { libc::unlinkat(bottom.as_raw_fd(), c.as_ptr(), 0) },
            0
        );
        let mut cur = bottom;
        let d = cstr("d");
        let dotdot = cstr("..");
        for _ in 0..DEPTH {
            // SAFETY: valid fd and NUL-terminated name.
            let up = unsafe {
                libc::openat(
                    cur.as_raw_fd(),
                    dotdot.as_ptr(),
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
                )
            };
            assert!(up >= 0, "open ..: {}", io::Error::last_os_error());
            // SAFETY: the kernel just returned this fd.
            let up = unsafe { OwnedFd::from_raw_fd(up) };
            drop(cur);
            // SAFETY: valid fd and NUL-terminated name.
            let r = unsafe { libc::unlinkat(up.as_raw_fd(), d.as_ptr(), libc::AT_REMOVEDIR) };
            assert_eq!(r, 0, "rmdir: {}", io::Error::last_os_error());
            cur = up;
        }
    }
    fs::remove_dir(m.p("moved")).unwrap();
    assert_eq!(ls(&m.path), ["alive"]);
    assert_answers(&m);
}

/// Unmounts (lazily if busy) a mount the test started itself, on drop.
struct ForegroundMount {
    mnt: PathBuf,
    child: std::process::Child,
}

impl Drop for ForegroundMount {
    fn drop(&mut self) {
        if is_mounted(&self.mnt) {
            let _ = std::process::Command::new("fusermount3")
                .arg("-uz")
                .arg(&self.mnt)
                .status();
        }
        let _ = self.child.wait();
    }
}

/// A panic while answering one request costs that request only: it is answered EIO and
/// logged in one line, and the daemon goes on serving everyone (before, the worker
/// thread's panic ended the session: every user of the mount got ENOTCONN). The panic is
/// injected with the debug builds' `LAYERFS_TEST_PANIC_LOOKUP=NAME`.
#[test]
fn a_panicking_request_is_answered_eio_and_the_mount_keeps_serving() {
    let s = Stack::new(1);
    put(s.l(0, "file"), b"lower\n");
    let log = s.root.path().join("daemon.log");
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        s.lowers[0].display(),
        s.upper.display(),
        s.work.display()
    );
    let child = std::process::Command::new(layerfs_bin())
        .args(["-f", "-o", &opts])
        .arg(&s.mnt)
        .env("LAYERFS_TEST_PANIC_LOOKUP", "boom")
        .env_remove("RUST_LOG")
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let m = ForegroundMount {
        mnt: s.mnt.clone(),
        child,
    };
    for _ in 0..500 {
        if is_mounted(&m.mnt) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(is_mounted(&m.mnt), "layerfs -f did not mount");
    let boom = m.mnt.join("boom");
    for _ in 0..3 {
        assert_errno(fs::symlink_metadata(&boom), libc::EIO);
    }
    // Everything else still works, on every worker.
    for i in 0..20 {
        assert_eq!(read(m.mnt.join("file")), b"lower\n");
        put(m.mnt.join(format!("new{i}")), b"upper\n");
    }
    assert_eq!(ls(&m.mnt).len(), 21);
    assert_eq!(daemon_pids(&m.mnt).len(), 1, "the daemon is gone");
    let text = fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("boom")).collect();
    assert_eq!(lines.len(), 3, "one log line per panicked request:\n{text}");
    assert!(lines.iter().all(|l| l.contains("answered EIO")), "{text}");
    drop(m);
}
