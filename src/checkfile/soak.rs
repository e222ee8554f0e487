//! A test's `soak` table and its `[[Class.test.events]]` tables, read into a
//! [`Soak`](crate::soak::Soak), every mistake an error at its `path:line:col`.

use super::duration::{parse_duration, timeout};
use super::error::Diagnostics;
use super::value::{Value, a_type, boolean, entries, non_empty_string, string, table};
use crate::soak::{Action, FAULTS, Fault, Overlap, Soak, SoakEvent};
use std::time::Duration;
use toml::de::{DeTable, DeValue};

/// The keys of an event table.
const EVENT_KEYS: &[&str] = &[
    "name",
    "run",
    "host",
    "machine",
    "fault",
    "for",
    "by",
    "interval",
    "at_startup",
    "at_teardown",
    "timeout",
    "overlap",
    "invariant",
];

/// An event's limit when it sets none.
pub const DEFAULT_EVENT_TIMEOUT: Duration = Duration::from_secs(600);

/// The soak of test `name` from its `soak` and `events` values; `machines`: the names of the
/// test's machines (the first is the default). `None` after an error (recorded in `d`), or
/// when the test has neither key.
pub(super) fn soak(
    d: &mut Diagnostics,
    name: &str,
    soak: Option<&Value>,
    events: Option<&Value>,
    machines: &[&str],
) -> Option<Soak> {
    let (soak, events) = match (soak, events) {
        (None, None) => return None,
        (None, Some(events)) => {
            d.error(
                events.span(),
                format!("test {name} has events but no soak: add soak = {{ duration = \"10m\" }}"),
            );
            return None;
        }
        (Some(soak), None) => {
            d.error(
                soak.span(),
                format!("soak of test {name} has no events: add [[{name}.events]] tables"),
            );
            return None;
        }
        (Some(s), Some(e)) => (s, e),
    };
    let t = table(d, "soak", soak, "a table, e.g. { duration = \"2h\" }")?;
    let (mut duration, mut keep_going) = (None, false);
    for (key, value) in entries(t) {
        match key.get_ref().as_ref() {
            "duration" => duration = timeout(d, "soak.duration", value),
            "keep_going" => keep_going = boolean(d, "soak.keep_going", value).unwrap_or(false),
            other => d.error(
                key.span(),
                format!("unknown key '{other}' in soak: valid keys are duration, keep_going"),
            ),
        }
    }
    if duration.is_none() && !t.contains_key("duration") {
        d.error(
            soak.span(),
            "soak needs a duration, e.g. soak = { duration = \"2h\" }",
        );
    }
    let DeValue::Array(array) = events.get_ref() else {
        d.error(
            events.span(),
            format!(
                "'events' must be an array of tables ([[{name}.events]]), found {}",
                a_type(events.get_ref())
            ),
        );
        return None;
    };
    let mut out: Vec<SoakEvent> = Vec::new();
    let mut ok = duration.is_some();
    for value in array.iter() {
        match event(d, value, machines, duration) {
            Some(e) if out.iter().any(|o| o.name == e.name) => {
                d.error(
                    value.span(),
                    format!("event '{}' is named twice in test {name}", e.name),
                );
                ok = false;
            }
            Some(e) => out.push(e),
            None => ok = false,
        }
    }
    (ok && !out.is_empty()).then(|| Soak {
        duration: duration.expect("checked"),
        keep_going,
        events: out,
    })
}

