//! An attempt's output: everything its bodies print and vmcheck's notes, in order.
//!
//! Memory stays bounded whatever a test prints. Every byte goes to the attempt's
//! `output.txt` as it arrives; what is *shown* (passed on live, as `test-output` events, and
//! kept for the report: TAP, JUnit, known-issue matching) is the first [`SHOWN_HEAD`] bytes,
//! then, when the attempt ends, a note saying how much was cut and where the whole output
//! is, and the last [`SHOWN_TAIL`] bytes. So the report's output is exactly the
//! concatenation of the attempt's `test-output` events, which lets `vmcheck merge` rebuild
//! it from them.
//!
//! Live chunks end on UTF-8 character boundaries (an incomplete character waits for the
//! rest), so text split across reads is not mangled by lossy conversion.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Bytes of an attempt's output shown as they arrive.
pub const SHOWN_HEAD: usize = 64 * 1024;
/// Bytes at the end of an attempt's output shown when it ends (after a cut).
pub const SHOWN_TAIL: usize = 64 * 1024;

/// What a running attempt tells the dispatcher while it runs.
pub enum Progress<'a> {
    /// Output, as it arrives.
    Output(&'a [u8]),
    /// The machines (labels) are ready and the test's body starts.
    Running(&'a [String]),
    /// A soak started: its duration, seed and events.
    SoakStarted(std::time::Duration, u64, &'a [String]),
    /// One execution of a soak's event ended.
    Soak(&'a crate::events::SoakRun),
}

/// A callback that sees an attempt's progress as it happens.
pub type LiveOutput = Arc<dyn Fn(Progress<'_>) + Send + Sync>;

/// The attempt's output (see the module doc).
pub struct Log {
    inner: Mutex<Inner>,
    pub live: LiveOutput,
}

struct Inner {
    /// `output.txt`, or why it could not be written.
    file: Result<std::fs::File, String>,
    path: PathBuf,
    /// What is shown: the head, then (at the end) the cut note and the tail.
    shown: Vec<u8>,
    /// Bytes of `shown` not yet passed on live (an incomplete UTF-8 character).
    sent: usize,
    /// Output after the head, last [`SHOWN_TAIL`] bytes.
    tail: VecDeque<u8>,
    /// Whether the head is full (later output goes to `tail`).
    capped: bool,
    /// Bytes dropped from the tail.
    cut: u64,
    /// The last byte written, for notes on a line of their own.
    last: Option<u8>,
}

impl Log {
    /// Output that goes to `file` (created private, truncated) and to `live`.
    pub fn new(file: &Path, live: LiveOutput) -> Log {
        let opened = crate::runner::artifacts::create_private(file)
            .map_err(|e| format!("cannot write {}: {e}", file.display()));
        let log = Log {
            inner: Mutex::new(Inner {
                file: opened,
                path: file.to_path_buf(),
                shown: Vec::new(),
                sent: 0,
                tail: VecDeque::new(),
                capped: false,
                cut: 0,
                last: None,
            }),
            live,
        };
        let error = log
            .inner
            .lock()
            .expect("poisoned")
            .file
            .as_ref()
            .err()
            .cloned();
        if let Some(e) = error {
            log.note(&format!("vmcheck: {e}"));
        }
        log
    }

    /// Output of the test, as it arrives.
    pub fn write(&self, data: &[u8]) {
        let mut inner = self.inner.lock().expect("poisoned");
        inner.write(data, &self.live);
    }

    /// A note of vmcheck's, on a line of its own.
    pub fn note(&self, line: &str) {
        let mut inner = self.inner.lock().expect("poisoned");
        let mut text = String::new();
        if inner.last.is_some_and(|b| b != b'\n') {
            text.push('\n');
        }
        text.push_str(line);
        text.push('\n');
        inner.write(text.as_bytes(), &self.live);
    }

    /// The last non-empty line written so far (a skipped test's reason).
    pub fn last_line(&self) -> String {
        let inner = self.inner.lock().expect("poisoned");
        let text = if inner.capped {
            let (a, b) = inner.tail.as_slices();
            String::from_utf8_lossy(&[a, b].concat()).into_owned()
        } else {
            String::from_utf8_lossy(&inner.shown).into_owned()
        };
        text.lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("")
            .to_string()
    }

    /// End the output: show what was cut and the tail, and return the shown text. `kept`
    /// says whether `output.txt` stays (a passing attempt's is removed).
    pub fn finish(&self, kept: bool) -> String {
        let mut inner = self.inner.lock().expect("poisoned");
        if let Ok(f) = &mut inner.file {
            let _ = f.flush();
        }
        if inner.capped {
            let mut tail: Vec<u8> = inner.tail.drain(..).collect();
            if inner.cut > 0 {
                // Start the tail on a line boundary when one is near.
                if let Some(nl) = tail.iter().take(1024).position(|&b| b == b'\n') {
                    tail.drain(..=nl);
                    inner.cut += nl as u64 + 1;
                }
                let mut note = format!("[vmcheck: {} of output cut", size(inner.cut));
                match (&inner.file, kept) {
                    (Ok(_), true) => note.push_str(&format!(
                        "; the whole output is in {}",
                        inner.path.display()
                    )),
                    (Err(e), _) => note.push_str(&format!(" ({e})")),
                    (Ok(_), false) => {}
                }
                note.push_str("]\n");
                inner.show(note.as_bytes());
            }
            inner.show(&tail);
            inner.capped = false;
        }
        inner.send(&self.live, true);
        String::from_utf8_lossy(&inner.shown).into_owned()
    }
}

impl Inner {
    fn write(&mut self, data: &[u8], live: &LiveOutput) {
        if data.is_empty() {
            return;
        }
        self.last = data.last().copied();
        if let Ok(f) = &mut self.file
            && let Err(e) = f.write_all(data)
        {
            self.file = Err(format!("cannot write {}: {e}", self.path.display()));
        }
        let mut data = data;
        if !self.capped {
            let room = SHOWN_HEAD.saturating_sub(self.shown.len());
            let (now, later) = data.split_at(room.min(data.len()));
            self.show(now);
            data = later;
            if !data.is_empty() {
                self.capped = true;
                let where_ = match &self.file {
                    Ok(_) => format!("it goes on in {}", self.path.display()),
                    Err(e) => e.clone(),
                };
                let note = format!(
                    "\n[vmcheck: more than {} of output; {where_}; its end is shown when the attempt ends]\n",
                    size(SHOWN_HEAD as u64)
                );
                self.show(note.as_bytes());
            }
            self.send(live, false);
        }
        if self.capped {
            self.tail.extend(data);
            let over = self.tail.len().saturating_sub(SHOWN_TAIL);
            self.tail.drain(..over);
            self.cut += over as u64;
        }
    }

    fn show(&mut self, data: &[u8]) {
        self.shown.extend_from_slice(data);
    }

    /// Pass on what is shown but not yet sent, up to the last complete UTF-8 character
    /// (everything when `all`).
    fn send(&mut self, live: &LiveOutput, all: bool) {
        let pending = &self.shown[self.sent..];
        let n = if all {
            pending.len()
        } else {
            complete_utf8(pending)
        };
        if n > 0 {
            live(Progress::Output(&pending[..n]));
            self.sent += n;
        }
    }
}

/// The length of `data` without an incomplete UTF-8 character at its end (invalid bytes
/// count as complete: they will not become valid).
fn complete_utf8(data: &[u8]) -> usize {
    let start = data.len().saturating_sub(3);
    for i in (start..data.len()).rev() {
        let b = data[i];
        if b & 0xC0 == 0x80 {
            continue; // a continuation byte: look further back
        }
        let need = match b {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => return data.len(),
        };
        return if data.len() - i < need && std::str::from_utf8(&data[i..]).is_err() {
            // Incomplete only if what is there is a valid prefix.
            if valid_prefix(&data[i..]) {
                i
            } else {
                data.len()
            }
        } else {
            data.len()
        };
    }
    data.len()
}

fn valid_prefix(bytes: &[u8]) -> bool {
    matches!(std::str::from_utf8(bytes), Err(e) if e.error_len().is_none())
}

/// `12.3 MiB`, `64 KiB`, `10 bytes`.
pub fn size(bytes: u64) -> String {
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * 1024;
    if bytes >= MIB {
        format!("{:.1} MiB", bytes as f64 / MIB as f64)
    } else if bytes >= KIB {
        format!("{} KiB", bytes / KIB)
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(dir: &Path) -> (Log, Arc<Mutex<Vec<u8>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let live: LiveOutput = Arc::new(move |p| {
            if let Progress::Output(d) = p {
                s.lock().unwrap().extend_from_slice(d)
            }
        });
        (Log::new(&dir.join("output.txt"), live), seen)
    }

    #[test]
    fn notes_start_on_a_line_of_their_own() {
        let d = tempfile::tempdir().unwrap();
        let (log, _) = log(d.path());
        log.note("vmcheck: first");
        log.write(b"no final newline");
        log.note("vmcheck: the test failed");
        log.write(b"line\n");
        log.note("vmcheck: after a newline");
        assert_eq!(
            log.finish(true),
            "vmcheck: first\nno final newline\nvmcheck: the test failed\nline\nvmcheck: after a newline\n"
        );
    }

    #[test]
    fn small_output_is_shown_whole_and_live_equals_the_report() {
        let d = tempfile::tempdir().unwrap();
        let (log, seen) = log(d.path());
        log.write("é".as_bytes().split_at(1).0);
        assert!(seen.lock().unwrap().is_empty(), "half a character waits");
        log.write("é".as_bytes().split_at(1).1);
        log.write(b"\x00\x1b[31m\xff\n");
        let shown = log.finish(true);
        assert_eq!(
            shown,
            String::from_utf8_lossy("é\x00\x1b[31m\u{FFFD}\n".as_bytes())
        );
        assert_eq!(String::from_utf8_lossy(&seen.lock().unwrap()), shown);
        assert_eq!(
            std::fs::read(d.path().join("output.txt")).unwrap(),
            b"\xc3\xa9\x00\x1b[31m\xff\n"
        );
    }

    #[test]
    fn large_output_keeps_head_and_tail_and_says_what_was_cut() {
        let d = tempfile::tempdir().unwrap();
        let (log, seen) = log(d.path());
        let line = [b'x'; 99]
            .iter()
            .copied()
            .chain([b'\n'])
            .collect::<Vec<u8>>();
        let total = 10 * 1024 * 1024;
        for _ in 0..total / line.len() {
            log.write(&line);
        }
        log.write(b"the last line\n");
        log.note("vmcheck: the test failed in machine1 (exit code 1)");
        let shown = log.finish(true);
        assert!(
            shown.len() < SHOWN_HEAD + SHOWN_TAIL + 1024,
            "{}",
            shown.len()
        );
        assert_eq!(String::from_utf8_lossy(&seen.lock().unwrap()), shown);
        assert!(
            shown.contains("MiB of output cut; the whole output is in "),
            "{}",
            &shown[SHOWN_HEAD..SHOWN_HEAD + 400]
        );
        assert!(
            shown.ends_with("the last line\nvmcheck: the test failed in machine1 (exit code 1)\n")
        );
        let file = std::fs::metadata(d.path().join("output.txt"))
            .unwrap()
            .len();
        assert!(file >= total as u64, "the file has everything: {file}");
        assert_eq!(
            log.last_line(),
            "vmcheck: the test failed in machine1 (exit code 1)"
        );
    }

    #[test]
    fn a_removed_file_is_not_named() {
        let d = tempfile::tempdir().unwrap();
        let (log, _) = log(d.path());
        log.write(&vec![b'y'; SHOWN_HEAD + SHOWN_TAIL + 5000]);
        let shown = log.finish(false);
        assert!(shown.contains("of output cut]"), "passing attempt: no path");
    }

    #[test]
    fn utf8_boundaries() {
        assert_eq!(complete_utf8(b"abc"), 3);
        assert_eq!(complete_utf8(b"ab\xc3"), 2);
        assert_eq!(complete_utf8(b"ab\xe2\x82"), 2);
        assert_eq!(complete_utf8("ab€".as_bytes()), 5);
        assert_eq!(complete_utf8(b"ab\xff"), 3);
        assert_eq!(complete_utf8(b"ab\xc3x"), 4);
    }
}
