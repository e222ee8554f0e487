//! Running one autopkgtest in its machine as autopkgtest's testbed does: the source tree
//! copied in and used as the working directory (built first for `build-needed`),
//! `AUTOPKGTEST_TMP`, `AUTOPKGTEST_ARTIFACTS` and `AUTOPKGTEST_NORMAL_USER` set, the test run
//! as that user unless it `needs-root`, its stdout and stderr told apart (output on stderr
//! fails it unless `allow-stderr`), exit status 77 a skip when it is `skippable`, a failure
//! of a `flaky` test (or of a `needs-internet` one under `--needs-internet=try`) reported as
//! such instead, and the reboot protocol: a test that calls `/tmp/autopkgtest-reboot MARK`
//! is killed, its machine rebooted, and the test run again with `AUTOPKGTEST_REBOOT_MARK`.

use super::attempt::{AttemptContext, Log, Named};
use super::outcomes::{guest_error, harness};
use crate::autopkgtest::test::{AptCommand, AptTest};
use crate::events::AttemptOutcome;
use crate::machine::error::MachineError;
use crate::machine::shell::Exec;
use crate::machine::ssh::{ExitStatus, Stream};
use crate::shell::quote;
use std::time::{Duration, Instant};

/// Where the test's files are in the guest.
const BASE: &str = "/tmp/autopkgtest";
/// The unprivileged user tests run as.
pub const NORMAL_USER: &str = "autopkgtest";
/// Where `/tmp/autopkgtest-reboot` leaves its mark (gone after the reboot: /run is a tmpfs).
const REBOOT_MARK: &str = "/run/autopkgtest-reboot-mark";
/// The pid of the shell that runs the test, for `/tmp/autopkgtest-reboot` to find the test.
const SCRIPT_PID: &str = "/tmp/autopkgtest_script_pid";
/// The exit status of a test killed by SIGKILL, as its shell reports it.
const KILLED: u32 = 128 + 9;

/// `/tmp/autopkgtest-reboot MARK`: leave the mark, then kill the test (the process whose
/// parent is the shell that runs it) so that the runner reboots the machine.
const REBOOT_HELPER: &str = r#"#!/bin/sh -e
[ -n "$1" ] || { echo "Usage: $0 <mark>" >&2; exit 1; }
echo "$1" > /run/autopkgtest-reboot-mark
top=$(cat /tmp/autopkgtest_script_pid)
p=$PPID
while :; do
    pp=$(sed 's/.*) [A-Za-z] //; s/ .*//' /proc/$p/stat)
    [ "$pp" != "$top" ] || break
    [ "$pp" -gt 1 ] || { echo "$0: not called by a test" >&2; exit 1; }
    p=$pp
done
kill -KILL "$p"
"#;

