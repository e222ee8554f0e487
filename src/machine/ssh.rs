//! SSH to machines: one persistent connection per machine (russh), commands as channels on
//! it, host keys always checked. The main type is [`SshSession`].
//!
//! Why russh and not ssh2: see ARCHITECTURE.md (async and tokio-native, so one connection
//! serves concurrent channels and timeouts are plain `tokio::time::timeout`; no C libssh2 or
//! OpenSSL to build).

use russh::client;
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{ChannelMsg, Disconnect, Sig};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the server's host key is checked.
#[derive(Debug, Clone)]
pub enum HostKeyCheck {
    /// Exactly this key (images carry their guest's host key).
    Exact(PublicKey),
    /// A key listed for `[host]:port` (or `host` for port 22) in an OpenSSH known_hosts file.
    KnownHosts(PathBuf),
    /// Accept any key. Only when the user asked for it explicitly.
    Insecure,
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct SshTarget {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub identity: PathBuf,
    pub host_key: HostKeyCheck,
}

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("host key of {addr} does not match: expected {expected}, got {got}")]
    HostKeyMismatch {
        addr: String,
        expected: String,
        got: String,
    },
    #[error("cannot read identity {}: {message}", .path.display())]
    Identity { path: PathBuf, message: String },
    #[error("{user}@{addr} refused the key {}", .identity.display())]
    AuthRejected {
        user: String,
        addr: String,
        identity: PathBuf,
    },
    #[error("SSH protocol error with {addr}: {message}")]
    Protocol { addr: String, message: String },
    #[error("SSH connection to {addr} lost")]
    Disconnected { addr: String },
}

/// How a remote command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitStatus {
    Code(u32),
    Signal(String),
    /// The channel closed without an exit status (connection lost, or the server did not say).
    Unknown,
}

impl ExitStatus {
    pub fn success(&self) -> bool {
        *self == ExitStatus::Code(0)
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit code {c}"),
            ExitStatus::Signal(s) => write!(f, "killed by SIG{s}"),
            ExitStatus::Unknown => write!(f, "no exit status"),
        }
    }
}

/// Which stream a chunk of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Output of a finished (or timed-out) command.
#[derive(Debug, Clone, Default)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    pub(crate) fn of(&mut self, stream: Stream) -> &mut Vec<u8> {
        match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        }
    }
}

/// A callback that sees output as it arrives (for streaming to logs).
pub type OutputSink<'a> = &'a mut (dyn FnMut(Stream, &[u8]) + Send);

struct Handler {
    check: HostKeyCheck,
    host: String,
    port: u16,
    /// The key the server offered, when it was refused (for the error message).
    refused: Arc<Mutex<Option<String>>>,
}

impl client::Handler for Handler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        offered: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = offered else {
            *self.refused.lock().expect("poisoned") = Some("a certificate".into());
            return Ok(false);
        };
        let ok = match &self.check {
            HostKeyCheck::Insecure => true,
            HostKeyCheck::Exact(want) => want.key_data() == key.key_data(),
            HostKeyCheck::KnownHosts(path) => {
                russh::keys::check_known_hosts_path(&self.host, self.port, key, path)
                    .unwrap_or(false)
            }
        };
        if !ok {
            *self.refused.lock().expect("poisoned") = Some(
                key.to_openssh()
                    .unwrap_or_else(|_| "an unreadable key".into()),
            );
        }
        Ok(ok)
    }
}

/// One authenticated SSH connection.
pub struct SshSession {
    handle: client::Handle<Handler>,
    pub addr: String,
}

