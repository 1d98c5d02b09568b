//! `layerctl commit NAME IMAGE`: a container's changes as a new layer and image.

use crate::container::{self, CommitOptions};
use crate::error::Result;
use crate::output::{out, short};
use crate::store::Store;

#[derive(clap::Args)]
pub struct Args {
    /// The container's name
    name: String,
    /// Name for the new image (NAME[:TAG])
    image: String,
    /// Comment stored in the history entry
    #[arg(short, long)]
    message: Option<String>,
    /// created_by of the history entry
    #[arg(long)]
    created_by: Option<String>,
    /// Config change: 'CMD ...', 'ENTRYPOINT ...', 'ENV K=V', 'WORKDIR /p', 'USER u'
    #[arg(short, long)]
    change: Vec<String>,
    /// Do not pause the processes using the mount while the changes are read (the
    /// image may then mix moments of a container that is writing)
    #[arg(long)]
    no_pause: bool,
}

pub fn run(store: &Store, a: Args) -> Result<i32> {
    let opts = CommitOptions {
        message: a.message.as_deref(),
        created_by: a.created_by.as_deref(),
        changes: &a.change,
    };
    let (r, id, diff_id, fresh) =
        container::commit_paused(store, &a.name, &a.image, &opts, !a.no_pause)?;
    eprintln!(
        "committed {} as {r} (layer {}{})",
        a.name,
        short(&diff_id),
        if fresh { "" } else { ", already stored" }
    );
    out(id);
    Ok(0)
}
