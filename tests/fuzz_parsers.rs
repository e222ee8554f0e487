//! Property tests of every parser of user input: check files, naughty patterns, scenarios
//! and the event streams `vmcheck merge` reads. Each must never panic, and every error must
//! say where (a file, and a line and column where the format has them); event streams must
//! come back unchanged through JSON lines.
//!
//! The normal test run tries a few hundred cases per property (a few seconds in all);
//! `bench/fuzz` runs the same properties for minutes with `PROPTEST_CASES` raised.

use proptest::prelude::*;
use proptest::test_runner::Config;
use std::path::{Path, PathBuf};
use std::time::Duration;
use vmcheck::events::{
    AttemptOutcome, AttemptReport, BootOrigin, Event, KnownIssues, Placement, RunMeta, RunStats,
    ShardInfo, SoakRun, TestInfo, Verdict,
};

/// `PROPTEST_CASES` cases (default 256), with no failure files written into the tree: a
/// failure found here becomes an explicit regression test next to the parser.
fn config() -> Config {
    Config {
        failure_persistence: None,
        ..Config::default()
    }
}

/// Any text, control characters and all of Unicode included.
fn any_text(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..max).prop_map(|v| v.into_iter().collect())
}

/// Text made of `fragments` (the format's own tokens) and arbitrary characters, so that
/// cases get past the first character of the grammar.
fn soup(fragments: &'static [&'static str], max: usize) -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => prop::sample::select(fragments).prop_map(str::to_string),
        1 => any_text(4),
    ];
    prop::collection::vec(piece, 0..max).prop_map(|v| v.concat())
}

/// `text` with a few characters replaced, inserted or deleted at random places.
fn mutated(text: &'static str) -> impl Strategy<Value = String> {
    let edit = (any::<prop::sample::Index>(), 0..3u8, any::<char>());
    prop::collection::vec(edit, 1..6).prop_map(move |edits| {
        let mut chars: Vec<char> = text.chars().collect();
        for (at, kind, c) in edits {
            let i = at.index(chars.len() + 1);
            match kind {
                0 if i < chars.len() => chars[i] = c,
                1 => chars.insert(i, c),
                _ if i < chars.len() => {
                    chars.remove(i);
                }
                _ => {}
            }
        }
        chars.into_iter().collect()
    })
}

// ---------------------------------------------------------------------------------------
// Check files

const CHECK_FILE: &str = r#"#!/usr/bin/env -S vmcheck exec
timeout = "5m"
covers = ["src/**"]

[TestMotd]
nondestructive = true
restore = ["/etc/motd"]

[TestMotd.testWrite]
run = '''
echo hello > /etc/motd
'''
env = { A = "b" }
skip = { os = ["debian-*"], reason = "x" }

[TestNet.testTwo]
provision.machine1 = {}
provision.machine2 = { image = "debian-12", memory = "1G", cpus = 2 }
host = "vm exec machine1 true"
allow_journal = ["a.*b"]
todo = "later"

[TestRoles.testPing]
matrix = { server = ["busybox", "debian-12"], fs = ["ext4", 1, true] }
matrix_exclude = [{ server = "busybox", fs = "ext4" }]
matrix_include = [{ fs = "xfs", extra = "y" }, { server = "debian-12", mkfs = "x" }]
matrix_limit = 20
provision.server = { image = "{matrix.server}" }
skip = [{ matrix = { fs = ["x*"] }, reason = "no xfs" }, { os = ["arch"], reason = "r" }]
timeout = [{ matrix = { server = "debian-*" }, timeout = "15m" }, "5m"]
host = "true"
"#;

const CHECK_TOKENS: &[&str] = &[
    "\n",
    "\n",
    " ",
    "=",
    " = ",
    "[",
    "]",
    "[[",
    "]]",
    "{",
    "}",
    ",",
    ".",
    "\"",
    "'",
    "'''",
    "\"\"\"",
    "#",
    "TestA",
    "TestB",
    ".testOne",
    "testTwo",
    "run",
    "host",
    "timeout",
    "nondestructive",
    "provision",
    "machine1",
    "image",
    "memory",
    "cpus",
    "todo",
    "skip",
    "only",
    "os",
    "reason",
    "restore",
    "artifacts",
    "env",
    "covers",
    "allow_journal",
    "no_retry_when_changed",
    "matrix",
    "matrix_exclude",
    "matrix_include",
    "matrix_limit",
    "{ fs = [\"a\", \"b\"] }",
    "\"{matrix.fs}\"",
    "{matrix.",
    "true",
    "false",
    "0",
    "1",
    "-1",
    "600",
    "9999999999999999999999",
    "1.5",
    "\"5m\"",
    "\"1h30m\"",
    "\"512M\"",
    "\"1G\"",
    "\"debian-*\"",
    "\"[\"",
    "\"/etc/x\"",
    "1979-05-27T07:32:00Z",
    "inf",
    "nan",
    "\\u00e9",
    "\\",
];

