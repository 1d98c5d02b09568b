//! POSIX ACLs in the form the `system.posix_acl_*` xattrs hold them: a little-endian
//! version word (2), then one `{tag: u16, perm: u16, id: u32}` entry per ACL entry.
//!
//! The kernel caches and enforces ACLs on the mount (`FUSE_POSIX_ACL`), and the layer's
//! own filesystem keeps mode and ACL in step on chmod and setxattr. What is left to the
//! overlay is the mode of an object created under a default ACL, and, with
//! `uidmapping=`/`gidmapping=`, the ids inside ACL entries.
//!
//! Id translation ([`map_ids`]): named-user and named-group entries carry ids, which are
//! translated like owners — on-disk ids to inside ids on getxattr (an id outside every
//! range becomes the overflow id 65534, as an unmapped owner does), inside ids to on-disk
//! ids on setxattr (an id outside every range is EINVAL, as a chown to it is). The
//! translation never changes the value's length, so a size query answers the same length
//! the value read afterwards has.
//!
//! The `squash_*` options do not touch ACL entries. Squashing reports every *owner* as one
//! id and never changes what is written; an entry names some other user or group, and
//! squashing all of them to one id would merge distinct entries into duplicates (an ACL
//! setfacl could no longer write back) and hand their permissions to the squash id. So
//! entries go through the id mapping only, and a squash-only mount passes them unchanged.
//!
//! Under a mapping, a value that is not a well-formed ACL is refused rather than passed
//! on: from a caller (setxattr) EINVAL; on disk (getxattr) EIO, as its ids cannot be
//! translated and the kernel, which parses it to enforce it, would refuse it anyway.
//! Without ranges values are not parsed at all.

use std::ffi::OsStr;

pub const ACCESS: &str = "system.posix_acl_access";
pub const DEFAULT: &str = "system.posix_acl_default";

pub fn access() -> &'static OsStr {
    OsStr::new(ACCESS)
}

pub fn default() -> &'static OsStr {
    OsStr::new(DEFAULT)
}

/// Whether xattr `name` holds an ACL in the `posix_acl_xattr` form.
pub fn is_acl(name: &OsStr) -> bool {
    name == access() || name == default()
}

const VERSION: u32 = 2;
const ENTRY: usize = 8;

const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;

/// The mode of an object created with `mode` in a directory whose default ACL is
/// `default_acl`: each permission class keeps only what the ACL's matching entry grants
/// (the group class is limited by the mask entry when there is one), and the umask plays
/// no part (POSIX.1e; what the kernel's `posix_acl_create` does). Bits above 0o777 pass
/// through. `None` when the value is not a well-formed ACL.
pub fn inherited_mode(default_acl: &[u8], mode: u32) -> Option<u32> {
    let body = default_acl.strip_prefix(&VERSION.to_le_bytes())?;
    if body.len() % ENTRY != 0 {
        return None;
    }
    let (mut user_obj, mut group_obj, mut mask, mut other) = (None, None, None, None);
    for e in body.chunks_exact(ENTRY) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        let perm = u32::from(u16::from_le_bytes([e[2], e[3]]) & 0o7);
        match tag {
            USER_OBJ => user_obj = Some(perm),
            GROUP_OBJ => group_obj = Some(perm),
            MASK => mask = Some(perm),
            OTHER => other = Some(perm),
            USER | GROUP => {}
            _ => return None,
        }
    }
    let group = mask.or(group_obj)?;
    let allowed = (user_obj? << 6) | (group << 3) | other?;
    Some((mode & !0o777) | (mode & allowed))
}

/// Why an ACL value could not be translated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapError {
    /// Not an ACL: wrong version word, a length that is not whole entries, an unknown tag.
    Malformed,
    /// An entry names an id the translation has no image for.
    Unmapped,
}

