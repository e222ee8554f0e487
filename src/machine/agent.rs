//! The guest agent: a channel to a machine that needs no SSH handshake. It owns the guest
//! program (`agent.sh`, shell builtins only), how it is started, the host's side of its
//! virtio-serial port, and the framing of its answers.
//!
//! Why: under TCG the first SSH handshake with a restored guest (its code not yet
//! translated) takes most of a restore (busybox: 0.38 s of 0.72 s). The agent is started over
//! SSH once, before a booted snapshot is saved, so every machine restored from that snapshot
//! finds it already waiting on its port, and vmcheck sets the clock and identity, and runs its
//! own commands, without connecting first. SSH stays for what needs it (stdin, uploads, the
//! tests' own connections) and connects when first needed.
//!
//! qemu's side of the port is a pair of FIFOs in the machine's private run directory
//! (`-chardev pipe`): always connected, so the guest's reads block instead of seeing the host
//! hang up, and a request written before the guest reads it waits in the pipe. The host opens
//! the reading end read-only, so qemu exiting ends it (EOF) rather than leaving a read waiting.

use super::ssh::{ExitStatus, Output, OutputSink, Stream};
use crate::shell::quote;
use std::io::{ErrorKind, Read as _};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;

/// The name of the agent's virtio-serial port (the guest finds its device by it).
pub const PORT: &str = "org.vmcheck.agent.0";
/// The guest program.
const PROGRAM: &str = include_str!("agent.sh");
/// Longest status line after a `run` (`$?`, a few digits).
const MAX_STATUS: usize = 16;
// Longest line of a conversation (`talk`).
use super::MAX_GUEST_LINE as MAX_LINE;

/// qemu's `-chardev pipe` path in the run directory `dir`: qemu reads `<it>.in` and writes
/// `<it>.out`.
pub fn pipe_base(dir: &Path) -> PathBuf {
    dir.join("agent")
}

fn fifo(dir: &Path, end: &str) -> PathBuf {
    fifo_end(&pipe_base(dir), end)
}

/// The FIFO `<base>.<end>` of a `-chardev pipe` on `base` (`in`: qemu reads it, `out`: qemu
/// writes it).
pub fn fifo_end(base: &Path, end: &str) -> PathBuf {
    let mut path = base.as_os_str().to_owned();
    path.push(format!(".{end}"));
    path.into()
}

/// New, empty FIFOs for a qemu about to start in `dir` (a request left in old ones for an
/// earlier qemu must not reach the new guest).
pub fn make_fifos(dir: &Path) -> std::io::Result<()> {
    make_fifo_pair(&pipe_base(dir))
}

/// New, empty FIFOs `<base>.in` and `<base>.out`, for a `-chardev pipe` on `base`.
pub fn make_fifo_pair(base: &Path) -> std::io::Result<()> {
    for end in ["in", "out"] {
        let path = fifo_end(base, end);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        // 0600 whatever the umask; the run directory is private anyway.
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .map_err(std::io::Error::from)?;
    }
    Ok(())
}

/// The SSH command that starts the agent in a guest, detached from the session.
pub fn start_command() -> String {
    format!(
        "setsid sh -c {} </dev/null >/dev/null 2>&1 &",
        quote(PROGRAM)
    )
}

/// What identifies the guest program, for the key of snapshots that hold it running.
pub fn program_digest() -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(PROGRAM.as_bytes())[..8])
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the guest agent's channel failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the guest agent's channel closed (qemu exited)")]
    Closed,
    #[error("the guest agent did not answer within {0:?}")]
    Silent(Duration),
    #[error("the command did not end within {0:?}")]
    TimedOut(Duration),
    #[error("the guest sent a line of more than {0} bytes")]
    LineTooLong(usize),
}

/// The host's end of one machine's agent channel, for one request at a time.
pub struct Agent {
    to: pipe::Sender,
    from: pipe::Receiver,
    /// Received and not yet consumed.
    buf: Vec<u8>,
    /// A random prefix of every nonce, and the number of requests so far.
    salt: u64,
    count: u64,
}

