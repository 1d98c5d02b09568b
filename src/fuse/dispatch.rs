//! Answers one FUSE-over-io_uring request: decodes it with the wire structs (`wire`),
//! checks who may ask, calls `Ops`, and encodes the reply into the same ring entry. The
//! queue threads (`ring`) only move entries; this is all that reads them.

use std::ffi::OsStr;
use std::mem::offset_of;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::Duration;

use crate::fuse::ops::{self, Answer, Ctx, DirPlusSink, DirSink, Ops, ReadSink, Xattr};
use crate::fuse::wire::*;
use crate::overlay::SetAttr;
use crate::sys::uring::EntryBuffers;
use crate::sys::{self, Stat};

/// Who may use the mount besides what the kernel already checks (fuser's session applies
/// the same rule to requests from `/dev/fuse`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    All,
    RootAndOwner,
    Owner,
}

impl Access {
    pub fn of(config: &crate::Config) -> Access {
        if config.allow_other {
            Access::All
        } else if config.allow_root {
            Access::RootAndOwner
        } else {
            Access::Owner
        }
    }
}

/// What ring requests are answered with, and the rule for who may send them.
pub struct Dispatch {
    pub ops: Arc<Ops>,
    pub access: Access,
    /// The daemon's user: the owner `Access` speaks of.
    pub owner: u32,
}

/// The part of a ring entry's header buffer from `at` on (empty past its end: every
/// field then reads as zero).
fn part(header: &[u8], at: usize) -> &[u8] {
    header.get(at..).unwrap_or(&[])
}

/// The opcode-specific struct of a request.
fn op_in(header: &[u8]) -> &[u8] {
    header.get(OP_IN..OP_IN + OP_IN_LEN).unwrap_or(&[])
}

impl Dispatch {
    /// Whether a request may take long enough to hold up the others on its queue: it may
    /// copy a lower file's data up, or waits for the disk. Everything else is answered in
    /// place.
    pub fn slow(&self, header: &[u8]) -> bool {
        let h = InHeader::read(part(header, IN_OUT));
        match h.opcode {
            FSYNC | FSYNCDIR | FALLOCATE | COPY_FILE_RANGE | RENAME | RENAME2 | LINK => true,
            OPEN => {
                let flags = OpenIn::read(op_in(header)).flags as i32;
                let writes =
                    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
                writes && self.ops.would_copy_data_up(h.nodeid)
            }
            SETATTR | SETXATTR | REMOVEXATTR => self.ops.would_copy_data_up(h.nodeid),
            _ => false,
        }
    }

    /// Answers the request in `slot` and leaves the reply in it; returns the commit id.
    pub fn serve(&self, slot: &mut EntryBuffers, scratch: &mut Vec<u8>) -> u64 {
        serve(self, slot, scratch)
    }
}

/// Requests the kernel may send on behalf of no particular user (writeback, release);
/// fuser lets these through its allow_root check too.
fn uid_free(opcode: u32) -> bool {
    matches!(
        opcode,
        DESTROY | READ | READDIR | READDIRPLUS | WRITE | FSYNC | FSYNCDIR | RELEASE | RELEASEDIR
    )
}

fn serve(server: &Dispatch, slot: &mut EntryBuffers, scratch: &mut Vec<u8>) -> u64 {
    let header = &slot.header[..];
    let h = InHeader::read(part(header, IN_OUT));
    let ent = EntInOut::read(part(header, ENT_IN_OUT));
    let (opcode, unique, commit_id) = (h.opcode, h.unique, ent.commit_id);
    let payload_len = (ent.payload_sz as usize).min(slot.payload.len());
    scratch.clear();
    let result = ops::guarded(opcode_name(opcode), || {
        if opcode == READ {
            read(server, header, &mut slot.payload)
        } else {
            let r = answer(
                server,
                &h,
                op_in(header),
                &slot.payload[..payload_len],
                &mut Out(scratch),
            );
            // Replies are bounded by what the request allowed (readdir and xattr sizes),
            // which the kernel keeps within the payload buffer; anything larger is
            // refused, not cut.
            match (r, slot.payload.get_mut(..scratch.len())) {
                (Ok(()), Some(body)) => {
                    body.copy_from_slice(scratch);
                    Ok(scratch.len())
                }
                (Ok(()), None) => Err(libc::ERANGE),
                (Err(e), _) => Err(e),
            }
        }
    })
    .unwrap_or(Err(libc::EIO));
    let (error, body) = match result {
        Ok(n) => (0, n),
        Err(e) => (-e, 0),
    };
    let h = &mut slot.header[..];
    let len = (std::mem::size_of::<OutHeader>() + body) as u32;
    OutHeader { len, error, unique }.write(&mut h[IN_OUT..]);
    (body as u32).put(h, ENT_IN_OUT + offset_of!(EntInOut, payload_sz));
    commit_id
}

