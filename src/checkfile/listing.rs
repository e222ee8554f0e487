//! Executable check files, in any language: telling them apart from TOML check files
//! ([`kind`]), listing their tests by running `FILE --vmcheck-list` within bounds
//! ([`list`]), and turning the listing's JSON into tests through the very parser TOML check
//! files go through, so both kinds are checked and resolved alike.
//!
//! The listing's tests are written out as the TOML document they stand for (one
//! `[Class.method]` table per test, one line per setting) and parsed; each error is then
//! given back the check file, the test's line in it and the test's name.

use super::error::CheckFileError;
use super::keys::{is_class_name, is_test_name};
use super::parse::{FileRead, parse_partial_with};
use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

/// The argument that asks an executable check file for its listing.
pub const LIST_ARG: &str = "--vmcheck-list";
/// The argument that asks an executable check file to run one test (the name follows).
pub const RUN_ARG: &str = "--vmcheck-run";
/// The listing format vmcheck reads (`"version"`).
pub const PROTOCOL_VERSION: u64 = 1;
/// Longest a listing may take.
pub const LIST_TIME_LIMIT: Duration = Duration::from_secs(20);
/// Most of a listing's standard output that is read.
const LIST_OUTPUT_LIMIT: usize = 16 << 20;
/// How much of a failed listing's standard error its error shows, at most.
const STDERR_TAIL: usize = 600;

/// What kind of check file a file is.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// A TOML document (its `#!` line, if any, names vmcheck).
    Toml,
    /// A program vmcheck runs to list and run its tests.
    Executable,
    /// A `#!` line naming another program than vmcheck, without the run bit.
    NotExecutable { program: String },
}

/// The kind of the check file at `path`, whose content starts with `head`: a file whose
/// `#!` line names another program than vmcheck, or an ELF binary, is executable when it
/// may be executed; every other file is TOML.
pub(super) fn kind(path: &Path, head: &[u8]) -> Kind {
    let program = if head.starts_with(b"\x7fELF") {
        "an ELF binary".to_owned()
    } else {
        let Some(line) = head.strip_prefix(b"#!") else {
            return Kind::Toml;
        };
        let line = line.split(|&b| b == b'\n').next().unwrap_or_default();
        match shebang_program(&String::from_utf8_lossy(line)) {
            Some(p) if p != "vmcheck" => p,
            _ => return Kind::Toml,
        }
    };
    if nix::unistd::access(path, nix::unistd::AccessFlags::X_OK).is_ok() {
        Kind::Executable
    } else {
        Kind::NotExecutable { program }
    }
}

/// The program a `#!` line runs (after `#!`): the interpreter's file name, or for
/// `/usr/bin/env [-S] [-options] [NAME=value…] PROGRAM`, the program's.
fn shebang_program(line: &str) -> Option<String> {
    let mut words = line.split_whitespace();
    let base = |w: &str| w.rsplit('/').next().unwrap_or(w).to_owned();
    let interpreter = base(words.next()?);
    if interpreter != "env" {
        return Some(interpreter);
    }
    for word in words {
        // `-S` may be glued to the program (`-Svmcheck exec`).
        if let Some(rest) = word.strip_prefix("-S").filter(|r| !r.is_empty()) {
            return Some(base(rest));
        }
        if word.starts_with('-') || word.contains('=') {
            continue;
        }
        return Some(base(word));
    }
    None
}

/// Lists the tests of the executable check file `file` (shown as `display`): runs it with
/// [`LIST_ARG`] in `root`, and parses its output. Every problem is an error naming the file.
pub(super) fn list(file: &Path, display: &Path, root: &Path, python_path: &OsStr) -> FileRead {
    let whole_file = |message: String| CheckFileError::whole_file(display, message);
    let program = match std::path::absolute(file) {
        Ok(p) => p,
        Err(e) => return FileRead::failed(vec![whole_file(format!("cannot run it: {e}"))]),
    };
    match run_listing(&program, root, python_path, LIST_TIME_LIMIT) {
        Ok(stdout) => from_listing(display, &program, &stdout),
        Err(message) => FileRead::failed(vec![whole_file(message)]),
    }
}

