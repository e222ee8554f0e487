//! Faults during an image build: Ctrl-C, SIGKILL of vmcheck, Ctrl-C inside `vmcheck run`.
//! Each uses a project of its own with a tiny fake recipe that sleeps (after writing its pid
//! and the pid of a child it started) and a private image store, so the shared store is
//! never touched.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use vmcheck::exit_codes;

/// The fake recipe: records its pid and its child's, then waits for the child (a long sleep).
/// With `FAKE_RECIPE_STUBBORN` set, it and its child ignore SIGTERM.
const RECIPE: &str = r#"#!/bin/sh
if [ -n "$FAKE_RECIPE_STUBBORN" ]; then trap '' TERM; fi
sleep 600 &
echo $! > "$FAKE_RECIPE_PIDS/child.pid"
echo $$ > "$FAKE_RECIPE_PIDS/recipe.pid"
wait
"#;

struct Fixture {
    tmp: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let recipes = tmp.path().join("project/bots/images");
        std::fs::create_dir_all(&recipes).unwrap();
        let recipe = recipes.join("tiny");
        std::fs::write(&recipe, RECIPE).unwrap();
        std::fs::set_permissions(&recipe, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir_all(tmp.path().join("pids")).unwrap();
        std::fs::create_dir_all(tmp.path().join("store")).unwrap();
        Fixture { tmp }
    }

    fn project(&self) -> PathBuf {
        self.tmp.path().join("project")
    }

    fn store(&self) -> PathBuf {
        self.tmp.path().join("store")
    }

