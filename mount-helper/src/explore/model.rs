//! The explored image as data: one compact tree of every path any layer names (names
//! interned in one byte arena, nodes as parallel index arrays), each layer's entries as a
//! sorted list of (node, kind, size), the merged view up to a layer, and each layer's
//! changes (added / changed / removed) against the view below it.
//!
//! Node ids grow as paths are inserted and a parent is always inserted before its
//! children, so `parent(n) < n`: a pass in ascending id order meets parents first, one in
//! descending order children first. Every walk is a loop over such ranges or an explicit
//! stack; none recurses.

use std::collections::hash_map::{Entry as MapEntry, HashMap, RandomState};
use std::hash::BuildHasher;

use crate::err;
use crate::error::Result;

pub type NodeId = u32;
pub const ROOT: NodeId = 0;
const NONE: u32 = u32::MAX;

/// Every path of the image, once.
pub struct Tree {
    arena: Vec<u8>,
    /// Name id -> (start, len) in `arena`.
    spans: Vec<(u32, u32)>,
    /// Name hash -> the first name id with that hash; `name_next` chains the rest.
    name_by_hash: HashMap<u64, u32>,
    name_next: Vec<u32>,
    hasher: RandomState,
    /// Node -> parent (ROOT's is NONE) and name id.
    parent: Vec<NodeId>,
    name: Vec<u32>,
    child_of: HashMap<(NodeId, u32), NodeId>,
    /// After `finish`: node n's children, sorted by name, are
    /// `children[child_start[n]..child_start[n + 1]]`.
    child_start: Vec<u32>,
    children: Vec<NodeId>,
}

impl Default for Tree {
    fn default() -> Self {
        Self::new()
    }
}

impl Tree {
    pub fn new() -> Tree {
        let mut t = Tree {
            arena: Vec::new(),
            spans: Vec::new(),
            name_by_hash: HashMap::new(),
            name_next: Vec::new(),
            hasher: RandomState::new(),
            parent: vec![NONE],
            name: vec![0],
            child_of: HashMap::new(),
            child_start: Vec::new(),
            children: Vec::new(),
        };
        // Name 0 is the root's (empty) name.
        t.intern(b"");
        t
    }

    fn intern(&mut self, s: &[u8]) -> u32 {
        let h = self.hasher.hash_one(s);
        let mut id = self.name_by_hash.get(&h).copied().unwrap_or(NONE);
        while id != NONE {
            if self.name_bytes_of(id) == s {
                return id;
            }
            id = self.name_next[id as usize];
        }
        let new = self.spans.len() as u32;
        self.spans.push((self.arena.len() as u32, s.len() as u32));
        self.arena.extend_from_slice(s);
        let prev = self.name_by_hash.insert(h, new).unwrap_or(NONE);
        self.name_next.push(prev);
        new
    }

    fn name_bytes_of(&self, id: u32) -> &[u8] {
        let (s, l) = self.spans[id as usize];
        &self.arena[s as usize..(s + l) as usize]
    }

    /// The child `name` of `parent`, created if new.
    pub fn child(&mut self, parent: NodeId, name: &[u8]) -> NodeId {
        let nid = self.intern(name);
        let next = self.parent.len() as NodeId;
        match self.child_of.entry((parent, nid)) {
            MapEntry::Occupied(o) => *o.get(),
            MapEntry::Vacant(v) => {
                v.insert(next);
                self.parent.push(parent);
                self.name.push(nid);
                next
            }
        }
    }

    /// The node of a slash-separated relative path (already cleaned: no empty, `.` or
    /// `..` components), created if new.
    pub fn insert(&mut self, comps: &[&[u8]]) -> NodeId {
        let mut n = ROOT;
        for c in comps {
            n = self.child(n, c);
        }
        n
    }

