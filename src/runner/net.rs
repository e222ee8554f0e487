//! The private network of a destructive test with several machines, and the faults its
//! test asks for (Trafficlight's network proxy, for VMs): `vm net block A B`, `vm net
//! delay A B 200ms`, `vm net drop A B 30%`, `vm net unblock A B`, `vm net heal [A B]`,
//! `vm net show` (or the same `net` request from an executable check file, see
//! `control.rs`).
//!
//! `Network` is the attempt's: a run directory (0700) holding the sockets of a switch
//! (`machine/switch.rs`) with one port per machine, in provision order. It lives and dies
//! with the attempt, so no fault outlives the test; the attempt also heals every fault
//! when the test's body ends, and puts what the faults did into the test's output
//! (`Network::summary`). This file owns what the commands mean: their arguments, their
//! checks (one clear line for an unknown machine, a bad duration or percentage) and how
//! they change the switch's links.

use super::control::{Request, Response};
use crate::machine::qemu::PrivateNet;
use crate::machine::switch::{Link, Switch};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// What a `net` request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NetAction {
    /// Cut both directions between two machines.
    Block,
    /// Undo `block`.
    Unblock,
    /// Hold every frame between two machines back this long, each direction (0: none).
    Delay,
    /// Lose this percentage of the frames between two machines, each direction (0%: none).
    Drop,
    /// Remove every fault, or those between two machines.
    Heal,
    /// Print the faults and what crossed each direction.
    Show,
}

impl NetAction {
    /// The action as the helper spells it.
    pub fn word(self) -> &'static str {
        match self {
            NetAction::Block => "block",
            NetAction::Unblock => "unblock",
            NetAction::Delay => "delay",
            NetAction::Drop => "drop",
            NetAction::Heal => "heal",
            NetAction::Show => "show",
        }
    }
}

pub const USAGE: &str = "vm net block|unblock MACHINE MACHINE | vm net delay MACHINE MACHINE \
                         DURATION | vm net drop MACHINE MACHINE PERCENT | vm net heal [MACHINE \
                         MACHINE] | vm net show";

/// A checked `net` request.
#[derive(Debug, Clone, PartialEq)]
pub enum NetCommand {
    /// Change the link between two machines (both directions).
    Set {
        machines: [String; 2],
        change: Change,
    },
    /// Remove the faults between two machines, or all of them.
    Heal(Option<[String; 2]>),
    Show,
}

/// One change to a link.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Change {
    Block(bool),
    Delay(Duration),
    Loss(f64),
}

impl Change {
    fn apply(self, link: &mut Link) {
        match self {
            Change::Block(b) => link.blocked = b,
            Change::Delay(d) => link.delay = d,
            Change::Loss(p) => link.loss = p,
        }
    }
}

/// The longest delay a test may set.
const DELAY_MAX: Duration = Duration::from_secs(600);

impl NetCommand {
    /// Check a request's parts: the right number of machines, a duration or percentage
    /// where one is needed (and only there).
    pub fn new(
        action: NetAction,
        machines: &[String],
        value: Option<&str>,
    ) -> Result<NetCommand, String> {
        let what = action.word();
        let pair = || match machines {
            [a, b] if a == b => Err(format!("vm net {what}: {a} and {a} are one machine")),
            [a, b] => Ok([a.clone(), b.clone()]),
            _ => Err(format!(
                "vm net {what} needs two machines, not {}",
                machines.len()
            )),
        };
        let needed = |name: &str| {
            value.ok_or_else(|| format!("vm net {what} needs a {name} after the two machines"))
        };
        let no_value = || match value {
            Some(_) => Err(format!("vm net {what} takes no value")),
            None => Ok(()),
        };
        Ok(match action {
            NetAction::Block | NetAction::Unblock => {
                no_value()?;
                NetCommand::Set {
                    machines: pair()?,
                    change: Change::Block(action == NetAction::Block),
                }
            }
            NetAction::Delay => NetCommand::Set {
                machines: pair()?,
                change: Change::Delay(parse_delay(needed("duration")?)?),
            },
            NetAction::Drop => NetCommand::Set {
                machines: pair()?,
                change: Change::Loss(parse_percent(needed("percentage")?)?),
            },
            NetAction::Heal => {
                no_value()?;
                NetCommand::Heal(if machines.is_empty() {
                    None
                } else {
                    Some(pair()?)
                })
            }
            NetAction::Show => {
                no_value()?;
                if !machines.is_empty() {
                    return Err("vm net show takes no machines".into());
                }
                NetCommand::Show
            }
        })
    }
}