/// What a listing process printed on standard output, or why there is no listing.
fn run_listing(
    program: &Path,
    root: &Path,
    python_path: &OsStr,
    limit: Duration,
) -> Result<Vec<u8>, String> {
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    let mut cmd = std::process::Command::new(program);
    cmd.arg(LIST_ARG)
        .current_dir(root)
        .env("PYTHONPATH", python_path)
        .env("PATH", crate::testlib::path_env(None))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    crate::private::give_caller_umask(&mut cmd);
    // SAFETY: see `die_with_parent`; this thread waits for the child before it ends.
    unsafe {
        cmd.pre_exec(crate::machine::spawn::die_with_parent());
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run it to list its tests ({LIST_ARG}): {e}"))?;
    let group = nix::unistd::Pid::from_raw(child.id() as i32);
    let stdout = child
        .stdout
        .take()
        .map(|s| read_bounded(s, LIST_OUTPUT_LIMIT));
    let stderr = child.stderr.take().map(|s| read_bounded(s, 64 << 10));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let status = rx.recv_timeout(limit).ok();
    // What the listing left running dies with it (and a hung listing is stopped).
    let _ = nix::sys::signal::killpg(group, nix::sys::signal::SIGKILL);
    if status.is_none() {
        let _ = rx.recv();
    }
    let collect = |r: Option<std::sync::mpsc::Receiver<(Vec<u8>, bool)>>| {
        r.and_then(|r| r.recv_timeout(Duration::from_secs(2)).ok())
            .unwrap_or_default()
    };
    let (out, out_cut) = collect(stdout);
    let (err, _) = collect(stderr);
    let stderr_tail = || {
        let text = String::from_utf8_lossy(&err);
        let text = text.trim();
        if text.is_empty() {
            String::from("; it printed nothing on stderr")
        } else {
            let start = text
                .char_indices()
                .rev()
                .nth(STDERR_TAIL)
                .map_or(0, |(i, _)| i);
            let ellipsis = if start > 0 { "…" } else { "" };
            format!(
                "; its stderr ends: {ellipsis}{}",
                crate::reporter::text::one_line(&text[start..])
            )
        }
    };
    match status {
        None => Err(format!(
            "listing its tests ({LIST_ARG}) did not finish within {}s{}",
            limit.as_secs_f64(),
            stderr_tail()
        )),
        Some(Err(e)) => Err(format!("waiting for {LIST_ARG}: {e}")),
        Some(Ok(s)) if !s.success() => Err(format!(
            "listing its tests ({LIST_ARG}) failed ({s}){}",
            stderr_tail()
        )),
        Some(Ok(_)) if out_cut => Err(format!(
            "its listing ({LIST_ARG}) is over {} MiB",
            LIST_OUTPUT_LIMIT >> 20
        )),
        Some(Ok(_)) => {
            if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&out) {
                return Err(format!(
                    "its listing ({LIST_ARG}) is not JSON: {e}{}",
                    stderr_tail()
                ));
            }
            Ok(out)
        }
    }
}

/// Reads `stream` to its end in a thread of its own, keeping at most `limit` bytes; the
/// result says whether more came.
fn read_bounded(
    mut stream: impl Read + Send + 'static,
    limit: usize,
) -> std::sync::mpsc::Receiver<(Vec<u8>, bool)> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut cut = false;
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 {
                break;
            }
            let room = limit.saturating_sub(kept.len());
            kept.extend_from_slice(&buf[..n.min(room)]);
            cut |= n > room;
        }
        let _ = tx.send((kept, cut));
    });
    rx
}

