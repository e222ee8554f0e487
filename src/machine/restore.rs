//! What happens in a machine right after its snapshot is loaded: its clock set from the
//! snapshot's time to now, its second NIC's address its own, the image's hook for its identity
//! (machine id...), and its boot id read. One conversation with one guest shell, over the guest
//! agent's port when the snapshot holds the agent running (`agent.rs`: no SSH handshake on
//! the way), else over an SSH channel.

use super::agent::{Agent, AgentTalk};
use super::ssh::{Conversation, ExitStatus, Output};
use std::time::{Duration, Instant};

/// The channel of the conversation.
pub(super) enum Talk {
    Ssh(Conversation),
    Agent(AgentTalk),
}

impl Talk {
    async fn send(&mut self, data: &[u8]) -> Result<(), String> {
        match self {
            Talk::Ssh(c) => c.send(data).await.map_err(|e| e.to_string()),
            Talk::Agent(a) => a.send(data).await.map_err(|e| e.to_string()),
        }
    }

    async fn read_line(&mut self) -> Result<Option<String>, String> {
        match self {
            Talk::Ssh(c) => c.read_line().await.map_err(|e| e.to_string()),
            Talk::Agent(a) => a.read_line().await.map_err(|e| e.to_string()),
        }
    }

    /// Wait for its end, ticking (see [`RESTORE_TICK`]): its status, the output not read as
    /// lines, and the agent if it was the channel.
    async fn finish(self, tick: Duration) -> Result<(ExitStatus, Output, Option<Agent>), String> {
        match self {
            Talk::Ssh(c) => {
                let (status, output) = c.finish_ticking(tick).await;
                Ok((status, output, None))
            }
            Talk::Agent(mut a) => {
                let status = a.finish_ticking(tick).await.map_err(|e| e.to_string())?;
                let (output, agent) = a.into_parts();
                Ok((status, output, Some(agent)))
            }
        }
    }
}

/// What a finished restore step found.
pub(super) struct Restored {
    pub boot_id: String,
    /// Whether the guest has a journal (`journalctl`) to read besides its kernel log.
    pub journal: bool,
    /// When the guest's clock was read (for the phases of the start).
    pub clock_read: Instant,
    /// The agent, idle, when it was the channel.
    pub agent: Option<Agent>,
}

/// Hold the conversation of [`after_restore_script`], already started on `talk`.
pub(super) async fn converse(mut talk: Talk) -> Result<Restored, String> {
    let anchor = clock_anchor(&mut talk).await?;
    let clock_read = Instant::now();
    talk.send(format!("{} {}\n", anchor.host.as_millis(), anchor.uptime_cs).as_bytes())
        .await?;
    let (status, output, agent) = talk.finish(RESTORE_TICK).await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    let (journal, boot_id) = match last.split_once(' ') {
        Some(("journal", id)) => (true, id.to_string()),
        Some(("no-journal", id)) => (false, id.to_string()),
        _ => (false, String::new()),
    };
    if !status.success() || boot_id.is_empty() {
        let said = if output.stderr.is_empty() {
            stdout.into_owned()
        } else {
            String::from_utf8_lossy(&output.stderr).into_owned()
        };
        return Err(format!(
            "setting the clock and identity failed ({status}): {}",
            said.trim()
        ));
    }
    Ok(Restored {
        boot_id,
        journal,
        clock_read,
        agent,
    })
}

/// What the guest runs right after a restore, as one conversation (no process started in the
/// guest for each step): first it answers each `.` line with its
/// uptime, for the host to find the instant its clock is read at ([`ClockAnchor`]); then it
/// reads that anchor (`HOST_MS UPTIME_CS`) and the clock jumps from the snapshot's time to
/// now, a second NIC (`eth1`, as the image contract names it) trades the saved machine's
/// address for this one's (virtio-net passes it on to qemu's receive filter), and the image's
/// hook (if it has one, see bots/images/README.md) gives the machine its own identity, its
/// stdin a line every [`RESTORE_TICK`]. Then the boot id, as after every boot, after whether
/// the guest has a journal (`journal ID` or `no-journal ID`).
pub(super) fn after_restore_script(private_mac: Option<&str>) -> String {
    let mac = private_mac
        .map(|m| format!("ip link set dev eth1 address {m} && "))
        .unwrap_or_default();
    // The host's time now = its time at the anchor + the guest's uptime since, in ms.
    format!(
        "while read -r l && [ \"$l\" = . ]; do read -r u _ </proc/uptime; echo \"$u\"; done; \
         h=${{l% *}} && a=${{l#* }} && \
         read -r u _ </proc/uptime && c=${{u%.*}}${{u#*.}} && \
         ms=$(( h + (${{c#0}} - a) * 10 )) && s=$((ms / 1000)) && f=$((ms % 1000 + 1000)) && \
         {{ date -u -s @$s.${{f#1}} || date -u -s @$(( (ms + 500) / 1000 )); }} >/dev/null 2>&1 && \
         {mac}{{ [ ! -x {RESTORE_HOOK} ] || {RESTORE_HOOK}; }} && \
         {{ command -v journalctl >/dev/null && j=journal || j=no-journal; }} && \
         read -r id </proc/sys/kernel/random/boot_id && echo \"$j $id\""
    )
}

