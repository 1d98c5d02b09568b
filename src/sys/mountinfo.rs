//! The mount table as the kernel writes it in `/proc/PID/mountinfo`: the one reader and the
//! one unescape of its `\ooo` escapes, for the daemon, layerctl and the tests.

use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// One line of a mount table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// `MAJOR:MINOR` of the mounted file system.
    pub device: String,
    /// Where it is mounted, unescaped.
    pub point: PathBuf,
    /// The per-mount options (`rw,nosuid,...`).
    pub options: String,
    /// The file system type (`fuse.layerfs`).
    pub fstype: String,
    /// The source (`fsname=` for a FUSE mount), unescaped.
    pub source: String,
}

/// The mounts of `table` in its order (a later line is mounted over an earlier one at the
/// same point). A line without the fields the kernel always writes is passed over.
pub fn parse(table: &[u8]) -> Vec<Mount> {
    table
        .split(|&b| b == b'\n')
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &[u8]) -> Option<Mount> {
    // ID PARENT MAJOR:MINOR ROOT POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS
    let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    let dash = 6 + fields.get(6..)?.iter().position(|f| *f == b"-")?;
    let text = |f: &[u8]| String::from_utf8_lossy(f).into_owned();
    Some(Mount {
        device: text(fields[2]),
        point: PathBuf::from(OsString::from_vec(unescape(fields[4]))),
        options: text(fields[5]),
        fstype: text(fields.get(dash + 1)?),
        source: text(&unescape(fields.get(dash + 2)?)),
    })
}

/// The mount table of this process's namespace.
pub fn own() -> io::Result<Vec<Mount>> {
    of_file(Path::new("/proc/self/mountinfo"))
}

/// The mount table in `file` (`/proc/PID/mountinfo`, `/proc/thread-self/mountinfo`).
pub fn of_file(file: &Path) -> io::Result<Vec<Mount>> {
    Ok(parse(&std::fs::read(file)?))
}

/// The device (`MAJOR:MINOR`) of the top-most mount at `path` in this process's mount
/// namespace, if something is mounted there. `path` must be canonical.
pub fn mount_device(path: &Path) -> io::Result<Option<String>> {
    Ok(top_at(&own()?, path).map(|m| m.device.clone()))
}

/// Whether the mount with device `device` is at `path` in this process's mount namespace.
pub fn is_mounted_at(path: &Path, device: &str) -> io::Result<bool> {
    Ok(own()?.iter().any(|m| m.device == device && m.point == path))
}

/// The top-most of the mounts at `point`: later lines are mounted on top of earlier ones.
pub fn top_at<'a>(mounts: &'a [Mount], point: &Path) -> Option<&'a Mount> {
    mounts.iter().rev().find(|m| m.point == point)
}

/// Mount tables write space, tab, newline and backslash as `\ooo` (three octal digits); any
/// other backslash stands for itself.
pub fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        match field.get(i + 1..i + 4) {
            Some(d) if field[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)) => {
                let v = d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                // Three octal digits reach 0o777; the kernel writes only bytes.
                out.push(v as u8);
                i += 4;
            }
            _ => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &[u8] = b"22 1 8:1 / / rw - ext4 /dev/sda rw\n\
        36 22 98:0 / /mnt/my\\040dir rw,nosuid shared:7 - ext3 /dev/root rw\n\
        40 22 0:50 / /tmp/a\\040b rw - fuse.layerfs layerfs rw\n\
        41 40 0:51 / /tmp/a\\040b rw,nodev - fuse.layerfs my\\040fs rw\n\
        broken line\n";

    #[test]
    fn fields_are_read_past_optional_ones_and_unescaped() {
        let mounts = parse(TABLE);
        assert_eq!(mounts.len(), 4, "the broken line is passed over");
        let m = &mounts[1];
        assert_eq!(m.device, "98:0");
        assert_eq!(m.point, Path::new("/mnt/my dir"));
        assert_eq!(m.options, "rw,nosuid");
        assert_eq!(
            (m.fstype.as_str(), m.source.as_str()),
            ("ext3", "/dev/root")
        );
        assert_eq!(mounts[3].source, "my fs");
    }

    #[test]
    fn the_top_mount_wins() {
        let mounts = parse(TABLE);
        let top = |p: &str| top_at(&mounts, Path::new(p)).map(|m| m.device.as_str());
        assert_eq!(top("/tmp/a b"), Some("0:51"));
        assert_eq!(top("/"), Some("8:1"));
        assert_eq!(top("/tmp"), None);
        assert_eq!(top("/mnt/my\\040dir"), None);
    }

    #[test]
    fn unescape_takes_only_three_octal_digits() {
        assert_eq!(unescape(b"x\\134y\\01"), b"x\\y\\01");
        assert_eq!(unescape(b"a\\011b\\012c\\0401"), b"a\tb\nc 1");
        assert_eq!(unescape(b"\\9999\\"), b"\\9999\\");
    }
}
