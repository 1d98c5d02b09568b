//! layerfs: a userspace union filesystem for container image layers.
//!
//! The daemon merges read-only lower directories with one writable upper directory.
//! `fs` adapts FUSE requests onto [`overlay::Overlay`]; the modules below it (layers,
//! whiteouts, lookup, copy-up, listings) are unit-testable without a mount.

pub mod acl;
pub mod config;
pub mod daemon;
pub mod error;
pub mod fuse;
pub mod layer;
pub mod layers;
pub mod overlay;
pub mod stack;
pub mod sys;
pub mod whiteout;

pub use config::Config;
pub use error::{Error, Result};
