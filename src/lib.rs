//! layerfs: a userspace union filesystem for container image layers.
//!
//! The daemon merges read-only lower directories with one writable upper directory.
//! `fs` adapts FUSE requests onto the overlay modules; everything else is unit-testable
//! without a mount.

pub mod config;
pub mod daemon;
pub mod error;
pub mod fs;
pub mod sys;

pub use config::Config;
pub use error::{Error, Result};
