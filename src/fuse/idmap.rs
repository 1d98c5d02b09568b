//! Owner translation at the FUSE boundary: `uidmapping=`/`gidmapping=`, `squash_to_root`,
//! `squash_to_uid=`, `squash_to_gid=` (the fuse-overlayfs options of the same names).
//!
//! Two id spaces meet here: the ids callers see through the mount ("inside") and the ids
//! stored on the layer directories ("on disk"). A mapping range `FROM:TO:LEN` says on-disk
//! ids `FROM..FROM+LEN` are shown as inside ids `TO..TO+LEN`: fuse-overlayfs's meaning
//! (its `find_mapping`: `host` is FROM, `to` is TO), which containers-storage relies on
//! when it passes `uidmapping=ContainerID:HostID:Size` to its mount program. When ranges
//! overlap, the last one given wins, as in fuse-overlayfs (it keeps them in a list built
//! by prepending). Attributes going out are translated
//! disk -> inside (then squashed); caller ids and chown targets coming in are translated
//! inside -> disk. Squashing only changes what is reported, never what is written, as in
//! fuse-overlayfs.
//!
//! Unmapped ids: an on-disk id outside every range is reported as the overflow id (65534,
//! what the kernel shows for an unmapped id in a user namespace). An inside id outside
//! every range is written as the overflow id too (a create by such a caller, a chown to
//! such an id), as fuse-overlayfs does: podman's own root, outside a `--uidmap 0:1:N`
//! range, creates files such as /etc/mtab through the mount before the container starts.
//! ACL entries are stricter (`acl_in`): an entry naming an unmapped id is refused.
//!
//! The ids inside POSIX ACL entries (`system.posix_acl_*`) go through the same ranges
//! ([`IdMap::acl_out`], [`IdMap::acl_in`]) but are never squashed; `layers/acl.rs` says why.

use std::borrow::Cow;

use crate::config::{Config, IdRange};
use crate::layers::acl::{self, MapError};

/// What the kernel reports for an id that has no mapping (`/proc/sys/kernel/overflowuid`).
pub const OVERFLOW_ID: u32 = 65534;

/// The translation for one mount; the identity when no option is given.
#[derive(Debug, Clone, Default)]
pub struct IdMap {
    uids: Vec<IdRange>,
    gids: Vec<IdRange>,
    squash_uid: Option<u32>,
    squash_gid: Option<u32>,
}

impl IdMap {
    pub fn new(config: &Config) -> IdMap {
        // squash_to_uid/gid name the id explicitly and win over squash_to_root.
        let root = config.squash_to_root.then_some(0);
        IdMap {
            uids: config.uid_mapping.clone(),
            gids: config.gid_mapping.clone(),
            squash_uid: config.squash_to_uid.or(root),
            squash_gid: config.squash_to_gid.or(root),
        }
    }

    /// True when nothing is translated (the common case; lets callers skip work).
    pub fn is_identity(&self) -> bool {
        self.uids.is_empty()
            && self.gids.is_empty()
            && self.squash_uid.is_none()
            && self.squash_gid.is_none()
    }

    /// The uid to report for on-disk uid `uid`.
    pub fn uid_out(&self, uid: u32) -> u32 {
        self.squash_uid
            .unwrap_or_else(|| to_inside(&self.uids, uid).unwrap_or(OVERFLOW_ID))
    }

    /// The gid to report for on-disk gid `gid`.
    pub fn gid_out(&self, gid: u32) -> u32 {
        self.squash_gid
            .unwrap_or_else(|| to_inside(&self.gids, gid).unwrap_or(OVERFLOW_ID))
    }

