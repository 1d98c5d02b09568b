//! `layerctl inspect NAME`: a container's or an image's record as JSON.

use serde_json::json;

use crate::container;
use crate::err;
use crate::error::Result;
use crate::output::print_json;
use crate::store::Store;

#[derive(clap::Args)]
pub struct Args {
    /// A container name, or an image (NAME[:TAG] or id)
    what: String,
}

pub fn run(store: &Store, a: Args) -> Result<i32> {
    let what = a.what;
    if let Ok(c) = container::find(store, &what) {
        let mut v = serde_json::to_value(&c).map_err(|e| err!("encoding JSON: {e}"))?;
        v["state"] = json!(container::state(&c));
        v["upper_dir"] = json!(container::upper_dir(store, &c.name));
        print_json(&json!({ "container": v }))?;
    } else {
        let id = store.resolve_image(&what).map_err(|_| {
            err!("no such image or container: {what} (see `layerctl images` and `layerctl ps`)")
        })?;
        let cfg = store.read_image(&id)?;
        let names: Vec<String> = store
            .refs()?
            .into_iter()
            .filter(|(_, v)| *v == id)
            .map(|(k, _)| k)
            .collect();
        print_json(&json!({"image": {"id": id, "names": names, "config": cfg}}))?;
    }
    Ok(0)
}
