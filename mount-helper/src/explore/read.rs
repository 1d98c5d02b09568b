//! Reading one layer into the model: a store layer directory (the overlay on-disk format,
//! read with the daemon's encoding functions: `layerfs::whiteout` through
//! `crate::encoding`) or a layer tar stream (OCI's `.wh.` and `.wh..wh..opq` names, the
//! same constants). Nothing is extracted; the directory walk is an explicit stack.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use layerfs::sys;
use layerfs::whiteout;

use super::model::{clean_components, Kind, LayerBuilder, NodeId};
use crate::encoding::{self, Entry};
use crate::err;
use crate::error::{Context, Result};

/// Walks a store layer directory in its canonical tar's order (depth first, names sorted
/// bytewise), so that the first name of a hard-linked file is the one the tar gives the
/// content to, as a saved archive of the layer would.
pub fn store_layer(dir: &Path, b: &mut LayerBuilder) -> Result<()> {
    let shown = dir.display();
    let root = OwnedFd::from(File::open(dir).ctx(|| format!("opening layer {shown}"))?);
    if whiteout::is_opaque(root.as_fd(), OsStr::new("")) {
        b.opaque(super::model::ROOT);
    }
    struct Frame {
        fd: OwnedFd,
        node: NodeId,
        names: Vec<OsString>,
        next: usize,
    }
    let sorted = |fd: &OwnedFd| -> io::Result<Vec<OsString>> {
        let mut v: Vec<OsString> = sys::read_dir(fd.as_fd())?
            .into_iter()
            .map(|(n, _, _)| n)
            .collect();
        v.sort_by(|a, c| a.as_bytes().cmp(c.as_bytes()));
        Ok(v)
    };
    let names = sorted(&root).ctx(|| format!("reading layer {shown}"))?;
    let mut stack = vec![Frame {
        fd: root,
        node: super::model::ROOT,
        names,
        next: 0,
    }];
    // (dev, ino) of a multiply linked file -> its first name, which the tar's later names
    // link to.
    let mut links: HashMap<(u64, u64), NodeId> = HashMap::new();
    while let Some(top) = stack.last_mut() {
        if top.next == top.names.len() {
            stack.pop();
            continue;
        }
        let name = std::mem::take(&mut top.names[top.next]);
        top.next += 1;
        let parent = top.node;
        let st = sys::fstatat(top.fd.as_fd(), &name).ctx(|| {
            format!(
                "stat {} in layer {shown}",
                b.tree.path(parent) + "/" + &name.to_string_lossy()
            )
        })?;
        match encoding::classify_stat(&name, &st) {
            Entry::OpaqueMarker => b.opaque(parent),
            Entry::Whiteout(t) => {
                let n = b.tree.child(parent, t.as_bytes());
                b.whiteout(n);
            }
            Entry::Plain => {
                let node = b.tree.child(parent, name.as_bytes());
                match st.st_mode & libc::S_IFMT {
                    libc::S_IFDIR => {
                        b.add(node, Kind::Dir, 0);
                        if whiteout::is_opaque(top.fd.as_fd(), &name) {
                            b.opaque(node);
                        }
                        let fd = sys::openat_beneath(
                            top.fd.as_fd(),
                            Path::new(&name),
                            libc::O_RDONLY | libc::O_DIRECTORY,
                            0,
                        )
                        .ctx(|| format!("opening {} in layer {shown}", b.tree.path(node)))?;
                        let names = sorted(&fd)
                            .ctx(|| format!("reading {} in layer {shown}", b.tree.path(node)))?;
                        stack.push(Frame {
                            fd,
                            node,
                            names,
                            next: 0,
                        });
                    }
                    libc::S_IFREG => {
                        if !hard_link(b, &mut links, &st, node) {
                            b.add(node, Kind::File, st.st_size as u64);
                        }
                    }
                    libc::S_IFLNK => {
                        if !hard_link(b, &mut links, &st, node) {
                            b.add(node, Kind::Symlink, 0);
                            if let Ok(t) = sys::readlinkat(top.fd.as_fd(), &name) {
                                b.target(node, t.as_bytes());
                            }
                        }
                    }
                    // A tar cannot hold a socket, so the layer's tar has none.
                    libc::S_IFSOCK => {}
                    _ => {
                        if !hard_link(b, &mut links, &st, node) {
                            b.add(node, Kind::Other, 0);
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// A second or later name of a multiply linked non-directory: added as a hard link to
/// the first (true), or remembered as the first (false: the caller adds it).
fn hard_link(
    b: &mut LayerBuilder,
    links: &mut HashMap<(u64, u64), NodeId>,
    st: &sys::Stat,
    node: NodeId,
) -> bool {
    if st.st_nlink < 2 {
        return false;
    }
    match links.get(&(st.st_dev, st.st_ino)) {
        Some(&first) => {
            b.add(node, Kind::HardLink, 0);
            let p = b.tree.path(first);
            b.target(node, p.trim_start_matches('/').as_bytes());
            true
        }
        None => {
            links.insert((st.st_dev, st.st_ino), node);
            false
        }
    }
}

/// Wraps a layer blob in the decompressor its first bytes call for (gzip, zstd, or none:
/// the compressions the OCI image spec defines).
pub fn decompress<'a, R: Read + 'a>(r: R, what: &str) -> Result<Box<dyn Read + 'a>> {
    let mut br = BufReader::with_capacity(256 * 1024, r);
    let head = br.fill_buf().ctx(|| format!("reading {what}"))?.to_vec();
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(br))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(br).ctx(|| format!("reading {what}"))?)
    } else {
        Box::new(br)
    })
}

/// Reads one (uncompressed) layer tar stream to its end, checking its digest against
/// `diff_id` (the config's promise: what is shown is the layer the image names).
pub fn tar_layer(r: impl Read, diff_id: &str, what: &str, b: &mut LayerBuilder) -> Result<()> {
    let mut hr = crate::oci::HashingReader::new(r, u64::MAX);
    {
        let mut ar = tar::Archive::new(&mut hr);
        let entries = ar
            .entries()
            .ctx(|| format!("{what} is not a tar archive"))?;
        for e in entries {
            let e = e.ctx(|| format!("{what} is not a readable tar archive (or is truncated)"))?;
            let raw = e.path_bytes().into_owned();
            let comps = clean_components(&raw).map_err(|x| err!("{what}: {x}"))?;
            let Some((last, dirs)) = comps.split_last() else {
                continue;
            };
            let mut parent = super::model::ROOT;
            for d in dirs {
                parent = b.tree.child(parent, d);
            }
            if *last == whiteout::OPAQUE_MARKER.as_bytes() {
                b.opaque(parent);
                continue;
            }
            if let Some(t) = whiteout::whiteout_target(OsStr::from_bytes(last)) {
                let n = b.tree.child(parent, t.as_bytes());
                b.whiteout(n);
                continue;
            }
            let node = b.tree.child(parent, last);
            let kind = match e.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => Kind::File,
                tar::EntryType::Directory => Kind::Dir,
                tar::EntryType::Symlink => Kind::Symlink,
                tar::EntryType::Link => Kind::HardLink,
                tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => Kind::Other,
                // Extension headers the tar crate has not already folded into the entry.
                _ => continue,
            };
            b.add(node, kind, e.size());
            if matches!(kind, Kind::Symlink | Kind::HardLink) {
                if let Some(t) = e.link_name_bytes() {
                    b.target(node, &t);
                }
            }
        }
    }
    // The tar reader stops at the end-of-archive marker; the digest covers every byte.
    io::copy(&mut hr, &mut io::sink()).ctx(|| format!("reading {what}"))?;
    let got = hr.digest();
    if got != diff_id {
        return Err(err!(
            "{what}: its content hashes to {got} but the image config says {diff_id}: the image is damaged or was tampered with"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::explore::model::{analyze, Image, LayerMeta, Tree, View};
    use std::fs;
    use std::process::Command;

    fn run(cmd: &str, args: &[&str]) {
        let st = Command::new(cmd).args(args).status().unwrap();
        assert!(st.success(), "{cmd} {args:?}");
    }

    /// Every store encoding of a deletion and an opaque directory, read from a layer
    /// directory: a char 0/0 device, a `.wh.` file, the trusted and the user opaque
    /// xattr, the `.wh..wh..opq` marker. Needs root (mknod, trusted.* xattrs): run as
    /// another user it fails, it does not skip.
    #[test]
    fn store_encodings() {
        let t = tempfile::tempdir().unwrap();
        let (l0, l1) = (t.path().join("l0"), t.path().join("l1"));
        for d in ["d1", "d2", "d3"] {
            fs::create_dir_all(l0.join(d)).unwrap();
            fs::write(l0.join(d).join("old"), b"12345").unwrap();
        }
        fs::write(l0.join("gone1"), b"abc").unwrap();
        fs::write(l0.join("gone2"), b"abcd").unwrap();
        for d in ["d1", "d2", "d3"] {
            fs::create_dir_all(l1.join(d)).unwrap();
        }
        let p = |rel: &str| l1.join(rel).to_str().unwrap().to_string();
        run("mknod", &[&p("gone1"), "c", "0", "0"]);
        fs::write(l1.join(".wh.gone2"), b"").unwrap();
        run(
            "setfattr",
            &["-n", "trusted.overlay.opaque", "-v", "y", &p("d1")],
        );
        run(
            "setfattr",
            &["-n", "user.overlay.opaque", "-v", "y", &p("d2")],
        );
        fs::write(l1.join("d3/.wh..wh..opq"), b"").unwrap();
        fs::write(l1.join("d3/new"), b"x").unwrap();

        let mut tree = Tree::new();
        let mut layers = Vec::new();
        for l in [&l0, &l1] {
            let mut b = LayerBuilder::new(&mut tree);
            store_layer(l, &mut b).unwrap();
            layers.push(b.finish(LayerMeta::default()));
        }
        tree.finish();
        let img = Image {
            name: "t".into(),
            id: "t".into(),
            tree,
            layers,
        };
        let v = View::upto(&img, 1);
        let mut present: Vec<String> = (1..img.tree.len() as u32)
            .filter(|&n| v.present(n))
            .map(|n| img.tree.path(n))
            .collect();
        present.sort();
        assert_eq!(present, vec!["/d1", "/d2", "/d3", "/d3/new"]);
        let an = analyze(&img);
        let mut removed: Vec<String> = an.changes[1]
            .iter()
            .filter(|c| c.kind == crate::explore::model::ChangeKind::Removed)
            .map(|c| format!("{} {}", img.tree.path(c.node), c.size))
            .collect();
        removed.sort();
        assert_eq!(
            removed,
            vec![
                "/d1/old 5",
                "/d2/old 5",
                "/d3/old 5",
                "/gone1 3",
                "/gone2 4"
            ]
        );
    }
}