pub(super) async fn run(
    ctx: &AttemptContext,
    machine: &mut Named,
    test: &AptTest,
    env: &[(String, String)],
    log: &Log,
    deadline: Instant,
    timeout: Duration,
) -> AttemptOutcome {
    if let Some(why) = &test.badpkg {
        log.note(&format!("vmcheck: badpkg: {why}"));
        return AttemptOutcome::failed(format!("badpkg: {why}"));
    }
    let left = || deadline.saturating_duration_since(Instant::now());
    if let Err(outcome) = prepare(machine, test, log, left(), timeout).await {
        return outcome;
    }
    if test.behaviour.build {
        match build(machine, log, left()).await {
            Ok(None) => {}
            Ok(Some(why)) => {
                log.note(&format!("vmcheck: badpkg: {why}"));
                return AttemptOutcome::failed(format!("badpkg: {why}"));
            }
            Err(e) => return guest_error(e, timeout, log),
        }
    }
    let mut stderr_seen: Vec<u8> = Vec::new();
    let mut mark: Option<String> = None;
    let status = loop {
        let command = script(test, env, mark.as_deref());
        let mut sink = |stream: Stream, data: &[u8]| {
            if stream == Stream::Stderr && stderr_seen.len() < 4096 {
                stderr_seen.extend_from_slice(&data[..data.len().min(4096)]);
            }
            log.write(data);
        };
        let shell = machine.machine.shell();
        let status = match shell
            .run(Exec {
                sink: Some(&mut sink),
                ..Exec::new(&command, left())
            })
            .await
        {
            Ok(done) => done.status,
            Err(e) => return guest_error(e, timeout, log),
        };
        if status != ExitStatus::Code(KILLED) {
            break status;
        }
        // Killed: by /tmp/autopkgtest-reboot, if it left a mark.
        let asked = match shell
            .execute(&format!("cat {REBOOT_MARK} 2>/dev/null"), left())
            .await
        {
            Ok(done) if done.status.success() => done.stdout_text().trim().to_string(),
            Ok(_) => break status,
            Err(e) => return guest_error(e, timeout, log),
        };
        log.note(&format!(
            "vmcheck: the test asked for a reboot with mark {asked}"
        ));
        if let Err(e) = machine
            .machine
            .reboot(ctx.boot_timeout.min(left()), &ctx.cancel)
            .await
        {
            return guest_error(e, timeout, log);
        }
        // The tree survives a reboot unless /tmp is a tmpfs: then it is copied in again.
        match machine
            .machine
            .shell()
            .execute(&format!("test -d {BASE}/tree"), left())
            .await
        {
            Ok(done) if done.status.success() => {}
            Ok(_) => {
                if let Err(outcome) = prepare(machine, test, log, left(), timeout).await {
                    return outcome;
                }
            }
            Err(e) => return guest_error(e, timeout, log),
        }
        mark = Some(asked);
    };
    verdict(test, status, &stderr_seen, log)
}

/// autopkgtest's verdict on a test that ended with `status`, having written `stderr`.
fn verdict(test: &AptTest, status: ExitStatus, stderr: &[u8], log: &Log) -> AttemptOutcome {
    let b = &test.behaviour;
    let failure = match status {
        ExitStatus::Code(77) if b.skippable => {
            return AttemptOutcome::Skipped {
                reason: "exit status 77 and marked as skippable".into(),
            };
        }
        ExitStatus::Code(0) if b.allow_stderr || stderr.is_empty() => {
            return AttemptOutcome::Passed;
        }
        ExitStatus::Code(0) => format!(
            "stderr: {}",
            crate::reporter::text::first_line(&String::from_utf8_lossy(stderr))
        ),
        ExitStatus::Code(n) => format!("non-zero exit status {n}"),
        other => other.to_string(),
    };
    log.note(&format!("vmcheck: the test failed: {failure}"));
    if b.internet_try && failure.starts_with("non-zero") {
        return AttemptOutcome::Skipped {
            reason: "Failed, but test has needs-internet and that's not guaranteed".into(),
        };
    }
    if b.flaky {
        // autopkgtest's FLAKY: reported, and counted like a skip.
        return AttemptOutcome::Skipped {
            reason: format!("FLAKY {failure}"),
        };
    }
    AttemptOutcome::failed(failure)
}

