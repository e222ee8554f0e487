//! Starting child processes (qemu) that die with vmcheck, even when vmcheck is killed by
//! SIGKILL.
//!
//! Children get `PR_SET_PDEATHSIG(SIGKILL)` and their own process group. The subtle part:
//! the death signal fires when the *thread* that forked the child exits, not the process,
//! and tokio retires idle threads. So every such child is forked by one dedicated thread
//! that lives as long as the process; this module owns that thread (the only global state
//! of the machine layer). A child whose own children must die too (a host script) gets a
//! [`GroupGuard`]: a tiny process, forked by the same thread, that kills the child's whole
//! process group when vmcheck dies.

use std::sync::OnceLock;
use std::sync::mpsc;
use tokio::process::{Child, Command};

/// A command, the runtime to register it with, whether a [`GroupGuard`] watches its group,
/// and where the result goes.
type Job = (
    Command,
    tokio::runtime::Handle,
    bool,
    tokio::sync::oneshot::Sender<std::io::Result<(Child, Option<GroupGuard>)>>,
);

/// Spawn `cmd` in its own process group, to be killed when vmcheck exits.
pub async fn spawn_tied(cmd: Command) -> std::io::Result<Child> {
    Ok(spawn(cmd, false).await?.0)
}

/// [`spawn_tied`], and a [`GroupGuard`] on the child's process group: all the child starts
/// dies with vmcheck too, even on SIGKILL (host scripts).
pub async fn spawn_guarded(cmd: Command) -> std::io::Result<(Child, GroupGuard)> {
    let (child, guard) = spawn(cmd, true).await?;
    Ok((child, guard.expect("asked for")))
}

async fn spawn(mut cmd: Command, guard: bool) -> std::io::Result<(Child, Option<GroupGuard>)> {
    cmd.process_group(0).kill_on_drop(true);
    // SAFETY: see `die_with_parent`.
    unsafe {
        cmd.pre_exec(die_with_parent());
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    spawner()
        .send((cmd, tokio::runtime::Handle::current(), guard, tx))
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
                for (mut cmd, handle, guard, reply) in rx {
                    let _entered = handle.enter();
                    let spawned = cmd.spawn().map(|child| {
                        let guard = guard
                            .then(|| child.id())
                            .flatten()
                            .map(|pid| GroupGuard::start(nix::unistd::Pid::from_raw(pid as i32)));
                        (child, guard)
                    });
                    let _ = reply.send(spawned);
                }
            })
            .expect("cannot start the spawner thread");
        tx
    })
}

/// A process that kills a process group with SIGKILL when vmcheck dies, so no part of an
/// image recipe (debootstrap, dpkg, …) or of a host script (and all it started) outlives
/// it. `PR_SET_PDEATHSIG` alone reaches only the group's leader, not its children. Its death
/// signal fires when the thread that forked it ends: start it from a thread that lives as
/// long as the work (a blocking build thread, or the spawner thread: [`spawn_guarded`]).
/// Dropping the guard ends it quietly.
pub struct GroupGuard {
    pid: Option<nix::unistd::Pid>,
}

impl GroupGuard {
    /// Fork the guard of group `pgid`. On failure (no process left) the group is still
    /// killed on every ordinary way out, only not on vmcheck's SIGKILL.
    pub fn start(pgid: nix::unistd::Pid) -> GroupGuard {
        let parent = std::process::id() as i32;
        let pgid = pgid.as_raw();
        // SAFETY: after fork the child makes only async-signal-safe system calls (sigset
        // handling, setpgid, prctl, getppid, sigwait, kill, _exit) and never returns.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            unsafe {
                // Out of vmcheck's group (a terminal's Ctrl-C is vmcheck's to handle), deaf
                // to every signal but the death signal it waits for.
                libc::setpgid(0, 0);
                let mut all: libc::sigset_t = std::mem::zeroed();
                libc::sigfillset(&mut all);
                libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
                let mut term: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut term);
                libc::sigaddset(&mut term, libc::SIGTERM);
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) == 0
                    && libc::getppid() == parent
                {
                    let mut signo = 0;
                    while libc::sigwait(&term, &mut signo) != 0 {}
                }
                libc::kill(-pgid, libc::SIGKILL);
                libc::_exit(0);
            }
        }
        GroupGuard {
            pid: (pid > 0).then(|| nix::unistd::Pid::from_raw(pid)),
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
        }
    }
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