    fn vmcheck(&self, args: &[&str]) -> Command {
        let mut cmd = common::vmcheck();
        cmd.arg("--project-dir")
            .arg(self.project())
            .args(args)
            .env("VMCHECK_IMAGES_DIR", self.store())
            .env("FAKE_RECIPE_PIDS", self.tmp.path().join("pids"))
            .env("TEST_OS", "tiny")
            .env_remove("TEST_SCENARIO")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// The pids of the recipe and of its child, once the recipe is running.
    fn recipe_pids(&self) -> (u32, u32) {
        let file = |name: &str| self.tmp.path().join("pids").join(name);
        assert!(
            common::eventually(60, || common::exists(&file("recipe.pid"))),
            "the recipe never started"
        );
        let read = |name: &str| -> u32 {
            std::fs::read_to_string(file(name))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        (read("recipe.pid"), read("child.pid"))
    }

    /// The build scratch directories left in the store.
    fn scratch(&self) -> Vec<PathBuf> {
        match std::fs::read_dir(self.store().join(".build")) {
            Ok(entries) => entries.filter_map(Result::ok).map(|e| e.path()).collect(),
            Err(_) => Vec::new(),
        }
    }
}

fn signal(child: &Child, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
}

fn assert_gone(pids: (u32, u32)) {
    assert!(
        common::eventually(10, || !common::process_alive(pids.0)
            && !common::process_alive(pids.1)),
        "the recipe {} or its child {} outlived vmcheck",
        pids.0,
        pids.1
    );
}

fn wait_output(child: Child) -> (Option<i32>, String, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn ctrl_c_during_image_build_exits_130_and_leaves_nothing() {
    let f = Fixture::new();
    let child = f.vmcheck(&["image", "build", "tiny"]).spawn().unwrap();
    let pids = f.recipe_pids();
    assert_eq!(
        f.scratch().len(),
        1,
        "the build works in a scratch directory"
    );
    signal(&child, nix::sys::signal::Signal::SIGINT);
    let (code, _, err) = wait_output(child);
    assert_eq!(code, Some(exit_codes::INTERRUPTED), "{err}");
    assert!(err.contains("building image tiny: interrupted"), "{err}");
    assert_gone(pids);
    assert_eq!(f.scratch(), Vec::<PathBuf>::new());
}

#[test]
fn sigkill_during_image_build_kills_the_recipe_and_the_next_vmcheck_sweeps() {
    let f = Fixture::new();
    let mut child = f.vmcheck(&["image", "build", "tiny"]).spawn().unwrap();
    let pids = f.recipe_pids();
    signal(&child, nix::sys::signal::Signal::SIGKILL);
    child.wait().unwrap();
    assert_gone(pids);
    let left = f.scratch();
    assert_eq!(left.len(), 1, "SIGKILL leaves the scratch directory");
    // Another vmcheck's scratch directory, still alive, must survive the sweep.
    let me = std::process::id();
    let stat = std::fs::read_to_string(format!("/proc/{me}/stat")).unwrap();
    let start = stat[stat.rfind(')').unwrap() + 2..]
        .split(' ')
        .nth(19)
        .unwrap()
        .to_string();
    let alive = f.store().join(format!(".build/{me}.{start}-tiny-live"));
    std::fs::create_dir(&alive).unwrap();
    let out = f.vmcheck(&["image", "list"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(f.scratch(), [alive], "only the dead owner's directory goes");
}

#[test]
fn double_ctrl_c_during_image_build_kills_the_recipe() {
    let f = Fixture::new();
    let child = f
        .vmcheck(&["image", "build", "tiny"])
        .env("FAKE_RECIPE_STUBBORN", "1")
        .spawn()
        .unwrap();
    let pids = f.recipe_pids();
    // The recipe ignores the polite stop, so vmcheck is still waiting for it.
    signal(&child, nix::sys::signal::Signal::SIGINT);
    signal(&child, nix::sys::signal::Signal::SIGINT);
    let (code, _, err) = wait_output(child);
    assert_eq!(code, Some(exit_codes::INTERRUPTED), "{err}");
    assert_gone(pids);
}

/// Two tests, one of them skipped on `tiny`; Ctrl-C while `tiny` is being built.
const CHECK_FILE: &str = r#"
[TestBuild.testOne]
run = "true"

[TestBuild.testSkipped]
only = { os = ["other"], reason = "not on tiny" }
run = "true"
"#;

#[test]
fn ctrl_c_while_run_builds_an_image_still_gives_valid_tap() {
    let f = Fixture::new();
    let verify = f.project().join("test/verify");
    std::fs::create_dir_all(&verify).unwrap();
    std::fs::write(verify.join("check-build"), CHECK_FILE).unwrap();
    let junit = f.tmp.path().join("junit.xml");
    let events = f.tmp.path().join("events.jsonl");
    let child = f
        .vmcheck(&["run", "--progress", "none"])
        .arg("--junit")
        .arg(&junit)
        .arg("--events")
        .arg(&events)
        .spawn()
        .unwrap();
    let pids = f.recipe_pids();
    signal(&child, nix::sys::signal::Signal::SIGINT);
    let (code, tap, err) = wait_output(child);
    assert_eq!(code, Some(exit_codes::INTERRUPTED), "{err}");
    assert_gone(pids);
    assert_eq!(f.scratch(), Vec::<PathBuf>::new());
    let lines: Vec<&str> = tap.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        lines,
        [
            "1..2",
            "ok 1 test/verify/check-build TestBuild.testSkipped # SKIP not on tiny",
            "not ok 2 test/verify/check-build TestBuild.testOne # ERROR interrupted by SIGINT",
            "Bail out! interrupted by SIGINT",
            "",
        ],
        "{tap}"
    );
    prove_parses(&tap);
    let junit = std::fs::read_to_string(&junit).unwrap();
    assert!(junit.contains("interrupted by SIGINT"), "{junit}");
    let events = std::fs::read_to_string(&events).unwrap();
    let stream = vmcheck::results::merge::parse(Path::new("events.jsonl"), &events).unwrap();
    assert!(matches!(
        stream.events.last(),
        Some(vmcheck::events::Event::RunFinished { .. })
    ));
}

/// `prove` reads `tap` without a parse error.
fn prove_parses(tap: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("run.tap");
    std::fs::write(&file, tap).unwrap();
    let out = Command::new("prove")
        .args(["-e", "cat"])
        .arg(&file)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!text.contains("Parse errors"), "{text}\n{tap}");
    assert!(text.contains("Bailout called"), "{text}");
}
