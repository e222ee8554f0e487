//! Starting child processes (qemu) that die with vmcheck, even when vmcheck is killed by
//! SIGKILL.
//!
//! Children get `PR_SET_PDEATHSIG(SIGKILL)` and their own process group. The subtle part:
//! the death signal fires when the *thread* that forked the child exits, not the process,
//! and tokio retires idle threads. So every such child is forked by one dedicated thread
//! that lives as long as the process; this module owns that thread (the only global state
//! of the machine layer).

use std::sync::OnceLock;
use std::sync::mpsc;
use tokio::process::{Child, Command};

type Job = (
    Command,
    tokio::runtime::Handle,
    tokio::sync::oneshot::Sender<std::io::Result<Child>>,
);

/// Spawn `cmd` in its own process group, to be killed when vmcheck exits.
pub async fn spawn_tied(mut cmd: Command) -> std::io::Result<Child> {
    cmd.process_group(0).kill_on_drop(true);
    // SAFETY: see `die_with_parent`.
    unsafe {
        cmd.pre_exec(die_with_parent());
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    spawner()
        .send((cmd, tokio::runtime::Handle::current(), tx))
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
    rx.await
        .map_err(|_| std::io::Error::other("the spawner thread dropped a request"))?
}

/// A `pre_exec` hook that makes the child get SIGKILL when the thread that forks it ends
/// (`PR_SET_PDEATHSIG`), or exit at once if vmcheck is already gone. It only makes
/// async-signal-safe system calls (prctl, getppid, _exit), as code between fork and exec must.
pub fn die_with_parent() -> impl FnMut() -> std::io::Result<()> + Send + Sync + 'static {
    let parent = std::process::id() as i32;
    move || {
        // SAFETY: plain system calls on this process.
        unsafe {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
        }
        Ok(())
    }
}

fn spawner() -> &'static mpsc::Sender<Job> {
    static SPAWNER: OnceLock<mpsc::Sender<Job>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("vmcheck-spawner".into())
            .spawn(move || {
                for (mut cmd, handle, reply) in rx {
                    let _guard = handle.enter();
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("cannot start the spawner thread");
        tx
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn child_runs_in_its_own_group() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "ps -o pgid= -p $$ | tr -d ' '; echo $$"]);
        cmd.stdout(std::process::Stdio::piped());
        let out = spawn_tied(cmd)
            .await
            .unwrap()
            .wait_with_output()
            .await
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let mut lines = text.lines();
        assert_eq!(lines.next(), lines.next(), "pgid equals pid: {text}");
    }
}