/// The host's time (since the epoch) at the moment the guest's uptime was `uptime_cs`.
#[derive(Debug, Clone, Copy)]
struct ClockAnchor {
    host: Duration,
    uptime_cs: u64,
}

/// The guest's uptime and the host's time at one instant, NTP-style: the host's time at the
/// middle of the fastest of a few uptime round trips in `talk` (see [`after_restore_script`];
/// off by at most half of it, however loaded the host).
async fn clock_anchor(talk: &mut Talk) -> Result<ClockAnchor, String> {
    let mut best: Option<(Duration, ClockAnchor)> = None;
    for _ in 0..3 {
        let sent = std::time::SystemTime::now();
        talk.send(b".\n").await?;
        let line = talk
            .read_line()
            .await?
            .ok_or("the guest ended before telling its uptime")?;
        let rtt = sent.elapsed().unwrap_or_default();
        let uptime_cs =
            parse_uptime_cs(&line).ok_or_else(|| format!("reading /proc/uptime: {line:?}"))?;
        let host = (sent + rtt / 2)
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let anchor = ClockAnchor { host, uptime_cs };
        if best.as_ref().is_none_or(|(b, _)| rtt < *b) {
            best = Some((rtt, anchor));
        }
        if rtt < Duration::from_millis(10) {
            break;
        }
    }
    Ok(best.expect("at least one sample").1)
}

/// `/proc/uptime`'s first field (`123.45`) in centiseconds.
fn parse_uptime_cs(text: &str) -> Option<u64> {
    let (whole, frac) = text.split_whitespace().next()?.split_once('.')?;
    Some(whole.parse::<u64>().ok()? * 100 + frac.get(..2)?.parse::<u64>().ok()?)
}

/// The guest program images may have for restored machines.
pub const RESTORE_HOOK: &str = "/usr/lib/vmcheck/restored";
/// How often the restore hook's stdin gets a line while it runs: a hook that waits for
/// something (debian-12's for journald) reads them instead of starting `sleep`.
pub(super) const RESTORE_TICK: Duration = Duration::from_millis(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_restore_command_sets_the_host_time_of_the_moment_it_runs() {
        assert_eq!(parse_uptime_cs("123.45 67.89\n"), Some(12345));
        assert_eq!(parse_uptime_cs("junk"), None);
        // An anchor taken now, and the command run 1.2 s later, with `date` printing its
        // argument: it is the host time of the moment the command runs, not of the anchor.
        // No timing is assumed: the time set lies between the host's clock just before the
        // command started and just after it ended, widened by what the anchor itself may be
        // off (the time between reading the uptime and the clock, and both uptimes'
        // truncation to centiseconds: up to 10 ms either way), however loaded the host is.
        let now = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
        };
        let before_uptime = now();
        let uptime = std::fs::read_to_string("/proc/uptime").unwrap();
        let anchor = ClockAnchor {
            host: now(),
            uptime_cs: parse_uptime_cs(&uptime).unwrap(),
        };
        let anchor_slack = (anchor.host - before_uptime).as_secs_f64();
        std::thread::sleep(Duration::from_millis(1200));
        let command = after_restore_script(None)
            .replace(">/dev/null 2>&1", "")
            .replace("date -u -s @", "echo ");
        // Two uptime round trips first (answered at once here), then the anchor.
        let talk = format!(".\n.\n{} {}\n", anchor.host.as_millis(), anchor.uptime_cs);
        let started = now().as_secs_f64();
        let mut child = std::process::Command::new("sh")
            .args(["-c", &command])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(talk.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let ended = now().as_secs_f64();
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().collect();
        // Each `.` was answered with the uptime, which the host parses.
        for answer in &lines[..2] {
            assert!(parse_uptime_cs(answer).is_some(), "{text}");
        }
        let set: f64 = lines[2].parse().unwrap();
        assert!(
            started - 0.011 <= set && set <= ended + anchor_slack + 0.011,
            "set {set}, not within [{started}, {ended}] (anchor slack {anchor_slack}): {text}"
        );
    }
}
