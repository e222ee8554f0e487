//! Checks after each test: the guest's log since the test started (the journal where there
//! is one, else the kernel log) must not contain messages that are always bad — a kernel
//! oops, BUG or panic, a taint, a segfault, a core dump — unless the test allows them
//! (`allow_journal` regexes, searched in each line). Such messages fail the test, and
//! policy never retries that failure (Cockpit §4.3 step 8).
//!
//! The start of a test is marked by a line written to `/dev/kmsg`, which lands in both the
//! kernel log and the journal, so one mechanism serves every image and existing hosts.

use crate::machine::lines::Lines;
use regex::Regex;
use std::sync::LazyLock;

/// Lines that are bad whatever the test does.
static ALWAYS_BAD: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"Oops:|BUG:|kernel BUG at|Kernel panic|WARNING: CPU: \d+ PID:|",
        r"general protection fault|Tainted: |segfault at |dumped core|",
        r"Process \d+ \(.*\) of user \d+ terminated abnormally",
    ))
    .expect("valid regex")
});

/// The line that marks the start of test attempt `tag` in the guest log.
pub fn marker(tag: &str) -> String {
    format!("vmcheck-start {tag}")
}

/// Shell command that writes the start marker (best effort: needs root).
pub fn mark_command(tag: &str) -> String {
    kmsg_command(&marker(tag))
}

/// Shell command that writes `line` (vmcheck's own, without quotes) to the kernel log.
fn kmsg_command(line: &str) -> String {
    format!("echo '{line}' > /dev/kmsg 2>/dev/null; true")
}

/// The line that marks the end of test attempt `tag`'s body: where its part of a kernel log
/// stream ends (see `machine/kmsg.rs`).
pub fn end_marker(tag: &str) -> String {
    format!("vmcheck-end {tag}")
}

/// Shell command that writes the end marker (builtins only, as the start marker).
pub fn end_command(tag: &str) -> String {
    kmsg_command(&end_marker(tag))
}

/// The exit status of [`journal_command`] in a guest without a journal.
pub const NO_JOURNAL: u32 = 3;

/// A shell function `since` printing its input after the start marker's line, without the
/// markers.
fn since(tag: &str) -> String {
    let (m, e) = (marker(tag), end_marker(tag));
    format!("since() {{ sed -n '/{m}$/,${{/{m}$/d;/{e}$/d;p;}}'; }}; ")
}

/// Where the guest keeps the cursor of the last journal entry vmcheck read on it.
const CURSOR_FILE: &str = "/run/vmcheck-journal-cursor";

/// The journal after asking journald to catch up, piped into `filter` (`" | cmd"`, or
/// nothing). It is read from where the last read on this machine ended (`--cursor-file`,
/// which journalctl updates), so each test on a shared machine reads its own entries, not
/// the whole boot again: that grew with every test (0.1 s more a read for each 1 000 lines
/// under TCG). A cursor journalctl cannot use (an old journalctl, a file a test damaged) is
/// dropped and the whole boot read, as before. The start marker still decides where the
/// test's part starts.
fn journal_read(filter: &str) -> String {
    let read = "journalctl -b --no-pager -q -o cat";
    format!(
        "journalctl --sync 2>/dev/null; {{ {read} --cursor-file={CURSOR_FILE} 2>/dev/null \
         || {{ rm -f {CURSOR_FILE}; {read}; }}; }}{filter}"
    )
}

/// Shell command that prints the guest log since the marker: the kernel log (read directly,
/// so nothing is lost to journald's asynchronous reading of `/dev/kmsg`), then the journal
/// where there is one. One `sed` a log, not two: each process costs the guest ~10 ms
/// (busybox) to ~100 ms (debian-12) under TCG.
pub fn read_command(tag: &str) -> String {
    format!(
        "{}dmesg | since; if command -v journalctl >/dev/null; then {}; fi; true",
        since(tag),
        journal_read(" | since")
    )
}

/// Shell command that prints the journal since the last read on the machine, for a machine
/// whose kernel log was read from its stream; exits [`NO_JOURNAL`] where there is none. The
/// test's part of it is taken on the host ([`TestPart`]): no `sed` in the guest (≈60 ms a
/// test on debian-12 under TCG).
pub fn journal_command() -> String {
    format!(
        "command -v journalctl >/dev/null || exit {NO_JOURNAL}; {}; true",
        journal_read("")
    )
}