/// READ straight into the payload buffer the reply is taken from.
fn read(server: &Dispatch, header: &[u8], payload: &mut [u8]) -> Answer<usize> {
    let r = ReadIn::read(op_in(header));
    server
        .ops
        .read(r.fh, r.offset, r.size, &mut Payload(payload))
}

fn answer(server: &Dispatch, h: &InHeader, op: &[u8], payload: &[u8], out: &mut Out) -> Answer<()> {
    let ops = &server.ops;
    let ttl = ops.ttl();
    let (node, opcode) = (h.nodeid, h.opcode);
    let ctx = Ctx {
        uid: h.uid,
        gid: h.gid,
    };
    let allowed = match server.access {
        Access::All => true,
        Access::RootAndOwner => ctx.uid == 0 || ctx.uid == server.owner,
        Access::Owner => ctx.uid == server.owner,
    };
    if !allowed && !uid_free(opcode) {
        return Err(libc::EACCES);
    }
    let mut names = Names(payload);
    fn name<'a>(names: &mut Names<'a>) -> Answer<&'a OsStr> {
        names.next().ok_or(libc::EINVAL)
    }
    match opcode {
        LOOKUP => out.entry(&ops.lookup(node, name(&mut names)?)?, ttl),
        GETATTR => {
            let g = GetattrIn::read(op);
            let fh = (g.getattr_flags & FUSE_GETATTR_FH != 0).then_some(g.fh);
            attr_out(out, ttl, &ops.getattr(node, fh)?)
        }
        SETATTR => attr_out(out, ttl, &ops.setattr(node, setattr(op))?),
        READLINK => out.0.extend_from_slice(ops.readlink(node)?.as_bytes()),
        SYMLINK => {
            let link = name(&mut names)?;
            let target = name(&mut names)?;
            out.entry(&ops.symlink(ctx, node, link, target)?, ttl)
        }
        MKNOD => {
            let m = MknodIn::read(op);
            out.entry(
                &ops.mknod(ctx, node, name(&mut names)?, m.mode, m.umask, m.rdev)?,
                ttl,
            )
        }
        MKDIR => {
            let m = MkdirIn::read(op);
            out.entry(
                &ops.mkdir(ctx, node, name(&mut names)?, m.mode, m.umask)?,
                ttl,
            )
        }
        UNLINK => ops.unlink(node, name(&mut names)?)?,
        RMDIR => ops.rmdir(node, name(&mut names)?)?,
        RENAME | RENAME2 => {
            let r = Rename2In::read(op);
            let flags = if opcode == RENAME2 { r.flags } else { 0 };
            let (old, new) = (name(&mut names)?, name(&mut names)?);
            ops.rename(node, old, r.newdir, new, flags)?
        }
        LINK => out.entry(
            &ops.link(LinkIn::read(op).oldnodeid, node, name(&mut names)?)?,
            ttl,
        ),
        OPEN => out.open(&ops.open(node, OpenIn::read(op).flags as i32)?),
        WRITE => {
            let w = WriteIn::read(op);
            let data = payload.get(..w.size as usize).ok_or(libc::EINVAL)?;
            out.u32(ops.write(w.fh, w.offset, data)?);
            out.u32(0);
        }
        STATFS => {
            let s = ops.statfs()?;
            for v in [s.f_blocks, s.f_bfree, s.f_bavail, s.f_files, s.f_ffree] {
                out.u64(v);
            }
            for v in [s.f_bsize as u32, s.f_namemax as u32, s.f_frsize as u32, 0] {
                out.u32(v);
            }
            out.0.extend_from_slice(&[0u8; 24]);
        }
        RELEASE => ops.release(ReleaseIn::read(op).fh)?,
        FSYNC => {
            let f = FsyncIn::read(op);
            ops.fsync(f.fh, f.fsync_flags & FUSE_FSYNC_FDATASYNC != 0)?
        }
        SETXATTR => {
            let s = SetxattrIn::read(op);
            let attr = name(&mut names)?;
            let value = names.rest().get(..s.size as usize).ok_or(libc::EINVAL)?;
            ops.setxattr(node, attr, value, s.flags as i32)?
        }
        GETXATTR => {
            let size = GetxattrIn::read(op).size;
            xattr_out(out, ops.getxattr(node, name(&mut names)?, size)?)
        }
        LISTXATTR => xattr_out(out, ops.listxattr(node, GetxattrIn::read(op).size)?),
        REMOVEXATTR => ops.removexattr(node, name(&mut names)?)?,
        FLUSH => ops.flush()?,
        OPENDIR => out.open(&ops.opendir()?),
        READDIR | READDIRPLUS => {
            let r = ReadIn::read(op);
            let mut dir = Dir {
                out: Out(out.0),
                limit: (r.size as usize).min(MAX_PAYLOAD),
            };
            if opcode == READDIR {
                ops.readdir(node, r.offset, &mut dir)?
            } else {
                ops.readdirplus(node, r.offset, &mut dir)?
            }
        }
        RELEASEDIR | DESTROY => {}
        FSYNCDIR => {
            let f = FsyncIn::read(op);
            ops.fsyncdir(node, f.fsync_flags & FUSE_FSYNC_FDATASYNC != 0)?
        }
        ACCESS => ops.access(node)?,
        CREATE => {
            let c = CreateIn::read(op);
            let (entry, opened) = ops.create(
                ctx,
                node,
                name(&mut names)?,
                c.mode,
                c.umask,
                c.flags as i32,
            )?;
            out.entry(&entry, ttl);
            out.open(&opened);
        }
        // As kernel overlayfs answers commands it does not know.
        IOCTL => return Err(libc::ENOTTY),
        FALLOCATE => {
            let f = FallocateIn::read(op);
            ops.fallocate(f.fh, f.offset, f.length, f.mode as i32)?
        }
        LSEEK => {
            let l = LseekIn::read(op);
            out.u64(ops.lseek(l.fh, l.offset as i64, l.whence as i32)? as u64)
        }
        COPY_FILE_RANGE => {
            let c = CopyFileRangeIn::read(op);
            let n = ops.copy_file_range(c.fh_in, c.off_in, c.fh_out, c.off_out, c.len)?;
            out.u32(n.min(u32::MAX as u64) as u32);
            out.u32(0);
        }
        // Locks (the kernel keeps POSIX locks itself), bmap, poll, tmpfile, statx, and
        // anything newer: not served, as through /dev/fuse.
        _ => return Err(libc::ENOSYS),
    }
    Ok(())
}