    /// Sorts every node's children by name; call once all layers are read.
    pub fn finish(&mut self) {
        let n = self.parent.len();
        let mut count = vec![0u32; n + 1];
        for &p in &self.parent[1..] {
            count[p as usize + 1] += 1;
        }
        for i in 0..n {
            count[i + 1] += count[i];
        }
        let mut fill = count.clone();
        let mut children = vec![0; n.saturating_sub(1)];
        for c in 1..n {
            let p = self.parent[c] as usize;
            children[fill[p] as usize] = c as NodeId;
            fill[p] += 1;
        }
        for p in 0..n {
            let (a, b) = (count[p] as usize, count[p + 1] as usize);
            let names = &self.name;
            let spans = &self.spans;
            let arena = &self.arena;
            children[a..b].sort_by(|&x, &y| {
                let (sx, lx) = spans[names[x as usize] as usize];
                let (sy, ly) = spans[names[y as usize] as usize];
                arena[sx as usize..(sx + lx) as usize].cmp(&arena[sy as usize..(sy + ly) as usize])
            });
        }
        self.child_start = count;
        self.children = children;
        self.child_of = HashMap::new();
    }

    pub fn len(&self) -> usize {
        self.parent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.parent.len() <= 1
    }

    pub fn parent(&self, n: NodeId) -> Option<NodeId> {
        let p = self.parent[n as usize];
        (p != NONE).then_some(p)
    }

    pub fn name(&self, n: NodeId) -> &[u8] {
        self.name_bytes_of(self.name[n as usize])
    }

    pub fn children(&self, n: NodeId) -> &[NodeId] {
        let a = self.child_start[n as usize] as usize;
        let b = self.child_start[n as usize + 1] as usize;
        &self.children[a..b]
    }

    pub fn depth(&self, mut n: NodeId) -> usize {
        let mut d = 0;
        while let Some(p) = self.parent(n) {
            d += 1;
            n = p;
        }
        d
    }

    /// `/a/b/c` (lossy UTF-8: reports and the UI are text).
    pub fn path(&self, n: NodeId) -> String {
        let mut names = Vec::new();
        let mut cur = n;
        while let Some(p) = self.parent(cur) {
            names.push(self.name(cur));
            cur = p;
        }
        if names.is_empty() {
            return "/".to_string();
        }
        let mut s = String::new();
        for nm in names.iter().rev() {
            s.push('/');
            s.push_str(&String::from_utf8_lossy(nm));
        }
        s
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    /// A second name of a file earlier in the layer's tar (its size counted there).
    HardLink,
    /// Device or FIFO.
    Other,
    /// The path is deleted from the layers below.
    Whiteout,
}

/// One path a layer names.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    pub node: NodeId,
    pub kind: Kind,
    /// A directory that hides the same directory in the layers below.
    pub opaque: bool,
    /// Content bytes (regular files only; as a tar header records them).
    pub size: u64,
}

pub struct Layer {
    pub diff_id: String,
    pub created_by: String,
    pub created: String,
    pub comment: String,
    /// Entries sorted by node (a whiteout and a new entry of one path may both be there).
    pub entries: Vec<Entry>,
    /// A root-level opaque marker: nothing below shows through.
    pub root_opaque: bool,
    /// Where the layer's symlinks point and what its hard links name (the UI shows them).
    pub targets: HashMap<NodeId, Box<[u8]>>,
    /// Sum of regular files' sizes (what dive calls a layer's size).
    pub size: u64,
}

impl Layer {
    /// The non-whiteout entry of `n` in this layer, by index.
    pub fn find(&self, n: NodeId) -> Option<usize> {
        let i = self.entries.partition_point(|e| e.node < n);
        let mut j = i;
        while j < self.entries.len() && self.entries[j].node == n {
            if self.entries[j].kind != Kind::Whiteout {
                return Some(j);
            }
            j += 1;
        }
        None
    }

    /// Whether this layer deletes `n` from the layers below.
    pub fn has_whiteout(&self, n: NodeId) -> bool {
        let i = self.entries.partition_point(|e| e.node < n);
        self.entries[i..]
            .iter()
            .take_while(|e| e.node == n)
            .any(|e| e.kind == Kind::Whiteout)
    }

