//! Browser tests on a real machine's web page, in real headless Chromium: a busybox
//! machine serves a page with its `httpd` on a forwarded port; a Python test opens it,
//! clicks a button and waits for the text JavaScript changed, types into an input, reads
//! values with `eval_js`, presses a key and takes a screenshot; a page that throws fails its
//! test (with a screenshot, its HTML and the console saved) unless the test allows the
//! error; a wait that times out names its selector and what was there; a browser test
//! counts the browser's memory.

mod common;

use serde_json::Value;
use vmcheck::exit_codes;

const CHECK: &str = r##"#!/usr/bin/python3 -cimport os,shutil,sys;v=shutil.which("vmcheck") or sys.exit(sys.argv[1]+": vmcheck is not on PATH");os.execv(v,[v,"python",*sys.argv[1:]])
import browser
import testlib

PAGE = """<!DOCTYPE html>
<html><body>
<button id="go">Go</button><p id="out">waiting</p>
<input id="name"><p id="echo"></p>
<script>
document.getElementById("go").addEventListener("click", () => {
    document.getElementById("out").textContent = "clicked";
});
document.getElementById("name").addEventListener("input", (e) => {
    document.getElementById("echo").textContent = "hello " + e.target.value;
});
</script>
</body></html>
"""

ERROR = """<!DOCTYPE html><html><body><p id="x">x</p>
<script>throw new Error("deliberate failure");</script></body></html>
"""


class TestBrowser(testlib.MachineCase):
    provision = {"machine1": {"forward": [80]}}
    web_port = 80

    def setUp(self):
        super().setUp()
        self.machine.execute("mkdir -p /www")
        self.machine.write("/www/index.html", PAGE)
        self.machine.write("/www/error.html", ERROR)
        self.machine.execute("httpd -p 80 -h /www")

    def testClick(self):
        # Many files open (low descriptor numbers taken) do not keep Chromium from starting.
        self.held = [open("/dev/null") for _ in range(20)]
        b = self.browser
        b.open("/index.html")
        b.wait_visible("#go")
        b.wait_text("#out", "waiting")
        b.click("#go")
        b.wait_text("#out", "clicked")
        b.set_input_text("#name", "vmcheck")
        b.wait_in_text("#echo", "hello vmcheck")
        b.key_press("!")
        b.wait_text("#echo", "hello vmcheck!")
        self.assertEqual(b.val("#name"), "vmcheck!")
        self.assertEqual(b.eval_js("1 + 2"), 3)
        self.assertEqual(b.text("#out"), "clicked")
        b.wait_not_visible("#nothing")
        print("screenshot:", b.screenshot("page"))
        b.timeout = 1
        with self.assertRaises(browser.Error) as e:
            b.wait_text("#out", "never")
        print("timeout:", e.exception)

    def testPageThrows(self):
        self.browser.open("/error.html")
        self.browser.wait_text("#x", "x")

    def testPageThrowsAllowed(self):
        self.allow_browser_errors("deliberate")
        self.browser.open("/error.html")
        self.browser.wait_text("#x", "x")


if __name__ == "__main__":
    testlib.test_main()
"##;

