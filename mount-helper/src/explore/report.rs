//! What `explore --ci` and `explore --json` print: the layers with their changes, the
//! efficiency (dive's numbers, see `efficiency`), and, for `--ci`, dive's three rules
//! checked against their thresholds.

use serde::Serialize;

use super::efficiency::{self, Efficiency};
use super::model::{Analysis, Image};
use crate::err;
use crate::error::Result;
use crate::output::{human, out, short, table};

/// The three CI rules, as dive names and reads them; `None` is a disabled rule.
pub struct Rules {
    pub lowest_efficiency: Option<f64>,
    pub highest_wasted_bytes: Option<u64>,
    pub highest_user_wasted_percent: Option<f64>,
}

fn disabled(s: &str) -> bool {
    matches!(
        s.trim().to_ascii_lowercase().as_str(),
        "" | "disabled" | "off" | "false"
    )
}

/// A fraction between 0 and 1, or "disabled".
pub fn parse_fraction(s: &str, flag: &str) -> Result<Option<f64>> {
    if disabled(s) {
        return Ok(None);
    }
    match s.trim().parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(Some(v)),
        _ => Err(err!(
            "bad {flag} {s:?}: give a fraction between 0 and 1 (e.g. 0.9), or `disabled`"
        )),
    }
}

/// A byte count as dive reads one (go-humanize's ParseBytes): a number, then an optional
/// unit, decimal (`kB`, `MB`, `GB`, ... and bare `K`, `M`, `G`) or binary (`KiB`, `MiB`,
/// ...), any case; or "disabled".
pub fn parse_bytes(s: &str, flag: &str) -> Result<Option<u64>> {
    if disabled(s) {
        return Ok(None);
    }
    let bad = || {
        err!("bad {flag} {s:?}: give bytes with an optional unit (20MB, 1.5GiB, 500kB), or `disabled`")
    };
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| bad())?;
    let unit = unit.trim().to_ascii_lowercase();
    let mul: f64 = match unit.as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "p" | "pb" => 1e15,
        "ki" | "kib" => 1024.0,
        "mi" | "mib" => 1024.0 * 1024.0,
        "gi" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "ti" | "tib" => 1024f64.powi(4),
        "pi" | "pib" => 1024f64.powi(5),
        _ => return Err(bad()),
    };
    let v = n * mul;
    if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(Some(v as u64))
}

pub struct Report<'a> {
    pub img: &'a Image,
    pub an: &'a Analysis,
    pub eff: &'a Efficiency,
    pub user_wasted: Option<f64>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pass,
    Fail,
    Disabled,
}

pub struct RuleResult {
    pub name: &'static str,
    pub threshold: String,
    pub status: Status,
    pub message: String,
}

