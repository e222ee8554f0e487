//! Running one autopkgtest in its machine as autopkgtest's testbed does: the source tree
//! copied in and used as the working directory, `AUTOPKGTEST_TMP`, `AUTOPKGTEST_ARTIFACTS`
//! and `AUTOPKGTEST_NORMAL_USER` set, the test run as that user unless it `needs-root`,
//! its stdout and stderr told apart (output on stderr fails it unless `allow-stderr`),
//! exit status 77 a skip when it is `skippable`, and a failure of a `flaky` test reported
//! as FLAKY instead.

use super::attempt::{Log, Named, guest_error, harness};
use crate::autopkgtest::test::{AptCommand, AptTest};
use crate::events::AttemptOutcome;
use crate::machine::shell::Exec;
use crate::machine::ssh::{ExitStatus, Stream};
use crate::shell::quote;
use std::time::{Duration, Instant};

/// Where the test's files are in the guest.
const BASE: &str = "/tmp/autopkgtest";
/// The unprivileged user tests run as.
pub const NORMAL_USER: &str = "autopkgtest";

pub(super) async fn run(
    machine: &Named,
    test: &AptTest,
    env: &[(String, String)],
    log: &Log,
    deadline: Instant,
    timeout: Duration,
) -> AttemptOutcome {
    if let Some(why) = &test.badpkg {
        log.note(&format!("vmcheck: badpkg: {why}"));
        return AttemptOutcome::Failed {
            status: format!("badpkg: {why}"),
        };
    }
    let shell = machine.machine.shell();
    let tree = match pack(&test.tree) {
        Ok(t) => t,
        Err(e) => return harness(format!("packing {}: {e}", test.tree.display())),
    };
    let left = || deadline.saturating_duration_since(Instant::now());
    if let Err(e) = shell
        .upload_bytes(&tree, &format!("{BASE}.tar"), 0o600)
        .await
    {
        return guest_error(e, timeout, log);
    }
    let prepare = format!(
        "set -e; rm -rf {BASE}; mkdir -p {BASE}/tree {BASE}/artifacts\n\
         tar -C {BASE}/tree -xf {BASE}.tar; rm -f {BASE}.tar\n\
         if ! id -u {NORMAL_USER} >/dev/null 2>&1; then\n\
           command -v useradd >/dev/null || {{ echo 'vmcheck: the image has no useradd for AUTOPKGTEST_NORMAL_USER' >&2; exit 1; }}\n\
           useradd --create-home --shell /bin/sh {NORMAL_USER}\n\
         fi\n{}",
        if test.behaviour.sudo {
            format!(
                "getent group sudo >/dev/null && usermod -aG sudo {NORMAL_USER}\n\
                 mkdir -p /etc/sudoers.d\n\
                 echo '{NORMAL_USER} ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/autopkgtest\n\
                 chmod 0440 /etc/sudoers.d/autopkgtest\n"
            )
        } else {
            String::new()
        }
    );
    match shell.execute(&prepare, left()).await {
        Ok(done) if done.status.success() => {}
        Ok(done) => {
            return harness(format!(
                "preparing the testbed failed ({}): {}",
                done.status,
                String::from_utf8_lossy(&done.output.stderr).trim()
            ));
        }
        Err(e) => return guest_error(e, timeout, log),
    }
    let command = script(test, env);
    let mut stderr_seen: Vec<u8> = Vec::new();
    let mut sink = |stream: Stream, data: &[u8]| {
        if stream == Stream::Stderr && stderr_seen.len() < 4096 {
            stderr_seen.extend_from_slice(&data[..data.len().min(4096)]);
        }
        log.write(data);
    };
    let result = shell
        .run(Exec {
            sink: Some(&mut sink),
            ..Exec::new(&command, left())
        })
        .await;
    let status = match result {
        Ok(done) => done.status,
        Err(e) => return guest_error(e, timeout, log),
    };
    let b = &test.behaviour;
    let failure = match status {
        ExitStatus::Code(77) if b.skippable => {
            return AttemptOutcome::Skipped {
                reason: "exit status 77 and marked as skippable".into(),
            };
        }
        ExitStatus::Code(0) if b.allow_stderr || stderr_seen.is_empty() => {
            return AttemptOutcome::Passed;
        }
        ExitStatus::Code(0) => format!(
            "stderr: {}",
            crate::reporter::text::first_line(&String::from_utf8_lossy(&stderr_seen))
        ),
        ExitStatus::Code(n) => format!("non-zero exit status {n}"),
        other => other.to_string(),
    };
    log.note(&format!("vmcheck: the test failed: {failure}"));
    if b.flaky {
        // autopkgtest's FLAKY: reported, and counted like a skip.
        return AttemptOutcome::Skipped {
            reason: format!("FLAKY {failure}"),
        };
    }
    AttemptOutcome::Failed { status: failure }
}

