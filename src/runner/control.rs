//! The `vm` helper of host scripts: a test's `host` script runs on the host and drives its
//! machines with `vm exec machine1 CMD`, `vm reboot machine2`, `vm upload …`. The helper is
//! vmcheck itself (`vmcheck vm-ctl`), which sends one JSON request over the attempt's Unix
//! socket (`$VMCHECK_CONTROL`) to the runner that owns the machines, and prints the answer.
//! Going through the runner (not straight to SSH) lets reboots relaunch qemu, keeps one SSH
//! connection per machine, and puts every request into the test's output.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// One request from the helper.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    Exec {
        machine: String,
        command: String,
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
}

impl Request {
    pub fn machine(&self) -> &str {
        match self {
            Request::Exec { machine, .. }
            | Request::Reboot { machine }
            | Request::WaitReboot { machine }
            | Request::Upload { machine, .. }
            | Request::Download { machine, .. }
            | Request::Ssh { machine } => machine,
        }
    }

    /// How the request reads in a test's output (`+ vm exec machine1 'true'`).
    pub fn describe(&self) -> String {
        use crate::shell::quote;
        match self {
            Request::Exec { machine, command } => format!("vm exec {machine} {}", quote(command)),
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
        }
    }
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
}

impl Response {
    pub fn error(message: impl Into<String>) -> Response {
        Response {
            exit: 255,
            stdout: String::new(),
            stderr: format!("vm: {}\n", message.into()),
        }
    }
}

/// Parse the helper's command line (`vm SUBCOMMAND MACHINE ARGS…`) into a request.
pub fn parse_args(args: &[String]) -> Result<Request, String> {
    let usage = "usage: vm exec MACHINE CMD… | vm reboot MACHINE | vm wait-reboot MACHINE | \
                 vm upload MACHINE LOCAL REMOTE | vm download MACHINE REMOTE LOCAL | vm ssh MACHINE";
    let [op, machine, rest @ ..] = args else {
        return Err(usage.into());
    };
    let machine = machine.clone();
    let abs = |p: &String| std::path::absolute(p).map_err(|e| format!("bad local path {p}: {e}"));
    Ok(match (op.as_str(), rest) {
        ("exec", [_, ..]) => Request::Exec {
            machine,
            command: rest.join(" "),
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
                command: "echo hi".into()
            }
        );
        assert_eq!(
            parse_args(&args(&["reboot", "m2"])).unwrap(),
            Request::Reboot {
                machine: "m2".into()
            }
        );
        let up = parse_args(&args(&["upload", "m", "/tmp/a", "/root/a"])).unwrap();
        assert_eq!(up.machine(), "m");
        for bad in [
            &["exec", "m"][..],
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
    }
}
