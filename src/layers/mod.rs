//! The on-disk layer format as both programs read and write it, one home for each piece:
//! `layer` (a layer directory and its handle caches), `stack` (a name looked up through the
//! upper and lower layers), `whiteout` (whiteout, opaque and override_stat encodings),
//! `redirect` (redirect xattrs and their resolution), `acl` (POSIX ACL xattrs), `workdir`
//! (work/work, work/index, the shared whiteout) and `writer` (the confined writer). The daemon's overlay and layerctl call these; nothing
//! here knows about FUSE or the node table. Every write goes through directory handles
//! confined beneath a layer root (`crate::sys`).

pub mod acl;
#[cfg(test)]
pub(crate) mod fixture;
pub mod layer;
pub mod redirect;
pub mod stack;
pub mod whiteout;
pub mod workdir;
pub mod writer;
