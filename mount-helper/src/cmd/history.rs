//! `layerctl history IMAGE`: an image's history entries, newest first, as `docker history`
//! shows them: the IMAGE column names the image each entry made where that image is in
//! the store (the build's intermediate images, by the parent chain), else `<missing>`.

use std::collections::BTreeMap;

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
    /// Full ids and full CREATED BY (the table truncates them as docker does)
    #[arg(long)]
    no_trunc: bool,
}

/// Which stored image made each history entry: index -> image id. An image's own last
/// entry is its; its parent's last entry the parent's, and so on down the chain.
fn owners(store: &Store, id: &str) -> BTreeMap<usize, String> {
    let mut out = BTreeMap::new();
    let mut cur = Some(id.to_string());
    let mut seen = 0;
    while let Some(c) = cur {
        // The chain is the store's; a loop in damaged records must not hang.
        seen += 1;
        if seen > 100_000 {
            break;
        }
        let Ok(cfg) = store.read_image(&c) else { break };
        if let Some(last) = cfg.history.len().checked_sub(1) {
            out.entry(last).or_insert_with(|| c.clone());
        }
        cur = store.parent(&c).ok().flatten();
    }
    out
}

/// docker's truncation of CREATED BY: 45 characters, the last an ellipsis.
fn ellipsis(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

pub fn run(store: &Store, a: Args) -> Result<i32> {
    let id = store.resolve_image(&a.image)?;
    let cfg = store.read_image(&id)?;
    let own = owners(store, &id);
    let mut rows = Vec::new();
    let mut js = Vec::new();
    for (i, (h, layer)) in cfg.layered_history().into_iter().enumerate().rev() {
        let size = layer
            .as_ref()
            .map(|d| store.layer_record(d).map(|r| r.size).unwrap_or(0))
            .unwrap_or(0);
        let image = own.get(&i).cloned();
        js.push(json!({"id": image, "layer": layer, "created": h.created, "created_by": h.created_by, "comment": h.comment, "empty_layer": h.empty_layer, "size": size}));
        let created_by = h.created_by.unwrap_or_default();
        rows.push(vec![
            match &image {
                Some(x) if a.no_trunc => x.clone(),
                Some(x) => short(x).to_string(),
                None => "<missing>".to_string(),
            },
            h.created.unwrap_or_default(),
            if a.no_trunc {
                created_by
            } else {
                ellipsis(&created_by, 45)
            },
            human(size),
            h.comment.unwrap_or_default(),
        ]);
    }
    if a.json {
        print_json(&json!(js))?;
    } else {
        table(&["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"], rows);
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn truncates_like_docker() {
        assert_eq!(super::ellipsis("short", 45), "short");
        let long = "x".repeat(50);
        let t = super::ellipsis(&long, 45);
        assert_eq!(t.chars().count(), 45);
        assert!(t.ends_with('…'));
    }
}
