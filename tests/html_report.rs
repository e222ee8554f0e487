//! The HTML report of a real run (a pass, a failure, a flaky test, a skip and a todo on
//! busybox machines), rendered in headless Chromium (Debian's package): read back through
//! the DOM after its script ran, failures come first, the "problems only" filter and the
//! search work, an attempt's output is shown without its terminal escapes, the history
//! strip shows the earlier run; `vmcheck report` writes the same page from the event
//! stream. A screenshot is kept in the target directory.

mod common;

use std::path::Path;
use std::process::Command;
use vmcheck::exit_codes;

const CHECK: &str = r#"
[TestReport.testPasses]
run = "echo hello"

[TestReport.testFails]
run = '''echo 'about to fail'; printf '\033[31mred\033[0m alert\n'; exit 3'''

[TestReport.testFlaky]
run = 'test "$VMCHECK_ATTEMPT" -gt 1'

[TestReport.testSkips]
run = "echo 'no such feature'; exit 77"

[TestReport.testTodo]
todo = "not done yet"
run = "exit 1"
"#;

/// The DOM of `page` (with `hash`) once its script ran, as headless Chromium sees it;
/// with `screenshot`, also a picture of it.
fn dom(page: &Path, hash: &str, screenshot: Option<&Path>) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1200,1600",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()));
    match screenshot {
        Some(png) => cmd.arg(format!("--screenshot={}", png.display())),
        None => cmd.arg("--dump-dom"),
    };
    let out = cmd
        .arg(format!("file://{}#{hash}", page.display()))
        .output()
        .expect("chromium (bots/install-deps installs it)");
    assert!(out.status.success(), "{out:?}");
    // What the script rendered: the run's JSON left out.
    let dom = String::from_utf8(out.stdout).unwrap();
    match dom.split_once(r#"<script id="run""#) {
        Some((before, after)) => {
            format!(
                "{before}{}",
                after.split_once("</script>").map_or("", |(_, r)| r)
            )
        }
        None => dom,
    }
}

/// The tests the page lists, in order: (name, verdict).
fn listed(dom: &str) -> Vec<(String, String)> {
    ids(dom).into_iter().map(|(_, n, v)| (n, v)).collect()
}

/// The tests the page lists, in order: (id, name, verdict).
fn ids(dom: &str) -> Vec<(String, String, String)> {
    dom.split(r#"<div class="test" id="t-"#)
        .skip(1)
        .map(|chunk| {
            let id = chunk.split('"').next().unwrap().to_string();
            let verdict = chunk
                .split(r#"data-verdict=""#)
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap()
                .to_string();
            let name = chunk
                .split(r#"<span class="name">"#)
                .nth(1)
                .and_then(|r| r.split('<').next())
                .unwrap()
                .to_string();
            (id, name, verdict)
        })
        .collect()
}

#[test]
fn the_report_of_a_real_run_in_a_real_browser() {
    let dir = common::busybox_project_with("check-report", CHECK);
    let root = dir.path();
    let store = root.join("results.sqlite");
    let run = |n: usize| {
        let html = root.join(format!("html-{n}"));
        let events = root.join(format!("events-{n}.jsonl"));
        let out = common::output_leaving_nothing(
            common::vmcheck_run_in(root)
                .env("TEST_OS", "busybox")
                .env("VMCHECK_RESULTS_DB", &store)
                .arg("--html")
                .arg(&html)
                .arg("--events")
                .arg(&events),
        );
        let tap = String::from_utf8_lossy(&out.stdout).into_owned();
        common::assert_code(&out, &tap, exit_codes::TESTS_FAILED);
        (html.join("index.html"), events)
    };
    let (_, _) = run(1);
    let (page, events) = run(2);

    // Problems only, at first (something failed): the failure, then the flaky test.
    let first = listed(&dom(&page, "", None));
    assert_eq!(
        first,
        [
            ("TestReport.testFails".into(), "failed".into()),
            ("TestReport.testFlaky".into(), "flaky".into()),
        ],
        "{first:?}"
    );
    // Everything: still failures first, then the rest in plan order.
    let all: Vec<String> = listed(&dom(&page, "problems=0", None))
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        all,
        [
            "TestReport.testFails",
            "TestReport.testFlaky",
            "TestReport.testPasses",
            "TestReport.testSkips",
            "TestReport.testTodo"
        ]
    );
    // Search.
    let found = listed(&dom(&page, "problems=0&q=SKIP", None));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0], ("TestReport.testSkips".into(), "skipped".into()));
    // An opened test shows its output, without escapes; the history strip has the
    // earlier run's verdict.
    let (id, _, _) = ids(&dom(&page, "", None)).remove(0);
    let failed = dom(&page, &format!("open={id}"), None);
    assert!(failed.contains("about to fail"), "{failed}");
    assert!(failed.contains("red alert"), "{failed}");
    assert!(!failed.contains('\u{1b}'), "{failed}");
    assert!(failed.contains(r#"<i class="h-failed">"#), "{failed}");
    // The timeline: a bar for each attempt (the failure's three, the flaky test's two).
    let timeline = dom(&page, "timeline=1", None);
    assert_eq!(
        timeline.matches(r#"<span class="bar b-"#).count(),
        8,
        "{timeline}"
    );
    // `vmcheck report` writes the same run from its events.
    let again = root.join("again");
    let out = common::vmcheck()
        .arg("report")
        .arg(&events)
        .arg("--html")
        .arg(&again)
        .env("VMCHECK_RESULTS_DB", &store)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        listed(&dom(&again.join("index.html"), "problems=0", None)).len(),
        5
    );
    // A picture, for people.
    let png = Path::new(env!("CARGO_TARGET_TMPDIR")).join("html-report.png");
    let _ = std::fs::remove_file(&png);
    dom(
        &page,
        &format!("problems=0&timeline=1&open={id}"),
        Some(&png),
    );
    assert!(std::fs::metadata(&png).unwrap().len() > 10_000);
}
