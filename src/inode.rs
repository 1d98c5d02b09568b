//! The node table: FUSE node ids for the objects of the merged tree, their names (a hard
//! link has several), where each lives in the stack, and the inode numbers reported for them.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub const ROOT: u64 = 1;

/// A place in a lower layer: the layer's index in the lower list (0 = top-most) and the
/// path inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LowerRef {
    pub layer: usize,
    pub path: PathBuf,
}

#[derive(Debug)]
pub struct Node {
    /// The names this object has in the merged tree, as (parent node, name). A directory
    /// has one; a hard-linked file may have several; an unlinked file none.
    pub aliases: Vec<(u64, OsString)>,
    /// `S_IFMT` bits.
    pub kind: u32,
    /// Present in the upper layer under its (first) name.
    pub upper: bool,
    /// Top-most lower occurrence: the data of a file not yet copied up.
    pub lower: Option<LowerRef>,
    /// For a directory: the lower directories merged below it, top-most first.
    pub lower_dirs: Vec<LowerRef>,
    /// `st_ino` reported to callers: fixed at first sight, kept through copy-up.
    pub st_ino: u64,
    /// For a lower file with several hard links: its entry in the workdir index, where the
    /// copied-up inode that all its names share is kept.
    pub index: Option<OsString>,
    /// Set when the last name goes while the file is still open, so fstat keeps working.
    pub pinned: Option<Arc<OwnedFd>>,
    /// FUSE generation: distinguishes objects that reused one inode number.
    pub generation: u64,
    /// Lookups the kernel holds; atomic so that a repeated lookup needs only the shared lock.
    lookups: AtomicU64,
}

impl Node {
    pub fn new(kind: u32, st_ino: u64) -> Node {
        Node {
            aliases: Vec::new(),
            kind,
            upper: false,
            lower: None,
            lower_dirs: Vec::new(),
            st_ino,
            index: None,
            pinned: None,
            generation: 0,
            lookups: AtomicU64::new(0),
        }
    }

    pub fn is_dir(&self) -> bool {
        self.kind == libc::S_IFDIR
    }

    /// Lookups the kernel still holds.
    pub fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::Relaxed)
    }
}

/// Nodes and their names. A node's id is the inode number reported for it (fuser answers
/// the kernel with `attr.ino` as the node id), so all names of one inode meet in one node.
/// Guarded by the overlay's namespace lock.
pub struct Tree {
    nodes: HashMap<u64, Node>,
    /// Names in each directory: parent id -> name -> child id.
    dentries: HashMap<u64, HashMap<OsString, u64>>,
    /// Bumped when an inode number comes back for a different object while the kernel
    /// may still know the old one (an upper inode freed and reused).
    next_generation: u64,
}

impl Tree {
    pub fn new(root: Node) -> Tree {
        let mut nodes = HashMap::new();
        let mut root = root;
        root.lookups = AtomicU64::new(1);
        nodes.insert(ROOT, root);
        Tree {
            nodes,
            dentries: HashMap::new(),
            next_generation: 1,
        }
    }

    pub fn get(&self, id: u64) -> Option<&Node> {
        self.nodes.get(&id)
    }

    pub fn get_mut(&mut self, id: u64) -> Option<&mut Node> {
        self.nodes.get_mut(&id)
    }

    pub fn child(&self, parent: u64, name: &OsStr) -> Option<u64> {
        self.dentries.get(&parent)?.get(name).copied()
    }

