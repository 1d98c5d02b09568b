//! The on-disk layer format as both programs read and write it, one home for each piece:
//! the daemon and layerctl call these instead of keeping readers of their own.
//! Every write goes through directory handles confined beneath a layer root (`crate::sys`).

pub mod redirect;
pub mod writer;