fn attr_out(out: &mut Out, ttl: Duration, st: &Stat) {
    out.u64(ttl.as_secs());
    out.u32(ttl.subsec_nanos());
    out.u32(0);
    out.attr(st);
}

fn xattr_out(out: &mut Out, x: Xattr) {
    match x {
        Xattr::Size(n) => {
            out.u32(n);
            out.u32(0);
        }
        Xattr::Data(v) => out.0.extend_from_slice(&v),
    }
}

/// `struct fuse_setattr_in`, as the overlay takes it.
fn setattr(op: &[u8]) -> SetAttr {
    let s = SetattrIn::read(op);
    let has = |bit: u32| s.valid & bit != 0;
    let time = |now: u32, sec: u64, nsec: u32| {
        if has(now) {
            sys::Timespec {
                tv_sec: 0,
                tv_nsec: sys::UTIME_NOW,
            }
        } else {
            sys::Timespec {
                tv_sec: sec as i64,
                tv_nsec: nsec as i64,
            }
        }
    };
    SetAttr {
        mode: has(FATTR_MODE).then_some(s.mode),
        uid: has(FATTR_UID).then_some(s.uid),
        gid: has(FATTR_GID).then_some(s.gid),
        size: has(FATTR_SIZE).then_some(s.size),
        atime: has(FATTR_ATIME).then(|| time(FATTR_ATIME_NOW, s.atime, s.atimensec)),
        mtime: has(FATTR_MTIME).then(|| time(FATTR_MTIME_NOW, s.mtime, s.mtimensec)),
        fh: has(FATTR_FH).then_some(s.fh),
    }
}

struct Dir<'a> {
    out: Out<'a>,
    limit: usize,
}

impl DirSink for Dir<'_> {
    fn add(&mut self, ino: u64, cookie: u64, dtype: u8, name: &OsStr) -> bool {
        if self.out.0.len() + dirent_size(name) > self.limit {
            return true;
        }
        self.out.dirent(ino, cookie, dtype as u32, name);
        false
    }
}

impl DirPlusSink for Dir<'_> {
    fn add(&mut self, e: &ops::Entry, ttl: Duration, cookie: u64, name: &OsStr) -> bool {
        if self.out.0.len() + 128 + dirent_size(name) > self.limit {
            return true;
        }
        self.out.entry(e, ttl);
        let dtype = (e.st.st_mode & libc::S_IFMT) >> 12;
        self.out.dirent(e.st.st_ino, cookie, dtype, name);
        false
    }
}

struct Payload<'a>(&'a mut [u8]);

