//! read/write/fsync, unlinked open files, fallocate, lseek SEEK_DATA/SEEK_HOLE,
//! copy_file_range, statfs, posix locks.
mod common;
use common::*;
use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

#[test]
fn read_write_fsync() {
    let s = Stack::new(1);
    put(s.l(0, "low"), b"hello world");
    let m = s.mount();
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(m.p("new"))
        .unwrap();
    f.write_all(b"abc").unwrap();
    f.write_all_at(b"Z", 10).unwrap();
    f.sync_all().unwrap();
    f.sync_data().unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut v = Vec::new();
    f.read_to_end(&mut v).unwrap();
    assert_eq!(v, b"abc\0\0\0\0\0\0\0Z");
    let g = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.p("low"))
        .unwrap();
    g.write_all_at(b"W", 6).unwrap();
    g.write_all_at(b"!!", 20).unwrap();
    g.sync_all().unwrap();
    assert_eq!(read(m.p("low")), b"hello World\0\0\0\0\0\0\0\0\0!!");
    assert_eq!(read(s.l(0, "low")), b"hello world");
    fs::File::open(m.p("")).unwrap().sync_all().unwrap();
}

fn unlinked_open_file(lower: bool) {
    let s = Stack::new(1);
    let m = s.mount();
    if lower {
        put(s.l(0, "f"), b"lower data");
    }
    drop(m);
    let m = s.mount();
    if !lower {
        put(m.p("f"), b"upper data");
    }
    let want = if lower { "lower data" } else { "upper data" };
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.p("f"))
        .unwrap();
    fs::remove_file(m.p("f")).unwrap();
    assert!(!exists(m.p("f")));
    let mut v = String::new();
    f.read_to_string(&mut v).unwrap();
    assert_eq!(v, want);
    f.write_all(b"+more").unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    v.clear();
    f.read_to_string(&mut v).unwrap();
    assert_eq!(v, format!("{want}+more"));
    let st = fstat(&f).unwrap();
    assert_eq!(st.st_nlink, 0);
    assert_eq!(st.st_size as usize, want.len() + 5);
    f.set_len(2).unwrap();
    assert_eq!(fstat(&f).unwrap().st_size, 2);
    assert!(ls(m.p("")).is_empty());
}

#[test]
fn unlinked_open_lower_file_stays_usable() {
    unlinked_open_file(true);
}

#[test]
fn unlinked_open_upper_file_stays_usable() {
    unlinked_open_file(false);
}

#[test]
fn fallocate_modes() {
    let s = Stack::new(1);
    put(s.l(0, "f"), &[b'a'; 8192]);
    let m = s.mount();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.p("f"))
        .unwrap();
    fallocate(&f, 0, 0, 1 << 20).unwrap();
    assert_eq!(fstat(&f).unwrap().st_size, 1 << 20);
    fallocate(&f, libc::FALLOC_FL_KEEP_SIZE, 0, 2 << 20).unwrap();
    assert_eq!(fstat(&f).unwrap().st_size, 1 << 20);
    fallocate(
        &f,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        0,
        4096,
    )
    .unwrap();
    let mut buf = vec![0u8; 8192];
    f.read_exact_at(&mut buf, 0).unwrap();
    assert!(buf[..4096].iter().all(|b| *b == 0));
    assert!(buf[4096..].iter().all(|b| *b == b'a'));
    assert_eq!(read(s.l(0, "f")), vec![b'a'; 8192]);
}

const MB: i64 = 1 << 20;

/// Data at [0, 4K) and [8M, 8M+4K), size 16M.
fn make_holey(path: &std::path::Path) {
    let f = fs::File::create(path).unwrap();
    f.write_all_at(&[1u8; 4096], 0).unwrap();
    f.write_all_at(&[2u8; 4096], 8 * MB as u64).unwrap();
    f.set_len(16 * MB as u64).unwrap();
}

/// `exact`: block-exact extents (a file written directly). Otherwise the file went
/// through a copy-up, which may copy data in chunks (kernel overlayfs uses 1 MiB), so
/// data regions may grow up to the next MiB but holes between them must stay holes.
fn check_seek(path: &std::path::Path, exact: bool) {
    let f = fs::File::open(path).unwrap();
    assert_eq!(lseek(&f, 0, libc::SEEK_DATA).unwrap(), 0);
    let h = lseek(&f, 0, libc::SEEK_HOLE).unwrap();
    let d = lseek(&f, 2 * MB, libc::SEEK_DATA).unwrap();
    let h2 = lseek(&f, 8 * MB, libc::SEEK_HOLE).unwrap();
    if exact {
        assert_eq!(h, 4096);
        assert_eq!(lseek(&f, 4096, libc::SEEK_DATA).unwrap(), 8 * MB);
        assert_eq!(h2, 8 * MB + 4096);
        assert_errno(lseek(&f, 8 * MB + 4096, libc::SEEK_DATA), libc::ENXIO);
    } else {
        assert!((4096..=MB).contains(&h), "SEEK_HOLE(0) = {h}: holes lost");
        assert!(
            (8 * MB + 4096..=9 * MB).contains(&h2),
            "SEEK_HOLE(8M) = {h2}"
        );
        assert_errno(lseek(&f, 9 * MB, libc::SEEK_DATA), libc::ENXIO);
    }
    assert_eq!(d, 8 * MB);
    assert_errno(lseek(&f, 17 * MB, libc::SEEK_HOLE), libc::ENXIO);
    assert_eq!(lseek(&f, 100, libc::SEEK_SET).unwrap(), 100);
    assert_eq!(lseek(&f, 0, libc::SEEK_END).unwrap(), 16 * MB);
}