    /// Adds the object `node` (id `node.st_ino`) named `name` in `parent`; `nlink` is the
    /// object's link count on its layer. A live node of that id is the same object seen
    /// through another name only if that can be a hard link: a non-directory of the same
    /// type with more than one link. Anything else is a dead object whose inode number the
    /// layer's filesystem reused: it is replaced, with a new generation so that the kernel
    /// drops what it still holds of the old one.
    /// `counted`: whether the kernel learns of the node now (a lookup it will forget).
    pub fn insert(
        &mut self,
        parent: u64,
        name: &OsStr,
        mut node: Node,
        nlink: u64,
        counted: bool,
    ) -> u64 {
        let id = node.st_ino;
        if let Some(old) = self.nodes.get(&id) {
            let live = !old.aliases.is_empty() || old.pinned.is_some();
            let hard_link = old.kind == node.kind && old.kind != libc::S_IFDIR && nlink > 1;
            if live && hard_link {
                if counted {
                    self.add_lookup(id, parent, name);
                } else {
                    self.add_alias(id, parent, name);
                }
                return id;
            }
            let stale: Vec<(u64, OsString)> = old.aliases.clone();
            node.lookups = AtomicU64::new(old.lookups.load(Ordering::Relaxed));
            node.generation = self.next_generation;
            self.next_generation += 1;
            for (p, n) in stale {
                if self.child(p, &n) == Some(id) {
                    self.unlink_name(p, &n);
                }
            }
        }
        node.aliases.push((parent, name.to_os_string()));
        node.lookups
            .fetch_add(u64::from(counted), Ordering::Relaxed);
        self.nodes.insert(id, node);
        self.link_name(parent, name.to_os_string(), id);
        id
    }

    fn link_name(&mut self, parent: u64, name: OsString, id: u64) {
        self.dentries.entry(parent).or_default().insert(name, id);
    }

    fn unlink_name(&mut self, parent: u64, name: &OsStr) -> Option<u64> {
        let children = self.dentries.get_mut(&parent)?;
        let id = children.remove(name);
        if children.is_empty() {
            self.dentries.remove(&parent);
        }
        id
    }