fn event(
    d: &mut Diagnostics,
    value: &Value,
    machines: &[&str],
    duration: Option<Duration>,
) -> Option<SoakEvent> {
    let t = table(d, "events", value, "a table ([[Class.test.events]])")?;
    let errors_before = d.error_count();
    let line = d.line(value.span().start);
    let get = |k: &str| t.get(k);
    for (key, _) in entries(t) {
        if !EVENT_KEYS.contains(&key.get_ref().as_ref()) {
            d.error(
                key.span(),
                format!(
                    "unknown key '{}' in an event: valid keys are {}",
                    key.get_ref(),
                    EVENT_KEYS.join(", ")
                ),
            );
        }
    }
    let name = match get("name") {
        Some(v) => non_empty_string(d, "name", v, ": name the event").filter(|n| {
            let valid = n
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !valid {
                d.error(
                    v.span(),
                    format!("invalid event name \"{n}\": use letters, digits, '-', '_' and '.'"),
                );
            }
            valid
        }),
        None => {
            d.error(value.span(), "an event needs a name (name = \"check\")");
            None
        }
    };
    let machine = match get("machine") {
        Some(v) => string(d, "machine", v).and_then(|m| {
            if machines.contains(&m) {
                Some(m.to_owned())
            } else {
                d.error(
                    v.span(),
                    format!(
                        "'machine': the test has no machine {m:?} (it has {})",
                        machines.join(", ")
                    ),
                );
                None
            }
        }),
        None => machines.first().map(|m| m.to_string()),
    };
    let for_ = get("for").and_then(|v| timeout(d, "for", v).map(|t| (t, v)));
    let interval = get("interval").and_then(|v| timeout(d, "interval", v).map(|t| (t, v)));
    let action = action(d, value, t, machine, for_);
    if let Some(v) = get("by")
        && !matches!(
            action,
            None | Some(Action::Fault {
                fault: Fault::ClockJump { .. },
                ..
            })
        )
    {
        d.error(v.span(), "'by' is a clock-jump's: how far the clock moves");
    }
    if let (Some((interval, v)), Some(duration)) = (interval, duration)
        && interval > duration
    {
        d.error(
            v.span(),
            format!(
                "'interval' {}s is longer than the soak's duration {}s: it would never run \
                 on it",
                interval.as_secs(),
                duration.as_secs()
            ),
        );
    }
    if let (Some((interval, _)), Some((lasts, v))) = (interval, for_)
        && lasts >= interval
    {
        d.error(
            v.span(),
            format!(
                "'for' {}s is not shorter than the event's interval {}s: the fault would \
                 never end before it is due again",
                lasts.as_secs(),
                interval.as_secs()
            ),
        );
    }
    let flag = |d: &mut Diagnostics, k: &str, default: bool| {
        get(k).map_or(Some(default), |v| boolean(d, k, v))
    };
    let at_startup = flag(d, "at_startup", true);
    let at_teardown = flag(d, "at_teardown", false);
    let invariant = flag(d, "invariant", false);
    if invariant == Some(true)
        && let (Some(v), true) = (
            get("invariant"),
            matches!(action, Some(Action::Fault { .. })),
        )
    {
        d.error(
            v.span(),
            "a fault cannot be an invariant: only a check ('run' or 'host') can",
        );
    }
    let overlap = match get("overlap") {
        None => Some(Overlap::Skip),
        Some(v) => match string(d, "overlap", v) {
            Some("skip") => Some(Overlap::Skip),
            Some("queue") => Some(Overlap::Queue),
            Some(other) => {
                d.error(
                    v.span(),
                    format!("unknown overlap \"{other}\": use skip or queue"),
                );
                None
            }
            None => None,
        },
    };
    let limit = match get("timeout") {
        Some(v) => timeout(d, "timeout", v),
        None => Some(DEFAULT_EVENT_TIMEOUT),
    };
    if d.error_count() > errors_before {
        return None;
    }
    Some(SoakEvent {
        name: name?,
        action: action?,
        interval: interval.map(|(t, _)| t),
        at_startup: at_startup?,
        at_teardown: at_teardown?,
        timeout: limit?,
        overlap: overlap?,
        invariant: invariant?,
        line,
    })
}

