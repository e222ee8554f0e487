//! The control protocol between a test's host-side process and the runner: a `host` script
//! drives its machines with the `vm` helper (`vm exec machine1 CMD`, `vm reboot machine2`,
//! `vm upload …`), which is vmcheck itself (`vmcheck vm-ctl`); an executable check file's
//! test (the Python testlib, or any program) speaks the protocol on the socket directly.
//! One connection carries one JSON request line and its JSON answer line, over the
//! attempt's Unix socket (`$VMCHECK_CONTROL`) to the runner that owns the machines. Going
//! through the runner (not straight to SSH) lets reboots relaunch qemu, keeps one SSH
//! connection per machine, lets restores outlive a killed test, and puts every request
//! into the test's output.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// One request from the helper.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    Exec {
        machine: String,
        command: String,
        /// Standard input of the command.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        input: Option<String>,
        /// Seconds the command may take (never past the test's deadline).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout: Option<u64>,
    },
    Reboot {
        machine: String,
    },
    WaitReboot {
        machine: String,
    },
    Upload {
        machine: String,
        local: PathBuf,
        remote: String,
    },
    Download {
        machine: String,
        remote: String,
        local: PathBuf,
    },
    Ssh {
        machine: String,
    },
    /// Save guest paths now, to be put back after the test (nondestructive tests).
    Restore {
        machine: String,
        paths: Vec<String>,
    },
    /// Journal messages matching these regexes are allowed for the rest of the attempt.
    AllowJournal {
        patterns: Vec<String>,
    },
    /// A fault on the private network between two machines, or healing it (see `net.rs`).
    Net {
        action: super::net::NetAction,
        /// Two machines, or none (`heal` of every fault, `show`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        machines: Vec<String>,
        /// The delay (`200ms`) or the percentage of frames lost (`30%`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value: Option<String>,
    },
}

impl Request {
    /// The machine the request is for (`None`: the attempt's, not one machine's).
    pub fn machine(&self) -> Option<&str> {
        match self {
            Request::Exec { machine, .. }
            | Request::Reboot { machine }
            | Request::WaitReboot { machine }
            | Request::Upload { machine, .. }
            | Request::Download { machine, .. }
            | Request::Ssh { machine }
            | Request::Restore { machine, .. } => Some(machine),
            Request::AllowJournal { .. } | Request::Net { .. } => None,
        }
    }

    /// How the request reads in a test's output (`+ vm exec machine1 'true'`).
    pub fn describe(&self) -> String {
        use crate::shell::quote;
        match self {
            Request::Exec {
                machine, command, ..
            } => {
                format!("vm exec {machine} {}", quote(command))
            }
            Request::Reboot { machine } => format!("vm reboot {machine}"),
            Request::WaitReboot { machine } => format!("vm wait-reboot {machine}"),
            Request::Upload {
                machine,
                local,
                remote,
            } => format!("vm upload {machine} {} {remote}", local.display()),
            Request::Download {
                machine,
                remote,
                local,
            } => format!("vm download {machine} {remote} {}", local.display()),
            Request::Ssh { machine } => format!("vm ssh {machine}"),
            Request::Restore { machine, paths } => {
                format!("vm restore {machine} {}", quoted(paths))
            }
            Request::AllowJournal { patterns } => format!("vm allow-journal {}", quoted(patterns)),
            Request::Net {
                action,
                machines,
                value,
            } => {
                let words: Vec<String> = machines.iter().chain(value).cloned().collect();
                format!("vm net {} {}", action.word(), quoted(&words))
                    .trim_end()
                    .to_string()
            }
        }
    }
}

fn quoted(words: &[String]) -> String {
    words
        .iter()
        .map(|w| crate::shell::quote(w))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The runner's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The exit code the helper exits with.
    pub exit: i32,
    #[serde(default)]
    pub stdout: String,
    #[serde(default)]
    pub stderr: String,
    /// Why the runner could not carry out the request (then `exit` is 255).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The error is not the test's doing: a machine failed or the test's time ran out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub infrastructure: bool,
}

impl Response {
    pub fn error(message: impl Into<String>) -> Response {
        let message = message.into();
        Response {
            exit: 255,
            stdout: String::new(),
            stderr: format!("vm: {message}\n"),
            error: Some(message),
            infrastructure: false,
        }
    }

    /// [`Response::error`] for a failure that is not the test's doing.
    pub fn infrastructure_error(message: impl Into<String>) -> Response {
        Response {
            infrastructure: true,
            ..Response::error(message)
        }
    }
}

