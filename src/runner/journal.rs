//! Checks after each test: the guest's log since the test started (the journal where there
//! is one, else the kernel log) must not contain messages that are always bad — a kernel
//! oops, BUG or panic, a taint, a segfault, a core dump — unless the test allows them
//! (`allow_journal` regexes, searched in each line). Such messages fail the test, and
//! policy never retries that failure (Cockpit §4.3 step 8).
//!
//! The start of a test is marked by a line written to `/dev/kmsg`, which lands in both the
//! kernel log and the journal, so one mechanism serves every image and existing hosts.

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
    format!("echo '{}' > /dev/kmsg 2>/dev/null; true", marker(tag))
}

/// Shell command that prints the guest log since the marker: the kernel log (read directly,
/// so nothing is lost to journald's asynchronous reading of `/dev/kmsg`), then the journal
/// where there is one, after asking journald to catch up.
pub fn read_command(tag: &str) -> String {
    let m = marker(tag);
    format!(
        "since() {{ sed -n '/{m}$/,$p' | sed 1d; }}; dmesg | since; \
         if command -v journalctl >/dev/null; then journalctl --sync 2>/dev/null; \
         journalctl -b --no-pager -q -o cat | since; fi; true"
    )
}

/// The lines of `log` that are always bad and not matched by any of `allowed`. A kernel
/// message seen in both the kernel log and the journal is reported once.
pub fn unexpected(log: &str, allowed: &[Regex]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    log.lines()
        .filter(|l| ALWAYS_BAD.is_match(l))
        .filter(|l| !allowed.iter().any(|a| a.is_match(l)))
        .map(|l| l.trim_end().to_string())
        .filter(|l| seen.insert(without_timestamp(l).to_string()))
        .collect()
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

    #[test]
    fn read_command_starts_after_the_marker() {
        // Simulate the guest side with a real shell, a fake kernel log and no journal.
        let cmd = read_command("t1-a2")
            .replace(
                "dmesg |",
                "printf 'old BUG: x\\n[ 1.0] vmcheck-start t1-a2\\nnew line\\n' |",
            )
            .replace("command -v journalctl", "false");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "new line\n");
        let both = "[ 3.2] BUG: one\nBUG: one\nBUG: two\n";
        assert_eq!(unexpected(both, &[]), ["[ 3.2] BUG: one", "BUG: two"]);
    }
}