/// Where a line of the generated document came from.
struct Origin {
    /// The test's name and its line in the check file (0: not given); `None`: file level.
    test: Option<(String, usize)>,
}

/// The tests of a listing (`json`, known to be JSON), each run by `program`.
fn from_listing(display: &Path, program: &Path, json: &[u8]) -> FileRead {
    let error = |line: usize, message: String| CheckFileError {
        path: display.to_path_buf(),
        line,
        col: usize::from(line > 0),
        message: format!("in its listing ({LIST_ARG}): {message}"),
    };
    let value: serde_json::Value = match serde_json::from_slice(json) {
        Ok(v) => v,
        Err(e) => return FileRead::failed(vec![error(0, e.to_string())]),
    };
    let Some(top) = value.as_object() else {
        return FileRead::failed(vec![error(0, "not a JSON object".into())]);
    };
    match top.get("version").and_then(serde_json::Value::as_u64) {
        Some(PROTOCOL_VERSION) => {}
        Some(v) => {
            return FileRead::failed(vec![error(
                0,
                format!(
                    "version {v}, but this vmcheck reads version {PROTOCOL_VERSION}: use \
                         the testlib of this vmcheck (or a vmcheck as new as the file's)"
                ),
            )]);
        }
        None => {
            return FileRead::failed(vec![error(
                0,
                format!("no \"version\": {PROTOCOL_VERSION} (a number)"),
            )]);
        }
    }
    let mut errors = Vec::new();
    for key in top.keys() {
        if !["version", "covers", "tests"].contains(&key.as_str()) {
            errors.push(error(
                0,
                format!("unknown key \"{key}\" (known: version, covers, tests)"),
            ));
        }
    }
    let Some(tests) = top.get("tests").and_then(serde_json::Value::as_array) else {
        errors.push(error(0, "no \"tests\" array".into()));
        return FileRead::failed(errors);
    };

    // The document the listing stands for, and where each of its lines came from.
    let mut doc = String::new();
    let mut origins: Vec<Origin> = Vec::new();
    let mut push = |doc: &mut String, line: String, origin: Origin| {
        doc.push_str(&line);
        doc.push('\n');
        origins.push(origin);
    };
    if let Some(covers) = top.get("covers") {
        match inline_toml(covers) {
            Ok(v) => push(&mut doc, format!("covers = {v}"), Origin { test: None }),
            Err(e) => errors.push(error(0, format!("\"covers\": {e}"))),
        }
    }
    let mut names = HashSet::new();
    let mut lines = std::collections::HashMap::new();
    for (i, test) in tests.iter().enumerate() {
        let Some(fields) = test.as_object() else {
            errors.push(error(0, format!("tests[{i}] is not an object")));
            continue;
        };
        let line = match fields.get("line") {
            None => 0,
            Some(l) => match l.as_u64().filter(|&l| l > 0) {
                Some(l) => l as usize,
                None => {
                    errors.push(error(
                        0,
                        format!("tests[{i}]: \"line\" must be a line number"),
                    ));
                    0
                }
            },
        };
        let name = match fields.get("name").and_then(serde_json::Value::as_str) {
            Some(name) => name,
            None => {
                errors.push(error(line, format!("tests[{i}] has no \"name\" string")));
                continue;
            }
        };
        let valid = name
            .split_once('.')
            .is_some_and(|(c, m)| is_class_name(c) && is_test_name(m));
        if !valid {
            errors.push(error(
                line,
                format!(
                    "test name {:?} is not TestClass.testMethod (^Test[A-Za-z0-9_]*\\.test[A-Za-z0-9_]*$)",
                    name
                ),
            ));
            continue;
        }
        if !names.insert(name.to_owned()) {
            errors.push(error(line, format!("test {name} is listed twice")));
            continue;
        }
        lines.insert(name.to_owned(), line);
        let origin = || Origin {
            test: Some((name.to_owned(), line)),
        };
        push(&mut doc, format!("[{name}]"), origin());
        for (key, value) in fields {
            if key == "name" || key == "line" {
                continue;
            }
            match inline_toml(value) {
                Ok(v) => push(&mut doc, format!("{} = {v}", basic_string(key)), origin()),
                Err(e) => errors.push(error(line, format!("test {name}: \"{key}\": {e}"))),
            }
        }
    }
    if tests.is_empty() {
        errors.push(error(0, "no tests".into()));
    }

    let FileRead {
        tests: mut parsed,
        errors: parse_errors,
        warnings: parse_warnings,
    } = parse_partial_with(display, &doc, Some(program));
    let cross_line = regex::Regex::new(r" \(line \d+\)").expect("valid regex");
    let mut warnings = Vec::new();
    let kinds = [(parse_errors, &mut errors), (parse_warnings, &mut warnings)];
    for (found, into) in kinds {
        for e in found {
            let origin = e.line.checked_sub(1).and_then(|i| origins.get(i));
            let (line, message) = match origin.and_then(|o| o.test.as_ref()) {
                Some((name, line)) if !e.message.contains(name.as_str()) => {
                    (*line, format!("test {name}: {}", e.message))
                }
                Some((_, line)) => (*line, e.message.clone()),
                None => (0, e.message.clone()),
            };
            // Keys that only TOML check files have are not offered.
            let message = cross_line
                .replace_all(&message, "")
                .replace(", run, host, soak, events)", ")");
            into.push(error(line, message));
        }
    }
    // Positions in the generated document mean nothing to the user: the test's line does.
    for p in &mut parsed {
        let line = lines.get(&p.def.method_name()).copied().unwrap_or(0);
        p.def.line = line;
        p.col = 1;
        for m in &mut p.def.provision {
            if m.image_at.is_some() {
                m.image_at = Some((line, usize::from(line > 0)));
            }
        }
    }
    FileRead {
        tests: parsed,
        errors,
        warnings,
    }
}