/// Test attempt `tag`'s part of a log that arrives in chunks: the lines after its start
/// marker, without vmcheck's markers; what `since` does in the guest, done on the host for
/// [`journal_command`]. Lines are cut at 64 KiB (`MAX_GUEST_LINE`; journald's own bound is lower).
pub struct TestPart {
    start: String,
    end: String,
    started: bool,
    lines: Lines,
    /// A line of the test's with its newline, as `out` gets it.
    whole: Vec<u8>,
}

impl TestPart {
    pub fn new(tag: &str) -> TestPart {
        TestPart {
            start: marker(tag),
            end: end_marker(tag),
            started: false,
            lines: Lines::default(),
            whole: Vec::new(),
        }
    }

    /// Takes a chunk; `out` gets each of the test's lines, with its newline.
    pub fn feed(&mut self, data: &[u8], out: &mut dyn FnMut(&[u8])) {
        let mut lines = std::mem::take(&mut self.lines);
        lines.feed(data, |line, _| {
            if self.take(line) {
                self.whole.clear();
                self.whole.extend_from_slice(line);
                self.whole.push(b'\n');
                out(&self.whole);
            }
            false
        });
        self.lines = lines;
    }

    /// A last line without a newline.
    pub fn finish(mut self, out: &mut dyn FnMut(&[u8])) {
        if let Some((line, _)) = std::mem::take(&mut self.lines).finish()
            && self.take(&line)
        {
            out(&line);
        }
    }

    /// Whether `line` is the test's (and not a marker).
    fn take(&mut self, line: &[u8]) -> bool {
        let is = |marker: &str| line.ends_with(marker.as_bytes());
        if !self.started {
            self.started = is(&self.start);
            false
        } else {
            !is(&self.start) && !is(&self.end)
        }
    }
}

/// The lines of `log` that are always bad and not matched by any of `allowed`. A kernel
/// message seen in both the kernel log and the journal is reported once.
pub fn unexpected(log: &str, allowed: &[Regex]) -> Vec<String> {
    let mut scan = Scanner::new(allowed);
    scan.feed(log.as_bytes());
    scan.finish()
}

/// Most unexpected lines kept (a test that floods the log with them gets a count of the rest).
pub const MAX_UNEXPECTED: usize = 100;

/// [`unexpected`] over a log that arrives in chunks, in bounded memory: a guest log can be
/// far bigger than what is worth keeping.
pub struct Scanner<'a> {
    allowed: &'a [Regex],
    lines: Lines,
    seen: std::collections::HashSet<String>,
    found: Vec<String>,
    more: usize,
}

