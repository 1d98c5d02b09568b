//! `layerctl gc`: remove images and layers nothing references.

use crate::error::Result;
use crate::images;
use crate::output::out;
use crate::store::Store;

#[derive(clap::Args)]
pub struct Args {}

pub fn run(store: &Store, _a: Args) -> Result<i32> {
    for l in images::gc(store)? {
        out(l);
    }
    Ok(0)
}
