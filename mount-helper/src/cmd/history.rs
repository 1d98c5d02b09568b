//! `layerctl history IMAGE`: an image's history entries, newest first.

use serde_json::json;

use crate::error::Result;
use crate::output::human;
use crate::output::{print_json, short, table};
use crate::store::Store;

#[derive(clap::Args)]
pub struct Args {
    /// The image (NAME[:TAG] or id)
    image: String,
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
}

pub fn run(store: &Store, a: Args) -> Result<i32> {
    let id = store.resolve_image(&a.image)?;
    let cfg = store.read_image(&id)?;
    let mut rows = Vec::new();
    let mut js = Vec::new();
    for (h, layer) in cfg.layered_history().into_iter().rev() {
        let size = layer
            .as_ref()
            .map(|d| store.layer_record(d).map(|r| r.size).unwrap_or(0))
            .unwrap_or(0);
        js.push(json!({"layer": layer, "created": h.created, "created_by": h.created_by, "comment": h.comment, "empty_layer": h.empty_layer, "size": size}));
        rows.push(vec![
            layer
                .as_deref()
                .map(|l| short(l).to_string())
                .unwrap_or_else(|| "<empty>".to_string()),
            h.created.unwrap_or_default(),
            h.created_by.unwrap_or_default(),
            human(size),
            h.comment.unwrap_or_default(),
        ]);
    }
    if a.json {
        print_json(&json!(js))?;
    } else {
        table(&["LAYER", "CREATED", "CREATED BY", "SIZE", "COMMENT"], rows);
    }
    Ok(0)
}