    /// An ACL value read from disk as callers see it: named-user and named-group entries
    /// translated disk -> inside (unmapped ids become the overflow id), not squashed.
    /// Without ranges the value is returned as it is, unparsed.
    pub fn acl_out(&self, value: Vec<u8>) -> Result<Vec<u8>, MapError> {
        if self.uids.is_empty() && self.gids.is_empty() {
            return Ok(value);
        }
        acl::map_ids(
            &value,
            |u| Some(to_inside(&self.uids, u).unwrap_or(OVERFLOW_ID)),
            |g| Some(to_inside(&self.gids, g).unwrap_or(OVERFLOW_ID)),
        )
    }

    /// An ACL value from a caller as it is stored: entries translated inside -> disk;
    /// `Unmapped` when an entry names an inside id outside every range.
    pub fn acl_in<'a>(&self, value: &'a [u8]) -> Result<Cow<'a, [u8]>, MapError> {
        if self.uids.is_empty() && self.gids.is_empty() {
            return Ok(Cow::Borrowed(value));
        }
        acl::map_ids(value, |u| self.uid_in(u), |g| self.gid_in(g)).map(Cow::Owned)
    }

    /// The on-disk uid for inside uid `uid`; `None` when it has no mapping.
    pub fn uid_in(&self, uid: u32) -> Option<u32> {
        to_disk(&self.uids, uid)
    }

    /// The on-disk gid for inside gid `gid`; `None` when it has no mapping.
    pub fn gid_in(&self, gid: u32) -> Option<u32> {
        to_disk(&self.gids, gid)
    }
}

/// Disk -> inside: the last range whose on-disk part (`from..`) holds `id`. No ranges is
/// the identity.
fn to_inside(ranges: &[IdRange], id: u32) -> Option<u32> {
    if ranges.is_empty() {
        return Some(id);
    }
    ranges
        .iter()
        .rev()
        .find(|r| within(id, r.from, r.len))
        .map(|r| r.to + (id - r.from))
}

/// Inside -> disk: the last range whose shown part (`to..`) holds `id`. No ranges is the
/// identity.
fn to_disk(ranges: &[IdRange], id: u32) -> Option<u32> {
    if ranges.is_empty() {
        return Some(id);
    }
    ranges
        .iter()
        .rev()
        .find(|r| within(id, r.to, r.len))
        .map(|r| r.from + (id - r.to))
}

