//! Image configs in the OCI image-config shape, history entries, `--change` instructions,
//! and the RFC 3339 timestamps they carry.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::err;
use crate::error::Result;

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct History {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
}

/// The runtime part (`config`). Unknown fields (ExposedPorts, Labels, ...) are kept as
/// they came so an imported config survives a commit unchanged.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct RuntimeConfig {
    #[serde(rename = "User", skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(rename = "Env", skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(rename = "Entrypoint", skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ImageConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub config: RuntimeConfig,
    pub rootfs: RootFs,
    #[serde(default)]
    pub history: Vec<History>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// GOARCH spelling of the host architecture, as OCI configs use.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

impl ImageConfig {
    /// A one-layer base image.
    pub fn base(
        diff_id: String,
        created: String,
        created_by: String,
        comment: Option<String>,
    ) -> ImageConfig {
        ImageConfig {
            created: Some(created.clone()),
            architecture: host_arch().to_string(),
            os: "linux".to_string(),
            config: RuntimeConfig {
                env: Some(vec![
                    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
                ]),
                ..RuntimeConfig::default()
            },
            rootfs: RootFs {
                kind: "layers".to_string(),
                diff_ids: vec![diff_id],
            },
            history: vec![History {
                created: Some(created),
                created_by: Some(created_by),
                comment,
                ..History::default()
            }],
            extra: Map::new(),
        }
    }

    /// The canonical JSON bytes whose sha256 is the image id.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|e| err!("encoding image config: {e}"))
    }

    /// (history entry, diff_id) pairs, oldest first; empty layers have no diff_id.
    pub fn layered_history(&self) -> Vec<(History, Option<String>)> {
        let mut ids = self.rootfs.diff_ids.iter();
        let mut out: Vec<(History, Option<String>)> = self
            .history
            .iter()
            .map(|h| {
                let id = if h.empty_layer {
                    None
                } else {
                    ids.next().cloned()
                };
                (h.clone(), id)
            })
            .collect();
        // Layers without a history entry (possible in foreign configs) still show up.
        for id in ids {
            out.push((History::default(), Some(id.clone())));
        }
        out
    }
}

/// Applies one `--change` instruction (Dockerfile syntax, the subset `docker commit`
/// supports that matters for a runtime config).
pub fn apply_change(cfg: &mut RuntimeConfig, change: &str) -> Result<()> {
    let change = change.trim();
    let (word, rest) = change
        .split_once(char::is_whitespace)
        .unwrap_or((change, ""));
    let rest = rest.trim();
    let bad =
        |why: &str| err!("bad --change {change:?}: {why} (try e.g. --change 'CMD [\"/bin/sh\"]')");
    match word.to_ascii_uppercase().as_str() {
        "CMD" | "ENTRYPOINT" => {
            if rest.is_empty() {
                return Err(bad("missing command"));
            }
            let argv: Vec<String> = if rest.starts_with('[') {
                serde_json::from_str(rest).map_err(|_| bad("not a JSON array of strings"))?
            } else {
                // Shell form, as Dockerfiles define it.
                vec!["/bin/sh".to_string(), "-c".to_string(), rest.to_string()]
            };
            if word.eq_ignore_ascii_case("CMD") {
                cfg.cmd = Some(argv);
            } else {
                cfg.entrypoint = Some(argv);
            }
        }
        "ENV" => {
            let (k, v) = if let Some((k, v)) = rest.split_once('=') {
                (k.trim(), v.trim())
            } else if let Some((k, v)) = rest.split_once(char::is_whitespace) {
                (k.trim(), v.trim())
            } else {
                return Err(bad("expected ENV KEY=VALUE"));
            };
            if k.is_empty() {
                return Err(bad("empty variable name"));
            }
            let v = v.trim_matches('"');
            let env = cfg.env.get_or_insert_with(Vec::new);
            let prefix = format!("{k}=");
            env.retain(|e| !e.starts_with(&prefix));
            env.push(format!("{k}={v}"));
        }
        "WORKDIR" => {
            if !rest.starts_with('/') {
                return Err(bad("WORKDIR needs an absolute path"));
            }
            cfg.working_dir = Some(rest.to_string());
        }
        "USER" => {
            if rest.is_empty() {
                return Err(bad("missing user"));
            }
            cfg.user = Some(rest.to_string());
        }
        _ => {
            return Err(bad(
                "supported instructions are CMD, ENTRYPOINT, ENV, WORKDIR, USER",
            ))
        }
    }
    Ok(())
}

/// Current UTC time as RFC 3339 with nanoseconds, as OCI configs write it.
pub fn now_rfc3339() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d.as_secs() as i64, d.subsec_nanos())
}

pub fn rfc3339(secs: i64, nanos: u32) -> String {
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (proleptic Gregorian), via 400-year eras.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + if month <= 2 { 1 } else { 0 };
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
        year,
        month,
        day,
        sod / 3600,
        sod % 3600 / 60,
        sod % 60,
        nanos
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.000000005Z");
        assert_eq!(rfc3339(1_700_000_000, 0), "2023-11-14T22:13:20.000000000Z");
    }

    #[test]
    fn changes() {
        let mut c = RuntimeConfig::default();
        apply_change(&mut c, "CMD [\"/bin/echo\",\"hi\"]").unwrap();
        assert_eq!(
            c.cmd.as_deref(),
            Some(&["/bin/echo".to_string(), "hi".to_string()][..])
        );
        apply_change(&mut c, "ENTRYPOINT echo x").unwrap();
        assert_eq!(c.entrypoint.as_ref().map(|v| v[2].as_str()), Some("echo x"));
        apply_change(&mut c, "ENV A=1").unwrap();
        apply_change(&mut c, "ENV A 2").unwrap();
        assert_eq!(c.env, Some(vec!["A=2".to_string()]));
        apply_change(&mut c, "WORKDIR /srv").unwrap();
        apply_change(&mut c, "USER nobody").unwrap();
        assert!(apply_change(&mut c, "WORKDIR rel").is_err());
        assert!(apply_change(&mut c, "EXPOSE 80").is_err());
        assert!(apply_change(&mut c, "CMD [broken").is_err());
    }
}
