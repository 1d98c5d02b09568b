//! `layerctl save IMAGE...`: images to a docker archive, an OCI layout or a dir-transport
//! directory, or to stdout.

use std::io::IsTerminal;
use std::path::PathBuf;

use crate::error::Result;
use crate::output::out;
use crate::save::{self, Target};
use crate::store::Store;

#[derive(clap::Args)]
pub struct Args {
    /// The images (NAME[:TAG] or id)
    #[arg(required = true)]
    images: Vec<String>,
    /// Output path, or - for stdout [default: stdout, unless it is a terminal]
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// [default: docker-archive]
    #[arg(long, value_enum)]
    format: Option<save::Format>,
    /// Layer compression [default: gzip for the OCI formats and docker-dir, none for docker-archive]
    #[arg(long, value_enum)]
    compress: Option<save::Compress>,
}

pub fn run(store: &Store, a: Args) -> Result<i32> {
    let (target, format) = save::target(
        a.output.as_deref(),
        a.format,
        std::io::stdout().is_terminal(),
    )?;
    let lines = save::save(store, &a.images, &target, format, a.compress)?;
    match &target {
        Target::Path(p) => {
            eprintln!("saved {} image(s) to {}", lines.len(), p.display());
            for l in lines {
                out(l);
            }
        }
        // stdout carries the archive: the summary goes to stderr.
        Target::Stdout => {
            for l in lines {
                eprintln!("saved {l}");
            }
        }
    }
    Ok(0)
}
