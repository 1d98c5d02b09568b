//! Images to and from registries that speak the OCI distribution API: how a reference
//! names a registry, a repository and a tag or digest (here), the HTTP client with its
//! auth, TLS and retries (`client`), credentials files (`auth`), `pull` and `push`.

pub mod auth;
pub mod client;
pub mod pull;
pub mod push;

use crate::err;
use crate::error::Result;
use crate::store::parse_reference;

/// Where a name without a registry host goes, as docker and podman (with
/// `unqualified-search-registries = ["docker.io"]`) send it.
pub const DOCKER_HUB: &str = "docker.io";

/// The registry bare names use: LAYERCTL_DEFAULT_REGISTRY (a host[:port]), else docker.io.
pub fn default_registry() -> String {
    std::env::var("LAYERCTL_DEFAULT_REGISTRY")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DOCKER_HUB.to_string())
}

/// A reference resolved against a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    /// `host[:port]` as the user (or the default) spells it: the key for credentials
    /// and certs.d.
    pub registry: String,
    /// The repository path on it (`library/debian`).
    pub repo: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

/// Whether the first component of a name is a registry host: the rule docker and podman
/// use (a '.', a ':port', or `localhost`).
fn is_host(c: &str) -> bool {
    c.contains('.') || c.contains(':') || c == "localhost"
}

impl Remote {
    /// `debian` -> docker.io/library/debian:latest (tag filled in unless a digest is
    /// given), `user/app` -> docker.io/user/app, `host:5000/x` -> that host.
    pub fn parse(s: &str) -> Result<Remote> {
        let r = parse_reference(s)?;
        let (registry, repo) = match r.name.split_once('/') {
            Some((first, rest)) if is_host(first) => (first.to_string(), rest.to_string()),
            _ => {
                let reg = default_registry();
                let repo = if reg == DOCKER_HUB && !r.name.contains('/') {
                    format!("library/{}", r.name)
                } else {
                    r.name.clone()
                };
                (reg, repo)
            }
        };
        if repo.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(err!(
                "invalid image name {s:?}: repository names are lowercase"
            ));
        }
        let tag = match (&r.tag, &r.digest) {
            (None, None) => Some("latest".to_string()),
            (t, _) => t.clone(),
        };
        Ok(Remote {
            registry,
            repo,
            tag,
            digest: r.digest,
        })
    }

    /// The host the API is served from (docker.io's is registry-1.docker.io).
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            "registry-1.docker.io"
        } else {
            &self.registry
        }
    }

    /// `registry/repo` as docker prints it in full.
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.registry, self.repo)
    }

    /// The full reference, for messages: `docker.io/library/debian:12`.
    pub fn shown(&self) -> String {
        let mut s = self.full_name();
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(d);
        }
        s
    }

    /// The tag or digest the manifest is fetched by.
    pub fn reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// The name the image is kept under in the store: docker's short form for Docker Hub
    /// (`debian:12`, `user/app:1`), the full name elsewhere (`localhost:5000/x:1`), so
    /// `run`/`mount` take what `pull` took. Pulled by digest only, the tag is
    /// `sha256-` and the first 12 hex digits of the manifest digest (a store name needs
    /// a tag; the digest itself cannot be one).
    pub fn local_name(&self) -> String {
        let full = self.full_name();
        let name = full
            .strip_prefix("docker.io/library/")
            .or_else(|| full.strip_prefix("docker.io/"))
            .unwrap_or(&full)
            .to_string();
        let tag = match (&self.tag, &self.digest) {
            (Some(t), _) => t.clone(),
            (None, Some(d)) => format!("sha256-{}", &d["sha256:".len()..][..12]),
            (None, None) => "latest".to_string(),
        };
        format!("{name}:{tag}")
    }
}

/// `sha256:HEX` -> the first 12 hex digits, as docker names layers in its output.
pub fn short(d: &str) -> &str {
    let hex = d.strip_prefix("sha256:").unwrap_or(d);
    &hex[..hex.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_as_docker_maps_them() {
        let r = Remote::parse("debian").unwrap();
        assert_eq!(r.shown(), "docker.io/library/debian:latest");
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(r.local_name(), "debian:latest");
        let r = Remote::parse("user/app:1").unwrap();
        assert_eq!(r.repo, "user/app");
        assert_eq!(r.local_name(), "user/app:1");
        let r = Remote::parse("localhost:5000/x/y:t").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repo.as_str()),
            ("localhost:5000", "x/y")
        );
        assert_eq!(r.local_name(), "localhost:5000/x/y:t");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Remote::parse(&format!("quay.io/a/b@{d}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.reference(), d);
        assert_eq!(r.local_name(), "quay.io/a/b:sha256-aaaaaaaaaaaa");
        assert!(Remote::parse("Bad/x").is_err());
    }
}