fn within(id: u32, start: u32, len: u32) -> bool {
    id >= start && u64::from(id) < u64::from(start) + u64::from(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn config() -> Config {
        Config::new(vec![PathBuf::from("/l")], PathBuf::from("/m"))
    }

    #[test]
    fn identity_without_options() {
        let m = IdMap::new(&config());
        assert!(m.is_identity());
        assert_eq!(m.uid_out(1234), 1234);
        assert_eq!(m.gid_in(0), Some(0));
    }

    #[test]
    fn ranges_translate_both_ways() {
        let mut c = config();
        c.uid_mapping = vec![
            IdRange {
                from: 1000,
                to: 0,
                len: 1,
            },
            IdRange {
                from: 100000,
                to: 1,
                len: 65536,
            },
        ];
        c.gid_mapping = vec![IdRange {
            from: 2000,
            to: 0,
            len: 10,
        }];
        let m = IdMap::new(&c);
        assert!(!m.is_identity());
        assert_eq!(m.uid_out(1000), 0);
        assert_eq!(m.uid_out(100000), 1);
        assert_eq!(m.uid_out(165535), 65536);
        assert_eq!(m.uid_out(165536), OVERFLOW_ID);
        assert_eq!(m.uid_out(5), OVERFLOW_ID);
        assert_eq!(m.uid_in(0), Some(1000));
        assert_eq!(m.uid_in(2), Some(100001));
        assert_eq!(m.uid_in(65537), None);
        assert_eq!(m.gid_out(2009), 9);
        assert_eq!(m.gid_out(2010), OVERFLOW_ID);
        assert_eq!(m.gid_in(9), Some(2009));
        assert_eq!(m.gid_in(10), None);
    }

    #[test]
    fn range_at_the_top_of_the_id_space() {
        let mut c = config();
        c.uid_mapping = vec![IdRange {
            from: u32::MAX - 1,
            to: 0,
            len: 2,
        }];
        let m = IdMap::new(&c);
        assert_eq!(m.uid_out(u32::MAX), 1);
        assert_eq!(m.uid_in(1), Some(u32::MAX));
    }

    /// fuse-overlayfs's example: `uidmapping=0:1000:1` shows on-disk 0 as 1000; with
    /// overlapping ranges the last one given wins (Debian's fuse-overlayfs 1.10 shows on-disk
    /// 0 as 2000 under `uidmapping=0:1000:1:0:2000:1`).
    #[test]
    fn from_is_on_disk_and_the_last_range_wins() {
        let mut c = config();
        let r = |from, to, len| IdRange { from, to, len };
        c.uid_mapping = vec![r(0, 1000, 1)];
        let m = IdMap::new(&c);
        assert_eq!(m.uid_out(0), 1000);
        assert_eq!(m.uid_out(1000), OVERFLOW_ID);
        assert_eq!(m.uid_in(1000), Some(0));
        assert_eq!(m.uid_in(0), None);
        c.uid_mapping = vec![r(0, 1000, 1), r(0, 2000, 1)];
        let m = IdMap::new(&c);
        assert_eq!(m.uid_out(0), 2000);
        assert_eq!(m.uid_in(2000), Some(0));
        assert_eq!(m.uid_in(1000), Some(0));
    }

    #[test]
    fn squash_changes_only_what_is_reported() {
        let mut c = config();
        c.squash_to_root = true;
        let m = IdMap::new(&c);
        assert_eq!((m.uid_out(1000), m.gid_out(1000)), (0, 0));
        assert_eq!(m.uid_in(1000), Some(1000));

        c.squash_to_uid = Some(7);
        let m = IdMap::new(&c);
        assert_eq!((m.uid_out(1000), m.gid_out(1000)), (7, 0));

        let mut c = config();
        c.squash_to_gid = Some(8);
        let m = IdMap::new(&c);
        assert_eq!((m.uid_out(1000), m.gid_out(1000)), (1000, 8));
    }

    fn entry(tag: u16, id: u32) -> Vec<u8> {
        let mut v = 2u32.to_le_bytes().to_vec();
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&4u16.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
        v
    }

    #[test]
    fn acl_entries_are_mapped_not_squashed() {
        const USER: u16 = 0x02;
        const GROUP: u16 = 0x08;
        let mut c = config();
        c.uid_mapping = vec![IdRange {
            from: 100000,
            to: 0,
            len: 65536,
        }];
        c.gid_mapping = c.uid_mapping.clone();
        c.squash_to_root = true;
        let m = IdMap::new(&c);
        assert_eq!(m.acl_out(entry(USER, 101000)), Ok(entry(USER, 1000)));
        assert_eq!(m.acl_out(entry(GROUP, 100005)), Ok(entry(GROUP, 5)));
        assert_eq!(m.acl_out(entry(USER, 1000)), Ok(entry(USER, OVERFLOW_ID)));
        assert_eq!(m.acl_in(&entry(USER, 1000)).unwrap(), entry(USER, 101000));
        assert_eq!(m.acl_in(&entry(GROUP, 70000)), Err(MapError::Unmapped));
        assert_eq!(m.acl_in(&[2, 0, 0, 0, 2]), Err(MapError::Malformed));
        assert_eq!(m.acl_out(vec![1]), Err(MapError::Malformed));

        // Squash only: entries untouched, not even parsed.
        let mut c = config();
        c.squash_to_uid = Some(7);
        let m = IdMap::new(&c);
        assert_eq!(m.acl_out(entry(USER, 1000)), Ok(entry(USER, 1000)));
        assert_eq!(m.acl_out(vec![9]), Ok(vec![9]));
        assert_eq!(m.acl_in(&entry(USER, 1000)).unwrap(), entry(USER, 1000));
    }
}
