//! `layerctl logout HOST`: forgets the credentials `login` filed for a registry.

use crate::err;
use crate::error::Result;
use crate::output::out;
use crate::registry::auth;
use crate::store::Store;

#[derive(clap::Args)]
pub struct Args {
    /// The registry, HOST[:PORT]
    registry: String,
}

pub fn run(_store: &Store, a: Args) -> Result<i32> {
    let host = a
        .registry
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    if auth::remove(host)? {
        out(format!("Removed login credentials for {host}"));
        Ok(0)
    } else {
        Err(err!(
            "not logged in to {host} (no entry in {}; credentials in ~/.docker/config.json are docker's to remove)",
            auth::auth_file().display()
        ))
    }
}
