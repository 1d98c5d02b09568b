//! Registry credentials in the files podman and docker keep them in: written to podman's
//! `auth.json` (`$REGISTRY_AUTH_FILE`, else `$XDG_RUNTIME_DIR/containers/auth.json`, else
//! `/run/containers/UID/auth.json` as podman falls back for root), read from it and then
//! from docker's `~/.docker/config.json` (`$DOCKER_CONFIG/config.json`).

use std::path::PathBuf;

use base64::Engine;
use serde_json::{Map, Value};

use crate::err;
use crate::error::{Context, Result};

/// The auth.json `login` writes and `logout` edits.
pub fn auth_file() -> PathBuf {
    if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()) {
        return PathBuf::from(x).join("containers/auth.json");
    }
    PathBuf::from(format!(
        "/run/containers/{}/auth.json",
        layerfs::sys::process::geteuid()
    ))
}

fn docker_config() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("DOCKER_CONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(d).join("config.json"));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".docker/config.json"))
}

/// The keys a registry may be filed under, most specific first: `host/repo/...` prefixes
/// (podman allows per-namespace credentials), the host, and docker's names for Docker Hub.
fn keys(registry: &str, repo: &str) -> Vec<String> {
    let mut out = Vec::new();
    let parts: Vec<&str> = repo.split('/').collect();
    for n in (1..=parts.len()).rev() {
        out.push(format!("{registry}/{}", parts[..n].join("/")));
    }
    out.push(registry.to_string());
    if registry == super::DOCKER_HUB {
        out.push("https://index.docker.io/v1/".to_string());
        out.push("index.docker.io".to_string());
        out.push("registry-1.docker.io".to_string());
    }
    out.push(format!("https://{registry}"));
    out
}

fn read(path: &std::path::Path) -> Result<Option<Value>> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            err!(
                "credentials file {} is not JSON ({e}): fix or remove it",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(err!("reading credentials file {}: {e}", path.display())),
    }
}

fn decode(entry: &Value, file: &std::path::Path, key: &str) -> Result<Option<(String, String)>> {
    let Some(a) = entry
        .get("auth")
        .and_then(Value::as_str)
        .filter(|a| !a.is_empty())
    else {
        return Ok(None);
    };
    let bad = || {
        err!(
            "the credentials for {key} in {} are not base64 of USER:PASSWORD: log in again with `layerctl login`",
            file.display()
        )
    };
    let raw = base64::engine::general_purpose::STANDARD
        .decode(a.trim())
        .map_err(|_| bad())?;
    let s = String::from_utf8(raw).map_err(|_| bad())?;
    let (u, p) = s.split_once(':').ok_or_else(bad)?;
    Ok(Some((u.to_string(), p.to_string())))
}

/// USER and PASSWORD for `registry` (and `repo` on it), if any file has them.
pub fn lookup(registry: &str, repo: &str) -> Result<Option<(String, String)>> {
    let ks = keys(registry, repo);
    for file in [Some(auth_file()), docker_config()].into_iter().flatten() {
        let Some(v) = read(&file)? else { continue };
        let Some(auths) = v.get("auths").and_then(Value::as_object) else {
            continue;
        };
        for k in &ks {
            if let Some(e) = auths.get(k) {
                if let Some(c) = decode(e, &file, k)? {
                    return Ok(Some(c));
                }
            }
        }
    }
    Ok(None)
}

/// Files USER:PASSWORD for `registry` in auth.json (created 0600, parents 0700).
pub fn store(registry: &str, user: &str, password: &str) -> Result<PathBuf> {
    let file = auth_file();
    let mut v = read(&file)?.unwrap_or_else(|| Value::Object(Map::new()));
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let obj = v.as_object_mut().ok_or_else(|| {
        err!(
            "credentials file {} is not a JSON object: fix or remove it",
            file.display()
        )
    })?;
    let auths = obj
        .entry("auths")
        .or_insert_with(|| Value::Object(Map::new()));
    let auths = auths.as_object_mut().ok_or_else(|| {
        err!(
            "\"auths\" in {} is not an object: fix or remove it",
            file.display()
        )
    })?;
    auths.insert(registry.to_string(), serde_json::json!({ "auth": auth }));
    write(&file, &v)?;
    Ok(file)
}

/// Drops `registry` from auth.json; false when it was not there.
pub fn remove(registry: &str) -> Result<bool> {
    let file = auth_file();
    let Some(mut v) = read(&file)? else {
        return Ok(false);
    };
    let gone = v
        .get_mut("auths")
        .and_then(Value::as_object_mut)
        .and_then(|a| a.remove(registry))
        .is_some();
    if gone {
        write(&file, &v)?;
    }
    Ok(gone)
}

fn write(file: &std::path::Path, v: &Value) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = file.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .ctx(|| format!("creating {}", dir.display()))?;
    }
    let bytes = serde_json::to_vec_pretty(v).map_err(|e| err!("encoding credentials: {e}"))?;
    let tmp = file.with_extension(format!("tmp-{}", std::process::id()));
    let res = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, file)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(err!("writing credentials file {}: {e}", file.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_order() {
        let k = keys("docker.io", "library/debian");
        assert_eq!(k[0], "docker.io/library/debian");
        assert_eq!(k[2], "docker.io");
        assert!(k.contains(&"https://index.docker.io/v1/".to_string()));
    }
}
