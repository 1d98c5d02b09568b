//! `layerctl explore IMAGE`: the layer explorer (a terminal UI), or with `--ci` / `--json`
//! the efficiency report for pipelines and scripts.

use std::io::IsTerminal;

use crate::err;
use crate::error::Result;
use crate::explore::report::{parse_bytes, parse_fraction, Report, Rules};
use crate::explore::{efficiency, model, source, tui};
use crate::output::out;
use crate::store::Store;

#[derive(clap::Args)]
pub struct Args {
    /// The image: NAME[:TAG] or id in the store, else a path to an OCI layout (directory or
    /// archive) or a docker save archive (write ./NAME for a path a store name shadows)
    image: String,
    /// Print the report and check the rules instead of opening the UI; exit 1 if a rule fails
    #[arg(long)]
    ci: bool,
    /// Print the report as JSON (with --ci, the rules' results too)
    #[arg(long)]
    json: bool,
    /// Also list every layer's changes (A added, C changed, D removed) in the report
    #[arg(long)]
    changes: bool,
    /// With --ci: fail below this efficiency score (0 to 1, or `disabled`)
    #[arg(long, default_value = "0.9", value_name = "FRACTION")]
    lowest_efficiency: String,
    /// With --ci: fail above this many wasted bytes (e.g. 20MB, 1.5GiB, or `disabled`)
    #[arg(long, default_value = "disabled", value_name = "BYTES")]
    highest_wasted_bytes: String,
    /// With --ci: fail when wasted bytes exceed this fraction of the bytes above the base layer (0 to 1, or `disabled`)
    #[arg(long, default_value = "0.1", value_name = "FRACTION")]
    highest_user_wasted_percent: String,
}

pub fn run(store: &Store, a: Args) -> Result<i32> {
    let rules = Rules {
        lowest_efficiency: parse_fraction(&a.lowest_efficiency, "--lowest-efficiency")?,
        highest_wasted_bytes: parse_bytes(&a.highest_wasted_bytes, "--highest-wasted-bytes")?,
        highest_user_wasted_percent: parse_fraction(
            &a.highest_user_wasted_percent,
            "--highest-user-wasted-percent",
        )?,
    };
    let ui = !a.ci && !a.json;
    if ui && !(std::io::stdout().is_terminal() && std::io::stdin().is_terminal()) {
        return Err(err!(
            "explore's UI needs a terminal: run it in one, or use `--ci` (report and rule checks) or `--json`"
        ));
    }
    let img = source::open(store, &a.image)?;
    if img.layers.is_empty() {
        return Err(err!("{} has no layers to explore", a.image));
    }
    let an = model::analyze(&img);
    let eff = efficiency::compute(an.sightings.clone());
    let rep = Report::new(&img, &an, &eff);
    if ui {
        tui::run(&img, &an, &eff).map_err(|e| err!("explore's terminal UI failed: {e}"))?;
        return Ok(0);
    }
    let results = a.ci.then(|| rep.evaluate(&rules));
    if a.json {
        out(rep.json(a.changes, results.as_deref())?);
    } else {
        rep.print_text(a.changes, results.as_deref());
    }
    let failed = results
        .iter()
        .flatten()
        .any(|r| r.status == crate::explore::report::Status::Fail);
    Ok(if failed { 1 } else { 0 })
}
