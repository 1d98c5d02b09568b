//! `layerctl layer-tar DIFF_ID`: a layer's canonical changeset tar (its sha256 is the
//! diff_id).

use std::path::PathBuf;

use crate::err;
use crate::error::{Context, Result};
use crate::store::{self, Store};
use crate::tarfile;

#[derive(clap::Args)]
pub struct Args {
    /// The layer's diff_id (sha256:...)
    diff_id: String,
    /// Output file [default: stdout]
    #[arg(short, long)]
    output: Option<PathBuf>,
}

pub fn run(store: &Store, a: Args) -> Result<i32> {
    store::hex_of(&a.diff_id)?;
    if !store.has_layer(&a.diff_id) {
        return Err(err!("no such layer: {} (see `layerctl layers`)", a.diff_id));
    }
    let dir = store.layer_dir(&a.diff_id)?;
    match a.output {
        Some(p) => {
            let f = std::fs::File::create(&p).ctx(|| format!("creating {}", p.display()))?;
            tarfile::write_tar(&dir, std::io::BufWriter::new(f), &|| {})?;
        }
        None => {
            tarfile::write_tar(&dir, std::io::stdout().lock(), &|| {})?;
        }
    }
    Ok(0)
}