impl Agent {
    /// Open the channel of the qemu running in `dir` (it must have opened its ends already).
    pub fn open(dir: &Path) -> std::io::Result<Agent> {
        let to = pipe::OpenOptions::new().open_sender(fifo(dir, "in"))?;
        let from = pipe::OpenOptions::new().open_receiver(fifo(dir, "out"))?;
        let mut salt = [0u8; 8];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut salt)?;
        Ok(Agent {
            to,
            from,
            buf: Vec::new(),
            salt: u64::from_ne_bytes(salt),
            count: 0,
        })
    }

    fn nonce(&mut self) -> String {
        self.count += 1;
        format!("v{:016x}{}", self.salt, self.count)
    }

    async fn send(&mut self, data: &[u8]) -> Result<(), AgentError> {
        self.to.write_all(data).await?;
        Ok(())
    }

    /// Read more into `buf`.
    async fn fill(&mut self) -> Result<(), AgentError> {
        let mut chunk = [0u8; 16 * 1024];
        match self.from.read(&mut chunk).await? {
            0 => Err(AgentError::Closed),
            n => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
        }
    }

    /// Whether the agent is there and idle: it answers within `limit`. Anything received
    /// before its answer (nothing, normally) is dropped.
    pub async fn ping(&mut self, limit: Duration) -> Result<(), AgentError> {
        let nonce = self.nonce();
        let pong = format!("{nonce} pong\n").into_bytes();
        let answered = async {
            self.send(format!("{nonce} ping\n").as_bytes()).await?;
            loop {
                if let Some(at) = find(&self.buf, &pong) {
                    self.buf.drain(..at + pong.len());
                    return Ok(());
                }
                // What came before the answer is dropped as it comes, but for what may be
                // its start: a guest that sends without end costs neither memory nor time.
                let keep = partial_suffix(&self.buf, &pong);
                self.buf.drain(..self.buf.len() - keep);
                self.fill().await?;
            }
        };
        tokio::time::timeout(limit, answered)
            .await
            .unwrap_or(Err(AgentError::Silent(limit)))
    }

    /// Run `command` (stdin `/dev/null`) for at most `limit`: its stdout streamed to `sink`
    /// as it comes (or kept in `output`), then its stderr. After [`AgentError::TimedOut`]
    /// (the output so far is given) the agent must not be used again: its answer may still
    /// come.
    pub async fn run(
        &mut self,
        command: &str,
        limit: Duration,
        mut sink: Option<OutputSink<'_>>,
        output: &mut Output,
    ) -> Result<ExitStatus, AgentError> {
        let deadline = tokio::time::Instant::now() + limit;
        let nonce = self.nonce();
        let mut frames = Frames::new(&nonce);
        let mut emit = |stream: Stream, bytes: &[u8]| match sink.as_mut() {
            Some(s) => s(stream, bytes),
            None => output.of(stream).extend_from_slice(bytes),
        };
        let asked = request(&nonce, "run", command);
        tokio::time::timeout_at(deadline, self.send(&asked))
            .await
            .map_err(|_| AgentError::TimedOut(limit))??;
        let mut data = std::mem::take(&mut self.buf);
        loop {
            if let Some(status) = frames.feed(&data, &mut emit) {
                return Ok(status);
            }
            match tokio::time::timeout_at(deadline, self.fill()).await {
                Ok(filled) => filled?,
                Err(_) => {
                    frames.flush(&mut emit);
                    return Err(AgentError::TimedOut(limit));
                }
            }
            data = std::mem::take(&mut self.buf);
        }
    }

    /// Start `script` for a conversation (see [`AgentTalk`]).
    pub async fn talk(mut self, script: &str) -> Result<AgentTalk, AgentError> {
        let nonce = self.nonce();
        self.send(&request(&nonce, "talk", script)).await?;
        Ok(AgentTalk {
            end: format!("{nonce} = "),
            agent: self,
            output: Output::default(),
            status: None,
        })
    }
}

/// A request line and the code's lines.
fn request(nonce: &str, verb: &str, code: &str) -> Vec<u8> {
    format!("{nonce} {verb} {}\n{code}\n", code.split('\n').count()).into_bytes()
}

