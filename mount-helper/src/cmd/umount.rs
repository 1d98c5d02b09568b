//! `layerctl umount NAME|MOUNTPOINT`: unmount a container, keeping its changes.

use crate::container;
use crate::error::Result;
use crate::output::out;
use crate::store::Store;

#[derive(clap::Args)]
pub struct Args {
    /// The container's name or its mount point
    what: String,
}

pub fn run(store: &Store, a: Args) -> Result<i32> {
    out(container::umount(store, &a.what)?);
    Ok(0)
}
