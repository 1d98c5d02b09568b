//! `layerctl fsck`: re-hash every layer and check every reference; exit 1 on damage.

use crate::error::Result;
use crate::images;
use crate::output::out;
use crate::store::Store;

#[derive(clap::Args)]
pub struct Args {}

pub fn run(store: &Store, _a: Args) -> Result<i32> {
    let (bad, notes) = images::fsck(store)?;
    for n in notes {
        out(n);
    }
    for b in &bad {
        eprintln!("layerctl: fsck: {b}");
    }
    if !bad.is_empty() {
        return Ok(1);
    }
    out("store is clean");
    Ok(0)
}