/// `vm net ACTION [MACHINE MACHINE] [VALUE]` as a request (checked as the runner will).
pub fn parse_args(args: &[String]) -> Result<Request, String> {
    let usage = || format!("usage: {USAGE}");
    let [action, rest @ ..] = args else {
        return Err(usage());
    };
    let action = match action.as_str() {
        "block" => NetAction::Block,
        "unblock" => NetAction::Unblock,
        "delay" => NetAction::Delay,
        "drop" => NetAction::Drop,
        "heal" => NetAction::Heal,
        "show" => NetAction::Show,
        _ => return Err(usage()),
    };
    let (machines, value) = match (action, rest) {
        (NetAction::Delay | NetAction::Drop, [a, b, v]) => (vec![a.clone(), b.clone()], Some(v)),
        (NetAction::Delay | NetAction::Drop, _) => return Err(usage()),
        (_, [a, b]) => (vec![a.clone(), b.clone()], None),
        (NetAction::Heal | NetAction::Show, []) => (Vec::new(), None),
        _ => return Err(usage()),
    };
    NetCommand::new(action, &machines, value.map(String::as_str))?;
    Ok(Request::Net {
        action,
        machines,
        value: value.cloned(),
    })
}

/// A delay: `200ms`, `1.5s`, `0` (none); at most `DELAY_MAX`.
pub fn parse_delay(text: &str) -> Result<Duration, String> {
    let bad = || format!("not a delay: {text:?} (say 200ms or 1.5s)");
    let (number, unit) = match text.strip_suffix("ms") {
        Some(n) => (n, 0.001),
        None => match text.strip_suffix('s') {
            Some(n) => (n, 1.0),
            None if text == "0" => ("0", 0.0),
            None => return Err(bad()),
        },
    };
    let n = number_of(number).ok_or_else(bad)?;
    let secs = n * unit;
    if secs > DELAY_MAX.as_secs_f64() {
        return Err(format!(
            "delay {text} is longer than {}s",
            DELAY_MAX.as_secs()
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A percentage from 0 to 100: `30%`, `0.5%`, `30`.
pub fn parse_percent(text: &str) -> Result<f64, String> {
    let bad = || format!("not a percentage from 0 to 100: {text:?} (say 30%)");
    let n = number_of(text.strip_suffix('%').unwrap_or(text)).ok_or_else(bad)?;
    if n > 100.0 {
        return Err(bad());
    }
    Ok(n)
}

/// A plain non-negative decimal number (no sign, exponent, `inf` or `nan`).
fn number_of(text: &str) -> Option<f64> {
    let plain = !text.is_empty()
        && text.chars().all(|c| c.is_ascii_digit() || c == '.')
        && text.chars().filter(|&c| c == '.').count() <= 1
        && text != ".";
    plain.then(|| text.parse().ok()).flatten()
}

/// The private network of one attempt's machines.
pub(super) struct Network {
    /// The machines, in the switch's port order.
    names: Vec<String>,
    switch: Switch,
    /// Holds the sockets; removed (after the switch stops) when the network is dropped.
    _dir: tempfile::TempDir,
}

impl Network {
    /// A switch with one port per machine of `names`, in a run directory of its own; `seed`
    /// decides which frames random losses take.
    pub fn create(names: &[String], seed: u64) -> std::io::Result<Network> {
        let dir = crate::machine::rundir::create("net")?;
        let switch = Switch::start(dir.path(), names.len(), seed)?;
        Ok(Network {
            names: names.to_vec(),
            switch,
            _dir: dir,
        })
    }

    /// The second NIC of the machine at `index` (provision order), with address `mac`.
    pub fn nic(&self, index: usize, mac: String) -> PrivateNet {
        let port = self.switch.port(index);
        PrivateNet {
            socket: port.machine.clone(),
            switch: port.switch.clone(),
            mac,
        }
    }

    fn port(&self, name: &str) -> Result<usize, String> {
        self.names.iter().position(|n| n == name).ok_or_else(|| {
            format!(
                "no machine '{name}' on this test's private network (machines: {})",
                self.names.join(", ")
            )
        })
    }

    /// Carry out a `net` request.
    pub fn serve(&self, action: NetAction, machines: &[String], value: Option<&str>) -> Response {
        match NetCommand::new(action, machines, value).and_then(|c| self.apply(&c)) {
            Ok(stdout) => Response {
                stdout,
                ..Response::default()
            },
            Err(e) => Response::error(e),
        }
    }

    /// Apply `command`; what it prints.
    pub fn apply(&self, command: &NetCommand) -> Result<String, String> {
        match command {
            NetCommand::Set {
                machines: [a, b],
                change,
            } => {
                let (a, b) = (self.port(a)?, self.port(b)?);
                self.switch.update(a, b, |link| change.apply(link));
            }
            NetCommand::Heal(Some([a, b])) => {
                let (a, b) = (self.port(a)?, self.port(b)?);
                self.switch.update(a, b, |link| *link = Link::default());
            }
            NetCommand::Heal(None) => self.switch.heal(),
            NetCommand::Show => return Ok(self.show()),
        }
        Ok(String::new())
    }

    /// Remove every fault.
    pub fn heal(&self) {
        self.switch.heal();
    }

    /// Every direction between two machines: `machine1 -> machine2`.
    fn directions(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        let n = self.names.len();
        (0..n).flat_map(move |a| (0..n).filter(move |&b| b != a).map(move |b| (a, b)))
    }

    /// `vm net show`: each direction's faults and counts of frames, one line each.
    fn show(&self) -> String {
        let mut out = String::new();
        for (a, b) in self.directions() {
            let link = self.switch.link(a, b);
            let mut faults = Vec::new();
            if link.blocked {
                faults.push("blocked".to_string());
            }
            if !link.delay.is_zero() {
                faults.push(format!("delay {:?}", link.delay));
            }
            if link.loss > 0.0 {
                faults.push(format!("drop {}%", link.loss));
            }
            if faults.is_empty() {
                faults.push("no fault".into());
            }
            let c = self.switch.counts(a, b);
            out.push_str(&format!(
                "{} -> {}: {}; frames: {} forwarded, {} blocked, {} dropped, {} delayed\n",
                self.names[a],
                self.names[b],
                faults.join(", "),
                c.forwarded,
                c.blocked,
                c.dropped,
                c.delayed
            ));
        }
        out
    }

    /// What the faults did, for the test's output: `vmcheck: network faults: machine1 ->
    /// machine2: 3 frames blocked, 5 delayed; …`, or `None` if they did nothing.
    pub fn summary(&self) -> Option<String> {
        let parts: Vec<String> = self
            .directions()
            .filter_map(|(a, b)| {
                let c = self.switch.counts(a, b);
                let did = crate::events::nonzero([
                    (c.blocked, "blocked"),
                    (c.dropped, "dropped"),
                    (c.delayed, "delayed"),
                ]);
                (!did.is_empty())
                    .then(|| format!("{} -> {}: {}", self.names[a], self.names[b], did.join(", ")))
            })
            .collect();
        (!parts.is_empty())
            .then(|| format!("vmcheck: network faults (frames): {}", parts.join("; ")))
    }
}

/// The seed of an attempt's random losses: the same test and attempt lose the same frames
/// of the same traffic.
pub(super) fn seed(test: &str, attempt: u32) -> u64 {
    let digest = <sha2::Sha256 as sha2::Digest>::digest(format!("{test}\0{attempt}"));
    u64::from_le_bytes(digest[..8].try_into().expect("eight bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    fn command(a: &[&str]) -> Result<NetCommand, String> {
        match parse_args(&words(a))? {
            Request::Net {
                action,
                machines,
                value,
            } => NetCommand::new(action, &machines, value.as_deref()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_the_helper_commands() {
        let pair = || ["alice".to_string(), "server".to_string()];
        assert_eq!(
            command(&["block", "alice", "server"]),
            Ok(NetCommand::Set {
                machines: pair(),
                change: Change::Block(true)
            })
        );
        assert_eq!(
            command(&["unblock", "alice", "server"]),
            Ok(NetCommand::Set {
                machines: pair(),
                change: Change::Block(false)
            })
        );
        assert_eq!(
            command(&["delay", "alice", "server", "200ms"]),
            Ok(NetCommand::Set {
                machines: pair(),
                change: Change::Delay(Duration::from_millis(200))
            })
        );
        assert_eq!(
            command(&["drop", "alice", "server", "30%"]),
            Ok(NetCommand::Set {
                machines: pair(),
                change: Change::Loss(30.0)
            })
        );
        assert_eq!(command(&["heal"]), Ok(NetCommand::Heal(None)));
        assert_eq!(
            command(&["heal", "alice", "server"]),
            Ok(NetCommand::Heal(Some(pair())))
        );
        assert_eq!(command(&["show"]), Ok(NetCommand::Show));
        let r = parse_args(&words(&["delay", "a", "b", "1.5s"])).unwrap();
        assert_eq!(r.describe(), "vm net delay a b 1.5s");
        assert_eq!(r.machine(), None);
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            json,
            r#"{"op":"net","action":"delay","machines":["a","b"],"value":"1.5s"}"#
        );
        let heal: Request = serde_json::from_str(r#"{"op":"net","action":"heal"}"#).unwrap();
        assert_eq!(heal.describe(), "vm net heal");
    }

    #[test]
    fn bad_commands_are_one_clear_line() {
        for (args, says) in [
            (&["frob", "a", "b"][..], "usage: vm net block"),
            (&[], "usage: vm net"),
            (&["block", "a"], "usage:"),
            (&["block", "a", "b", "c"], "usage:"),
            (&["delay", "a", "b"], "usage:"),
            (&["show", "a"], "usage:"),
            (&["block", "a", "a"], "a and a are one machine"),
            (
                &["delay", "a", "b", "200"],
                "not a delay: \"200\" (say 200ms or 1.5s)",
            ),
            (&["delay", "a", "b", "-1s"], "not a delay"),
            (&["delay", "a", "b", "1e3ms"], "not a delay"),
            (&["delay", "a", "b", "infs"], "not a delay"),
            (&["delay", "a", "b", "1h"], "not a delay"),
            (&["delay", "a", "b", "601s"], "longer than 600s"),
            (
                &["drop", "a", "b", "101%"],
                "not a percentage from 0 to 100",
            ),
            (&["drop", "a", "b", "nan%"], "not a percentage"),
            (&["drop", "a", "b", "%"], "not a percentage"),
            (&["drop", "a", "b", "."], "not a percentage"),
        ] {
            let err = command(args).unwrap_err();
            assert!(err.contains(says), "{args:?}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
        // What only the runner can check, and requests from programs with parts missing.
        assert!(NetCommand::new(NetAction::Block, &words(&["a"]), None).is_err());
        assert!(
            NetCommand::new(NetAction::Delay, &words(&["a", "b"]), None)
                .unwrap_err()
                .contains("needs a duration")
        );
        assert!(
            NetCommand::new(NetAction::Heal, &[], Some("1s"))
                .unwrap_err()
                .contains("takes no value")
        );
    }

    #[test]
    fn values() {
        assert_eq!(parse_delay("0"), Ok(Duration::ZERO));
        assert_eq!(parse_delay("0ms"), Ok(Duration::ZERO));
        assert_eq!(parse_delay("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_delay("0.5ms"), Ok(Duration::from_micros(500)));
        assert_eq!(parse_percent("0.5%"), Ok(0.5));
        assert_eq!(parse_percent("100"), Ok(100.0));
        assert_eq!(parse_percent("0%"), Ok(0.0));
        assert_ne!(seed("T.t", 1), seed("T.t", 2));
    }

    #[test]
    fn a_network_applies_commands_by_machine_name_and_sums_up() {
        let names = words(&["alice", "bob", "server"]);
        let net = Network::create(&names, 1).unwrap();
        let run = |a: &[&str]| net.apply(&command(a).unwrap());
        assert_eq!(run(&["block", "alice", "server"]), Ok(String::new()));
        assert!(net.switch.link(2, 0).blocked && net.switch.link(0, 2).blocked);
        assert!(net.switch.link(0, 1).is_clear());
        run(&["delay", "bob", "server", "300ms"]).unwrap();
        run(&["drop", "bob", "server", "25%"]).unwrap();
        let link = net.switch.link(1, 2);
        assert_eq!((link.delay, link.loss), (Duration::from_millis(300), 25.0));
        let shown = run(&["show"]).unwrap();
        assert!(
            shown.contains("alice -> server: blocked; frames: 0 forwarded"),
            "{shown}"
        );
        assert!(
            shown.contains("server -> bob: delay 300ms, drop 25%;"),
            "{shown}"
        );
        assert!(shown.contains("alice -> bob: no fault;"), "{shown}");
        assert_eq!(shown.lines().count(), 6);
        run(&["heal", "server", "alice"]).unwrap();
        assert!(net.switch.link(0, 2).is_clear());
        assert!(!net.switch.link(1, 2).is_clear());
        net.heal();
        assert!(net.switch.link(1, 2).is_clear());
        let err = run(&["block", "alice", "carol"]).unwrap_err();
        assert_eq!(
            err,
            "no machine 'carol' on this test's private network (machines: alice, bob, server)"
        );
        let answer = net.serve(NetAction::Drop, &words(&["alice", "bob"]), Some("x"));
        assert_eq!(answer.exit, 255);
        assert!(
            answer.stderr.starts_with("vm: not a percentage"),
            "{answer:?}"
        );
        // Nothing crossed: nothing to say.
        assert_eq!(net.summary(), None);
    }
}