#[test]
fn a_real_page_driven_in_a_real_browser() {
    let dir = common::busybox_project_with_executable("check-browser", CHECK);
    let root = dir.path();
    let (events, artifacts) = (root.join("events.jsonl"), root.join("artifacts"));
    let out = common::output_leaving_nothing(
        common::vmcheck_run_in(root)
            .env("TEST_OS", "busybox")
            .env("PATH", common::path_with_vmcheck())
            .args(["--no-retry-fail", "--keep-artifacts", "--events"])
            .arg(&events)
            .arg("--artifacts")
            .arg(&artifacts),
    );
    let tap = String::from_utf8_lossy(&out.stdout);
    common::assert_code(&out, &tap, exit_codes::TESTS_FAILED);
    let stream = vmcheck::results::merge::read(&events).unwrap();
    let mut verdicts = std::collections::BTreeMap::new();
    for e in &stream.events {
        let v = serde_json::to_value(e).unwrap();
        if v["event"] == "run-started" {
            // Each test drives a browser: its memory is counted.
            for t in v["tests"].as_array().unwrap() {
                assert!(t["ram_mib"].as_u64().unwrap() >= 550 + 256, "{t}");
            }
        }
        if v["event"] == "test-finished" {
            let name = v["test"]["name"].as_str().unwrap().to_string();
            verdicts.insert(name, v["verdict"]["verdict"].clone());
        }
    }
    let verdict = |t: &str| verdicts[&format!("TestBrowser.{t}")].clone();
    assert_eq!(verdict("testClick"), Value::from("passed"), "{tap}");
    assert_eq!(
        verdict("testPageThrowsAllowed"),
        Value::from("passed"),
        "{tap}"
    );
    assert_eq!(verdict("testPageThrows"), Value::from("failed"), "{tap}");
    // Its output, in full among its kept artifacts.
    let click =
        std::fs::read_to_string(artifacts.join("TestBrowser.testClick/attempt-1/output.txt"))
            .unwrap();
    assert!(
        click.contains("timeout: timed out after 1s waiting for")
            && click.contains(r#"it is visible with text "clicked""#),
        "{click}"
    );
    let png = artifacts.join("TestBrowser.testClick/attempt-1/test/page.png");
    let bytes = std::fs::read(&png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 1000);
    let thrown =
        std::fs::read_to_string(artifacts.join("TestBrowser.testPageThrows/attempt-1/output.txt"))
            .unwrap();
    assert!(thrown.contains("JavaScript errors in the page"), "{thrown}");
    assert!(thrown.contains("deliberate failure"), "{thrown}");
    let evidence = artifacts.join("TestBrowser.testPageThrows/attempt-1/test");
    for f in [
        "TestBrowser.testPageThrows.png",
        "TestBrowser.testPageThrows.html",
        "TestBrowser.testPageThrows.console.log",
    ] {
        assert!(evidence.join(f).is_file(), "{f}: {thrown}");
    }
}

const PIXELS: &str = r##"#!/usr/bin/python3 -cimport os,shutil,sys;v=shutil.which("vmcheck") or sys.exit(sys.argv[1]+": vmcheck is not on PATH");os.execv(v,[v,"python",*sys.argv[1:]])
import testlib

PAGE = """<!DOCTYPE html><html><body style="margin: 0">
<div id="box" style="width: 40px; height: 30px; background: COLOR"></div></body></html>
"""


class TestPixels(testlib.MachineCase):
    provision = {"machine1": {"forward": [80]}}
    web_port = 80

    def page(self, color):
        self.machine.execute("mkdir -p /www")
        self.machine.write("/www/index.html", PAGE.replace("COLOR", color))
        self.machine.execute("httpd -p 80 -h /www")
        self.browser.open("/index.html")

    def testSame(self):
        self.page("rgb(200, 0, 0)")
        self.browser.assert_pixels("#box", "box")

    def testChanged(self):
        self.page("rgb(0, 0, 200)")
        self.browser.assert_pixels("#box", "box")


if __name__ == "__main__":
    testlib.test_main()
"##;

/// Pixel tests: without a reference the new image is saved and the test fails; with it,
/// the same page passes and a changed one fails with its diff saved; a pixel failure is
/// never retried.
#[test]
fn pixel_tests_compare_with_a_committed_reference() {
    let dir = common::busybox_project_with_executable("check-pixels", PIXELS);
    let root = dir.path();
    let artifacts = root.join("artifacts");
    let run = || {
        let out = common::output_leaving_nothing(
            common::vmcheck_run_in(root)
                .env("TEST_OS", "busybox")
                .env("PATH", common::path_with_vmcheck())
                .arg("--artifacts")
                .arg(&artifacts),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let tap = run();
    // No reference: both fail at once (not retried), the new images kept.
    assert!(!tap.contains("RETRY"), "{tap}");
    assert!(tap.contains("no reference image"), "{tap}");
    let new = artifacts.join("TestPixels.testSame/attempt-1/test/box-pixels.png");
    let reference = root.join("test/reference/box-pixels.png");
    std::fs::create_dir_all(reference.parent().unwrap()).unwrap();
    std::fs::copy(&new, &reference).unwrap();
    let tap = run();
    let line = |t: &str| {
        tap.lines()
            .find(|l| l.ends_with(&format!("TestPixels.{t} (0.9GB)")))
            .unwrap_or_else(|| panic!("{t}: {tap}"))
            .to_string()
    };
    assert!(line("testSame").starts_with("ok "), "{tap}");
    assert!(line("testChanged").starts_with("not ok "), "{tap}");
    assert!(!tap.contains("RETRY"), "{tap}");
    assert!(tap.contains("1200 pixels differ from"), "{tap}");
    assert!(tap.contains("not retried: PixelsError"), "{tap}");
    let diff = artifacts.join("TestPixels.testChanged/attempt-1/test/box-pixels.diff.png");
    assert!(std::fs::read(&diff).unwrap().starts_with(b"\x89PNG"));
}

const ELSEWHERE: &str = r##"#!/usr/bin/python3 -cimport os,shutil,sys;v=shutil.which("vmcheck") or sys.exit(sys.argv[1]+": vmcheck is not on PATH");os.execv(v,[v,"python",*sys.argv[1:]])
import testlib


class TestElsewhere(testlib.MachineCase):
    def testOpen(self):
        self.browser.open("/page.html")
        self.browser.wait_text("#where", "the host's server")


if __name__ == "__main__":
    testlib.test_main()
"##;

/// `--browser HOST:PORT`: the browser opens that web address (here a server on the host)
/// instead of the machine's forwarded port; without either, the test says what is missing.
#[test]
fn browser_names_the_web_address_of_another_machine() {
    let dir = common::busybox_project_with_executable("check-elsewhere", ELSEWHERE);
    let root = dir.path();
    let www = root.join("www");
    std::fs::create_dir(&www).unwrap();
    std::fs::write(
        www.join("page.html"),
        r#"<!DOCTYPE html><p id="where">the host's server</p>"#,
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = std::process::Command::new("python3")
        .args(["-m", "http.server", "--bind", "127.0.0.1", "--directory"])
        .arg(&www)
        .arg(port.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(common::eventually(30, || std::net::TcpStream::connect((
        "127.0.0.1",
        port
    ))
    .is_ok()));
    let run = |extra: &[&str]| {
        let out = common::output_leaving_nothing(
            common::vmcheck_run_in(root)
                .env("TEST_OS", "busybox")
                .env("PATH", common::path_with_vmcheck())
                .arg("--no-retry-fail")
                .args(extra),
        );
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, tap) = run(&["--browser", &format!("127.0.0.1:{port}")]);
    assert_eq!(code, Some(exit_codes::OK), "{tap}");
    let (code, tap) = run(&[]);
    server.kill().unwrap();
    let _ = server.wait();
    assert_eq!(code, Some(exit_codes::TESTS_FAILED), "{tap}");
    assert!(
        tap.contains("machine1 does not forward web_port 9090"),
        "{tap}"
    );
    // A bad address is a usage error before anything starts.
    let (code, _) = run(&["--browser", "http://x"]);
    assert_eq!(code, Some(exit_codes::INPUT_ERROR));
}