#[test]
fn lseek_data_and_holes_before_and_after_copy_up() {
    let s = Stack::new(1);
    make_holey(&s.l(0, "h"));
    let m = s.mount();
    check_seek(&m.p("h"), true);
    chmod(m.p("h"), 0o600).unwrap();
    check_seek(&m.p("h"), false);
    make_holey(&m.p("new"));
    check_seek(&m.p("new"), true);
}

#[test]
fn copy_file_range_between_layers() {
    let s = Stack::new(1);
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    put(s.l(0, "src"), &data);
    let m = s.mount();
    let src = fs::File::open(m.p("src")).unwrap();
    let dst = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.p("dst"))
        .unwrap();
    let mut done = 0;
    while done < 60_000 {
        let n = copy_file_range(
            &src,
            1000 + done as i64,
            &dst,
            10 + done as i64,
            60_000 - done,
        )
        .unwrap();
        assert!(n > 0);
        done += n;
    }
    let got = read(m.p("dst"));
    assert_eq!(got.len(), 60_010);
    assert!(got[..10].iter().all(|b| *b == 0));
    assert_eq!(&got[10..], &data[1000..61_000]);
}

#[test]
fn statfs_reports_the_upper_filesystem() {
    let s = Stack::new(1);
    let m = s.mount();
    let a = statvfs(m.p(""));
    let b = statvfs(&s.upper);
    assert_eq!(
        a.f_blocks as u128 * a.f_frsize as u128,
        b.f_blocks as u128 * b.f_frsize as u128
    );
}

#[test]
fn posix_and_ofd_locks() {
    let s = Stack::new(1);
    put(s.l(0, "f"), b"lockme");
    let m = s.mount();
    let a = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.p("f"))
        .unwrap();
    let b = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.p("f"))
        .unwrap();
    fcntl_lock(&a, libc::F_OFD_SETLK, libc::F_WRLCK as i16, 0, 100).unwrap();
    let got = fcntl_lock(&b, libc::F_OFD_GETLK, libc::F_WRLCK as i16, 0, 10).unwrap();
    assert_eq!(got.l_type, libc::F_WRLCK as i16);
    assert_errno(
        fcntl_lock(&b, libc::F_OFD_SETLK, libc::F_RDLCK as i16, 50, 10),
        libc::EAGAIN,
    );
    fcntl_lock(&b, libc::F_OFD_SETLK, libc::F_WRLCK as i16, 100, 10).unwrap();
    fcntl_lock(&a, libc::F_OFD_SETLK, libc::F_UNLCK as i16, 0, 100).unwrap();
    fcntl_lock(&b, libc::F_OFD_SETLK, libc::F_RDLCK as i16, 50, 10).unwrap();
    // A classic POSIX lock conflicts with the OFD lock held through `b`.
    assert_errno(
        fcntl_lock(&a, libc::F_SETLK, libc::F_WRLCK as i16, 55, 1),
        libc::EAGAIN,
    );
    fcntl_lock(&a, libc::F_SETLK, libc::F_WRLCK as i16, 200, 1).unwrap();
    let got = fcntl_lock(&b, libc::F_OFD_GETLK, libc::F_WRLCK as i16, 200, 1).unwrap();
    assert_eq!(got.l_type, libc::F_WRLCK as i16);
    assert_eq!(got.l_pid, std::process::id() as i32);
}

/// Terminal ioctls on a file fail with ENOTTY (what `isatty` expects), as on kernel
/// overlayfs; fuser's default answer would be ENOSYS.
#[test]
fn terminal_ioctl_on_a_file_is_enotty() {
    use std::os::fd::AsRawFd;
    let s = Stack::new(1);
    put(s.l(0, "lower"), b"x");
    let m = s.mount();
    put(m.p("upper"), b"y");
    for name in ["lower", "upper"] {
        let f = std::fs::File::open(m.p(name)).unwrap();
        let mut termios = std::mem::MaybeUninit::<libc::termios>::zeroed();
        // SAFETY: valid fd and a buffer of the size TCGETS writes.
        let r = unsafe { libc::ioctl(f.as_raw_fd(), libc::TCGETS, termios.as_mut_ptr()) };
        assert_eq!(r, -1, "{name}: TCGETS succeeded on a file");
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::ENOTTY),
            "{name}"
        );
    }
}