fn check_parse(text: &str) -> Result<(), TestCaseError> {
    let path = Path::new("test/verify/check-fuzz");
    let lines = text.split('\n').count();
    match vmcheck::checkfile::parse_file(path, text) {
        Ok(tests) => {
            for t in &tests {
                prop_assert!(t.line >= 1 && t.line <= lines, "test line {}", t.line);
                prop_assert!(!t.provision.is_empty());
            }
        }
        Err(errors) => {
            prop_assert!(!errors.is_empty(), "an error without a message");
            for e in &errors {
                prop_assert_eq!(&e.path, path);
                prop_assert!(
                    e.line >= 1 && e.line <= lines && e.col >= 1,
                    "{} is not a place in the {} lines of the file",
                    e,
                    lines
                );
                prop_assert!(!e.message.is_empty());
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn check_file_soup(text in soup(CHECK_TOKENS, 60)) {
        check_parse(&text)?;
    }

    #[test]
    fn check_file_mutations(text in mutated(CHECK_FILE)) {
        check_parse(&text)?;
    }

    /// A product of axes: as many cases as the product, each id once, and a value added to
    /// an axis leaves every existing id as it was.
    #[test]
    fn matrix_products_have_stable_unique_ids(
        axes in prop::collection::btree_map("[a-z][a-z0-9_]{0,6}", prop::collection::btree_set("[A-Za-z0-9._+:@-]{1,6}", 1..4), 1..4),
        added in "[A-Za-z0-9]{7}",
    ) {
        prop_assume!(!axes.contains_key("os") && !axes.contains_key("repeat"));
        let file = |axes: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>| {
            let list: Vec<String> = axes
                .iter()
                .map(|(k, vs)| {
                    let vs: Vec<String> = vs.iter().map(|v| format!("{v:?}")).collect();
                    format!("{k} = [{}]", vs.join(", "))
                })
                .collect();
            format!("[TestM.testA]\nmatrix = {{ {} }}\nrun = 'true'\n", list.join(", "))
        };
        let names = |text: &str| -> Result<Vec<String>, TestCaseError> {
            let tests = vmcheck::checkfile::parse_file(Path::new("check-m"), text)
                .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
            Ok(tests.iter().map(|t| t.name()).collect())
        };
        let before = names(&file(&axes))?;
        let product: usize = axes.values().map(|v| v.len()).product();
        prop_assert_eq!(before.len(), product);
        let unique: std::collections::BTreeSet<&String> = before.iter().collect();
        prop_assert_eq!(unique.len(), product);
        let mut more = axes.clone();
        more.values_mut().next().unwrap().insert(added);
        let after = names(&file(&more))?;
        for id in &before {
            prop_assert!(after.contains(id), "{} lost in {:?}", id, after);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Naughty patterns

const NAUGHTY_TOKENS: &[&str] = &[
    "*",
    "**",
    "?",
    "[",
    "]",
    "[!",
    "[]",
    "[a-z]",
    "[z-a]",
    "!",
    "-",
    "\\",
    "\n",
    "\r\n",
    "\r",
    "Traceback",
    "File \"/usr/lib/x.py\", line 12",
    "pid=123",
    "ino=4",
    "testlib.Error",
    "audit(1700000000.123:45)",
    "BUG: ",
    "a",
    "b",
    " ",
];

/// Characters with no meaning in a glob.
fn literal(max: usize) -> impl Strategy<Value = String> {
    any_text(max).prop_map(|s| s.replace(['*', '?', '['], "x"))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn naughty_patterns_never_panic(
        file_name in prop_oneof![soup(&["1", "23", "-", "x", "99999999999999999999"], 4), any_text(8)],
        pattern in soup(NAUGHTY_TOKENS, 20),
        output in soup(NAUGHTY_TOKENS, 40),
    ) {
        let mut db = vmcheck::naughty::NaughtyDb::default();
        match db.add("fedora-44", &file_name, &pattern) {
            Ok(()) => {
                let m = db.matches("fedora-44", &output);
                prop_assert!(m.own.len() <= 1);
            }
            Err(e) => {
                prop_assert_eq!(e.path, Path::new("fedora-44").join(&file_name));
                prop_assert!(!e.message.is_empty());
            }
        }
        vmcheck::naughty::pattern_matches(&pattern, &output);
        vmcheck::naughty::normalize(&output);
    }

    /// A glob of literal pieces, `*` and `?` matches every text made by filling its `*`s
    /// with any text and its `?`s with any character, and `*P*` finds any literal P.
    #[test]
    fn naughty_globs_match_their_instances(
        pieces in prop::collection::vec((literal(6), 0..3u8, any_text(5), any::<char>()), 0..6),
        around in (any_text(8), literal(8), any_text(8)),
    ) {
        let (mut glob, mut text) = (String::new(), String::new());
        for (lit, kind, fill, c) in &pieces {
            glob.push_str(lit);
            text.push_str(lit);
            match kind {
                0 => { glob.push('*'); text.push_str(fill); }
                1 => { glob.push('?'); text.push(*c); }
                _ => {}
            }
        }
        prop_assert!(vmcheck::naughty::glob_match(&glob, &text), "{:?} {:?}", glob, text);
        let (before, needle, after) = around;
        let hay = format!("{before}{needle}{after}");
        let star = format!("*{needle}*");
        prop_assert!(vmcheck::naughty::glob_match(&star, &hay), "{:?} {:?}", star, hay);
        prop_assert_eq!(vmcheck::naughty::glob_match(&needle, &hay), needle == hay);
    }
}

// ---------------------------------------------------------------------------------------
// Scenarios

const SCENARIOS: &str = r#"# CI scenarios
[nondestructive]
description = "only the tests that share machines"
nondestructive = true

[machines]
filters = ["TestMachines", "TestDebian"]
exclude = ["TestA.testB"]

[basic]
exclude_matching = ["TestMachines"]
no_retry_fail = true
"#;

const SCENARIO_TOKENS: &[&str] = &[
    "\n",
    "[",
    "]",
    "=",
    " = ",
    "\"",
    "'",
    ",",
    "[\"a\"]",
    "basic",
    "description",
    "filters",
    "exclude",
    "exclude_matching",
    "nondestructive",
    "no_retry_fail",
    "true",
    "1",
    "\"x\"",
    "#",
    ".",
    "{",
    "}",
];

fn scenario_parse(text: &str) -> Result<(), TestCaseError> {
    let file = Path::new("test/scenarios.toml");
    let lines = text.split('\n').count();
    if let Err(e) = vmcheck::planning::scenario::parse(file, text) {
        let rest = e.strip_prefix("test/scenarios.toml:");
        prop_assert!(rest.is_some(), "no file in {:?}", e);
        let mut parts = rest.unwrap_or_default().splitn(3, ':');
        let line: usize = parts.next().unwrap_or("").parse().unwrap_or(0);
        let col: usize = parts.next().unwrap_or("").parse().unwrap_or(0);
        prop_assert!(
            line >= 1 && line <= lines && col >= 1,
            "no place in {:?}",
            e
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn scenario_soup(text in soup(SCENARIO_TOKENS, 40)) {
        scenario_parse(&text)?;
    }

    #[test]
    fn scenario_mutations(text in mutated(SCENARIOS)) {
        scenario_parse(&text)?;
    }
}

// ---------------------------------------------------------------------------------------
// Event streams (`vmcheck merge`)

fn millis() -> impl Strategy<Value = Duration> {
    (0..1_000_000_000u64).prop_map(Duration::from_millis)
}

fn path() -> impl Strategy<Value = PathBuf> {
    any_text(12).prop_map(PathBuf::from)
}

fn test_info() -> impl Strategy<Value = TestInfo> {
    (
        any::<usize>(),
        any_text(10),
        path(),
        any::<bool>(),
        any::<u64>(),
        proptest::option::of(any_text(8)),
    )
        .prop_map(|(id, name, file, nondestructive, ram_mib, os)| TestInfo {
            id,
            name,
            file,
            nondestructive,
            ram_mib,
            os,
        })
}

fn placement() -> impl Strategy<Value = Placement> {
    prop_oneof![
        any::<usize>().prop_map(Placement::Global),
        Just(Placement::Own),
        Just(Placement::None),
    ]
}

fn outcome() -> impl Strategy<Value = AttemptOutcome> {
    prop_oneof![
        Just(AttemptOutcome::Passed),
        any_text(8).prop_map(AttemptOutcome::failed),
        any_text(8).prop_map(|reason| AttemptOutcome::Skipped { reason }),
        millis().prop_map(|after| AttemptOutcome::TimedOut { after }),
        prop::collection::vec(any_text(8), 0..3)
            .prop_map(|lines| AttemptOutcome::UnexpectedMessages { lines }),
        (any_text(8), any::<bool>()).prop_map(|(message, host_fault)| AttemptOutcome::Harness {
            message,
            host_fault
        }),
    ]
}

fn report() -> impl Strategy<Value = AttemptReport> {
    (
        any::<u32>(),
        outcome(),
        any_text(20),
        millis(),
        prop::collection::vec(any_text(6), 0..3),
        prop::option::of(path()),
        prop::collection::vec(any::<u64>(), 0..3),
        prop::collection::vec((any::<u64>(), any_text(6)), 0..2),
        prop::option::of(any::<u64>()),
        prop::option::of(prop_oneof![
            Just(BootOrigin::Cold),
            Just(BootOrigin::Restored),
            Just(BootOrigin::Existing)
        ]),
    )
        .prop_map(
            |(
                attempt,
                outcome,
                output,
                duration,
                machines,
                artifacts,
                own,
                other,
                start_ms,
                boot,
            )| {
                AttemptReport {
                    attempt,
                    outcome,
                    output,
                    duration,
                    machines,
                    artifacts,
                    known: KnownIssues { own, other },
                    start_ms,
                    boot,
                }
            },
        )
}

fn run_meta() -> impl Strategy<Value = RunMeta> {
    (
        any_text(8),
        any_text(8),
        prop::option::of(any_text(8)),
        any::<bool>(),
        prop::option::of(any_text(8)),
        any_text(8),
        any::<u64>(),
        prop::collection::vec(any_text(6), 0..2),
    )
        .prop_map(
            |(id, project, commit, dirty, image, host, start_ms, merged)| RunMeta {
                id,
                project,
                commit,
                dirty,
                image,
                host,
                start_ms,
                merged,
            },
        )
}

fn verdict() -> impl Strategy<Value = Verdict> {
    prop_oneof![
        Just(Verdict::Passed),
        Just(Verdict::Flaky),
        Just(Verdict::Failed),
        any::<u64>().prop_map(|issue| Verdict::KnownIssue { issue }),
        (any::<u64>(), any_text(6)).prop_map(|(issue, os)| Verdict::KnownElsewhere { issue, os }),
        any_text(8).prop_map(|reason| Verdict::Skipped { reason }),
        any_text(8).prop_map(|reason| Verdict::Todo { reason }),
        any_text(8).prop_map(|reason| Verdict::UnexpectedPass { reason }),
        any_text(8).prop_map(|message| Verdict::Error { message }),
    ]
}

fn stats() -> impl Strategy<Value = RunStats> {
    prop::array::uniform11(any::<usize>()).prop_map(|n| RunStats {
        planned: n[0],
        passed: n[1],
        flaky: n[2],
        failed: n[3],
        skipped: n[4],
        todo: n[5],
        errors: n[6],
        retries: n[7],
        destructive: n[8],
        nondestructive: n[9],
    })
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        (any_text(6), 0..4u8, any_text(6), millis()).prop_map(|(label, o, image, boot)| {
            let origin = [BootOrigin::Cold, BootOrigin::Restored, BootOrigin::Existing]
                .get(usize::from(o))
                .copied();
            Event::MachineReady {
                label,
                image,
                boot,
                origin,
            }
        }),
        (any_text(6), any_text(10))
            .prop_map(|(label, message)| Event::MachineFailed { label, message }),
        (any_text(6), any_text(10))
            .prop_map(|(label, reason)| Event::MachineReset { label, reason }),
        (test_info(), any::<u32>(), placement()).prop_map(|(test, attempt, placement)| {
            Event::TestStarted {
                test,
                attempt,
                placement,
            }
        }),
        (
            any::<usize>(),
            any::<u32>(),
            prop::collection::vec(any_text(6), 0..3)
        )
            .prop_map(|(id, attempt, machines)| Event::TestRunning {
                id,
                attempt,
                machines
            }),
        (any::<usize>(), any::<u32>(), any_text(30)).prop_map(|(id, attempt, data)| {
            Event::TestOutput {
                id,
                attempt,
                data: data.into_bytes(),
            }
        }),
        (
            test_info(),
            placement(),
            report(),
            any::<u32>(),
            any_text(8)
        )
            .prop_map(
                |(test, placement, report, retry, reason)| Event::AttemptRetry {
                    test,
                    placement,
                    report,
                    retry,
                    reason
                }
            ),
        (
            test_info(),
            placement(),
            verdict(),
            prop::collection::vec(report(), 0..3)
        )
            .prop_map(|(test, placement, verdict, attempts)| Event::TestFinished {
                test,
                placement,
                verdict,
                attempts
            }),
        (
            any::<usize>(),
            any::<u32>(),
            millis(),
            any::<u64>(),
            prop::collection::vec(any_text(6), 0..3)
        )
            .prop_map(|(id, attempt, duration, seed, events)| Event::SoakStarted {
                id,
                attempt,
                duration,
                seed,
                events
            }),
        (
            (any::<usize>(), any::<u32>(), any_text(6), any::<u32>()),
            (any_text(6), millis(), millis(), millis()),
            (any_text(6), any_text(10), any_text(20))
        )
            .prop_map(
                |(
                    (id, attempt, name, run),
                    (why, due, started, duration),
                    (outcome, detail, tail),
                )| {
                    Event::SoakEvent {
                        id,
                        attempt,
                        run: SoakRun {
                            name,
                            run,
                            why,
                            due,
                            started,
                            duration,
                            outcome,
                            detail,
                            tail,
                        },
                    }
                }
            ),
        any_text(10).prop_map(|reason| Event::RunCancelled { reason }),
        (test_info(), any::<u64>(), path())
            .prop_map(|(test, issue, path)| Event::KnownIssuePassed { test, issue, path }),
        (stats(), millis(), prop::collection::vec(any_text(10), 0..3)).prop_map(
            |(stats, wall, unmatched_known)| Event::RunFinished {
                stats,
                wall,
                unmatched_known
            }
        ),
    ]
}

/// A complete stream: `run-started` first, then any events.
fn stream() -> impl Strategy<Value = Vec<Event>> {
    let shard = prop::option::of((1..10usize, 1..10usize, any_text(8)).prop_map(
        |(index, total, split)| ShardInfo {
            index,
            total,
            split,
        },
    ));
    (
        any_text(8),
        any::<usize>(),
        prop::collection::vec(test_info(), 0..4),
        shard,
        prop::collection::vec(event(), 0..12),
        prop::collection::vec(any_text(6), 0..3),
        prop::option::of(run_meta()),
    )
        .prop_map(|(test_os, jobs, tests, shard, rest, rerun, run)| {
            let mut events = vec![Event::RunStarted {
                test_os,
                jobs,
                tests,
                shard,
                rerun,
                run,
            }];
            events.extend(rest);
            events
        })
}

fn json_lines(events: &[Event]) -> String {
    events
        .iter()
        .enumerate()
        .map(|(i, e)| vmcheck::reporter::json::line(e, 1.7e9 + i as f64) + "\n")
        .collect()
}

proptest! {
    #![proptest_config(config())]

    /// Events → JSON lines → `merge::parse` gives back the same events.
    #[test]
    fn event_streams_round_trip(events in stream()) {
        let text = json_lines(&events);
        let parsed = vmcheck::results::merge::parse(Path::new("run.jsonl"), &text);
        prop_assert!(parsed.is_ok(), "{:?}", parsed.err());
        prop_assert_eq!(parsed.map(|s| s.events).unwrap_or_default(), events);
    }

    /// Damaged streams (cut anywhere, characters changed) are never a panic.
    #[test]
    fn damaged_event_streams_never_panic(
        events in stream(),
        cut in any::<prop::sample::Index>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<char>()), 0..4),
    ) {
        let text = json_lines(&events);
        let mut chars: Vec<char> = text.chars().collect();
        chars.truncate(cut.index(chars.len() + 1));
        for (at, c) in edits {
            if !chars.is_empty() {
                let i = at.index(chars.len());
                chars[i] = c;
            }
        }
        let text: String = chars.into_iter().collect();
        let _ = vmcheck::results::merge::parse(Path::new("run.jsonl"), &text);
    }

    #[test]
    fn arbitrary_text_is_never_a_panic(text in soup(&["{", "}", "\"v\":1", "\"event\":", "\"run-started\"", ",", "\n", "[", "]", "null", "1e999", "-0"], 30)) {
        let _ = vmcheck::results::merge::parse(Path::new("run.jsonl"), &text);
    }
}