    /// Counts one more lookup of a name the table already has; the shared lock suffices.
    pub fn count_lookup(&self, id: u64) {
        if let Some(node) = self.nodes.get(&id) {
            node.lookups.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records one more lookup of `id` reached as `name` in `parent`.
    pub fn add_lookup(&mut self, id: u64, parent: u64, name: &OsStr) {
        let key = (parent, name.to_os_string());
        if let Some(node) = self.nodes.get_mut(&id) {
            node.lookups.fetch_add(1, Ordering::Relaxed);
            if !node.aliases.contains(&key) {
                node.aliases.push(key.clone());
            }
        }
        let (parent, name) = key;
        self.link_name(parent, name, id);
    }

    /// Adds a name to an existing node (link) without counting a lookup.
    pub fn add_alias(&mut self, id: u64, parent: u64, name: &OsStr) {
        let key = (parent, name.to_os_string());
        if let Some(node) = self.nodes.get_mut(&id) {
            if !node.aliases.contains(&key) {
                node.aliases.push(key.clone());
            }
        }
        let (parent, name) = key;
        self.link_name(parent, name, id);
    }

    /// Forgets the name `name` in `parent` (after unlink, rmdir, or being renamed over).
    pub fn remove_name(&mut self, parent: u64, name: &OsStr) -> Option<u64> {
        let key = (parent, name.to_os_string());
        let id = self.unlink_name(parent, name)?;
        if let Some(node) = self.nodes.get_mut(&id) {
            node.aliases.retain(|a| *a != key);
        }
        Some(id)
    }

    /// Moves the name `(parent, name)` of its node to `(newparent, newname)`.
    pub fn rename(&mut self, parent: u64, name: &OsStr, newparent: u64, newname: &OsStr) {
        let key = (parent, name.to_os_string());
        let newkey = (newparent, newname.to_os_string());
        if let Some(id) = self.unlink_name(parent, name) {
            if let Some(node) = self.nodes.get_mut(&id) {
                for a in node.aliases.iter_mut() {
                    if *a == key {
                        *a = newkey.clone();
                    }
                }
            }
            self.link_name(newparent, newname.to_os_string(), id);
        }
    }

    /// The kernel dropped `n` lookups of `id`; a node nobody holds any more goes, and is
    /// returned so that the caller can drop it after releasing the namespace lock: closing
    /// the last handle of an unlinked inode (`pinned`) frees the inode on its filesystem,
    /// which is slow enough to hold up every other operation waiting for the lock.
    #[must_use = "drop the removed node outside the namespace lock"]
    pub fn forget(&mut self, id: u64, n: u64) -> Option<Node> {
        if id == ROOT {
            return None;
        }
        let node = self.nodes.get_mut(&id)?;
        let left = node.lookups.load(Ordering::Relaxed).saturating_sub(n);
        node.lookups.store(left, Ordering::Relaxed);
        if left > 0 {
            return None;
        }
        let node = self.nodes.remove(&id)?;
        for a in &node.aliases {
            if self.child(a.0, &a.1) == Some(id) {
                self.unlink_name(a.0, &a.1);
            }
        }
        Some(node)
    }

    /// The node's path from the root of the merged tree, through its first name.
    /// `None` once it has no name left.
    pub fn path(&self, id: u64) -> Option<PathBuf> {
        let mut names = Vec::new();
        let mut cur = id;
        while cur != ROOT {
            let node = self.nodes.get(&cur)?;
            let (parent, name) = node.aliases.first()?;
            names.push(name.as_os_str());
            cur = *parent;
        }
        let mut p = PathBuf::new();
        for n in names.iter().rev() {
            p.push(n);
        }
        Some(p)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

/// Inode numbers reported through the mount: the layer's slot in the top 16 bits and the
/// layer's own inode number below, so two layers never collide. Slot 0 is the upper
/// layer, slot `i + 1` lower `i`. An inode number too wide for 48 bits is folded by
/// hashing, which keeps it stable but could in theory collide; ext4, tmpfs and xfs without
/// inode64 stay far below.
pub fn compose_ino(slot: usize, real: u64) -> u64 {
    const LOW: u64 = (1 << 48) - 1;
    let low = if real <= LOW {
        real
    } else {
        // Fold the high bits into the low ones (fxhash-style multiply), never 0.
        (real.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 16).max(1) & LOW
    };
    ((slot as u64 & 0xFFFF) << 48) | low
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_renames() {
        let mut t = Tree::new(Node::new(libc::S_IFDIR, ROOT));
        let a = t.insert(ROOT, OsStr::new("a"), Node::new(libc::S_IFDIR, 2), 2, true);
        let b = t.insert(a, OsStr::new("b"), Node::new(libc::S_IFREG, 3), 2, true);
        // A second name of inode 3 is the same node.
        assert_eq!(
            t.insert(ROOT, OsStr::new("b2"), Node::new(libc::S_IFREG, 3), 2, true),
            b
        );
        assert_eq!(t.remove_name(ROOT, OsStr::new("b2")), Some(b));
        assert_eq!(t.path(b), Some(PathBuf::from("a/b")));
        t.rename(ROOT, OsStr::new("a"), ROOT, OsStr::new("c"));
        assert_eq!(t.path(b), Some(PathBuf::from("c/b")));
        assert_eq!(t.child(ROOT, OsStr::new("c")), Some(a));
        assert_eq!(t.remove_name(a, OsStr::new("b")), Some(b));
        assert_eq!(t.path(b), None);
        // Looked up twice (as b and b2): gone after both are forgotten.
        assert!(t.forget(b, 2).is_some());
        assert!(t.get(b).is_none());
    }

    #[test]
    fn a_reused_inode_number_is_a_new_object() {
        let mut t = Tree::new(Node::new(libc::S_IFDIR, ROOT));
        let f = t.insert(ROOT, OsStr::new("f"), Node::new(libc::S_IFREG, 7), 1, true);
        // Number 7 comes back as a directory while the tree still names the file: the
        // file's node is stale, not a hard link.
        let d = t.insert(ROOT, OsStr::new("d"), Node::new(libc::S_IFDIR, 7), 2, true);
        assert_eq!(d, f);
        assert!(t.get(d).is_some_and(|n| n.is_dir() && n.generation > 0));
        assert_eq!(t.child(ROOT, OsStr::new("f")), None);
        // A regular file with one link cannot be a second name either.
        let g = t.insert(ROOT, OsStr::new("g"), Node::new(libc::S_IFREG, 7), 1, true);
        assert_eq!(t.child(ROOT, OsStr::new("d")), None);
        assert_eq!(t.path(g), Some(PathBuf::from("g")));
    }

    #[test]
    fn inode_numbers_keep_layers_apart() {
        assert_ne!(compose_ino(0, 5), compose_ino(1, 5));
        assert_eq!(compose_ino(2, 5), compose_ino(2, 5));
        assert_eq!(compose_ino(3, u64::MAX) >> 48, 3);
    }
}