impl ReadSink for Payload<'_> {
    fn buffer(&mut self, size: usize) -> &mut [u8] {
        let n = size.min(self.0.len());
        &mut self.0[..n]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ring entry holding `opcode` for `node` with `names` as payload, as the kernel
    /// fills one.
    fn request(opcode: u32, node: u64, op: &[u8], names: &[u8]) -> EntryBuffers {
        let mut slot = EntryBuffers::new(4096);
        let h = InHeader {
            opcode,
            unique: 77,
            nodeid: node,
            ..Default::default()
        };
        h.write(&mut slot.header[IN_OUT..]);
        slot.header[OP_IN..OP_IN + op.len()].copy_from_slice(op);
        slot.payload[..names.len()].copy_from_slice(names);
        let ent = EntInOut {
            commit_id: 5,
            payload_sz: names.len() as u32,
            ..Default::default()
        };
        ent.write(&mut slot.header[ENT_IN_OUT..]);
        slot
    }

    /// One entry through decode, `Ops` and encode, on a read-only overlay of a temporary
    /// lower directory (no mount): the reply header, the entry and attributes written, and
    /// errors as negative errnos. tests/ring.rs covers the rings themselves where the fuse
    /// module offers them.
    #[test]
    fn serves_requests_from_a_ring_entry() {
        let lower = tempfile::tempdir().unwrap();
        std::fs::write(lower.path().join("f"), b"hello").unwrap();
        let config = crate::Config::new(vec![lower.path().to_path_buf()], "/unused".into());
        let d = Dispatch {
            ops: Arc::new(Ops::new(&config).unwrap()),
            access: Access::All,
            owner: 0,
        };
        let mut scratch = Vec::new();

        let mut slot = request(LOOKUP, 1, &[], b"f\0");
        assert_eq!(d.serve(&mut slot, &mut scratch), 5);
        let out = OutHeader::read(&slot.header[IN_OUT..]);
        assert_eq!((out.error, out.unique, out.len), (0, 77, 16 + 128));
        let ent = EntInOut::read(&slot.header[ENT_IN_OUT..]);
        assert_eq!(ent.payload_sz, 128);
        let node = u64::at(&slot.payload, 0);
        // fuse_entry_out's attr starts at 40: ino, then size.
        assert_eq!(u64::at(&slot.payload, 40 + 8), 5);

        let mut slot = request(GETATTR, node, &[0; 16], &[]);
        d.serve(&mut slot, &mut scratch);
        let out = OutHeader::read(&slot.header[IN_OUT..]);
        assert_eq!((out.error, out.len), (0, 16 + 104));
        // fuse_attr_out: valid, valid_nsec, dummy, then attr (size at 8).
        assert_eq!(u64::at(&slot.payload, 16 + 8), 5);

        // A missing name is a negative entry (node id 0), which the kernel caches.
        let mut slot = request(LOOKUP, 1, &[], b"missing\0");
        d.serve(&mut slot, &mut scratch);
        let out = OutHeader::read(&slot.header[IN_OUT..]);
        assert_eq!((out.error, out.len), (0, 16 + 128));
        assert_eq!(u64::at(&slot.payload, 0), 0);

        let mut slot = request(GETATTR, 999_999, &[0; 16], &[]);
        d.serve(&mut slot, &mut scratch);
        let out = OutHeader::read(&slot.header[IN_OUT..]);
        assert_eq!((out.error, out.len), (-libc::ENOENT, 16));

        let mut setattr_in = [0u8; 88];
        FATTR_MODE.put(&mut setattr_in, 0);
        let mut slot = request(SETATTR, node, &setattr_in, &[]);
        d.serve(&mut slot, &mut scratch);
        let out = OutHeader::read(&slot.header[IN_OUT..]);
        assert_eq!(out.error, -libc::EROFS, "no upper layer: read-only");
    }

    #[test]
    fn setattr_reads_only_the_valid_fields() {
        let mut op = [0u8; 128];
        let valid = FATTR_MODE | FATTR_SIZE | FATTR_MTIME | FATTR_MTIME_NOW;
        op[0..4].copy_from_slice(&valid.to_ne_bytes());
        op[16..24].copy_from_slice(&77u64.to_ne_bytes());
        op[68..72].copy_from_slice(&0o600u32.to_ne_bytes());
        op[76..80].copy_from_slice(&1000u32.to_ne_bytes());
        let a = setattr(&op);
        assert_eq!(a.mode, Some(0o600));
        assert_eq!(a.size, Some(77));
        assert_eq!(a.uid, None);
        assert_eq!(a.atime.map(|t| t.tv_nsec), None);
        assert_eq!(a.mtime.map(|t| t.tv_nsec), Some(sys::UTIME_NOW));
    }
}
