//! What metadata instructions write into the image config and its history, in the forms
//! docker's classic builder uses (Go-quoted lists, `#(nop)` entries, healthcheck durations).

use super::*;

pub(super) fn scratch_config() -> ImageConfig {
    ImageConfig {
        created: None,
        architecture: host_arch().to_string(),
        os: "linux".to_string(),
        config: RuntimeConfig {
            env: Some(vec![format!("PATH={}", run::DEFAULT_PATH)]),
            ..RuntimeConfig::default()
        },
        rootfs: RootFs {
            kind: "layers".to_string(),
            diff_ids: Vec::new(),
        },
        history: Vec::new(),
        extra: Map::new(),
    }
}

/// Go's `%q` of a string slice, as docker's classic builder writes CMD and friends in
/// history: `["npm" "start"]`.
pub(super) fn go_quoted(v: &[String]) -> String {
    let items: Vec<String> = v
        .iter()
        .map(|s| serde_json::to_string(s).unwrap_or_default())
        .collect();
    format!("[{}]", items.join(" "))
}

pub(super) fn nop(s: &str) -> String {
    format!("/bin/sh -c #(nop)  {s}")
}

/// Updates the object under `key` of the config's extra fields (Labels, ExposedPorts,
/// ...), starting from an empty one when there is none (or something else is there).
pub(super) fn update_map(
    cfg: &mut RuntimeConfig,
    key: &str,
    f: impl FnOnce(&mut Map<String, Value>),
) {
    let mut m = match cfg.extra.remove(key) {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    f(&mut m);
    cfg.extra.insert(key.to_string(), Value::Object(m));
}

pub(super) fn set_env(env: &mut Vec<String>, k: &str, v: &str) {
    let prefix = format!("{k}=");
    if let Some(e) = env.iter_mut().find(|e| e.starts_with(&prefix)) {
        *e = format!("{k}={v}");
    } else {
        env.push(format!("{k}={v}"));
    }
}

/// The config's Healthcheck for `HEALTHCHECK [OPTIONS] CMD ...` or `HEALTHCHECK NONE`.
pub(super) fn healthcheck(ins: &Instruction, _shell: &[String]) -> Result<Value> {
    let what = format!("line {} HEALTHCHECK", ins.line);
    let rest = ins.rest.trim();
    let mut hc = Map::new();
    if rest.eq_ignore_ascii_case("NONE") {
        hc.insert("Test".into(), json!(["NONE"]));
        return Ok(Value::Object(hc));
    }
    let (word, cmd) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    if !word.eq_ignore_ascii_case("CMD") || cmd.trim().is_empty() {
        return Err(err!(
            "{what}: use HEALTHCHECK [--interval=D ...] CMD command, or HEALTHCHECK NONE"
        ));
    }
    let test = match parse::json_array(cmd) {
        Some(a) => std::iter::once("CMD".to_string())
            .chain(a)
            .collect::<Vec<_>>(),
        None => vec!["CMD-SHELL".to_string(), cmd.trim().to_string()],
    };
    hc.insert("Test".into(), json!(test));
    for (k, v) in &ins.flags {
        let field = match k.as_str() {
            "interval" => "Interval",
            "timeout" => "Timeout",
            "start-period" => "StartPeriod",
            "start-interval" => "StartInterval",
            "retries" => {
                let n: u64 = v
                    .parse()
                    .map_err(|_| err!("{what}: --retries={v} is not a number"))?;
                hc.insert("Retries".into(), json!(n));
                continue;
            }
            other => return Err(err!("{what}: unknown option --{other}")),
        };
        hc.insert(
            field.into(),
            json!(go_duration(v)
                .ok_or_else(|| err!("{what}: --{k}={v} is not a duration (e.g. 30s, 1m30s)"))?),
        );
    }
    Ok(Value::Object(hc))
}

/// A Go duration (`1m30s`, `500ms`) in nanoseconds.
pub(super) fn go_duration(s: &str) -> Option<u64> {
    let mut total: f64 = 0.0;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let num: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let mult = match &rest[..u] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += num * mult;
        rest = &rest[u..];
    }
    Some(total as u64)
}