/// A script run by the agent that is talked to, like [`super::ssh::Conversation`]: lines
/// written to its stdin, lines of its output read as they come; its stderr is in its stdout.
pub struct AgentTalk {
    agent: Agent,
    /// The start of the line that ends it: `NONCE = `.
    end: String,
    /// Lines read by [`AgentTalk::finish_ticking`].
    output: Output,
    status: Option<ExitStatus>,
}

impl AgentTalk {
    pub async fn send(&mut self, data: &[u8]) -> Result<(), AgentError> {
        self.agent.send(data).await
    }

    /// The next line of its output (without its newline); `None` once it ended.
    pub async fn read_line(&mut self) -> Result<Option<String>, AgentError> {
        // Bytes already looked at for a newline: each is looked at once.
        let mut searched = 0;
        loop {
            if self.status.is_some() {
                return Ok(None);
            }
            let found = self.agent.buf[searched..].iter().position(|&b| b == b'\n');
            if let Some(n) = found.map(|i| searched + i) {
                let line: Vec<u8> = self.agent.buf.drain(..=n).collect();
                let line = String::from_utf8_lossy(&line[..n]).into_owned();
                if let Some(code) = line.strip_prefix(&self.end) {
                    self.status = Some(status_of(code.as_bytes()));
                    return Ok(None);
                }
                return Ok(Some(line));
            }
            searched = self.agent.buf.len();
            if searched > MAX_LINE {
                return Err(AgentError::LineTooLong(MAX_LINE));
            }
            self.agent.fill().await?;
        }
    }

    /// Wait for its end, writing a line to its stdin every `tick` meanwhile (see
    /// `Conversation::finish_ticking`): its status and the output not read as lines (the
    /// empty line before the end marker dropped).
    pub async fn finish_ticking(&mut self, tick: Duration) -> Result<ExitStatus, AgentError> {
        let mut ticks = tokio::time::interval(tick);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            tokio::select! {
                line = self.read_line() => match line? {
                    Some(line) => {
                        self.output.stdout.extend_from_slice(line.as_bytes());
                        self.output.stdout.push(b'\n');
                    }
                    None => break,
                },
                _ = ticks.tick() => self.agent.send(b"\n").await?,
            }
        }
        if self.output.stdout.ends_with(b"\n\n") {
            self.output.stdout.pop();
        }
        Ok(self.status.clone().unwrap_or(ExitStatus::Unknown))
    }

    /// Its output not read as lines, and the agent, idle again.
    pub fn into_parts(self) -> (Output, Agent) {
        (self.output, self.agent)
    }
}

/// Splits what the agent sends for a `run` request into stdout, stderr and the status (see
/// `agent.sh`): `STDOUT \n NONCE 1 \n STDERR \n NONCE 2 STATUS \n`. Bytes that may be the
/// start of the next marker are held back until it is clear they are not.
struct Frames {
    out_end: Vec<u8>,
    err_end: Vec<u8>,
    region: Region,
    held: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Region {
    Out,
    Err,
    Status,
    Done,
}

impl Frames {
    fn new(nonce: &str) -> Frames {
        Frames {
            out_end: format!("\n{nonce} 1\n").into_bytes(),
            err_end: format!("\n{nonce} 2 ").into_bytes(),
            region: Region::Out,
            held: Vec::new(),
        }
    }

    /// Give out what was held back (the command will not end): it was output after all.
    fn flush(&mut self, emit: &mut dyn FnMut(Stream, &[u8])) {
        let stream = match self.region {
            Region::Out => Stream::Stdout,
            Region::Err => Stream::Stderr,
            Region::Status | Region::Done => return,
        };
        if !self.held.is_empty() {
            emit(stream, &self.held);
            self.held.clear();
        }
    }

