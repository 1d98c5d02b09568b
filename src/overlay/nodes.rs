//! The node table: FUSE node ids for the objects of the merged tree, their names (a hard
//! link has several), where each lives in the stack, and the inode numbers reported for them.

use std::ffi::{OsStr, OsString};
use std::hash::{BuildHasher, RandomState};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use hashbrown::hash_table::{Entry, HashTable};
use smallvec::SmallVec;

use super::copy_up::index_name;

pub const ROOT: u64 = 1;

/// A name in the merged tree. Shared between a node's aliases and its directory's
/// name table, so each name is stored once.
pub type Name = Arc<OsStr>;

/// A place in a lower layer: the layer's index in the lower list (0 = top-most) and the
/// path inside it (the redirect resolver's type, so lookups hand places over as they are).
pub type LowerRef = crate::layers::redirect::Place;

/// One object of the merged tree. Kept small: a stack of a million entries holds a
/// million of these once `find` has walked it.
#[derive(Debug)]
pub struct Node {
    /// The names this object has in the merged tree, as (parent node, name). A directory
    /// has one; a hard-linked file may have several; an unlinked file none.
    aliases: SmallVec<[(u64, Name); 1]>,
    /// For a directory: the lower directories merged below it, top-most first.
    pub lower_dirs: Box<[LowerRef]>,
    /// `st_ino` reported to callers: fixed at first sight, kept through copy-up.
    pub st_ino: u64,
    /// Set when the last name goes while the file is still open, so fstat keeps working.
    pub pinned: Option<Arc<OwnedFd>>,
    /// Lookups the kernel holds; atomic so that a repeated lookup needs only the shared lock.
    lookups: AtomicU64,
    /// `S_IFMT` bits.
    pub kind: u32,
    /// FUSE generation: distinguishes objects that reused one inode number.
    pub generation: u32,
    /// For a non-directory not in the upper layer: the lower layer holding its data. Its
    /// path there is not stored: it is its first name in its parent's lower directory of
    /// that layer (see `Tree::lower_of`).
    pub lower_layer: Option<u16>,
    /// Present in the upper layer under its (first) name.
    pub upper: bool,
    /// A file whose lower inode has several links: its copy lives in the workdir index,
    /// named by `st_ino` (`index_name`), and all its names share it.
    pub indexed: bool,
    /// Known, when found, to have its data in a lower inode with one link: it never needs
    /// the index (false: unknown, look).
    pub single_lower_link: bool,
    /// What the lower object it is read from has in xattrs (`XATTRS_*`), learnt at the
    /// first xattr request; meaningful only while it is read from a lower layer, which
    /// never changes while mounted.
    pub lower_xattrs: AtomicU8,
}

/// `Node::lower_xattrs`: not asked yet, none but the overlay's own, some.
pub const XATTRS_UNKNOWN: u8 = 0;
pub const XATTRS_NONE: u8 = 1;
pub const XATTRS_SOME: u8 = 2;

impl Node {
    pub fn new(kind: u32, st_ino: u64) -> Node {
        Node {
            aliases: SmallVec::new(),
            lower_dirs: Box::default(),
            st_ino,
            pinned: None,
            lookups: AtomicU64::new(0),
            kind,
            generation: 0,
            lower_layer: None,
            upper: false,
            indexed: false,
            single_lower_link: false,
            lower_xattrs: AtomicU8::new(XATTRS_UNKNOWN),
        }
    }

    pub fn is_dir(&self) -> bool {
        self.kind == libc::S_IFDIR
    }

    /// Lookups the kernel still holds.
    pub fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::Relaxed)
    }

    /// The node's names, as (parent, name); the first is the one its upper path uses.
    pub fn aliases(&self) -> &[(u64, Name)] {
        &self.aliases
    }

    /// The workdir index entry of an indexed hard link.
    pub fn index(&self) -> Option<std::ffi::OsString> {
        self.indexed.then(|| index_name(self.st_ino))
    }

    fn has_alias(&self, parent: u64, name: &OsStr) -> bool {
        self.aliases
            .iter()
            .any(|(p, n)| *p == parent && **n == *name)
    }
}

/// Nodes and their names. A node's id is the inode number reported for it (fuser answers
/// the kernel with `attr.ino` as the node id), so all names of one inode meet in one node.
/// Guarded by the overlay's namespace lock.
///
/// The tables hold small slots: `nodes` boxed nodes found by id, `names` (hash, child id)
/// found by (parent, name), the name itself being read from the child's aliases. So a
/// name is stored once, and an entry of `names` is valid only while its node has that
/// alias: entries go before the alias does.
pub struct Tree {
    nodes: HashTable<Box<Node>>,
    names: HashTable<(u64, u64)>,
    hasher: RandomState,
    /// Bumped when an inode number comes back for a different object while the kernel
    /// may still know the old one (an upper inode freed and reused).
    next_generation: u32,
}

