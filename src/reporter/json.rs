//! JSON lines (`--events FILE`): every event of the run, one JSON object per line, with
//! `"v"` (the format version), `"ts"` (seconds since the epoch) and `"event"` (its kind, e.g.
//! `test-finished`) first. Field names are stable within a format version; README.md
//! documents them.
//!
//! Each output is written once: an attempt's `output` in `attempt-retry` and `test-finished`
//! is left empty when it went out as `test-output` events (it is exactly their
//! concatenation, see `runner/output.rs`); `vmcheck merge` fills it back in from them.

use super::Reporter;
use crate::events::Event;
use std::collections::HashSet;
use std::io::Write;

/// Version of the JSON lines format.
pub const FORMAT_VERSION: u32 = 1;

pub struct JsonReporter<W: Write> {
    out: W,
    /// Attempts (test id, attempt) whose output went out as `test-output` events.
    streamed: HashSet<(usize, u32)>,
}

impl<W: Write> JsonReporter<W> {
    pub fn new(out: W) -> JsonReporter<W> {
        JsonReporter {
            out,
            streamed: HashSet::new(),
        }
    }

    /// The writer, with everything written so far.
    pub fn into_inner(self) -> W {
        self.out
    }

    /// `event`, without the outputs that already went out as `test-output` events.
    fn once(&mut self, event: &Event) -> Option<Event> {
        match event {
            Event::TestOutput { id, attempt, .. } => {
                self.streamed.insert((*id, *attempt));
                None
            }
            Event::AttemptRetry { test, report, .. }
                if self.streamed.contains(&(test.id, report.attempt)) =>
            {
                let mut e = event.clone();
                if let Event::AttemptRetry { report, .. } = &mut e {
                    report.output.clear();
                }
                Some(e)
            }
            Event::TestFinished { test, .. } => {
                let id = test.id;
                let mut e = event.clone();
                if let Event::TestFinished { attempts, .. } = &mut e {
                    for a in attempts {
                        if self.streamed.remove(&(id, a.attempt)) {
                            a.output.clear();
                        }
                    }
                }
                Some(e)
            }
            _ => None,
        }
    }
}

/// One event as a JSON line (without the newline).
pub fn line(event: &Event, ts: f64) -> String {
    let mut obj = serde_json::Map::new();
    obj.insert("v".into(), FORMAT_VERSION.into());
    obj.insert(
        "ts".into(),
        serde_json::json!((ts * 1000.0).round() / 1000.0),
    );
    if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(event) {
        obj.extend(fields);
    }
    serde_json::Value::Object(obj).to_string()
}

impl<W: Write> Reporter for JsonReporter<W> {
    fn report(&mut self, event: &Event) -> std::io::Result<()> {
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        // Each event reaches the file whole and at once: a run killed at any moment (a CI
        // timeout) leaves every event so far, which `vmcheck merge` reads.
        let once = self.once(event);
        writeln!(self.out, "{}", line(once.as_ref().unwrap_or(event), ts))?;
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Placement, TestInfo, Verdict};

    /// An attempt's output is in the stream once: as `test-output` events.
    #[test]
    fn streamed_output_is_not_repeated() {
        use crate::events::{AttemptOutcome, AttemptReport};
        let test = TestInfo {
            id: 1,
            name: "T.t".into(),
            file: "check-a".into(),
            nondestructive: false,
            ram_mib: 0,
            os: None,
        };
        let report = |attempt| AttemptReport {
            attempt,
            outcome: AttemptOutcome::failed("exit code 1"),
            output: "UNIQUE-OUTPUT\n".into(),
            duration: Default::default(),
            machines: vec![],
            artifacts: None,
            known: Default::default(),
            start_ms: None,
            boot: None,
        };
        let mut r = JsonReporter::new(Vec::new());
        r.report(&Event::TestOutput {
            id: 1,
            attempt: 1,
            data: b"UNIQUE-OUTPUT\n".to_vec(),
        })
        .unwrap();
        r.report(&Event::AttemptRetry {
            test: test.clone(),
            placement: Placement::Own,
            report: report(1),
            retry: 1,
            reason: "failed".into(),
        })
        .unwrap();
        r.report(&Event::TestFinished {
            test,
            placement: Placement::Own,
            verdict: Verdict::Failed,
            // Attempt 2 never streamed (a report vmcheck made up): its output stays.
            attempts: vec![report(1), report(2)],
        })
        .unwrap();
        let text = String::from_utf8(r.out).unwrap();
        assert_eq!(text.matches("UNIQUE-OUTPUT").count(), 2, "{text}");
        assert!(text.lines().last().unwrap().contains("UNIQUE-OUTPUT"));
        assert!(r.streamed.is_empty(), "forgotten once the test finished");
    }

    #[test]
    fn events_have_stable_field_names() {
        let test = TestInfo {
            id: 3,
            name: "TestA.testB".into(),
            file: "test/verify/check-a".into(),
            nondestructive: true,
            ram_mib: 0,
            os: None,
        };
        let l = line(
            &Event::TestFinished {
                test,
                placement: Placement::Global(2),
                verdict: Verdict::Skipped {
                    reason: "no".into(),
                },
                attempts: vec![],
            },
            1.5,
        );
        assert_eq!(
            l,
            r#"{"v":1,"ts":1.5,"event":"test-finished","test":{"id":3,"name":"TestA.testB","file":"test/verify/check-a","nondestructive":true,"ram_mib":0},"placement":{"kind":"global","machine":2},"verdict":{"verdict":"skipped","reason":"no"},"attempts":[]}"#
        );
        let out = line(
            &Event::TestOutput {
                id: 1,
                attempt: 1,
                data: b"hi\n".to_vec(),
            },
            0.0,
        );
        assert!(
            out.ends_with(r#""event":"test-output","id":1,"attempt":1,"data":"hi\n"}"#),
            "{out}"
        );
    }
}