/// The shell script that runs the test in its testbed.
fn script(test: &AptTest, env: &[(String, String)]) -> String {
    let mut s = String::new();
    for (k, v) in env {
        s.push_str(&format!("export {k}={}\n", quote(v)));
    }
    s.push_str(&format!(
        "set -e\n\
         export AUTOPKGTEST_TMP=\"$(mktemp -d {BASE}/tmp.XXXXXX)\" AUTOPKGTEST_ARTIFACTS={BASE}/artifacts \
         AUTOPKGTEST_NORMAL_USER={NORMAL_USER}\n\
         export ADTTMP=\"$AUTOPKGTEST_TMP\" ADT_ARTIFACTS=\"$AUTOPKGTEST_ARTIFACTS\"\n\
         cd {BASE}/tree\n"
    ));
    let run = match &test.command {
        AptCommand::Script(path) => {
            let path = quote(&format!("./{path}"));
            s.push_str(&format!("chmod +x {path}\n"));
            path
        }
        AptCommand::Shell(command) => format!("bash -ec {}", quote(command)),
    };
    if test.behaviour.root {
        s.push_str(&format!("exec {run}\n"));
    } else {
        s.push_str(&format!(
            "chown -R {NORMAL_USER}: {BASE}\n\
             exec setpriv --reuid={NORMAL_USER} --regid={NORMAL_USER} --init-groups \
             env HOME=/home/{NORMAL_USER} USER={NORMAL_USER} LOGNAME={NORMAL_USER} {run}\n"
        ));
    }
    s
}

/// The source tree as a tar archive (symlinks kept as links, not followed).
fn pack(tree: &std::path::Path) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder.append_dir_all(".", tree)?;
    builder.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autopkgtest::test::Behaviour;

    fn test(command: AptCommand, root: bool) -> AptTest {
        AptTest {
            tree: "/src".into(),
            command,
            behaviour: Behaviour {
                root,
                ..Behaviour::default()
            },
            layer: None,
            badpkg: None,
        }
    }

    #[test]
    fn scripts_run_as_the_normal_user_unless_root_is_needed() {
        let env = [("VMCHECK_TEST".to_string(), "hello/smoke test".to_string())];
        let user = script(
            &test(AptCommand::Script("debian/tests/smoke".into()), false),
            &env,
        );
        assert!(
            user.starts_with("export VMCHECK_TEST='hello/smoke test'\n"),
            "{user}"
        );
        assert!(user.contains("chmod +x ./debian/tests/smoke\n"), "{user}");
        assert!(
            user.contains("exec setpriv --reuid=autopkgtest --regid=autopkgtest --init-groups env HOME=/home/autopkgtest USER=autopkgtest LOGNAME=autopkgtest ./debian/tests/smoke\n"),
            "{user}"
        );
        let root = script(
            &test(
                AptCommand::Shell("hello | grep 'Hello, world'".into()),
                true,
            ),
            &[],
        );
        assert!(
            root.ends_with("exec bash -ec 'hello | grep '\\''Hello, world'\\'''\n"),
            "{root}"
        );
        assert!(!root.contains("setpriv"));
    }
}
