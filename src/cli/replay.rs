//! `vmcheck report` and `vmcheck merge`: recorded event streams (one run's, or several
//! shards' combined) replayed through the same reporters as a live run.

use super::args::{FlakyResult, MergeArgs, ProgressMode, ReportArgs};
use super::errors::CliError;
use super::run::final_code;
use super::run::outputs::{Outputs, ReportFailed, fan_out, reporters};
use vmcheck::events::RunStats;
use vmcheck::exit_codes;
use vmcheck::reporter::summary;
use vmcheck::signal::Cancel;

/// `vmcheck report`: the HTML report of one run's event stream, or of several combined.
pub fn report(args: &ReportArgs) -> Result<i32, CliError> {
    let mut streams = Vec::new();
    for f in &args.files {
        streams.push(vmcheck::results::merge::read(f).map_err(|e| CliError::Usage(e.to_string()))?);
    }
    let events = match streams.as_slice() {
        [one] => one.events.clone(),
        _ => vmcheck::results::merge::merge(&streams),
    };
    let store = vmcheck::results::store::path_of(args.results_db.as_deref());
    let outputs = Outputs {
        tap: false,
        events: None,
        junit: None,
        html: Some(&args.html),
        store: &store,
        status: None,
        live: None,
        progress: ProgressMode::None,
    };
    let report_failed = ReportFailed::default();
    let mut report = fan_out(
        reporters(&outputs, Vec::new())?,
        Cancel::new(),
        report_failed.clone(),
    );
    for e in &events {
        report(e);
    }
    drop(report);
    if report_failed.get() {
        return Ok(exit_codes::REPORT_FAILED);
    }
    vmcheck::say!(
        "vmcheck: the report is in {}",
        args.html.join("index.html").display()
    );
    Ok(exit_codes::OK)
}

/// `vmcheck merge`: replay the combined events of several runs through the reporters.
pub fn merge(args: &MergeArgs) -> Result<i32, CliError> {
    let mut streams = Vec::new();
    for f in &args.files {
        streams.push(vmcheck::results::merge::read(f).map_err(|e| CliError::Usage(e.to_string()))?);
    }
    if let Some(warning) = vmcheck::results::merge::check_shards(&streams)
        .map_err(|e| CliError::Usage(e.to_string()))?
    {
        vmcheck::say!("vmcheck: warning: {warning}");
    }
    let events = vmcheck::results::merge::merge(&streams);
    let test_os = match events.first() {
        Some(vmcheck::events::Event::RunStarted { test_os, .. }) => test_os.clone(),
        _ => String::new(),
    };
    let store = vmcheck::results::store::path_of(args.results_db.as_deref());
    let outputs = Outputs {
        tap: true,
        events: args.events.as_deref(),
        junit: args.junit.as_deref(),
        html: args.html.as_deref(),
        store: &store,
        status: None,
        live: None,
        progress: ProgressMode::None,
    };
    // The runs' own re-run command (their --test-dir, their machines), else a plain one.
    let rerun = match events.first() {
        Some(vmcheck::events::Event::RunStarted { rerun, .. }) if !rerun.is_empty() => {
            rerun.clone()
        }
        _ => summary::rerun_words(
            &["vmcheck".into(), "run".into()],
            &[],
            Some(test_os.as_str()).filter(|os| !os.is_empty() && !os.contains(',')),
        ),
    };
    let report_failed = ReportFailed::default();
    let mut report = fan_out(
        reporters(&outputs, rerun)?,
        Cancel::new(),
        report_failed.clone(),
    );
    let mut stats = RunStats::default();
    for e in &events {
        report(e);
        if let vmcheck::events::Event::RunFinished { stats: s, .. } = e {
            stats = s.clone();
        }
    }
    // The runs are recorded as `results import` records them, which also lets the shards'
    // durations order later runs.
    if let Err(e) = super::results::import(&store, &streams) {
        vmcheck::say!("vmcheck: warning: outcome store {e}; the runs were not recorded");
    }
    Ok(final_code(
        &stats,
        &Cancel::new(),
        &report_failed,
        FlakyResult::Pass,
    ))
}