impl<'a> Report<'a> {
    pub fn new(img: &'a Image, an: &'a Analysis, eff: &'a Efficiency) -> Report<'a> {
        let sizes: Vec<u64> = img.layers.iter().map(|l| l.size).collect();
        Report {
            img,
            an,
            eff,
            user_wasted: efficiency::user_wasted_fraction(eff.wasted_bytes, &sizes),
        }
    }

    pub fn size(&self) -> u64 {
        self.img.layers.iter().map(|l| l.size).sum()
    }

    pub fn user_size(&self) -> u64 {
        self.img.layers.iter().skip(1).map(|l| l.size).sum()
    }

    /// Inefficient paths, largest first, ties by path (the same order from any source).
    fn inefficient(&self) -> Vec<(String, &efficiency::Inefficiency)> {
        let mut v: Vec<_> = self
            .eff
            .inefficient
            .iter()
            .map(|x| (self.img.tree.path(x.node), x))
            .collect();
        v.sort_by(|a, b| b.1.cumulative.cmp(&a.1.cumulative).then(a.0.cmp(&b.0)));
        v
    }

    pub fn evaluate(&self, r: &Rules) -> Vec<RuleResult> {
        let mut out = Vec::new();
        out.push(match r.lowest_efficiency {
            None => disabled_rule("lowestEfficiency"),
            Some(t) => {
                let fail = t > self.eff.score;
                RuleResult {
                    name: "lowestEfficiency",
                    threshold: t.to_string(),
                    status: if fail { Status::Fail } else { Status::Pass },
                    message: if fail {
                        format!(
                            "image efficiency is too low (efficiency={:.4} < threshold={t})",
                            self.eff.score
                        )
                    } else {
                        String::new()
                    },
                }
            }
        });
        out.push(match r.highest_wasted_bytes {
            None => disabled_rule("highestWastedBytes"),
            Some(t) => {
                let fail = self.eff.wasted_bytes > t;
                RuleResult {
                    name: "highestWastedBytes",
                    threshold: t.to_string(),
                    status: if fail { Status::Fail } else { Status::Pass },
                    message: if fail {
                        format!(
                            "too many bytes wasted (wasted-bytes={} > threshold={t})",
                            self.eff.wasted_bytes
                        )
                    } else {
                        String::new()
                    },
                }
            }
        });
        out.push(match r.highest_user_wasted_percent {
            None => disabled_rule("highestUserWastedPercent"),
            Some(t) => {
                // dive divides by zero when only the base layer has bytes; its NaN or
                // infinity compares as "not over" or "over" the same way this does.
                let v = self.user_wasted.unwrap_or(if self.eff.wasted_bytes > 0 {
                    f64::INFINITY
                } else {
                    0.0
                });
                let fail = v > t;
                RuleResult {
                    name: "highestUserWastedPercent",
                    threshold: t.to_string(),
                    status: if fail { Status::Fail } else { Status::Pass },
                    message: if fail {
                        format!(
                            "too many bytes wasted, relative to the user bytes added (%-user-wasted-bytes={v:.4} > threshold={t})"
                        )
                    } else {
                        String::new()
                    },
                }
            }
        });
        out
    }

    /// The report as JSON text. Built from borrowed structs, not a `serde_json::Value`
    /// tree: a layer of 100,000 changes stays a few megabytes.
    pub fn json(&self, with_changes: bool, rules: Option<&[RuleResult]>) -> Result<String> {
        let tree = &self.img.tree;
        let layers: Vec<JLayer> = self
            .img
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let s = &self.an.summaries[i];
                let changes = with_changes.then(|| {
                    let mut ch: Vec<JChange> = self.an.changes[i]
                        .iter()
                        .map(|c| JChange {
                            kind: c.kind.mark(),
                            path: tree.path(c.node),
                            size: c.size,
                        })
                        .collect();
                    ch.sort_by(|a, b| a.path.cmp(&b.path).then(a.kind.cmp(&b.kind)));
                    ch
                });
                JLayer {
                    index: i,
                    diff_id: &l.diff_id,
                    created_by: &l.created_by,
                    created: &l.created,
                    comment: &l.comment,
                    size: l.size,
                    added: s.added.into(),
                    changed: s.changed.into(),
                    removed: s.removed.into(),
                    changes,
                }
            })
            .collect();
        let files: Vec<JFile> = self
            .inefficient()
            .into_iter()
            .map(|(path, x)| JFile {
                path,
                count: x.layers.len(),
                wasted_bytes: x.cumulative,
                min_size: x.min,
                layers: &x.layers,
                sizes: &x.sizes,
            })
            .collect();
        let rules_out = rules.map(|rs| {
            rs.iter()
                .map(|r| JRule {
                    name: r.name,
                    threshold: &r.threshold,
                    status: match r.status {
                        Status::Pass => "pass",
                        Status::Fail => "fail",
                        Status::Disabled => "disabled",
                    },
                    message: &r.message,
                })
                .collect::<Vec<_>>()
        });
        let rep = JReport {
            image: &self.img.name,
            id: &self.img.id,
            layers,
            size_bytes: self.size(),
            user_size_bytes: self.user_size(),
            efficiency: self.eff.score,
            wasted_bytes: self.eff.wasted_bytes,
            user_wasted_percent: self.user_wasted,
            inefficient_files: files,
            pass: rules.map(|rs| !rs.iter().any(|r| r.status == Status::Fail)),
            rules: rules_out,
        };
        serde_json::to_string_pretty(&rep).map_err(|e| err!("encoding JSON: {e}"))
    }

    pub fn print_text(&self, with_changes: bool, rules: Option<&[RuleResult]>) {
        let img = self.img;
        out(format!("Image: {} ({})", img.name, short(&img.id)));
        out("Layers:");
        let count = |c: (u64, u64)| {
            if c.0 == 0 {
                "-".to_string()
            } else {
                format!("{} ({})", c.0, human(c.1))
            }
        };
        let rows = img
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let s = &self.an.summaries[i];
                vec![
                    format!("  {i}"),
                    short(&l.diff_id).to_string(),
                    human(l.size),
                    count(s.added),
                    count(s.changed),
                    count(s.removed),
                    truncate(&l.created_by, 40),
                ]
            })
            .collect();
        table(
            &[
                "  #",
                "DIFF ID",
                "SIZE",
                "ADDED",
                "CHANGED",
                "REMOVED",
                "CREATED BY",
            ],
            rows,
        );
        if with_changes {
            for (i, ch) in self.an.changes.iter().enumerate() {
                out(format!("Changes in layer {i}:"));
                let mut v: Vec<(String, char, u64)> = ch
                    .iter()
                    .map(|c| (img.tree.path(c.node), c.kind.mark(), c.size))
                    .collect();
                v.sort();
                for (p, k, s) in v {
                    out(format!("  {k} {p} {}", human(s)));
                }
            }
        }
        out("Efficiency:");
        out(format!("  efficiency: {:.4} %", self.eff.score * 100.0));
        out(format!(
            "  wastedBytes: {} bytes ({})",
            self.eff.wasted_bytes,
            human(self.eff.wasted_bytes)
        ));
        out(format!(
            "  userWastedPercent: {}",
            self.user_wasted
                .map(|v| format!("{:.4} %", v * 100.0))
                .unwrap_or_else(|| "n/a (no bytes above the base layer)".to_string())
        ));
        let ineff = self.inefficient();
        if ineff.is_empty() {
            out("Inefficient files: none");
        } else {
            const SHOWN: usize = 20;
            out("Inefficient files:");
            let rows = ineff
                .iter()
                .take(SHOWN)
                .map(|(p, x)| {
                    vec![
                        format!("  {}", x.layers.len()),
                        human(x.cumulative),
                        x.layers
                            .iter()
                            .map(|l| l.to_string())
                            .collect::<Vec<_>>()
                            .join(","),
                        p.clone(),
                    ]
                })
                .collect();
            table(&["  COUNT", "WASTED", "LAYERS", "PATH"], rows);
            if ineff.len() > SHOWN {
                out(format!(
                    "  ... and {} more (see --json)",
                    ineff.len() - SHOWN
                ));
            }
        }
        if let Some(rules) = rules {
            out("Rules:");
            let (mut pass, mut fail, mut skip) = (0, 0, 0);
            for r in rules {
                match r.status {
                    Status::Pass => {
                        pass += 1;
                        out(format!("  PASS: {} ({})", r.name, r.threshold));
                    }
                    Status::Fail => {
                        fail += 1;
                        out(format!("  FAIL: {}: {}", r.name, r.message));
                    }
                    Status::Disabled => {
                        skip += 1;
                        out(format!("  SKIP: {}: rule disabled", r.name));
                    }
                }
            }
            out(format!(
                "Result: {} [Total:{}] [Passed:{pass}] [Failed:{fail}] [Skipped:{skip}]",
                if fail > 0 { "FAIL" } else { "PASS" },
                rules.len()
            ));
        }
    }
}