    /// Whether this layer names `n` at all (whiteout included).
    pub fn names(&self, n: NodeId) -> bool {
        let i = self.entries.partition_point(|e| e.node < n);
        i < self.entries.len() && self.entries[i].node == n
    }
}

/// What a reader hands over while it walks one layer.
pub struct LayerBuilder<'t> {
    pub tree: &'t mut Tree,
    entries: Vec<Entry>,
    opaque: Vec<NodeId>,
    root_opaque: bool,
    targets: HashMap<NodeId, Box<[u8]>>,
}

impl<'t> LayerBuilder<'t> {
    pub fn new(tree: &'t mut Tree) -> LayerBuilder<'t> {
        LayerBuilder {
            tree,
            entries: Vec::new(),
            opaque: Vec::new(),
            root_opaque: false,
            targets: HashMap::new(),
        }
    }

    pub fn add(&mut self, node: NodeId, kind: Kind, size: u64) {
        if node == ROOT {
            return;
        }
        self.entries.push(Entry {
            node,
            kind,
            opaque: false,
            size: if kind == Kind::File { size } else { 0 },
        });
    }

    /// A symlink's target or the name a hard link shares its content with.
    pub fn target(&mut self, node: NodeId, target: &[u8]) {
        self.targets.insert(node, target.into());
    }

    pub fn whiteout(&mut self, node: NodeId) {
        self.add(node, Kind::Whiteout, 0);
    }

    pub fn opaque(&mut self, dir: NodeId) {
        if dir == ROOT {
            self.root_opaque = true;
        } else {
            self.opaque.push(dir);
        }
    }

    pub fn finish(self, meta: LayerMeta) -> Layer {
        let LayerBuilder {
            entries,
            opaque,
            root_opaque,
            targets,
            ..
        } = self;
        let mut entries = entries;
        // Stable: of two entries for one path, the later one (the tar's last) is kept.
        entries.sort_by_key(|e| (e.node, e.kind != Kind::Whiteout));
        let mut out: Vec<Entry> = Vec::with_capacity(entries.len());
        for e in entries {
            if let Some(last) = out.last_mut() {
                if last.node == e.node
                    && (last.kind == Kind::Whiteout) == (e.kind == Kind::Whiteout)
                {
                    *last = e;
                    continue;
                }
            }
            out.push(e);
        }
        let mut layer = Layer {
            diff_id: meta.diff_id,
            created_by: meta.created_by,
            created: meta.created,
            comment: meta.comment,
            entries: out,
            root_opaque,
            targets,
            size: 0,
        };
        // An opaque marker in a directory the tar never listed itself: the directory is
        // there all the same (as a tar extractor makes it).
        let mut extra = Vec::new();
        for d in opaque {
            match layer.find(d) {
                Some(i) if layer.entries[i].kind == Kind::Dir => layer.entries[i].opaque = true,
                Some(_) => {}
                None => extra.push(Entry {
                    node: d,
                    kind: Kind::Dir,
                    opaque: true,
                    size: 0,
                }),
            }
        }
        if !extra.is_empty() {
            layer.entries.extend(extra);
            layer
                .entries
                .sort_by_key(|e| (e.node, e.kind != Kind::Whiteout));
            layer.entries.dedup_by(|b, a| {
                a.node == b.node && (a.kind == Kind::Whiteout) == (b.kind == Kind::Whiteout)
            });
        }
        layer.size = layer
            .entries
            .iter()
            .filter(|e| e.kind == Kind::File)
            .map(|e| e.size)
            .sum();
        layer
    }
}

/// A layer's identity and history, from the image config.
#[derive(Clone, Default)]
pub struct LayerMeta {
    pub diff_id: String,
    pub created_by: String,
    pub created: String,
    pub comment: String,
}

pub struct Image {
    /// What the user named (a store reference or a path).
    pub name: String,
    pub id: String,
    pub tree: Tree,
    pub layers: Vec<Layer>,
}

/// Where a node comes from in a merged view.
#[derive(Clone, Copy)]
struct Slot {
    layer: u32,
    /// Index into that layer's entries; NONE for a directory only implied by its children.
    entry: u32,
}

const ABSENT: Slot = Slot {
    layer: NONE,
    entry: NONE,
};

/// The merged tree of the layers applied so far, with overlay's rules (OCI's reading of
/// whiteouts: they and opaque markers hide only what is below their own layer).
pub struct View {
    at: Vec<Slot>,
    /// Layers applied.
    pub upto: usize,
}

impl View {
    pub fn new(img: &Image) -> View {
        let mut at = vec![ABSENT; img.tree.len()];
        at[ROOT as usize] = Slot {
            layer: 0,
            entry: NONE,
        };
        View { at, upto: 0 }
    }