impl SshSession {
    /// Connect, check the host key and authenticate, all within `limit`.
    pub async fn connect(target: &SshTarget, limit: Duration) -> Result<SshSession, SshError> {
        let addr = format!("{}:{}", target.host, target.port);
        let key = load_identity(&target.identity)?;
        let refused = Arc::new(Mutex::new(None));
        let handler = Handler {
            check: target.host_key.clone(),
            host: target.host.clone(),
            port: target.port,
            refused: refused.clone(),
        };
        let config = Arc::new(client::Config {
            keepalive_interval: Some(Duration::from_secs(10)),
            keepalive_max: 3,
            nodelay: true,
            ..Default::default()
        });
        let timed_out = || SshError::Connect {
            addr: addr.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer in {limit:?}"),
            ),
        };
        let connect = async {
            let stream = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
                .await
                .map_err(|source| SshError::Connect {
                    addr: addr.clone(),
                    source,
                })?;
            let _ = stream.set_nodelay(true);
            let mut handle = client::connect_stream(config, stream, handler)
                .await
                .map_err(|e| match refused.lock().expect("poisoned").take() {
                    Some(got) => SshError::HostKeyMismatch {
                        addr: addr.clone(),
                        expected: describe_check(&target.host_key),
                        got,
                    },
                    None => protocol(&addr, e),
                })?;
            let hash = handle
                .best_supported_rsa_hash()
                .await
                .map_err(|e| protocol(&addr, e))?
                .flatten();
            let auth = handle
                .authenticate_publickey(
                    &target.user,
                    PrivateKeyWithHashAlg::new(Arc::new(key), hash),
                )
                .await
                .map_err(|e| protocol(&addr, e))?;
            if !auth.success() {
                return Err(SshError::AuthRejected {
                    user: target.user.clone(),
                    addr: addr.clone(),
                    identity: target.identity.clone(),
                });
            }
            Ok(SshSession {
                handle,
                addr: addr.clone(),
            })
        };
        tokio::time::timeout(limit, connect)
            .await
            .unwrap_or_else(|_| Err(timed_out()))
    }

    pub fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }

    /// Run `command`, feeding it `stdin`, streaming output to `sink` (then it is not also
    /// kept in `output`: memory stays bounded however much a command prints). Returns when the
    /// command's channel closes. No timeout here: callers wrap this in one.
    pub async fn exec(
        &self,
        command: &str,
        stdin: Option<&[u8]>,
        mut sink: Option<OutputSink<'_>>,
        output: &mut Output,
    ) -> Result<ExitStatus, SshError> {
        let lost = |_| SshError::Disconnected {
            addr: self.addr.clone(),
        };
        let mut channel = self.open(command).await?;
        if let Some(data) = stdin {
            channel.data(data).await.map_err(lost)?;
        }
        channel.eof().await.map_err(lost)?;
        let mut status = ExitStatus::Unknown;
        while let Some(msg) = channel.wait().await {
            absorb(msg, &mut status, &mut |stream, data| match sink.as_mut() {
                Some(s) => s(stream, data),
                None => output.of(stream).extend_from_slice(data),
            });
        }
        if status == ExitStatus::Unknown && self.is_closed() {
            return Err(SshError::Disconnected {
                addr: self.addr.clone(),
            });
        }
        Ok(status)
    }

    /// Start `command` for a conversation: lines written to its stdin, lines read from its
    /// stdout as they come (see [`Conversation`]). No timeout here either.
    pub async fn converse(&self, command: &str) -> Result<Conversation, SshError> {
        Ok(Conversation {
            channel: self.open(command).await?,
            addr: self.addr.clone(),
            output: Output::default(),
            read: 0,
            status: ExitStatus::Unknown,
            closed: false,
        })
    }

    /// A new channel on the connection, running `command`.
    async fn open(&self, command: &str) -> Result<russh::Channel<client::Msg>, SshError> {
        let lost = |_| SshError::Disconnected {
            addr: self.addr.clone(),
        };
        let channel = self.handle.channel_open_session().await.map_err(lost)?;
        channel.exec(true, command).await.map_err(lost)?;
        Ok(channel)
    }

    pub async fn close(&self) {
        let _ = self
            .handle
            .disconnect(Disconnect::ByApplication, "", "en")
            .await;
    }
}

// Longest line [`Conversation::read_line`] takes.
use super::MAX_GUEST_LINE as MAX_LINE;

/// A running command that is talked to: each [`Conversation::send`] writes to its stdin,
/// each [`Conversation::read_line`] waits for its next line of stdout, and
/// [`Conversation::finish_ticking`] waits for its end. One channel, one process in the guest:
/// a round trip costs no new process there.
pub struct Conversation {
    channel: russh::Channel<client::Msg>,
    addr: String,
    output: Output,
    /// How much of `output.stdout` the lines read so far took.
    read: usize,
    status: ExitStatus,
    closed: bool,
}

