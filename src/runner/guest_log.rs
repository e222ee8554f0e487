//! The check of each machine's guest log after a test (Cockpit §4.3 step 8): its log since
//! the test's start marker goes to `<machine>/journal.txt` as it is read (never whole into
//! memory; removed with the directory of a passing attempt) and is scanned for always-bad
//! lines (`journal.rs`).
//!
//! Where a machine's kernel log streams to the host (`machine/kmsg.rs`), its kernel part is
//! read there, up to an end marker that the body's own command wrote (a `run` body on the
//! first machine) or that is written here, and only a journal, where the guest has one, is
//! read in the guest. Elsewhere, or when the stream fails, one command reads both in the
//! guest. What answers over SSH on a shared machine doubles as its health probe.

use super::artifacts::AttemptDir;
use super::attempt::{AttemptRequest, Log, Named};
use super::host::Granted;
use super::journal;
use crate::machine::shell::Exec;
use crate::machine::ssh::{ExitStatus, Stream};
use std::time::Duration;

/// How long a kernel log stream may lag behind its end marker before it is given up.
const STREAM_LIMIT: Duration = Duration::from_secs(5);
/// How long reading a log or writing a marker in the guest may take.
const COMMAND_LIMIT: Duration = Duration::from_secs(60);

/// What the check of an attempt needs to know: its markers' tag, whether its machine is
/// shared, how its body ended.
pub struct LogCheck<'a> {
    /// The attempt's tag in its markers.
    pub tag: &'a str,
    /// The machine is a nondestructive test's (shared): commands go over SSH, as the tests
    /// reach it, to double as its health probe.
    pub shared: bool,
    /// The first machine's body wrote the end marker, over SSH, and ended.
    pub ended_by_body: bool,
}

/// Always-bad guest log lines since the test started, on any of its machines, that the test
/// does not allow (prefixed with the machine's name when there are several); and whether
/// the first machine answered after its body.
pub(super) async fn unexpected_messages(
    req: &AttemptRequest,
    granted: &Granted,
    machines: &[Named],
    check: &LogCheck<'_>,
    dir: &AttemptDir,
    log: &Log,
) -> (Vec<String>, bool) {
    let mut first_answered = false;
    let patterns: Vec<String> = (req.test.allow_journal.iter())
        .chain(&granted.allow_journal)
        .cloned()
        .collect();
    let allowed = journal::allowed(&patterns);
    let mut lines = Vec::new();
    for (i, m) in machines.iter().enumerate() {
        let path = dir.path.join(&m.name).join("journal.txt");
        let mut file = super::artifacts::create_private(&path)
            .map_err(|e| format!("cannot write {}: {e}", path.display()));
        let mut scan = journal::Scanner::new(&allowed);
        let mut sink = |stream: Stream, data: &[u8]| {
            if stream == Stream::Stdout {
                scan.feed(data);
                if let Ok(f) = &mut file
                    && let Err(e) = std::io::Write::write_all(f, data)
                {
                    file = Err(format!("cannot write {}: {e}", path.display()));
                }
            }
        };
        let answered = read_log(m, check, i == 0, &mut sink).await;
        if i == 0 {
            first_answered = answered;
        }
        if let Err(e) = file {
            log.note(&format!("vmcheck: {e}"));
        }
        for l in scan.finish() {
            lines.push(if machines.len() > 1 {
                format!("{}: {l}", m.name)
            } else {
                l
            });
        }
    }
    (lines, first_answered)
}

/// Feed `sink` machine `m`'s log since the start marker; whether it answered.
async fn read_log(
    m: &Named,
    check: &LogCheck<'_>,
    first: bool,
    sink: &mut (dyn FnMut(Stream, &[u8]) + Send),
) -> bool {
    let shell = m.machine.shell();
    let mut stream = None;
    if let Some(kmsg) = m.machine.kmsg() {
        let ended = if first && check.ended_by_body {
            true
        } else {
            let end = journal::end_command(check.tag);
            shell
                .run(exec(&end, check.shared))
                .await
                .is_ok_and(|d| d.status.success())
        };
        let markers = (journal::marker(check.tag), journal::end_marker(check.tag));
        let read = if ended {
            kmsg.read_between((&markers.0, &markers.1), STREAM_LIMIT, &mut |d: &[u8]| {
                sink(Stream::Stdout, d)
            })
            .await
            .map_err(|e| e.to_string())
        } else {
            Err("the end marker could not be written".to_string())
        };
        match read {
            Ok(()) => stream = Some(kmsg),
            Err(e) => {
                // Given up for the machine's life (a stream that failed once is not trusted).
                kmsg.set_live(false);
                let note = format!("vmcheck: {e}: the log is read in the guest\n");
                sink(Stream::Stdout, note.as_bytes());
            }
        }
    }
    // With the stream, the journal's new lines come whole and the test's part of them is
    // taken here; without it, the guest takes it (`since`) from the kernel log and journal.
    let (command, mut part) = match stream {
        // The end marker came: over SSH, on a shared machine (see above).
        Some(kmsg) if kmsg.journal() == Some(false) => return true,
        Some(_) => (
            journal::journal_command(),
            Some(journal::TestPart::new(check.tag)),
        ),
        None => (journal::read_command(check.tag), None),
    };
    // Once the end marker came, a shared machine has answered over SSH after the test:
    // its journal is read through the agent too (on debian-12 an SSH channel is a PAM
    // session and a login shell, ≈0.16 s under TCG).
    let done = {
        let mut take = |s: Stream, data: &[u8]| match (&mut part, s) {
            (Some(part), Stream::Stdout) => part.feed(data, &mut |l| sink(s, l)),
            _ => sink(s, data),
        };
        shell
            .run(Exec {
                sink: Some(&mut take),
                ..exec(&command, check.shared && stream.is_none())
            })
            .await
    };
    if let Some(part) = part {
        part.finish(&mut |l| sink(Stream::Stdout, l));
    }
    match done {
        Ok(d) => {
            if let Some(kmsg) = stream {
                kmsg.set_journal(d.status != ExitStatus::Code(journal::NO_JOURNAL));
            }
            true
        }
        Err(e) => {
            let text = format!("vmcheck: cannot read the guest log: {e}\n");
            sink(Stream::Stdout, text.as_bytes());
            false
        }
    }
}

/// One of the check's commands: a fresh machine's go through the agent (a test that used its
/// own SSH connections leaves vmcheck none to make); a shared machine's over SSH.
fn exec(command: &str, shared: bool) -> Exec<'_> {
    Exec {
        agent: !shared,
        ..Exec::new(command, COMMAND_LIMIT)
    }
}