    /// The view of layers `0..=i`.
    pub fn upto(img: &Image, i: usize) -> View {
        let mut v = View::new(img);
        for l in 0..=i.min(img.layers.len().saturating_sub(1)) {
            if !img.layers.is_empty() {
                v.apply(img, l);
            }
        }
        v
    }

    pub fn present(&self, n: NodeId) -> bool {
        self.at[n as usize].layer != NONE
    }

    /// The layer the node shows from.
    pub fn layer_of(&self, n: NodeId) -> Option<usize> {
        let s = self.at[n as usize];
        (s.layer != NONE).then_some(s.layer as usize)
    }

    pub fn entry<'a>(&self, img: &'a Image, n: NodeId) -> Option<&'a Entry> {
        let s = self.at[n as usize];
        if s.layer == NONE || s.entry == NONE {
            return None;
        }
        img.layers[s.layer as usize].entries.get(s.entry as usize)
    }

    pub fn is_dir(&self, img: &Image, n: NodeId) -> bool {
        let s = self.at[n as usize];
        if s.layer == NONE {
            return false;
        }
        if s.entry == NONE {
            return true;
        }
        self.entry(img, n).is_some_and(|e| e.kind == Kind::Dir)
    }

    pub fn size(&self, img: &Image, n: NodeId) -> u64 {
        self.entry(img, n).map(|e| e.size).unwrap_or(0)
    }

    /// Sum of the sizes of `n` and everything present below it.
    pub fn subtree_size(&self, img: &Image, n: NodeId) -> u64 {
        if !self.present(n) {
            return 0;
        }
        let mut total = 0;
        let mut stack = vec![n];
        while let Some(c) = stack.pop() {
            total += self.size(img, c);
            stack.extend(
                img.tree
                    .children(c)
                    .iter()
                    .copied()
                    .filter(|&k| self.present(k)),
            );
        }
        total
    }

    /// Removes what is below `n` (and `n` itself with `with_self`). A node absent here has
    /// nothing present below it, so only present nodes are walked.
    fn remove(&mut self, tree: &Tree, n: NodeId, with_self: bool) {
        let mut stack: Vec<NodeId> = tree
            .children(n)
            .iter()
            .copied()
            .filter(|&k| self.present(k))
            .collect();
        if with_self && n != ROOT && self.present(n) {
            self.at[n as usize] = ABSENT;
        }
        while let Some(c) = stack.pop() {
            self.at[c as usize] = ABSENT;
            stack.extend(
                tree.children(c)
                    .iter()
                    .copied()
                    .filter(|&k| self.present(k)),
            );
        }
    }

    /// Puts layer `i` on top.
    pub fn apply(&mut self, img: &Image, i: usize) {
        let layer = &img.layers[i];
        let tree = &img.tree;
        if layer.root_opaque {
            self.remove(tree, ROOT, false);
        }
        for e in &layer.entries {
            if e.kind == Kind::Whiteout {
                self.remove(tree, e.node, true);
            } else if e.opaque && self.is_dir(img, e.node) {
                self.remove(tree, e.node, false);
            }
        }
        // Ascending node ids: a directory before what it holds.
        for (idx, e) in layer.entries.iter().enumerate() {
            if e.kind == Kind::Whiteout {
                continue;
            }
            if e.kind != Kind::Dir && self.is_dir(img, e.node) {
                self.remove(tree, e.node, false);
            }
            // Parents the tar did not list, or that a lower layer has as a non-directory.
            let mut p = tree.parent(e.node).unwrap_or(ROOT);
            while p != ROOT && !self.is_dir(img, p) {
                self.remove(tree, p, false);
                self.at[p as usize] = Slot {
                    layer: i as u32,
                    entry: NONE,
                };
                p = tree.parent(p).unwrap_or(ROOT);
            }
            self.at[e.node as usize] = Slot {
                layer: i as u32,
                entry: idx as u32,
            };
        }
        self.upto = i + 1;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ChangeKind {
    Added,
    Changed,
    Removed,
}

impl ChangeKind {
    pub fn mark(self) -> char {
        match self {
            ChangeKind::Added => 'A',
            ChangeKind::Changed => 'C',
            ChangeKind::Removed => 'D',
        }
    }
}

/// One change a layer makes to the view below it. A removal's size is everything it
/// hides (a directory's whole content).
#[derive(Clone, Copy, Debug)]
pub struct Change {
    pub node: NodeId,
    pub kind: ChangeKind,
    pub size: u64,
}

/// A layer's changes counted by kind: (count, bytes) for added, changed, removed.
#[derive(Clone, Copy, Default, Debug)]
pub struct Summary {
    pub added: (u64, u64),
    pub changed: (u64, u64),
    pub removed: (u64, u64),
}

/// One path's appearance in one layer, as dive counts it (see `efficiency`).
#[derive(Clone, Copy, Debug)]
pub struct Sighting {
    pub node: NodeId,
    pub layer: u32,
    pub size: u64,
}

pub struct Analysis {
    /// Per layer, sorted by node.
    pub changes: Vec<Vec<Change>>,
    pub summaries: Vec<Summary>,
    pub sightings: Vec<Sighting>,
}

/// One pass over the layers, oldest first: each layer's changes against the view below
/// it, and every path's sightings for the efficiency score, then the layer goes on top.
pub fn analyze(img: &Image) -> Analysis {
    let tree = &img.tree;
    let mut view = View::new(img);
    let mut changes = Vec::with_capacity(img.layers.len());
    let mut summaries = Vec::with_capacity(img.layers.len());
    let mut sightings = Vec::new();
    // stamp[n] == i + 1: `n` has something below it in layer i (so is no leaf there).
    let mut stamp = vec![0u32; tree.len()];
    for (i, layer) in img.layers.iter().enumerate() {
        let tag = i as u32 + 1;
        for e in &layer.entries {
            let mut p = tree.parent(e.node);
            while let Some(q) = p {
                if stamp[q as usize] == tag {
                    break;
                }
                stamp[q as usize] = tag;
                p = tree.parent(q);
            }
        }
        let mut ch = Vec::new();
        if layer.root_opaque {
            for &c in tree.children(ROOT) {
                if view.present(c) && !layer.names(c) {
                    ch.push(Change {
                        node: c,
                        kind: ChangeKind::Removed,
                        size: view.subtree_size(img, c),
                    });
                }
            }
        }
        for e in &layer.entries {
            let below = view.present(e.node);
            match e.kind {
                Kind::Whiteout => {
                    let size = if view.is_dir(img, e.node) {
                        view.subtree_size(img, e.node)
                    } else {
                        0
                    };
                    sightings.push(Sighting {
                        node: e.node,
                        layer: i as u32,
                        size,
                    });
                    if below && layer.find(e.node).is_none() {
                        ch.push(Change {
                            node: e.node,
                            kind: ChangeKind::Removed,
                            size: view.subtree_size(img, e.node),
                        });
                    }
                }
                _ => {
                    if stamp[e.node as usize] != tag {
                        sightings.push(Sighting {
                            node: e.node,
                            layer: i as u32,
                            size: e.size,
                        });
                    }
                    ch.push(Change {
                        node: e.node,
                        kind: if below {
                            ChangeKind::Changed
                        } else {
                            ChangeKind::Added
                        },
                        size: e.size,
                    });
                    let was_dir = view.is_dir(img, e.node);
                    let whited = layer.has_whiteout(e.node);
                    if e.opaque && was_dir && !whited {
                        // Counted as its whiteout encoding would be: `.wh.D` next to `D`.
                        sightings.push(Sighting {
                            node: e.node,
                            layer: i as u32,
                            size: view.subtree_size(img, e.node),
                        });
                    }
                    // A directory replaced (opaque, deleted and made again, or by a
                    // non-directory): what it held below and this layer does not name
                    // again is gone.
                    if was_dir && (e.opaque || whited || e.kind != Kind::Dir) {
                        for &c in tree.children(e.node) {
                            if view.present(c) && !layer.names(c) {
                                ch.push(Change {
                                    node: c,
                                    kind: ChangeKind::Removed,
                                    size: view.subtree_size(img, c),
                                });
                            }
                        }
                    }
                }
            }
        }
        ch.sort_by_key(|c| (c.node, c.kind));
        let mut s = Summary::default();
        for c in &ch {
            let slot = match c.kind {
                ChangeKind::Added => &mut s.added,
                ChangeKind::Changed => &mut s.changed,
                ChangeKind::Removed => &mut s.removed,
            };
            slot.0 += 1;
            slot.1 += c.size;
        }
        changes.push(ch);
        summaries.push(s);
        view.apply(img, i);
    }
    Analysis {
        changes,
        summaries,
        sightings,
    }
}

/// Splits a tar member name into clean components: leading `/` and `./` dropped, empty
/// and `.` components skipped; `..` refused (a layer never needs it).
pub fn clean_components(raw: &[u8]) -> Result<Vec<&[u8]>> {
    let mut out = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                return Err(err!(
                    "layer member {:?} has '..' in its path: the layer is malformed",
                    String::from_utf8_lossy(raw)
                ))
            }
            _ => out.push(c),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::explore::{efficiency, read};
    use sha2::{Digest, Sha256};

    /// A layer tar from (path, Some(size) file | None directory) members.
    fn tar_of(members: &[(&str, Option<usize>)]) -> (Vec<u8>, String) {
        let mut b = tar::Builder::new(Vec::new());
        for (p, size) in members {
            let mut h = tar::Header::new_ustar();
            match size {
                Some(n) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(*n as u64);
                    h.set_mode(0o644);
                    h.set_cksum();
                    b.append_data(&mut h, p, vec![0u8; *n].as_slice()).unwrap();
                }
                None => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    h.set_mode(0o755);
                    h.set_cksum();
                    b.append_data(&mut h, p, std::io::empty()).unwrap();
                }
            }
        }
        let bytes = b.into_inner().unwrap();
        let id = format!("sha256:{:x}", Sha256::digest(&bytes));
        (bytes, id)
    }

    fn image_of(layers: &[&[(&str, Option<usize>)]]) -> Image {
        let mut tree = Tree::new();
        let mut out = Vec::new();
        for m in layers {
            let (bytes, id) = tar_of(m);
            let mut b = LayerBuilder::new(&mut tree);
            read::tar_layer(bytes.as_slice(), &id, "test layer", &mut b).unwrap();
            out.push(b.finish(LayerMeta {
                diff_id: id,
                ..LayerMeta::default()
            }));
        }
        tree.finish();
        Image {
            name: "t".into(),
            id: "t".into(),
            tree,
            layers: out,
        }
    }

    const BASE: &[(&str, Option<usize>)] = &[
        ("lib/", None),
        ("lib/a", Some(300)),
        ("lib/b", Some(200)),
        ("keep", Some(10)),
    ];

    /// An opaque directory and its whiteout encoding (`.wh.lib` beside the new `lib/`, as
    /// the OCI spec allows) give the same tree, the same changes and the same score.
    #[test]
    fn opaque_and_whiteout_encodings_agree() {
        let opaque = image_of(&[
            BASE,
            &[
                ("lib/", None),
                ("lib/.wh..wh..opq", Some(0)),
                ("lib/a", Some(50)),
            ],
        ]);
        let whiteout = image_of(&[
            BASE,
            &[(".wh.lib", Some(0)), ("lib/", None), ("lib/a", Some(50))],
        ]);
        let summary = |img: &Image| {
            let an = analyze(img);
            let e = efficiency::compute(an.sightings.clone());
            let v = View::upto(img, 1);
            let mut present: Vec<String> = (0..img.tree.len() as NodeId)
                .filter(|&n| n != ROOT && v.present(n))
                .map(|n| img.tree.path(n))
                .collect();
            present.sort();
            let mut ch: Vec<String> = an.changes[1]
                .iter()
                .filter(|c| c.kind != ChangeKind::Changed || img.tree.path(c.node) != "/lib")
                .map(|c| format!("{} {} {}", c.kind.mark(), img.tree.path(c.node), c.size))
                .collect();
            ch.sort();
            (present, ch, e.score, e.wasted_bytes)
        };
        let a = summary(&opaque);
        assert_eq!(a, summary(&whiteout));
        assert_eq!(a.0, vec!["/keep", "/lib", "/lib/a"]);
        assert_eq!(a.1, vec!["C /lib/a 50", "D /lib/b 200"]);
        // Sightings: a 300,50; b 200; keep 10; lib (the whiteout of a directory) 500.
        assert_eq!(
            a.2,
            (50.0 + 200.0 + 10.0 + 500.0) / (350.0 + 200.0 + 10.0 + 500.0)
        );
        assert_eq!(a.3, 350);
    }

    /// A whiteout of a file is sized 0, so the deleted file's size is all waste; the
    /// whiteout of a directory is sized as its content and wastes nothing (dive's rules).
    #[test]
    fn removals_as_dive_counts_them() {
        let img = image_of(&[BASE, &[(".wh.keep", Some(0)), (".wh.lib", Some(0))]]);
        let an = analyze(&img);
        let e = efficiency::compute(an.sightings.clone());
        assert_eq!(e.wasted_bytes, 10);
        assert_eq!(
            e.score,
            (300.0 + 200.0 + 0.0 + 500.0) / (300.0 + 200.0 + 10.0 + 500.0)
        );
        let v = View::upto(&img, 1);
        assert!((1..img.tree.len() as NodeId).all(|n| !v.present(n)));
        assert_eq!(an.summaries[1].removed, (2, 510));
    }

    /// A path as deep as an input likes is walked without recursion.
    #[test]
    fn deep_tree_without_recursion() {
        let mut tree = Tree::new();
        let mut b = LayerBuilder::new(&mut tree);
        let mut n = ROOT;
        for _ in 0..200_000 {
            n = b.tree.child(n, b"d");
            b.add(n, Kind::Dir, 0);
        }
        let leaf = b.tree.child(n, b"f");
        b.add(leaf, Kind::File, 7);
        let l0 = b.finish(LayerMeta::default());
        let mut b = LayerBuilder::new(&mut tree);
        let top = b.tree.child(ROOT, b"d");
        b.whiteout(top);
        let l1 = b.finish(LayerMeta::default());
        tree.finish();
        let img = Image {
            name: "deep".into(),
            id: "deep".into(),
            tree,
            layers: vec![l0, l1],
        };
        let an = analyze(&img);
        assert_eq!(an.summaries[1].removed, (1, 7));
        assert_eq!(img.tree.depth(leaf), 200_001);
    }
}
