//! What the commands print: lines on stdout, aligned tables, JSON, short ids. One home so
//! every listing looks alike (and a closed pipe is never an error).

use std::io::Write;

use crate::err;
use crate::error::Result;

/// One line on stdout. A closed pipe (`layerctl images | head`) is not an error worth
/// reporting.
pub fn out(s: impl AsRef<str>) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{}", s.as_ref());
}

/// The 12 hex digits listings show for an id (`sha256:` dropped).
pub fn short(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    &hex[..hex.len().min(12)]
}

/// Prints rows as aligned columns, three spaces apart, the last column unpadded.
pub fn table(head: &[&str], rows: Vec<Vec<String>>) {
    let mut w: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let n = cells.len();
        cells
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                if i + 1 == n {
                    c
                } else {
                    format!("{c:<width$}", width = w[i])
                }
            })
            .collect::<Vec<_>>()
            .join("   ")
    };
    out(line(head.iter().map(|s| s.to_string()).collect()));
    for r in rows {
        out(line(r));
    }
}

pub fn print_json(v: &serde_json::Value) -> Result<()> {
    out(serde_json::to_string_pretty(v).map_err(|e| err!("encoding JSON: {e}"))?);
    Ok(())
}

/// A byte count as docker prints sizes: decimal units, one decimal place (`4.1kB`).
pub fn human(n: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < units.len() {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", units[i])
    }
}