    /// Take `data`; output goes to `emit`. Returns the status once the end is in.
    fn feed(&mut self, data: &[u8], emit: &mut dyn FnMut(Stream, &[u8])) -> Option<ExitStatus> {
        self.held.extend_from_slice(data);
        loop {
            let (stream, marker, next) = match self.region {
                Region::Out => (Stream::Stdout, &self.out_end, Region::Err),
                Region::Err => (Stream::Stderr, &self.err_end, Region::Status),
                Region::Status => {
                    // A status is a few digits: what does not end soon is not one, and is
                    // not kept waiting for an end.
                    let status = match self.held.iter().position(|&b| b == b'\n') {
                        Some(at) => status_of(&self.held[..at]),
                        None if self.held.len() > MAX_STATUS => ExitStatus::Unknown,
                        None => return None,
                    };
                    self.held.clear();
                    self.region = Region::Done;
                    return Some(status);
                }
                Region::Done => return None,
            };
            if let Some(at) = find(&self.held, marker) {
                if at > 0 {
                    emit(stream, &self.held[..at]);
                }
                self.held.drain(..at + marker.len());
                self.region = next;
                continue;
            }
            let keep = partial_suffix(&self.held, marker);
            let ready = self.held.len() - keep;
            if ready > 0 {
                emit(stream, &self.held[..ready]);
                self.held.drain(..ready);
            }
            return None;
        }
    }
}

/// An exit status as the agent prints it (`$?`: a signal is 128 + its number).
fn status_of(text: &[u8]) -> ExitStatus {
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
        .map_or(ExitStatus::Unknown, ExitStatus::Code)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The length of the longest end of `data` that `marker` starts with.
fn partial_suffix(data: &[u8], marker: &[u8]) -> usize {
    (1..marker.len().min(data.len() + 1))
        .rev()
        .find(|&n| data.ends_with(&marker[..n]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What the agent sends for a command with this stdout, stderr and status.
    fn framed(nonce: &str, out: &[u8], err: &[u8], status: u32) -> Vec<u8> {
        let mut v = out.to_vec();
        v.extend_from_slice(format!("\n{nonce} 1\n").as_bytes());
        v.extend_from_slice(err);
        v.extend_from_slice(format!("\n{nonce} 2 {status}\n").as_bytes());
        v
    }

    fn parse(nonce: &str, chunks: &[&[u8]]) -> (Vec<u8>, Vec<u8>, Option<ExitStatus>) {
        let mut frames = Frames::new(nonce);
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut status = None;
        for c in chunks {
            let got = frames.feed(c, &mut |s, b| match s {
                Stream::Stdout => out.extend_from_slice(b),
                Stream::Stderr => err.extend_from_slice(b),
            });
            status = status.or(got);
        }
        (out, err, status)
    }

    #[test]
    fn output_with_and_without_a_last_newline_comes_back_exactly() {
        for out in [&b"hi\n"[..], b"hi", b"", b"\n", b"\n\n"] {
            let bytes = framed("N", out, b"oops\n", 3);
            let (o, e, s) = parse("N", &[&bytes]);
            assert_eq!((o.as_slice(), e.as_slice()), (out, &b"oops\n"[..]));
            assert_eq!(s, Some(ExitStatus::Code(3)));
        }
    }

    #[test]
    fn a_marker_of_another_nonce_or_a_partial_one_is_output() {
        let out = b"x\nM 1\n\nN 1x\n\nN";
        let bytes = framed("N", out, b"", 0);
        let (o, e, s) = parse("N", &[&bytes]);
        assert_eq!(o, out);
        assert!(e.is_empty());
        assert_eq!(s, Some(ExitStatus::Code(0)));
    }

    #[test]
    fn nothing_ends_before_the_status_line_is_whole() {
        let bytes = framed("N", b"a", b"b", 127);
        let cut = bytes.len() - 2;
        let mut frames = Frames::new("N");
        let mut seen = Vec::new();
        let first = frames.feed(&bytes[..cut], &mut |s, b| seen.push((s, b.to_vec())));
        assert_eq!(first, None);
        let second = frames.feed(&bytes[cut..], &mut |s, b| seen.push((s, b.to_vec())));
        assert_eq!(second, Some(ExitStatus::Code(127)));
        assert_eq!(
            seen,
            vec![
                (Stream::Stdout, b"a".to_vec()),
                (Stream::Stderr, b"b".to_vec())
            ]
        );
    }

    /// New FIFOs in a temporary run directory, with qemu's ends open as qemu opens them
    /// (read-write), and the host's agent on the others.
    fn fake_qemu() -> (tempfile::TempDir, pipe::Receiver, pipe::Sender, Agent) {
        let dir = tempfile::tempdir().unwrap();
        make_fifos(dir.path()).unwrap();
        let open = pipe::OpenOptions::new().read_write(true).clone();
        let requests = open.open_receiver(fifo(dir.path(), "in")).unwrap();
        let answers = open.open_sender(fifo(dir.path(), "out")).unwrap();
        let agent = Agent::open(dir.path()).unwrap();
        (dir, requests, answers, agent)
    }

    /// A fake guest: `answer` is written to the host once its request arrives.
    async fn fake_guest(answer: Vec<u8>) -> (tempfile::TempDir, Agent) {
        let (dir, mut requests, mut answers, agent) = fake_qemu();
        tokio::spawn(async move {
            let mut byte = [0u8; 1];
            let _ = requests.read(&mut byte).await;
            let _ = answers.write_all(&answer).await;
            // qemu keeps its end open: so does the fake, for the test's life.
            std::future::pending::<()>().await;
        });
        (dir, agent)
    }

    #[tokio::test]
    async fn junk_before_a_pong_costs_no_memory() {
        let mut junk = vec![b'x'; 8 << 20];
        junk.extend_from_slice(b"v");
        let (_dir, mut agent) = fake_guest(junk).await;
        // The nonce is not known to the fake, so it never answers: the agent is silent, and
        // what it read meanwhile was dropped as it came.
        let err = agent.ping(Duration::from_secs(2)).await.unwrap_err();
        assert!(matches!(err, AgentError::Silent(_)), "{err}");
        assert!(agent.buf.len() < 64, "{} bytes kept", agent.buf.len());
    }

    #[tokio::test]
    async fn an_endless_line_in_a_conversation_is_an_error() {
        let (_dir, agent) = fake_guest(vec![b'x'; MAX_LINE * 2]).await;
        let mut talk = agent.talk("true").await.unwrap();
        let err = tokio::time::timeout(Duration::from_secs(20), talk.read_line())
            .await
            .expect("an error, not a wait")
            .unwrap_err();
        assert!(matches!(err, AgentError::LineTooLong(_)), "{err}");
    }

    #[tokio::test]
    async fn qemu_gone_ends_a_wait_at_once() {
        let (_dir, _requests, answers, mut agent) = fake_qemu();
        drop(answers);
        let err = agent.ping(Duration::from_secs(20)).await.unwrap_err();
        assert!(matches!(err, AgentError::Closed), "{err}");
    }

    #[test]
    fn a_status_without_end_is_unknown_and_not_kept() {
        let mut frames = Frames::new("N");
        let mut bytes = b"out\nN 1\nerr\nN 2 ".to_vec();
        bytes.extend_from_slice(&[b'7'; 100]);
        let status = frames.feed(&bytes, &mut |_, _| {});
        assert_eq!(status, Some(ExitStatus::Unknown));
        assert!(frames.held.is_empty());
    }

    #[test]
    fn the_request_counts_the_lines_of_code() {
        assert_eq!(request("N", "run", "true"), b"N run 1\ntrue\n");
        assert_eq!(request("N", "run", "a\nb\n"), b"N run 3\na\nb\n\n");
    }

    proptest! {
        /// Any stdout and stderr (markers of the same nonce aside, which only a guest that
        /// reads the agent's memory could forge), cut anywhere, come back exactly.
        #[test]
        fn frames_round_trip(
            out in proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'N'), Just(b' '), Just(b'1'), any::<u8>()], 0..200),
            err in proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'N'), Just(b'2'), any::<u8>()], 0..200),
            status in 0u32..256,
            cuts in proptest::collection::vec(0usize..500, 0..8),
        ) {
            let nonce = "Nq7";
            let bytes = framed(nonce, &out, &err, status);
            prop_assume!(find(&out, format!("\n{nonce} 1\n").as_bytes()).is_none());
            prop_assume!(find(&err, format!("\n{nonce} 2 ").as_bytes()).is_none());
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
            cuts.sort();
            let mut chunks = Vec::new();
            let mut at = 0;
            for c in cuts.into_iter().chain([bytes.len()]) {
                chunks.push(&bytes[at..c]);
                at = c;
            }
            let (o, e, s) = parse(nonce, &chunks);
            prop_assert_eq!(o, out);
            prop_assert_eq!(e, err);
            prop_assert_eq!(s, Some(ExitStatus::Code(status)));
        }
    }
}
