//! The `fuser::Filesystem` implementation: a thin adapter from FUSE requests onto the overlay.

use crate::{Config, Result};

pub struct LayerFs {}

impl LayerFs {
    /// Opens every layer of `config` and prepares the overlay; no mount happens here.
    pub fn new(_config: &Config) -> Result<LayerFs> {
        Ok(LayerFs {})
    }
}

impl fuser::Filesystem for LayerFs {}
