//! layerfs: a userspace union filesystem for container image layers.
//!
//! The daemon merges read-only lower directories with one writable upper directory.
//! `fs` adapts FUSE requests onto [`overlay::Overlay`]; the modules below it (layers,
//! whiteouts, lookup, copy-up, listings) are unit-testable without a mount.

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