impl<'a> Scanner<'a> {
    pub fn new(allowed: &'a [Regex]) -> Scanner<'a> {
        Scanner {
            allowed,
            lines: Lines::default(),
            seen: Default::default(),
            found: Vec::new(),
            more: 0,
        }
    }

    /// Takes a chunk. A line longer than any worth matching is cut (its start is what
    /// counts).
    pub fn feed(&mut self, data: &[u8]) {
        let mut lines = std::mem::take(&mut self.lines);
        lines.feed(data, |line, _| {
            self.line(&String::from_utf8_lossy(line));
            false
        });
        self.lines = lines;
    }

    fn line(&mut self, l: &str) {
        if !ALWAYS_BAD.is_match(l) || self.allowed.iter().any(|a| a.is_match(l)) {
            return;
        }
        let l = l.trim_end();
        if self.found.len() >= MAX_UNEXPECTED {
            self.more += 1;
        } else if self.seen.insert(without_timestamp(l).to_string()) {
            self.found.push(l.to_string());
        }
    }

    /// The unexpected lines, and a last line counting those not kept.
    pub fn finish(mut self) -> Vec<String> {
        if let Some((line, _)) = std::mem::take(&mut self.lines).finish() {
            self.line(&String::from_utf8_lossy(&line));
        }
        if self.more > 0 {
            self.found.push(format!(
                "vmcheck: {} more such lines (see journal.txt)",
                self.more
            ));
        }
        self.found
    }
}

/// `[   12.345678] BUG: x` → `BUG: x` (the journal shows kernel lines without the stamp).
fn without_timestamp(line: &str) -> &str {
    match line.strip_prefix('[').and_then(|r| r.split_once("] ")) {
        Some((stamp, rest)) if stamp.trim().parse::<f64>().is_ok() => rest,
        _ => line,
    }
}

/// Compile a test's `allow_journal` (validated when the check file was parsed).
pub fn allowed(patterns: &[String]) -> Vec<Regex> {
    patterns.iter().filter_map(|p| Regex::new(p).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::MAX_GUEST_LINE as MAX_LINE;

    #[test]
    fn finds_always_bad_lines_unless_allowed() {
        let log = "[   12.5] eth0: link up\n\
                   [   13.1] BUG: unable to handle page fault for address: 0000\n\
                   [   13.2] Oops: 0002 [#1] PREEMPT SMP\n\
                   myprog[42]: segfault at 0 ip 0000 sp 0000 error 6\n\
                   everything fine\n";
        assert_eq!(unexpected(log, &[]).len(), 3);
        let allow = allowed(&["segfault at 0 ".into(), "^\\[ *13\\.1\\] BUG".into()]);
        assert_eq!(
            unexpected(log, &allow),
            ["[   13.2] Oops: 0002 [#1] PREEMPT SMP"]
        );
        assert!(unexpected("a normal\nlog\n", &[]).is_empty());
    }

    /// `cmd` run by a real shell.
    fn sh(cmd: &str) -> std::process::Output {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .output()
            .unwrap()
    }

    #[test]
    fn read_command_starts_after_the_marker() {
        // Simulate the guest side with a real shell, a fake kernel log and no journal.
        let cmd = read_command("t1-a2")
            .replace(
                "dmesg |",
                "printf 'old BUG: x\\n[ 1.0] vmcheck-start t1-a2\\nnew line\\nmore\\n' |",
            )
            .replace("command -v journalctl", "false");
        let out = sh(&cmd);
        assert_eq!(String::from_utf8_lossy(&out.stdout), "new line\nmore\n");
        // The journal alone: its own status where there is none.
        let cmd = journal_command().replace("command -v journalctl", "false");
        let out = sh(&cmd);
        assert_eq!(out.status.code(), Some(NO_JOURNAL as i32));
        let both = "[ 3.2] BUG: one\nBUG: one\nBUG: two\n";
        assert_eq!(unexpected(both, &[]), ["[ 3.2] BUG: one", "BUG: two"]);
    }

    /// [`TestPart`] over `chunks`.
    fn part_of(tag: &str, chunks: &[&[u8]]) -> Vec<u8> {
        let mut part = TestPart::new(tag);
        let mut out = Vec::new();
        for chunk in chunks {
            part.feed(chunk, &mut |l| out.extend_from_slice(l));
        }
        part.finish(&mut |l| out.extend_from_slice(l));
        out
    }

    #[test]
    fn the_test_part_starts_after_its_marker_without_markers() {
        let log = "old BUG: x\nvmcheck-start t1-a1\nmine\n[ 2.0] vmcheck-end t1-a1\nlate\n\
                   vmcheck-start t1-a1\nvmcheck-start t2-a1\nlast";
        let want = "mine\nlate\nvmcheck-start t2-a1\nlast";
        for size in [1, 2, 5, 1000] {
            let chunks: Vec<&[u8]> = log.as_bytes().chunks(size).collect();
            assert_eq!(
                part_of("t1-a1", &chunks),
                want.as_bytes(),
                "chunks of {size}"
            );
        }
        assert_eq!(part_of("t3-a1", &[log.as_bytes()]), b"");
        // An endless line is cut, in bounded memory, and ends the same way.
        let long = format!("vmcheck-start t1-a1\n{}\nnext\n", "x".repeat(3 * MAX_LINE));
        let out = part_of("t1-a1", &[long.as_bytes()]);
        assert_eq!(out.len(), MAX_LINE + 1 + 5);
        assert!(out.ends_with(b"x\nnext\n"));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// The host's part is the guest's `since` (sed) of the same log, however cut.
        #[test]
        fn the_test_part_is_what_the_guest_sed_takes(
            lines in proptest::collection::vec(
                proptest::prop_oneof![
                    "[a-z :]{0,12}",
                    proptest::strategy::Just("vmcheck-start t1-a1".to_string()),
                    proptest::strategy::Just("[ 1.5] vmcheck-end t1-a1".to_string()),
                ],
                0..12,
            ),
            cut in 1usize..20,
        ) {
            let log = lines.iter().map(|l| format!("{l}\n")).collect::<String>();
            let cmd = format!("{}printf '%s' \"$LOG\" | since", since("t1-a1"));
            let guest = std::process::Command::new("sh")
                .args(["-c", &cmd])
                .env("LOG", &log)
                .output()
                .unwrap()
                .stdout;
            let chunks: Vec<&[u8]> = log.as_bytes().chunks(cut).collect();
            proptest::prop_assert_eq!(part_of("t1-a1", &chunks), guest);
        }
    }

    /// The journal read on a shared machine starts where the last read ended; a cursor
    /// journalctl rejects is dropped and the whole boot read instead.
    #[test]
    fn journal_reads_continue_from_the_last_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let (log, cursor) = (dir.path().join("journal"), dir.path().join("cursor"));
        // A fake journalctl: one entry per line of $JLOG, a cursor is a line count; it
        // notes every entry it prints in $JLOG.printed.
        let fake = dir.path().join("journalctl");
        std::fs::write(
            &fake,
            r#"#!/bin/sh
[ "$1" = --sync ] && exit 0
start=0 file=
for a; do case $a in --cursor-file=*) file=${a#--cursor-file=} ;; esac; done
if [ -n "$file" ] && [ -e "$file" ]; then
    start=$(cat "$file")
    case $start in '' | *[!0-9]*) echo "bad cursor" >&2; exit 1 ;; esac
fi
tail -n +$((start + 1)) "$JLOG" | tee -a "$JLOG.printed"
[ -z "$file" ] || wc -l <"$JLOG" >"$file"
"#,
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let read = |tag: &str| {
            let cmd = journal_command().replace(CURSOR_FILE, cursor.to_str().unwrap());
            let path = format!(
                "{}:{}",
                dir.path().display(),
                std::env::var("PATH").unwrap()
            );
            let out = std::process::Command::new("sh")
                .args(["-c", &cmd])
                .env("PATH", path)
                .env("JLOG", &log)
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(0));
            String::from_utf8(part_of(tag, &[&out.stdout])).unwrap()
        };
        let append = |text: &str| {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log);
            f.as_mut().unwrap().write_all(text.as_bytes()).unwrap();
        };
        let printed = || std::fs::read_to_string(log.with_extension("printed")).unwrap();
        let test = |tag: &str| format!("vmcheck-start {tag}\nBUG: {tag}\nvmcheck-end {tag}\n");

