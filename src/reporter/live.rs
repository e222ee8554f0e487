//! Live test output on stderr (`-v`, and when running one check file directly): each line
//! as it arrives, prefixed with the test's name when several tests run at once.

use super::Reporter;
use super::text::one_line;
use crate::events::Event;
use std::collections::HashMap;
use std::io::Write;

pub struct LiveReporter<W: Write> {
    out: W,
    names: HashMap<usize, String>,
    /// Unfinished line per test id.
    partial: HashMap<usize, Vec<u8>>,
    prefix: bool,
}

impl<W: Write> LiveReporter<W> {
    /// `prefix`: put `[TestClass.testMethod] ` before each line.
    pub fn new(out: W, prefix: bool) -> LiveReporter<W> {
        LiveReporter {
            out,
            names: HashMap::new(),
            partial: HashMap::new(),
            prefix,
        }
    }

    fn line(&mut self, id: usize, line: &[u8]) -> std::io::Result<()> {
        if self.prefix {
            let name = self.names.get(&id).map(String::as_str).unwrap_or("?");
            write!(self.out, "[{name}] ")?;
        }
        // One line of the test's output, safe for a terminal: a CR or an escape sequence
        // from the guest can neither overwrite earlier lines nor drive the terminal.
        writeln!(self.out, "{}", one_line(&String::from_utf8_lossy(line)))
    }
}

impl<W: Write> Reporter for LiveReporter<W> {
    fn report(&mut self, event: &Event) -> std::io::Result<()> {
        match event {
            Event::RunStarted { tests, .. } => {
                self.names = tests.iter().map(|t| (t.id, t.name.clone())).collect();
            }
            Event::TestStarted { test, attempt, .. } => {
                let line = format!("vmcheck: starting {} (attempt {attempt})", test.name);
                self.line(test.id, line.as_bytes())?;
            }
            Event::TestOutput { id, data, .. } => {
                let mut buf = self.partial.remove(id).unwrap_or_default();
                buf.extend_from_slice(data);
                while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                    let rest = buf.split_off(pos + 1);
                    let line = &buf[..pos];
                    let line = line.strip_suffix(b"\r").unwrap_or(line).to_vec();
                    self.line(*id, &line)?;
                    buf = rest;
                }
                self.partial.insert(*id, buf);
            }
            Event::TestFinished { test, .. } | Event::AttemptRetry { test, .. } => {
                if let Some(rest) = self.partial.remove(&test.id)
                    && !rest.is_empty()
                {
                    self.line(test.id, &rest)?;
                }
            }
            Event::MachineReady {
                label, image, boot, ..
            } => {
                writeln!(
                    self.out,
                    "vmcheck: machine {label} ({image}) ready in {:.1}s",
                    boot.as_secs_f64()
                )?;
            }
            Event::MachineFailed { label, message } => {
                writeln!(
                    self.out,
                    "vmcheck: machine {label} failed: {}",
                    one_line(message)
                )?;
            }
            Event::MachineReset { label, reason } => {
                writeln!(
                    self.out,
                    "vmcheck: replacing machine {label}: {}",
                    one_line(reason)
                )?;
            }
            // A soak's executions are in the test's output already.
            Event::TestRunning { .. }
            | Event::SoakStarted { .. }
            | Event::SoakEvent { .. }
            | Event::TestWaiting { .. }
            | Event::RunCancelled { .. }
            | Event::RunFinished { .. }
            | Event::KnownIssuePassed { .. } => {}
        }
        self.out.flush()
    }
}