#[derive(Serialize)]
struct JCount {
    count: u64,
    bytes: u64,
}

impl From<(u64, u64)> for JCount {
    fn from((count, bytes): (u64, u64)) -> JCount {
        JCount { count, bytes }
    }
}

#[derive(Serialize)]
struct JChange {
    kind: char,
    path: String,
    size: u64,
}

#[derive(Serialize)]
struct JLayer<'a> {
    index: usize,
    diff_id: &'a str,
    created_by: &'a str,
    created: &'a str,
    comment: &'a str,
    size: u64,
    added: JCount,
    changed: JCount,
    removed: JCount,
    #[serde(skip_serializing_if = "Option::is_none")]
    changes: Option<Vec<JChange>>,
}

#[derive(Serialize)]
struct JFile<'a> {
    path: String,
    count: usize,
    wasted_bytes: u64,
    min_size: u64,
    layers: &'a [u32],
    sizes: &'a [u64],
}

#[derive(Serialize)]
struct JRule<'a> {
    name: &'a str,
    threshold: &'a str,
    status: &'a str,
    message: &'a str,
}

#[derive(Serialize)]
struct JReport<'a> {
    image: &'a str,
    id: &'a str,
    layers: Vec<JLayer<'a>>,
    size_bytes: u64,
    user_size_bytes: u64,
    efficiency: f64,
    wasted_bytes: u64,
    user_wasted_percent: Option<f64>,
    inefficient_files: Vec<JFile<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rules: Option<Vec<JRule<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pass: Option<bool>,
}

fn disabled_rule(name: &'static str) -> RuleResult {
    RuleResult {
        name,
        threshold: "disabled".to_string(),
        status: Status::Disabled,
        message: "rule disabled".to_string(),
    }
}

/// At most `max` characters, the cut marked with `…`.
pub fn truncate(s: &str, max: usize) -> String {
    let one_line: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one_line.chars().count() <= max {
        return one_line;
    }
    let mut t: String = one_line.chars().take(max.saturating_sub(1)).collect();
    t.push('…');
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_like_dive() {
        assert_eq!(parse_bytes("20MB", "x").ok(), Some(Some(20_000_000)));
        assert_eq!(parse_bytes("20 mb", "x").ok(), Some(Some(20_000_000)));
        assert_eq!(parse_bytes("1.5KiB", "x").ok(), Some(Some(1536)));
        assert_eq!(parse_bytes("100", "x").ok(), Some(Some(100)));
        assert_eq!(parse_bytes("disabled", "x").ok(), Some(None));
        assert!(parse_bytes("12 parsecs", "x").is_err());
        assert!(parse_bytes("", "x").unwrap_or(Some(1)).is_none());
        assert_eq!(parse_fraction("0.9", "x").ok(), Some(Some(0.9)));
        assert!(parse_fraction("1.5", "x").is_err());
    }
}
