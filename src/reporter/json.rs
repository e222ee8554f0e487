//! JSON lines (`--events FILE`): every event of the run, one JSON object per line, with
//! `"v"` (the format version), `"ts"` (seconds since the epoch) and `"event"` (its kind, e.g.
//! `test-finished`) first. Field names are stable within a format version; README.md
//! documents them.

use super::Reporter;
use crate::events::Event;
use std::io::Write;

/// Version of the JSON lines format.
pub const FORMAT_VERSION: u32 = 1;

pub struct JsonReporter<W: Write> {
    out: W,
}

impl<W: Write> JsonReporter<W> {
    pub fn new(out: W) -> JsonReporter<W> {
        JsonReporter { out }
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
        writeln!(self.out, "{}", line(event, ts))?;
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Placement, TestInfo, Verdict};

    #[test]
    fn events_have_stable_field_names() {
        let test = TestInfo {
            id: 3,
            name: "TestA.testB".into(),
            file: "test/verify/check-a".into(),
            nondestructive: true,
            ram_mib: 0,
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
