//! POSIX ACLs in the form the `system.posix_acl_*` xattrs hold them: a little-endian
//! version word (2), then one `{tag: u16, perm: u16, id: u32}` entry per ACL entry.
//!
//! The kernel caches and enforces ACLs on the mount (`FUSE_POSIX_ACL`), and the layer's
//! own filesystem keeps mode and ACL in step on chmod and setxattr. What is left to the
//! overlay is the one rule it must apply itself: the mode of an object created under a
//! default ACL.

use std::ffi::OsStr;

pub const ACCESS: &str = "system.posix_acl_access";
pub const DEFAULT: &str = "system.posix_acl_default";

pub fn access() -> &'static OsStr {
    OsStr::new(ACCESS)
}

pub fn default() -> &'static OsStr {
    OsStr::new(DEFAULT)
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
}