/// `value` with the id of every named-user entry passed through `uid` and of every
/// named-group entry through `gid`; the other entries (owner, owning group, mask, other)
/// carry no id and are copied as they are. Same length as `value`.
pub fn map_ids(
    value: &[u8],
    uid: impl Fn(u32) -> Option<u32>,
    gid: impl Fn(u32) -> Option<u32>,
) -> Result<Vec<u8>, MapError> {
    let body = value
        .strip_prefix(&VERSION.to_le_bytes())
        .ok_or(MapError::Malformed)?;
    if body.len() % ENTRY != 0 {
        return Err(MapError::Malformed);
    }
    let mut out = Vec::with_capacity(value.len());
    out.extend_from_slice(&VERSION.to_le_bytes());
    for e in body.chunks_exact(ENTRY) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        let id = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
        let id = match tag {
            USER => uid(id).ok_or(MapError::Unmapped)?,
            GROUP => gid(id).ok_or(MapError::Unmapped)?,
            USER_OBJ | GROUP_OBJ | MASK | OTHER => id,
            _ => return Err(MapError::Malformed),
        };
        out.extend_from_slice(&e[..4]);
        out.extend_from_slice(&id.to_le_bytes());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let mut v = VERSION.to_le_bytes().to_vec();
        for (tag, perm, id) in entries {
            v.extend_from_slice(&tag.to_le_bytes());
            v.extend_from_slice(&perm.to_le_bytes());
            v.extend_from_slice(&id.to_le_bytes());
        }
        v
    }

    const NO_ID: u32 = u32::MAX;

    #[test]
    fn mask_limits_the_group_class() {
        // setfacl -d -m u:1000:rwx,g::rx,o::r (setfacl adds u::rwx and m::rwx).
        let d = acl(&[
            (USER_OBJ, 7, NO_ID),
            (USER, 7, 1000),
            (GROUP_OBJ, 5, NO_ID),
            (MASK, 7, NO_ID),
            (OTHER, 4, NO_ID),
        ]);
        assert_eq!(inherited_mode(&d, 0o666), Some(0o664));
        assert_eq!(inherited_mode(&d, 0o777), Some(0o774));
        assert_eq!(inherited_mode(&d, 0o2755), Some(0o2754));
        let narrow = acl(&[
            (USER_OBJ, 6, NO_ID),
            (USER, 7, 1000),
            (GROUP_OBJ, 7, NO_ID),
            (MASK, 1, NO_ID),
            (OTHER, 0, NO_ID),
        ]);
        assert_eq!(inherited_mode(&narrow, 0o777), Some(0o610));
    }

    #[test]
    fn without_mask_the_group_entry_limits() {
        let d = acl(&[
            (USER_OBJ, 7, NO_ID),
            (GROUP_OBJ, 5, NO_ID),
            (OTHER, 0, NO_ID),
        ]);
        assert_eq!(inherited_mode(&d, 0o777), Some(0o750));
        assert_eq!(inherited_mode(&d, 0o1777), Some(0o1750));
    }

    #[test]
    fn malformed_values() {
        assert_eq!(inherited_mode(&[], 0o777), None);
        assert_eq!(inherited_mode(&1u32.to_le_bytes(), 0o777), None);
        let mut short = acl(&[(USER_OBJ, 7, NO_ID), (GROUP_OBJ, 5, NO_ID), (OTHER, 0, 0)]);
        short.pop();
        assert_eq!(inherited_mode(&short, 0o777), None);
        let no_other = acl(&[(USER_OBJ, 7, NO_ID), (GROUP_OBJ, 5, NO_ID)]);
        assert_eq!(inherited_mode(&no_other, 0o777), None);
        let bad_tag = acl(&[
            (USER_OBJ, 7, NO_ID),
            (GROUP_OBJ, 5, NO_ID),
            (OTHER, 0, NO_ID),
            (0x40, 7, NO_ID),
        ]);
        assert_eq!(inherited_mode(&bad_tag, 0o777), None);
    }

    fn shift(by: u32) -> impl Fn(u32) -> Option<u32> {
        move |id| id.checked_add(by)
    }

    #[test]
    fn map_ids_translates_named_entries_only() {
        let a = acl(&[
            (USER_OBJ, 6, NO_ID),
            (USER, 4, 1000),
            (GROUP_OBJ, 4, NO_ID),
            (GROUP, 6, 7),
            (MASK, 6, NO_ID),
            (OTHER, 0, NO_ID),
        ]);
        let out = map_ids(&a, shift(100000), shift(200000)).unwrap();
        assert_eq!(out.len(), a.len());
        assert_eq!(
            out,
            acl(&[
                (USER_OBJ, 6, NO_ID),
                (USER, 4, 101000),
                (GROUP_OBJ, 4, NO_ID),
                (GROUP, 6, 200007),
                (MASK, 6, NO_ID),
                (OTHER, 0, NO_ID),
            ])
        );
        let back = map_ids(&out, |u| u.checked_sub(100000), |g| g.checked_sub(200000));
        assert_eq!(back, Ok(a));
    }

    #[test]
    fn map_ids_without_entries() {
        let empty = VERSION.to_le_bytes().to_vec();
        assert_eq!(map_ids(&empty, shift(1), shift(1)), Ok(empty));
    }

    #[test]
    fn map_ids_unmapped() {
        let a = acl(&[(USER_OBJ, 6, NO_ID), (GROUP, 4, 5), (OTHER, 0, NO_ID)]);
        let none = |_| None;
        assert_eq!(map_ids(&a, none, none), Err(MapError::Unmapped));
        // The user mapping is never asked about a group entry.
        assert!(map_ids(&a, none, shift(0)).is_ok());
    }

    #[test]
    fn map_ids_malformed() {
        let ok = acl(&[(USER_OBJ, 6, NO_ID), (USER, 4, 1), (OTHER, 0, NO_ID)]);
        let mut short = ok.clone();
        short.pop();
        let mut long = ok.clone();
        long.push(0);
        let mut v1 = ok.clone();
        v1[0] = 1;
        let bad_tag = acl(&[(USER_OBJ, 6, NO_ID), (0x40, 4, 1)]);
        for bad in [&[][..], &[2, 0], &short, &long, &v1, &bad_tag] {
            assert_eq!(
                map_ids(bad, shift(1), shift(1)),
                Err(MapError::Malformed),
                "{bad:?}"
            );
        }
    }
}