/// What an event does: its `run`, `host` or `fault` (exactly one), with `machine` (the
/// test's first machine if not given) and `for`.
fn action(
    d: &mut Diagnostics,
    value: &Value,
    t: &DeTable,
    machine: Option<String>,
    for_: Option<(Duration, &Value)>,
) -> Option<Action> {
    let get = |k: &str| t.get(k);
    let given: Vec<(&str, &Value)> = ["run", "host", "fault"]
        .into_iter()
        .filter_map(|k| get(k).map(|v| (k, v)))
        .collect();
    let (kind, v) = match given.as_slice() {
        [] => {
            d.error(
                value.span(),
                format!(
                    "an event needs something to do: 'run' (a script in the machine), 'host' \
                     (a script on the host) or 'fault' ({})",
                    FAULTS.join(", ")
                ),
            );
            return None;
        }
        [one] => *one,
        [(a, _), (b, v), ..] => {
            d.error(
                v.span(),
                format!("an event does one thing: '{a}' or '{b}', not both"),
            );
            return None;
        }
    };
    if kind != "fault"
        && let Some(v) = get("for")
    {
        d.error(v.span(), "'for' is a fault's: this event runs a script");
    }
    match kind {
        "run" => {
            non_empty_string(d, "run", v, ": write the script to run").map(|script| Action::Guest {
                machine: machine.unwrap_or_default(),
                script,
            })
        }
        "host" => {
            if let Some(m) = get("machine") {
                d.error(
                    m.span(),
                    "'machine': a host event runs on the host; it reaches machines with \
                     `vm exec MACHINE ...`",
                );
            }
            non_empty_string(d, "host", v, ": write the script to run")
                .map(|script| Action::Host { script })
        }
        _ => fault(d, v, get("by"), for_).map(|fault| Action::Fault {
            machine: machine.unwrap_or_default(),
            fault,
        }),
    }
}

/// A `fault` event's fault, with its `for` (pause, link-down) or `by` (clock-jump).
fn fault(
    d: &mut Diagnostics,
    fault: &Value,
    by: Option<&Value>,
    for_: Option<(Duration, &Value)>,
) -> Option<Fault> {
    let word = string(d, "fault", fault)?;
    let lasting = |d: &mut Diagnostics| match for_ {
        Some((t, _)) => Some(t),
        None => {
            d.error(
                fault.span(),
                format!("a {word} fault needs 'for', how long it lasts (for = \"5s\")"),
            );
            None
        }
    };
    let instant = |d: &mut Diagnostics| {
        if let Some((_, v)) = for_ {
            d.error(
                v.span(),
                format!("a {word} fault is not held: it takes no 'for'"),
            );
        }
    };
    match word {
        "pause" => lasting(d).map(|duration| Fault::Pause { duration }),
        "link-down" => lasting(d).map(|duration| Fault::LinkDown { duration }),
        "reboot" => {
            instant(d);
            Some(Fault::Reboot)
        }
        "clock-jump" => {
            instant(d);
            match by {
                Some(v) => jump(d, v).map(|by| Fault::ClockJump { by }),
                None => {
                    d.error(
                        fault.span(),
                        "a clock-jump fault needs 'by', how far the clock moves (by = \"1h\", \
                         or by = \"-10m\" back)",
                    );
                    None
                }
            }
        }
        other => {
            d.error(
                fault.span(),
                format!(
                    "unknown fault \"{other}\": faults are {}",
                    FAULTS.join(", ")
                ),
            );
            None
        }
    }
}