/// Copy the source tree in, create the normal user (with sudo for `needs-sudo`) and the
/// reboot helper.
async fn prepare(
    machine: &Named,
    test: &AptTest,
    log: &Log,
    left: Duration,
    timeout: Duration,
) -> Result<(), AttemptOutcome> {
    let shell = machine.machine.shell();
    let tree =
        pack(&test.tree).map_err(|e| harness(format!("packing {}: {e}", test.tree.display())))?;
    shell
        .upload_bytes(&tree, &format!("{BASE}.tar"), 0o600)
        .await
        .map_err(|e| guest_error(e, timeout, log))?;
    shell
        .upload_bytes(REBOOT_HELPER.as_bytes(), "/tmp/autopkgtest-reboot", 0o755)
        .await
        .map_err(|e| guest_error(e, timeout, log))?;
    let prepare = format!(
        "set -e; rm -rf {BASE}; mkdir -p {BASE}/tree {BASE}/artifacts {BASE}/tmp\n\
         tar -C {BASE}/tree -xf {BASE}.tar; rm -f {BASE}.tar\n\
         ln -sf /tmp/autopkgtest-reboot /sbin/autopkgtest-reboot 2>/dev/null || true\n\
         if ! id -u {NORMAL_USER} >/dev/null 2>&1; then\n\
           command -v useradd >/dev/null || {{ echo 'vmcheck: the image has no useradd for AUTOPKGTEST_NORMAL_USER' >&2; exit 1; }}\n\
           useradd --create-home --shell /bin/sh {NORMAL_USER}\n\
         fi\n\
         chown -R {NORMAL_USER}: {BASE}\n{}",
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
    match shell.execute(&prepare, left).await {
        Ok(done) if done.status.success() => Ok(()),
        Ok(done) => Err(harness(format!(
            "preparing the testbed failed ({}): {}",
            done.status,
            String::from_utf8_lossy(&done.output.stderr).trim()
        ))),
        Err(e) => Err(guest_error(e, timeout, log)),
    }
}

/// `build-needed`: build the tree as the normal user, as autopkgtest does
/// (`dpkg-buildpackage -us -uc -b`, with fakeroot, then `dpkg-source --before-build .` to
/// keep the patches applied). `Some(why)` if the build failed: autopkgtest's badpkg.
async fn build(machine: &Named, log: &Log, left: Duration) -> Result<Option<String>, MachineError> {
    log.note("vmcheck: building the source tree (build-needed)");
    let command = format!(
        "cd {BASE}/tree && exec setpriv --reuid={NORMAL_USER} --regid={NORMAL_USER} \
         --init-groups env HOME=/home/{NORMAL_USER} USER={NORMAL_USER} LANG=C.UTF-8 \
         sh -ec 'DEB_BUILD_OPTIONS=\"parallel=$(nproc) $DEB_BUILD_OPTIONS\" \
         dpkg-buildpackage -us -uc -b; dpkg-source --before-build .' 2>&1"
    );
    let mut sink = |_: Stream, data: &[u8]| log.write(data);
    let done = machine
        .machine
        .shell()
        .run(Exec {
            sink: Some(&mut sink),
            ..Exec::new(&command, left)
        })
        .await?;
    Ok(match done.status {
        ExitStatus::Code(0) => None,
        ExitStatus::Code(n) => Some(format!("rules build failed with exit code {n}")),
        other => Some(format!("rules build failed ({other})")),
    })
}

/// The shell script that runs the test in its testbed (again after a reboot with `mark`).
fn script(test: &AptTest, env: &[(String, String)], mark: Option<&str>) -> String {
    let mut s = String::new();
    for (k, v) in env {
        s.push_str(&format!("export {k}={}\n", quote(v)));
    }
    if let Some(mark) = mark {
        s.push_str(&format!(
            "export AUTOPKGTEST_REBOOT_MARK={} ADT_REBOOT_MARK={}\n",
            quote(mark),
            quote(mark)
        ));
    }
    s.push_str(&format!(
        "set -e\n\
         export AUTOPKGTEST_TMP={BASE}/tmp AUTOPKGTEST_ARTIFACTS={BASE}/artifacts \
         AUTOPKGTEST_NORMAL_USER={NORMAL_USER}\n\
         export ADTTMP=\"$AUTOPKGTEST_TMP\" ADT_ARTIFACTS=\"$AUTOPKGTEST_ARTIFACTS\"\n\
         export DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 DEB_BUILD_OPTIONS=parallel=$(nproc)\n\
         unset LANGUAGE LC_CTYPE LC_NUMERIC LC_TIME LC_COLLATE LC_MONETARY LC_MESSAGES \
         LC_PAPER LC_NAME LC_ADDRESS LC_TELEPHONE LC_MEASUREMENT LC_IDENTIFICATION LC_ALL\n\
         cd {BASE}/tree\n\
         rm -f {SCRIPT_PID}; echo $$ > {SCRIPT_PID}\n"
    ));
    let run = match &test.command {
        AptCommand::Script(path) => {
            let path = quote(&format!("./{path}"));
            s.push_str(&format!("chmod +x {path}\n"));
            path
        }
        AptCommand::Shell(command) => format!("bash -ec {}", quote(command)),
    };
    // Not exec'd: /tmp/autopkgtest-reboot finds the test as this shell's child. The shell's
    // own notices (`Killed`, when it is) go nowhere: stderr is the test's alone.
    s.push_str("set +e\nexec 3>&2 2>/dev/null\n");
    if test.behaviour.root {
        s.push_str(&format!("{run} 2>&3 3>&-\n"));
    } else {
        s.push_str(&format!(
            "setpriv --reuid={NORMAL_USER} --regid={NORMAL_USER} --init-groups \
             env HOME=/home/{NORMAL_USER} USER={NORMAL_USER} LOGNAME={NORMAL_USER} {run} 2>&3 3>&-\n"
        ));
    }
    s.push_str("exit $?\n");
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
            internet: false,
            badpkg: None,
        }
    }

    #[test]
    fn scripts_run_as_the_normal_user_unless_root_is_needed() {
        let env = [("VMCHECK_TEST".to_string(), "hello/smoke test".to_string())];
        let user = script(
            &test(AptCommand::Script("debian/tests/smoke".into()), false),
            &env,
            None,
        );
        assert!(
            user.starts_with("export VMCHECK_TEST='hello/smoke test'\nset -e\n"),
            "{user}"
        );
        assert!(user.contains("chmod +x ./debian/tests/smoke\n"), "{user}");
        assert!(
            user.ends_with("set +e\nexec 3>&2 2>/dev/null\nsetpriv --reuid=autopkgtest --regid=autopkgtest --init-groups env HOME=/home/autopkgtest USER=autopkgtest LOGNAME=autopkgtest ./debian/tests/smoke 2>&3 3>&-\nexit $?\n"),
            "{user}"
        );
        assert!(!user.contains("REBOOT_MARK"), "{user}");
        let root = script(
            &test(
                AptCommand::Shell("hello | grep 'Hello, world'".into()),
                true,
            ),
            &[],
            Some("after 'reboot'"),
        );
        assert!(
            root.ends_with("set +e\nexec 3>&2 2>/dev/null\nbash -ec 'hello | grep '\\''Hello, world'\\''' 2>&3 3>&-\nexit $?\n"),
            "{root}"
        );
        assert!(!root.contains("setpriv"));
        assert!(
            root.starts_with(
                "export AUTOPKGTEST_REBOOT_MARK='after '\\''reboot'\\''' ADT_REBOOT_MARK='after '\\''reboot'\\'''\n"
            ),
            "{root}"
        );
    }

    #[test]
    fn verdicts_are_autopkgtests() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::new(&dir.path().join("output.txt"), std::sync::Arc::new(|_| {}));
        let fail = |s: &str| AttemptOutcome::failed(s);
        let skip = |s: &str| AttemptOutcome::Skipped { reason: s.into() };
        let plain: fn(&mut Behaviour) = |_| {};
        type Case = (fn(&mut Behaviour), u32, &'static str, AttemptOutcome);
        let cases: [Case; 8] = [
            (plain, 0, "", AttemptOutcome::Passed),
            (plain, 0, "warning: x\nmore", fail("stderr: warning: x")),
            (|b| b.allow_stderr = true, 0, "w", AttemptOutcome::Passed),
            (plain, 77, "", fail("non-zero exit status 77")),
            (
                |b| b.skippable = true,
                77,
                "",
                skip("exit status 77 and marked as skippable"),
            ),
            (
                |b| b.flaky = true,
                3,
                "",
                skip("FLAKY non-zero exit status 3"),
            ),
            (
                |b| b.internet_try = true,
                1,
                "",
                skip("Failed, but test has needs-internet and that's not guaranteed"),
            ),
            // Only a failing exit status is forgiven, as autopkgtest does; stderr still fails.
            (|b| b.internet_try = true, 0, "oops", fail("stderr: oops")),
        ];
        for (i, (behaviour, code, stderr, expected)) in cases.into_iter().enumerate() {
            let mut t = test(AptCommand::Shell("true".into()), true);
            behaviour(&mut t.behaviour);
            let got = verdict(&t, ExitStatus::Code(code), stderr.as_bytes(), &log);
            assert_eq!(got, expected, "case {i}");
        }
    }
}