/// `value` as an inline TOML value on one line (JSON's string escapes are TOML's).
fn inline_toml(value: &serde_json::Value) -> Result<String, String> {
    use serde_json::Value;
    Ok(match value {
        Value::Null => return Err("null is not a value (leave the key out instead)".into()),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => basic_string(s),
        Value::Array(items) => {
            let items: Result<Vec<_>, _> = items.iter().map(inline_toml).collect();
            format!("[{}]", items?.join(", "))
        }
        Value::Object(map) => {
            let mut entries = Vec::new();
            for (k, v) in map {
                entries.push(format!("{} = {}", basic_string(k), inline_toml(v)?));
            }
            format!("{{ {} }}", entries.join(", "))
        }
    })
}

/// A TOML basic string: JSON's string syntax, which TOML shares (serde_json never writes
/// the one escape TOML lacks, `\/`).
fn basic_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn program() -> PathBuf {
        PathBuf::from("/p/check-x")
    }

    #[test]
    fn shebang_programs() {
        for (line, program) in [
            ("/usr/bin/env python3", Some("python3")),
            ("/usr/bin/env -S vmcheck exec", Some("vmcheck")),
            ("/usr/bin/env -Svmcheck exec", Some("vmcheck")),
            (" /usr/bin/env -i PATH=/bin sh -e", Some("sh")),
            ("/bin/sh -e", Some("sh")),
            ("/usr/local/bin/vmcheck exec", Some("vmcheck")),
            (
                "/usr/bin/python3 -cimport os, sys; os.execvp(\"vmcheck\", sys.argv)",
                Some("python3"),
            ),
            ("", None),
            ("/usr/bin/env", None),
        ] {
            assert_eq!(shebang_program(line).as_deref(), program, "{line}");
        }
    }

    #[test]
    fn kinds() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &[u8], mode: u32| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            kind(&p, text)
        };
        let toml = b"#!/usr/bin/env -S vmcheck exec\n[TestA.testB]\nrun = 'true'\n";
        assert_eq!(file("a", toml, 0o755), Kind::Toml);
        assert_eq!(file("b", toml, 0o644), Kind::Toml);
        assert_eq!(
            file("c", b"[TestA.testB]\nrun = 'true'\n", 0o755),
            Kind::Toml
        );
        assert_eq!(
            file("d", b"#!/usr/bin/env python3\n", 0o755),
            Kind::Executable
        );
        assert_eq!(file("e", b"\x7fELF\x02\x01", 0o700), Kind::Executable);
        assert_eq!(
            file("f", b"#!/usr/bin/env python3\n", 0o644),
            Kind::NotExecutable {
                program: "python3".into()
            }
        );
    }

    fn listing(json: &str) -> (Vec<crate::checkfile::parse::Parsed>, Vec<String>) {
        let read = from_listing(Path::new("test/check-x"), &program(), json.as_bytes());
        (
            read.tests,
            read.errors.iter().map(ToString::to_string).collect(),
        )
    }

    #[test]
    fn a_listing_resolves_like_a_toml_file() {
        let (tests, errors) = listing(
            r#"{"version": 1, "covers": ["src/x/*"], "tests": [
                {"name": "TestB.testTwo", "line": 30, "timeout": "2m",
                 "provision": {"machine1": {}, "web": {"image": "debian-12", "memory": "1G"}},
                 "skip": {"os": ["debian-*"], "reason": "no"}, "env": {"A": "x \"y\"\n"}},
                {"name": "TestA.testOne", "line": 12, "nondestructive": true,
                 "restore": ["/etc/motd"], "todo": "not yet", "allow_journal": ["a.*b"]}
            ]}"#,
        );
        assert!(errors.is_empty(), "{errors:?}");
        let by_name = |n: &str| &tests.iter().find(|t| t.def.name() == n).unwrap().def;
        let one = by_name("TestA.testOne");
        assert_eq!(one.line, 12);
        assert!(one.nondestructive);
        assert_eq!(one.restore, ["/etc/motd"]);
        assert_eq!(one.todo_reason("any"), Some("not yet"));
        assert_eq!(one.body, crate::checkfile::Body::Executable(program()));
        assert_eq!(one.covers, ["src/x/*"]);
        let two = by_name("TestB.testTwo");
        assert_eq!(two.timeout, Duration::from_secs(120));
        let machines: Vec<_> = two.provision.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(machines, ["machine1", "web"]);
        assert_eq!(two.provision[1].memory_mib, Some(1024));
        assert_eq!(two.provision[1].image_at, Some((30, 1)));
        assert_eq!(two.env["A"], "x \"y\"\n");
        assert!(!two.skip.is_empty());
    }

    #[test]
    fn listing_errors_name_the_file_the_test_and_its_line() {
        let (_, errors) = listing(
            r#"{"version": 1, "tests": [
                {"name": "TestA.testOne", "line": 7, "timout": 5},
                {"name": "TestA.testTwo", "line": 9, "timeout": "soon"},
                {"name": "TestA.testThree", "line": 11, "nondestructive": true,
                 "provision": {"machine2": {}}},
                {"name": "TestA.testFour", "run": "true"},
                {"name": "TestA.testOne", "line": 20},
                {"name": "not a test", "line": 22},
                {"name": "TestA.testNull", "line": 24, "todo": null}
            ]}"#,
        );
        let expect = [
            "test/check-x:7:1: in its listing (--vmcheck-list): unknown key 'timout' in test TestA.testOne, did you mean 'timeout'? (valid: nondestructive, timeout, provision, todo, skip, only, restore, artifacts, env, no_retry_when_changed, allow_journal, browser, matrix, matrix_exclude, matrix_include, matrix_limit)",
            "test/check-x:9:1: in its listing (--vmcheck-list): test TestA.testTwo: ",
            "test/check-x:11:1: in its listing (--vmcheck-list): 'provision' conflicts with 'nondestructive = true' for test TestA.testThree",
            "test/check-x: in its listing (--vmcheck-list): ",
            "test/check-x:20:1: in its listing (--vmcheck-list): test TestA.testOne is listed twice",
            "test/check-x:22:1: in its listing (--vmcheck-list): test name \"not a test\" is not TestClass.testMethod",
            "test/check-x:24:1: in its listing (--vmcheck-list): test TestA.testNull: \"todo\": null is not a value",
        ];
        for want in expect {
            assert!(
                errors.iter().any(|e| e.starts_with(want)),
                "no error starts with {want:?} in {errors:#?}"
            );
        }
        let run = errors.iter().find(|e| e.contains("'run'")).unwrap();
        assert!(run.contains("TestA.testFour"), "{run}");
        assert!(errors.iter().all(|e| !e.contains('\n')), "{errors:#?}");
    }

    #[test]
    fn bad_listings() {
        for (json, want) in [
            ("[]", "not a JSON object"),
            (r#"{"tests": []}"#, "no \"version\": 1"),
            (
                r#"{"version": 2, "tests": []}"#,
                "version 2, but this vmcheck reads version 1",
            ),
            (r#"{"version": 1}"#, "no \"tests\" array"),
            (r#"{"version": 1, "tests": []}"#, "no tests"),
            (
                r#"{"version": 1, "tests": [], "frob": 1}"#,
                "unknown key \"frob\"",
            ),
            (
                r#"{"version": 1, "tests": [3]}"#,
                "tests[0] is not an object",
            ),
        ] {
            let (_, errors) = listing(json);
            assert!(
                errors.iter().any(|e| e.contains(want)),
                "{json}: no {want:?} in {errors:?}"
            );
        }
    }

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn listing_processes_fail_with_their_stderr_named() {
        let dir = tempfile::tempdir().unwrap();
        let run = |body: &str| {
            let p = script(dir.path(), "check-x", body);
            let errors = list(&p, Path::new("check-x"), dir.path(), OsStr::new("/py")).errors;
            errors.iter().map(ToString::to_string).collect::<Vec<_>>()
        };
        let ok = run(&format!(
            "test \"$1\" = {LIST_ARG} && test \"$PYTHONPATH\" = /py && test \"$PWD\" = {} && \
             echo '{{\"version\": 1, \"tests\": [{{\"name\": \"TestA.testB\"}}]}}'",
            dir.path().display()
        ));
        assert!(ok.is_empty(), "{ok:?}");
        let failed = run("echo 'Traceback: boom' >&2; echo 'ImportError: no testlib' >&2; exit 3");
        assert_eq!(
            failed,
            [
                "check-x: listing its tests (--vmcheck-list) failed (exit status: 3); its stderr ends: Traceback: boom ImportError: no testlib"
            ]
        );
        let garbage = run("echo 'hello'");
        assert!(
            garbage[0].starts_with("check-x: its listing (--vmcheck-list) is not JSON: expected value at line 1 column 1"),
            "{garbage:?}"
        );
    }

    #[test]
    fn a_hung_listing_is_stopped_with_what_it_left_running() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("pid");
        let p = script(
            dir.path(),
            "check-hang",
            &format!("sleep 1000 & echo $! > {}; wait", marker.display()),
        );
        let started = std::time::Instant::now();
        let stdout = run_listing(&p, dir.path(), OsStr::new(""), Duration::from_millis(500));
        assert!(stdout.unwrap_err().contains("did not finish within"));
        assert!(started.elapsed() < Duration::from_secs(10));
        let pid: i32 = std::fs::read_to_string(&marker)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The background child is gone too (killed with the group, reaped by init).
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::path::Path::new(&format!("/proc/{pid}")).exists()
            && std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| !s.contains(") Z "))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "sleep {pid} still runs"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
