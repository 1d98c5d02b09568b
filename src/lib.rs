//! layerfs: a userspace union filesystem for container image layers.
//!
//! The daemon merges read-only lower directories with one writable upper directory. Three
//! layers of folders, calls going down only: `fuse` (the transports and `ops`) calls
//! `overlay` (the merged tree's semantics), which calls `layers` (the on-disk format,
//! shared with layerctl); all of them use `sys` (every raw syscall). docs/ARCHITECTURE.md
//! has the map.

pub mod config;
pub mod daemon;
pub mod error;
pub mod fuse;
pub mod layers;
pub mod overlay;
pub mod sys;

/// layerctl and the confined writer name the markers by their old path.
pub use layers::whiteout;

pub use config::Config;
pub use error::{Error, Result};