/// A clock jump's `by`: a duration, with `-` before it to go back; in seconds.
fn jump(d: &mut Diagnostics, value: &Value) -> Option<i64> {
    let text = string(d, "by", value)?;
    let (sign, rest) = match text.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, text.strip_prefix('+').unwrap_or(text)),
    };
    match parse_duration(rest) {
        Ok(t) => i64::try_from(t.as_secs()).ok().map(|s| sign * s),
        Err(e) => {
            d.error(value.span(), format!("'by': {e} (\"-10m\" moves it back)"));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkfile::parse_file;
    use std::path::Path;

    const SOAK: &str = r#"
[TestSoak.testLong]
provision.machine1 = {}
provision.machine2 = {}
soak = { duration = "2h", keep_going = true }
run = "while true; do sleep 1; done"

[[TestSoak.testLong.events]]
name = "setup"
run = "touch /tmp/x"
at_startup = true

[[TestSoak.testLong.events]]
name = "check"
run = "test -e /tmp/x"
machine = "machine2"
interval = "5m"
timeout = "30s"
overlap = "queue"
invariant = true

[[TestSoak.testLong.events]]
name = "pause"
fault = "pause"
for = "10s"
interval = "20m"
at_startup = false

[[TestSoak.testLong.events]]
name = "collect"
run = "true"
at_startup = false
at_teardown = true
"#;

    #[test]
    fn a_soak_and_its_events() {
        let tests = parse_file(Path::new("check-s"), SOAK).unwrap();
        let soak = tests[0].soak.as_deref().unwrap();
        assert_eq!(soak.duration, Duration::from_secs(7200));
        assert!(soak.keep_going);
        let names: Vec<&str> = soak.events.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["setup", "check", "pause", "collect"]);
        let check = &soak.events[1];
        assert_eq!(
            check.action,
            Action::Guest {
                machine: "machine2".into(),
                script: "test -e /tmp/x".into()
            }
        );
        assert_eq!(check.interval, Some(Duration::from_secs(300)));
        assert_eq!(check.timeout, Duration::from_secs(30));
        assert_eq!(check.overlap, Overlap::Queue);
        assert!(check.invariant && check.at_startup && !check.at_teardown);
        assert_eq!(check.line, 13);
        assert_eq!(
            soak.events[2].action,
            Action::Fault {
                machine: "machine1".into(),
                fault: Fault::Pause {
                    duration: Duration::from_secs(10)
                }
            }
        );
        let collect = &soak.events[3];
        assert!(!collect.at_startup && collect.at_teardown);
        assert_eq!(collect.timeout, DEFAULT_EVENT_TIMEOUT);
        assert_eq!(collect.overlap, Overlap::Skip);
        assert_eq!(soak.machines(), ["machine1", "machine2"]);
    }

    #[test]
    fn host_events_reboots_and_clock_jumps() {
        let text = r#"
[TestSoak.testFaults]
soak = { duration = "1h" }

[[TestSoak.testFaults.events]]
name = "probe"
host = "vm exec machine1 true"
interval = "1m"

[[TestSoak.testFaults.events]]
name = "reboot"
fault = "reboot"
interval = "30m"

[[TestSoak.testFaults.events]]
name = "back"
fault = "clock-jump"
by = "-1h30m"

[[TestSoak.testFaults.events]]
name = "ahead"
fault = "clock-jump"
by = "+10m"
"#;
        let tests = parse_file(Path::new("check-s"), text).unwrap();
        let soak = tests[0].soak.as_deref().unwrap();
        let actions: Vec<&Action> = soak.events.iter().map(|e| &e.action).collect();
        let fault = |fault| Action::Fault {
            machine: "machine1".into(),
            fault,
        };
        assert_eq!(
            actions,
            [
                &Action::Host {
                    script: "vm exec machine1 true".into()
                },
                &fault(Fault::Reboot),
                &fault(Fault::ClockJump { by: -5400 }),
                &fault(Fault::ClockJump { by: 600 }),
            ]
        );
        // Host events name no machine; a clock jump's size is not scaled.
        assert_eq!(soak.machines(), ["machine1"]);
        assert_eq!(
            soak.scaled(0.01).events[2].action,
            fault(Fault::ClockJump { by: -5400 })
        );
    }

    fn errors(text: &str) -> Vec<String> {
        parse_file(Path::new("check-x"), text)
            .unwrap_err()
            .iter()
            .map(|e| format!("{}:{}: {}", e.line, e.col, e.message))
            .collect()
    }

    #[test]
    fn bad_soaks_are_errors_at_their_place() {
        let head = "[TestA.testB]\nsoak = { duration = \"1m\" }\n";
        let cases: &[(&str, &str)] = &[
            (
                "[TestA.testB]\nsoak = { duration = \"1m\" }\n",
                "2:8: soak of test TestA.testB has no events",
            ),
            (
                "[TestA.testB]\nrun = 'x'\n[[TestA.testB.events]]\nname = 'a'\nrun = 'x'\n",
                "3:1: test TestA.testB has events but no soak",
            ),
            (
                "[[TestA.testB.events]]\nname = 'a'\nrun = 'x'\n[TestA.testB]\nsoak = {}\n",
                "5:8: soak needs a duration",
            ),
            (
                "[TestA.testB]\nsoak = { duration = \"0s\" }\n[[TestA.testB.events]]\nname = 'a'\nrun = 'x'\n",
                "2:21: 'soak.duration': invalid duration \"0s\"",
            ),
            (
                "[TestA.testB]\nsoak = { duration = -5 }\n[[TestA.testB.events]]\nname = 'a'\nrun = 'x'\n",
                "2:21: 'soak.duration': -5 seconds: it must be greater than zero",
            ),
        ];
        let events: &[(&str, &str)] = &[
            ("name = 'a'\n", "3:1: an event needs something to do"),
            ("run = 'x'\n", "3:1: an event needs a name"),
            (
                "name = 'a b'\nrun = 'x'\n",
                "4:8: invalid event name \"a b\"",
            ),
            (
                "name = 'a'\nrun = 'x'\nfault = 'pause'\n",
                "6:9: an event does one thing: 'run' or 'fault', not both",
            ),
            (
                "name = 'a'\nhost = 'x'\nrun = 'y'\n",
                "5:8: an event does one thing: 'run' or 'host', not both",
            ),
            (
                "name = 'a'\nhost = 'vm exec machine1 true'\nmachine = 'machine1'\n",
                "6:11: 'machine': a host event runs on the host",
            ),
            (
                "name = 'a'\nfault = 'explode'\n",
                "5:9: unknown fault \"explode\": faults are pause, link-down, reboot, clock-jump",
            ),
            (
                "name = 'a'\nfault = 'reboot'\nfor = '5s'\n",
                "6:7: a reboot fault is not held: it takes no 'for'",
            ),
            (
                "name = 'a'\nfault = 'clock-jump'\n",
                "5:9: a clock-jump fault needs 'by'",
            ),
            (
                "name = 'a'\nfault = 'clock-jump'\nby = '1 h'\n",
                "6:6: 'by': invalid duration \"1 h\"",
            ),
            (
                "name = 'a'\nfault = 'pause'\nfor = '1s'\nby = '1h'\n",
                "7:6: 'by' is a clock-jump's",
            ),
            (
                "name = 'a'\nfault = 'pause'\n",
                "5:9: a pause fault needs 'for'",
            ),
            (
                "name = 'a'\nrun = 'x'\nmachine = 'machine9'\n",
                "6:11: 'machine': the test has no machine \"machine9\" (it has machine1)",
            ),
            (
                "name = 'a'\nrun = 'x'\ninterval = '2m'\n",
                "6:12: 'interval' 120s is longer than the soak's duration 60s",
            ),
            (
                "name = 'a'\nfault = 'link-down'\nfor = '10s'\ninterval = '10s'\n",
                "6:7: 'for' 10s is not shorter than the event's interval 10s",
            ),
            (
                "name = 'a'\nrun = 'x'\noverlap = 'allow'\n",
                "6:11: unknown overlap \"allow\": use skip or queue",
            ),
            (
                "name = 'a'\nfault = 'pause'\nfor = '1s'\ninvariant = true\n",
                "7:13: a fault cannot be an invariant",
            ),
            (
                "name = 'a'\nrun = 'x'\nevery = '1s'\n",
                "6:1: unknown key 'every' in an event",
            ),
            (
                "name = 'a'\nrun = 'x'\nfor = '1s'\n",
                "6:7: 'for' is a fault's",
            ),
        ];
        let mut all: Vec<(String, &str)> = cases.iter().map(|(t, e)| (t.to_string(), *e)).collect();
        for (event, expected) in events {
            all.push((format!("{head}[[TestA.testB.events]]\n{event}"), expected));
        }
        all.push((
            format!("{head}[[TestA.testB.events]]\nname = 'a'\nrun = 'x'\n[[TestA.testB.events]]\nname = 'a'\nrun = 'y'\n"),
            "6:1: event 'a' is named twice in test TestA.testB",
        ));
        all.push((
            "[TestA.testB]\nnondestructive = true\nsoak = { duration = \"1m\" }\n[[TestA.testB.events]]\nname = 'a'\nrun = 'x'\n".into(),
            "3:8: test TestA.testB is a soak: its faults and hours are not for a shared machine",
        ));
        for (text, expected) in all {
            let errors = errors(&text);
            assert!(
                errors.len() == 1 && errors[0].starts_with(expected),
                "{text}\n{errors:#?}\nexpected: {expected}"
            );
        }
    }
}