/// Parse the helper's command line (`vm SUBCOMMAND MACHINE ARGS…`) into a request.
pub fn parse_args(args: &[String]) -> Result<Request, String> {
    let usage = "usage: vm exec MACHINE CMD… | vm reboot MACHINE | vm wait-reboot MACHINE | \
                 vm upload MACHINE LOCAL REMOTE | vm download MACHINE REMOTE LOCAL | vm ssh MACHINE | \
                 vm restore MACHINE PATH… | vm allow-journal REGEX… | vm net …";
    if let [op, rest @ ..] = args
        && op == "net"
    {
        return super::net::parse_args(rest);
    }
    if let [op, patterns @ ..] = args
        && op == "allow-journal"
        && !patterns.is_empty()
    {
        return Ok(Request::AllowJournal {
            patterns: patterns.to_vec(),
        });
    }
    let [op, machine, rest @ ..] = args else {
        return Err(usage.into());
    };
    let machine = machine.clone();
    let abs = |p: &String| std::path::absolute(p).map_err(|e| format!("bad local path {p}: {e}"));
    Ok(match (op.as_str(), rest) {
        ("exec", [_, ..]) => Request::Exec {
            machine,
            command: rest.join(" "),
            input: None,
            timeout: None,
        },
        ("restore", [_, ..]) => Request::Restore {
            machine,
            paths: rest.to_vec(),
        },
        ("reboot", []) => Request::Reboot { machine },
        ("wait-reboot", []) => Request::WaitReboot { machine },
        ("upload", [local, remote]) => Request::Upload {
            machine,
            local: abs(local)?,
            remote: remote.clone(),
        },
        ("download", [remote, local]) => Request::Download {
            machine,
            remote: remote.clone(),
            local: abs(local)?,
        },
        ("ssh", []) => Request::Ssh { machine },
        _ => return Err(usage.into()),
    })
}

/// Client side: send `request` to the runner at `socket` and return its answer.
pub fn call(socket: &std::path::Path, request: &Request) -> std::io::Result<Response> {
    use std::io::{BufRead, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket)?;
    let mut line = serde_json::to_string(request).map_err(std::io::Error::other)?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut answer = String::new();
    std::io::BufReader::new(stream).read_line(&mut answer)?;
    serde_json::from_str(&answer).map_err(std::io::Error::other)
}

/// Server side: read one request from `stream`.
pub async fn read_request(stream: &mut tokio::net::UnixStream) -> Result<Request, String> {
    use tokio::io::AsyncBufReadExt;
    let mut line = String::new();
    tokio::io::BufReader::new(stream)
        .read_line(&mut line)
        .await
        .map_err(|e| e.to_string())?;
    serde_json::from_str(&line).map_err(|e| format!("bad request: {e}"))
}

/// Server side: answer on `stream`.
pub async fn write_response(stream: &mut tokio::net::UnixStream, response: &Response) {
    use tokio::io::AsyncWriteExt;
    let mut line = serde_json::to_string(response).expect("response serializes");
    line.push('\n');
    let _ = stream.write_all(line.as_bytes()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_helper_commands() {
        assert_eq!(
            parse_args(&args(&["exec", "machine1", "echo", "hi"])).unwrap(),
            Request::Exec {
                machine: "machine1".into(),
                command: "echo hi".into(),
                input: None,
                timeout: None,
            }
        );
        assert_eq!(
            parse_args(&args(&["restore", "m", "/etc/motd", "/etc/a b"])).unwrap(),
            Request::Restore {
                machine: "m".into(),
                paths: vec!["/etc/motd".into(), "/etc/a b".into()]
            }
        );
        assert_eq!(
            parse_args(&args(&["allow-journal", "a.*b"])).unwrap(),
            Request::AllowJournal {
                patterns: vec!["a.*b".into()]
            }
        );
        assert_eq!(
            parse_args(&args(&["reboot", "m2"])).unwrap(),
            Request::Reboot {
                machine: "m2".into()
            }
        );
        let up = parse_args(&args(&["upload", "m", "/tmp/a", "/root/a"])).unwrap();
        assert_eq!(up.machine(), Some("m"));
        for bad in [
            &["allow-journal"][..],
            &["restore", "m"],
            &["exec", "m"],
            &["reboot"],
            &["frob", "m"],
            &["upload", "m", "a"],
        ] {
            assert!(parse_args(&args(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn requests_round_trip_as_json() {
        let r = Request::Download {
            machine: "m".into(),
            remote: "/etc/hostname".into(),
            local: "/tmp/h".into(),
        };
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"op\":\"download\""), "{json}");
        assert_eq!(serde_json::from_str::<Request>(&json).unwrap(), r);
        assert_eq!(r.describe(), "vm download m /etc/hostname /tmp/h");
        // What an executable check file's library sends: optional fields may be left out.
        let exec: Request = serde_json::from_str(
            r#"{"op":"exec","machine":"m","command":"cat","input":"x","timeout":5}"#,
        )
        .unwrap();
        assert_eq!(
            exec,
            Request::Exec {
                machine: "m".into(),
                command: "cat".into(),
                input: Some("x".into()),
                timeout: Some(5)
            }
        );
        let allow: Request =
            serde_json::from_str(r#"{"op":"allow-journal","patterns":["x"]}"#).unwrap();
        assert_eq!(allow.machine(), None);
        let answer = serde_json::to_string(&Response::error("no such machine")).unwrap();
        assert_eq!(
            answer,
            r#"{"exit":255,"stdout":"","stderr":"vm: no such machine\n","error":"no such machine"}"#
        );
        let answer = serde_json::to_string(&Response::infrastructure_error("died")).unwrap();
        assert!(
            answer.ends_with(r#""error":"died","infrastructure":true}"#),
            "{answer}"
        );
    }
}