impl Tree {
    pub fn new(root: Node) -> Tree {
        let mut tree = Tree {
            nodes: HashTable::new(),
            names: HashTable::new(),
            hasher: RandomState::new(),
            next_generation: 1,
        };
        let mut root = root;
        root.st_ino = ROOT;
        root.lookups = AtomicU64::new(1);
        tree.put(root);
        tree
    }

    fn id_hash(&self, id: u64) -> u64 {
        self.hasher.hash_one(id)
    }

    fn name_hash(&self, parent: u64, name: &OsStr) -> u64 {
        self.hasher.hash_one((parent, name))
    }

    /// Adds `node` under its id, replacing a node of the same id.
    fn put(&mut self, node: Node) {
        let hash = self.id_hash(node.st_ino);
        let hasher = &self.hasher;
        match self.nodes.entry(
            hash,
            |n| n.st_ino == node.st_ino,
            |n| hasher.hash_one(n.st_ino),
        ) {
            Entry::Occupied(mut e) => **e.get_mut() = node,
            Entry::Vacant(e) => {
                e.insert(Box::new(node));
            }
        }
    }

    pub fn get(&self, id: u64) -> Option<&Node> {
        self.nodes
            .find(self.id_hash(id), |n| n.st_ino == id)
            .map(|n| &**n)
    }

    pub fn get_mut(&mut self, id: u64) -> Option<&mut Node> {
        let hash = self.id_hash(id);
        self.nodes
            .find_mut(hash, |n| n.st_ino == id)
            .map(|n| &mut **n)
    }

    pub fn child(&self, parent: u64, name: &OsStr) -> Option<u64> {
        let hash = self.name_hash(parent, name);
        self.names
            .find(hash, |&(h, cid)| {
                h == hash && holds(&self.nodes, &self.hasher, cid, parent, name)
            })
            .map(|&(_, id)| id)
    }

    /// Where the data of a node not yet in the upper layer is: a directory's top-most
    /// lower directory, or a file's name in its parent's lower directory of its layer
    /// (a lower file is only ever reached through a parent merged from that layer; a
    /// file that moves is copied up first). A file in the upper layer has none: once
    /// copied up, its names may move away from where its lower copy was.
    pub fn lower_of(&self, id: u64) -> Option<LowerRef> {
        let node = self.get(id)?;
        if node.is_dir() {
            return node.lower_dirs.first().cloned();
        }
        if node.upper {
            return None;
        }
        let layer = usize::from(node.lower_layer?);
        let (parent, name) = node.aliases.first()?;
        let dir = self
            .get(*parent)?
            .lower_dirs
            .iter()
            .find(|l| l.layer == layer)?;
        Some(LowerRef {
            layer,
            path: dir.path.join(&**name),
        })
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
        if let Some(old) = self.get(id) {
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
            let stale = old.aliases.clone();
            node.lookups = AtomicU64::new(old.lookups.load(Ordering::Relaxed));
            node.generation = self.next_generation;
            self.next_generation = self.next_generation.wrapping_add(1).max(1);
            for (p, n) in stale {
                if self.child(p, &n) == Some(id) {
                    self.unlink_name(p, &n);
                }
            }
        }
        let name: Name = Arc::from(name);
        node.aliases.push((parent, name.clone()));
        node.lookups
            .fetch_add(u64::from(counted), Ordering::Relaxed);
        self.put(node);
        self.link_name(parent, &name, id);
        id
    }

    /// Enters `(parent, name)` -> `id`; `id` must have that alias already. A name bound to
    /// another node is rebound.
    fn link_name(&mut self, parent: u64, name: &OsStr, id: u64) {
        let hash = self.name_hash(parent, name);
        let nodes = &self.nodes;
        let hasher = &self.hasher;
        match self.names.entry(
            hash,
            |&(h, cid)| h == hash && holds(nodes, hasher, cid, parent, name),
            |&(h, _)| h,
        ) {
            Entry::Occupied(mut e) => e.get_mut().1 = id,
            Entry::Vacant(e) => {
                e.insert((hash, id));
            }
        }
    }

    fn unlink_name(&mut self, parent: u64, name: &OsStr) -> Option<u64> {
        let hash = self.name_hash(parent, name);
        let nodes = &self.nodes;
        let hasher = &self.hasher;
        let entry = self.names.find_entry(hash, |&(h, cid)| {
            h == hash && holds(nodes, hasher, cid, parent, name)
        });
        entry.ok().map(|e| e.remove().0 .1)
    }

