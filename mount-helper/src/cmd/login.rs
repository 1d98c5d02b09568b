//! `layerctl login HOST`: checks credentials against the registry and files them where
//! podman reads them (auth.json).

use std::io::{BufRead, IsTerminal, Write};

use crate::err;
use crate::error::{Context, Result};
use crate::output::out;
use crate::registry::client::{Client, Options};
use crate::registry::{auth, Remote};
use crate::store::Store;

#[derive(clap::Args)]
pub struct Args {
    /// The registry, HOST[:PORT]
    registry: String,
    #[arg(short, long)]
    username: Option<String>,
    /// Read the password from stdin (one line)
    #[arg(long)]
    password_stdin: bool,
    /// The password (visible to other users in `ps`: prefer --password-stdin)
    #[arg(short, long)]
    password: Option<String>,
    #[command(flatten)]
    reg: Options,
}

fn host_of(s: &str) -> Result<String> {
    let h = s
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    // Checked by the reference grammar, through a repository on it.
    let r = Remote::parse(&format!("{h}/x"))
        .map_err(|_| err!("{s:?} is not a registry HOST[:PORT]"))?;
    if r.repo != "x" {
        return Err(err!(
            "{s:?} is not a registry HOST[:PORT] (give the host only)"
        ));
    }
    Ok(r.registry)
}

fn prompt(what: &str) -> Result<String> {
    eprint!("{what}: ");
    let _ = std::io::stderr().flush();
    let mut s = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut s)
        .ctx(|| format!("reading the {what} from stdin"))?;
    Ok(s.trim_end_matches(['\n', '\r']).to_string())
}

pub fn run(_store: &Store, a: Args) -> Result<i32> {
    let registry = if a.registry == "docker.io"
        || a.registry.contains('.')
        || a.registry.contains(':')
        || a.registry == "localhost"
    {
        host_of(&a.registry)?
    } else {
        return Err(err!(
            "{:?} is not a registry host (it has no '.' or :PORT): give e.g. registry.example.com or localhost:5000",
            a.registry
        ));
    };
    let user = match a.username {
        Some(u) => u,
        None if std::io::stdin().is_terminal() && !a.password_stdin => prompt("Username")?,
        None => return Err(err!("give the user name with -u USER")),
    };
    let password = match (a.password, a.password_stdin) {
        (Some(_), true) => {
            return Err(err!(
                "give the password once: --password or --password-stdin"
            ))
        }
        (Some(p), false) => p,
        (None, true) => {
            let mut s = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut s)
                .ctx(|| "reading the password from stdin".to_string())?;
            s.trim_end_matches(['\n', '\r']).to_string()
        }
        (None, false) if std::io::stdin().is_terminal() => prompt("Password")?,
        (None, false) => return Err(err!("give the password with --password-stdin")),
    };
    if user.is_empty() || password.is_empty() {
        return Err(err!("an empty user name or password cannot log in"));
    }
    // Checked against the registry before anything is written, as podman does.
    let mut reg = a.reg;
    reg.creds = Some(format!("{user}:{password}"));
    let remote = Remote {
        registry: registry.clone(),
        repo: "library/x".to_string(),
        tag: None,
        digest: None,
    };
    Client::connect(&remote, false, &reg)?;
    let file = auth::store(&registry, &user, &password)?;
    eprintln!("credentials for {registry} saved in {}", file.display());
    out("Login Succeeded!");
    Ok(0)
}
