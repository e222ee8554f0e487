//! A run's outputs: every reporter opened before anything boots (TAP, JSON lines, JUnit,
//! HTML, the status file, live output, progress, the summary), and the fan-out that gives
//! each event to each of them, where a reporter that cannot write stops the run.

use crate::cli::args::ProgressMode;
use crate::cli::errors::CliError;
use std::io::BufWriter;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vmcheck::reporter::Reporter;
use vmcheck::reporter::file::ReportFile;
use vmcheck::reporter::html::HtmlReporter;
use vmcheck::reporter::json::JsonReporter;
use vmcheck::reporter::junit::JunitReporter;
use vmcheck::reporter::live::LiveReporter;
use vmcheck::reporter::progress::{BarReporter, LinesReporter};
use vmcheck::reporter::status::StatusReporter;
use vmcheck::reporter::summary::SummaryReporter;
use vmcheck::reporter::tap::TapReporter;
use vmcheck::signal::Cancel;

/// Whether a reporter's output failed during the run (it then stopped the run).
#[derive(Clone, Default)]
pub(crate) struct ReportFailed(Arc<std::sync::atomic::AtomicBool>);

impl ReportFailed {
    pub(crate) fn set(&self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub(crate) fn get(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A reporter and what it writes, for the message when it fails (`the JUnit report x.xml`).
pub(crate) struct Output {
    what: String,
    reporter: Box<dyn Reporter + Send>,
}

impl Output {
    pub(crate) fn new(what: impl Into<String>, reporter: impl Reporter + Send + 'static) -> Output {
        Output {
            what: what.into(),
            reporter: Box::new(reporter),
        }
    }
}

/// The outputs a run or a merge writes.
pub(crate) struct Outputs<'a> {
    /// TAP on stdout (unless JSON lines go there) and the summary on stderr: not for
    /// `vmcheck report`, which writes only its report.
    pub(crate) tap: bool,
    /// The HTML report's directory.
    pub(crate) html: Option<&'a Path>,
    /// The outcome store, for the HTML report's history.
    pub(crate) store: &'a Path,
    /// JSON lines (`-`: on stdout, instead of TAP).
    pub(crate) events: Option<&'a Path>,
    pub(crate) junit: Option<&'a Path>,
    pub(crate) status: Option<&'a Path>,
    /// Live test output on stderr; `Some(true)`: prefixed with the test's name.
    pub(crate) live: Option<bool>,
    pub(crate) progress: ProgressMode,
}

/// Open every output (before anything boots, so a bad path is an input error, and without
/// touching an earlier report: see [`ReportFile`]): TAP on stdout unless JSON lines go
/// there, JSON lines, JUnit, live output, progress and the summary on stderr.
pub(crate) fn reporters(outputs: &Outputs, rerun: Vec<String>) -> Result<Vec<Output>, CliError> {
    fn usage(p: &Path) -> impl FnOnce(std::io::Error) -> CliError + '_ {
        move |e| CliError::Usage(format!("cannot create {}: {e}", p.display()))
    }
    let streamed = |p: &Path| {
        ReportFile::streamed(p)
            .map(BufWriter::new)
            .map_err(usage(p))
    };
    let replaced = |p: &Path| {
        ReportFile::replaced(p)
            .map(BufWriter::new)
            .map_err(usage(p))
    };
    let mut reporters = Vec::new();
    match outputs.events {
        Some(p) if p.as_os_str() == "-" => {
            reporters.push(Output::new(
                "the events on stdout",
                JsonReporter::new(std::io::stdout()),
            ));
        }
        Some(p) => {
            if outputs.tap {
                reporters.push(tap_on_stdout());
            }
            reporters.push(Output::new(
                format!("the events file {}", p.display()),
                JsonReporter::new(streamed(p)?),
            ));
        }
        None if outputs.tap => reporters.push(tap_on_stdout()),
        None => {}
    }
    if let Some(dir) = outputs.html {
        let history = vmcheck::reporter::html::store_history(outputs.store.to_path_buf());
        let html = HtmlReporter::create(dir, Some(history)).map_err(usage(dir))?;
        reporters.push(Output::new(
            format!("the HTML report {}", dir.join("index.html").display()),
            html,
        ));
    }
    if let Some(p) = outputs.junit {
        reporters.push(Output::new(
            format!("the JUnit report {}", p.display()),
            JunitReporter::new(replaced(p)?),
        ));
    }
    if let Some(p) = outputs.status {
        // Checked like the others; the reporter replaces the file on each change.
        drop(replaced(p)?);
        reporters.push(Output::new(
            format!("the status file {}", p.display()),
            StatusReporter::new(p.to_path_buf()),
        ));
    }
    if let Some(prefix) = outputs.live {
        reporters.push(Output::new(
            "the live output on stderr",
            LiveReporter::new(std::io::stderr(), prefix),
        ));
    }
    let mode = match outputs.progress {
        ProgressMode::Auto if outputs.live.is_some() => ProgressMode::None,
        ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Bar,
        ProgressMode::Auto => ProgressMode::Lines,
        m => m,
    };
    match mode {
        ProgressMode::Bar => {
            reporters.push(Output::new("the progress display", BarReporter::new()))
        }
        ProgressMode::Lines => reporters.push(Output::new(
            "the progress lines on stderr",
            LinesReporter::new(std::io::stderr()),
        )),
        ProgressMode::Auto | ProgressMode::None => {}
    }
    if outputs.tap {
        reporters.push(Output::new(
            "the summary on stderr",
            SummaryReporter::new(std::io::stderr(), rerun),
        ));
    }
    Ok(reporters)
}

/// TAP on stdout, which a forced exit (a second Ctrl-C) closes validly.
pub(crate) fn tap_on_stdout() -> Output {
    let tap = Arc::new(Mutex::new(TapReporter::new(std::io::stdout())));
    let last_words = tap.clone();
    vmcheck::signal::at_forced_exit(move || {
        // The run may be writing a line: wait a little for it, never forever.
        for _ in 0..100 {
            if let Ok(mut tap) = last_words.try_lock() {
                let _ = tap.abandon("interrupted twice, exiting at once");
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    Output::new("TAP on stdout", tap)
}

/// Send every event to every reporter. A reporter whose output fails (disk full, stdout
/// closed) gets no more events, says so, and stops the run: the others still get every
/// event, so they close properly, and the exit code is [`exit_codes::REPORT_FAILED`].
pub(crate) fn fan_out(
    mut reporters: Vec<Output>,
    cancel: Cancel,
    report_failed: ReportFailed,
) -> impl FnMut(&vmcheck::events::Event) {
    let mut failed = vec![false; reporters.len()];
    move |event| {
        for (r, failed) in reporters.iter_mut().zip(failed.iter_mut()) {
            if *failed {
                continue;
            }
            if let Err(e) = r.reporter.report(event) {
                *failed = true;
                report_failed.set();
                let why = format!("cannot write {}: {e}", r.what);
                vmcheck::say!("vmcheck: {why}; stopping the run");
                cancel.stop(why);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::args::FlakyResult;
    use crate::cli::run::final_code;
    use vmcheck::events::RunStats;
    use vmcheck::exit_codes;

    /// A reporter that fails at `run-finished` (a disk that filled up): the failure is said
    /// once, the other reporters still get every event, and the run is stopped.
    #[test]
    fn a_failing_reporter_stops_the_run_and_counts() {
        struct Full;
        impl Reporter for Full {
            fn report(&mut self, e: &vmcheck::events::Event) -> std::io::Result<()> {
                match e {
                    vmcheck::events::Event::RunFinished { .. } => Err(std::io::Error::new(
                        std::io::ErrorKind::StorageFull,
                        "No space left on device",
                    )),
                    _ => Ok(()),
                }
            }
        }
        let seen = Arc::new(Mutex::new(Vec::new()));
        struct Log(Arc<Mutex<Vec<String>>>);
        impl Reporter for Log {
            fn report(&mut self, e: &vmcheck::events::Event) -> std::io::Result<()> {
                let kind = serde_json::to_value(e).unwrap()["event"].to_string();
                self.0.lock().unwrap().push(kind);
                Ok(())
            }
        }
        let (cancel, failed) = (Cancel::new(), ReportFailed::default());
        let mut fan = fan_out(
            vec![
                Output::new("the JUnit report j.xml", Full),
                Output::new("log", Log(seen.clone())),
            ],
            cancel.clone(),
            failed.clone(),
        );
        let finished = vmcheck::events::Event::RunFinished {
            stats: RunStats::default(),
            wall: Duration::ZERO,
            unmatched_known: vec![],
        };
        fan(&vmcheck::events::Event::RunCancelled { reason: "x".into() });
        assert!(!failed.get());
        fan(&finished);
        fan(&finished);
        assert!(failed.get());
        assert_eq!(
            cancel.describe(),
            "cannot write the JUnit report j.xml: No space left on device"
        );
        assert_eq!(seen.lock().unwrap().len(), 3, "the others get every event");
        assert_eq!(
            final_code(&RunStats::default(), &cancel, &failed, FlakyResult::Pass),
            exit_codes::REPORT_FAILED
        );
    }
}