        append(&format!("boot\n{}", test("t1")));
        assert_eq!(read("t1"), "BUG: t1\n");
        // What the journal took after the end marker is the test's too.
        append(&format!("between\n{}late\n", test("t2")));
        assert_eq!(read("t2"), "BUG: t2\nlate\n");
        // The second read printed only what came after the first.
        assert_eq!(printed().lines().count(), 4 + 5);

        std::fs::write(&cursor, "damaged by a test\n").unwrap();
        append(&test("t3"));
        assert_eq!(read("t3"), "BUG: t3\n");
        assert!(!cursor.exists(), "a rejected cursor is dropped");
        append(&test("t4"));
        assert_eq!(read("t4"), "BUG: t4\n");
        assert!(cursor.exists());
    }

    /// Chunks split anywhere give the same lines; a flood is kept bounded and counted.
    #[test]
    fn scanner_works_on_chunks_in_bounded_memory() {
        let log = "ok\n[ 1.0] BUG: one\nsegfault at 0 here\nno final newline BUG: last";
        for size in [1, 2, 7, 100] {
            let mut scan = Scanner::new(&[]);
            for chunk in log.as_bytes().chunks(size) {
                scan.feed(chunk);
            }
            assert_eq!(scan.finish(), unexpected(log, &[]), "chunks of {size}");
        }
        assert_eq!(unexpected(log, &[]).len(), 3);
        let mut scan = Scanner::new(&[]);
        for i in 0..1000 {
            scan.feed(format!("BUG: number {i}\n").as_bytes());
        }
        let found = scan.finish();
        assert_eq!(found.len(), MAX_UNEXPECTED + 1);
        assert_eq!(
            found.last().unwrap(),
            "vmcheck: 900 more such lines (see journal.txt)"
        );
    }
}