impl Conversation {
    pub async fn send(&mut self, data: &[u8]) -> Result<(), SshError> {
        let addr = &self.addr;
        self.channel
            .data(data)
            .await
            .map_err(|_| SshError::Disconnected { addr: addr.clone() })
    }

    /// The next line of stdout (without its newline); `None` once the command ended
    /// without one.
    pub async fn read_line(&mut self) -> Result<Option<String>, SshError> {
        loop {
            let unread = &self.output.stdout[self.read..];
            if let Some(n) = unread.iter().position(|&b| b == b'\n') {
                let line = String::from_utf8_lossy(&unread[..n]).into_owned();
                self.read += n + 1;
                return Ok(Some(line));
            }
            // Its lines are vmcheck's own, and short: a guest that sends without end is not
            // read into memory without end.
            if unread.len() > MAX_LINE {
                return Err(SshError::Protocol {
                    addr: self.addr.clone(),
                    message: format!("the guest sent a line of more than {MAX_LINE} bytes"),
                });
            }
            if self.closed || !self.next().await {
                return Ok(None);
            }
        }
    }

    /// Handle the channel's next message; false once it is closed.
    async fn next(&mut self) -> bool {
        let Some(msg) = self.channel.wait().await else {
            self.closed = true;
            return false;
        };
        let output = &mut self.output;
        absorb(msg, &mut self.status, &mut |stream, data| {
            output.of(stream).extend_from_slice(data)
        });
        true
    }

    /// Wait for its end, writing a line to its stdin every `tick` meanwhile (a clock for a
    /// program that waits without spinning or starting `sleep`; its stdin is never closed):
    /// its status, and the output not read as lines.
    pub async fn finish_ticking(mut self, tick: Duration) -> (ExitStatus, Output) {
        let mut ticks = tokio::time::interval(tick);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        while !self.closed {
            tokio::select! {
                more = self.next() => if !more { break },
                _ = ticks.tick() => {
                    let _ = self.channel.data(&b"\n"[..]).await;
                }
            }
        }
        self.output.stdout.drain(..self.read);
        (self.status, self.output)
    }
}

/// What one message of a command's channel says: output (given to `out`), or how the command
/// ended (kept in `status`); anything else is no news.
fn absorb(msg: ChannelMsg, status: &mut ExitStatus, out: &mut dyn FnMut(Stream, &[u8])) {
    match msg {
        ChannelMsg::Data { data } => out(Stream::Stdout, &data),
        ChannelMsg::ExtendedData { data, .. } => out(Stream::Stderr, &data),
        ChannelMsg::ExitStatus { exit_status } => *status = ExitStatus::Code(exit_status),
        ChannelMsg::ExitSignal { signal_name, .. } => {
            *status = ExitStatus::Signal(signal_label(&signal_name))
        }
        _ => {}
    }
}

fn protocol(addr: &str, e: russh::Error) -> SshError {
    SshError::Protocol {
        addr: addr.to_string(),
        message: e.to_string(),
    }
}

fn signal_label(sig: &Sig) -> String {
    match sig {
        Sig::Custom(s) => s.clone(),
        other => format!("{other:?}"),
    }
}

fn describe_check(check: &HostKeyCheck) -> String {
    match check {
        HostKeyCheck::Exact(k) => k.to_openssh().unwrap_or_else(|_| "the image's key".into()),
        HostKeyCheck::KnownHosts(p) => format!("a key listed in {}", p.display()),
        HostKeyCheck::Insecure => "any key".into(),
    }
}

fn load_identity(path: &Path) -> Result<PrivateKey, SshError> {
    russh::keys::load_secret_key(path, None).map_err(|e| SshError::Identity {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Parse one OpenSSH public key line (`ssh-ed25519 AAAA… comment`).
pub fn parse_public_key(line: &str) -> Result<PublicKey, String> {
    PublicKey::from_openssh(line.trim()).map_err(|e| e.to_string())
}