    /// Counts one more lookup of a name the table already has; the shared lock suffices.
    pub fn count_lookup(&self, id: u64) {
        if let Some(node) = self.get(id) {
            node.lookups.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records one more lookup of `id` reached as `name` in `parent`.
    pub fn add_lookup(&mut self, id: u64, parent: u64, name: &OsStr) {
        self.count_lookup(id);
        self.add_alias(id, parent, name);
    }

    /// Adds a name to an existing node (link) without counting a lookup.
    pub fn add_alias(&mut self, id: u64, parent: u64, name: &OsStr) {
        let Some(node) = self.get_mut(id) else {
            return;
        };
        if !node.has_alias(parent, name) {
            node.aliases.push((parent, Arc::from(name)));
        }
        self.link_name(parent, name, id);
    }

    /// Forgets the name `name` in `parent` (after unlink, rmdir, or being renamed over).
    pub fn remove_name(&mut self, parent: u64, name: &OsStr) -> Option<u64> {
        let id = self.unlink_name(parent, name)?;
        if let Some(node) = self.get_mut(id) {
            node.aliases
                .retain(|(p, n)| !(*p == parent && **n == *name));
        }
        Some(id)
    }

    /// Moves the name `(parent, name)` of its node to `(newparent, newname)`.
    pub fn rename(&mut self, parent: u64, name: &OsStr, newparent: u64, newname: &OsStr) {
        let Some(id) = self.unlink_name(parent, name) else {
            return;
        };
        // The target name's entry goes first: it may belong to another node.
        self.unlink_name(newparent, newname);
        if let Some(node) = self.get_mut(id) {
            let newname: Name = Arc::from(newname);
            for a in node.aliases.iter_mut() {
                if a.0 == parent && *a.1 == *name {
                    *a = (newparent, newname.clone());
                }
            }
        }
        self.link_name(newparent, newname, id);
    }

    /// Makes `(parent, name)`, one of the names of `id`, its first: the one its upper
    /// path goes through.
    pub fn make_first_alias(&mut self, id: u64, parent: u64, name: &OsStr) {
        if let Some(n) = self.get_mut(id) {
            if let Some(i) = n
                .aliases
                .iter()
                .position(|(p, nm)| *p == parent && **nm == *name)
            {
                let a = n.aliases.remove(i);
                n.aliases.insert(0, a);
            }
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
        let node = self.get(id)?;
        let left = node.lookups.load(Ordering::Relaxed).saturating_sub(n);
        node.lookups.store(left, Ordering::Relaxed);
        if left > 0 {
            return None;
        }
        // Names first: their entries are found through the node's aliases.
        for (p, name) in node.aliases.clone() {
            if self.child(p, &name) == Some(id) {
                self.unlink_name(p, &name);
            }
        }
        let hash = self.id_hash(id);
        let node = self
            .nodes
            .find_entry(hash, |n| n.st_ino == id)
            .ok()?
            .remove()
            .0;
        Some(*node)
    }

    /// Gives back the tables' spare room after the kernel forgot many nodes.
    pub fn shrink(&mut self) {
        let hasher = &self.hasher;
        self.nodes.shrink_to_fit(|n| hasher.hash_one(n.st_ino));
        self.names.shrink_to_fit(|&(h, _)| h);
    }

    /// The node's path from the root of the merged tree, through its first name.
    /// `None` once it has no name left.
    pub fn path(&self, id: u64) -> Option<PathBuf> {
        let mut names: Vec<&OsStr> = Vec::new();
        let mut cur = id;
        while cur != ROOT {
            let node = self.get(cur)?;
            let (parent, name) = node.aliases.first()?;
            names.push(name);
            cur = *parent;
        }
        // One allocation of the final size: in a deep tree this runs on every request
        // with a path thousands of components long.
        let len = names.iter().map(|n| n.len() + 1).sum::<usize>();
        let mut p = Vec::with_capacity(len);
        for n in names.iter().rev() {
            if !p.is_empty() {
                p.push(b'/');
            }
            p.extend_from_slice(n.as_bytes());
        }
        Some(PathBuf::from(OsString::from_vec(p)))
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

/// Whether node `id` has the name `(parent, name)`.
fn holds(
    nodes: &HashTable<Box<Node>>,
    hasher: &RandomState,
    id: u64,
    parent: u64,
    name: &OsStr,
) -> bool {
    nodes
        .find(hasher.hash_one(id), |n| n.st_ino == id)
        .is_some_and(|n| n.has_alias(parent, name))
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
    fn exchanged_names_follow_their_nodes() {
        let mut t = Tree::new(Node::new(libc::S_IFDIR, ROOT));
        let d = t.insert(ROOT, OsStr::new("d1"), Node::new(libc::S_IFDIR, 2), 2, true);
        let c = t.insert(ROOT, OsStr::new("c"), Node::new(libc::S_IFREG, 3), 1, true);
        t.remove_name(ROOT, OsStr::new("d1"));
        t.remove_name(ROOT, OsStr::new("c"));
        t.add_alias(d, ROOT, OsStr::new("c"));
        t.add_alias(c, ROOT, OsStr::new("d1"));
        t.make_first_alias(d, ROOT, OsStr::new("c"));
        assert_eq!(t.child(ROOT, OsStr::new("d1")), Some(c));
        assert_eq!(t.child(ROOT, OsStr::new("c")), Some(d));
        assert_eq!(t.path(c), Some(PathBuf::from("d1")));
        assert!(t.forget(d, 1).is_some());
        assert_eq!(t.child(ROOT, OsStr::new("c")), None);
        assert_eq!(t.child(ROOT, OsStr::new("d1")), Some(c));
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
}
