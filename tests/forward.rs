//! Guest TCP ports forwarded to the host (`provision.machine1 = { forward = [80] }`): a
//! busybox machine (restored from its booted snapshot) serves a page with its `httpd`; a
//! host script reaches it at `$VMCHECK_MACHINE1_PORT_80`, and a Python test at
//! `self.machine.forward(80)`; a port that is not forwarded is a clear error.

mod common;

use vmcheck::exit_codes;

const CHECK: &str = r#"
[TestWeb.testForward]
provision.machine1 = { forward = [80, 8080] }
run = "mkdir -p /www && echo hello-from-guest > /www/index.html && httpd -p 80 -h /www"
host = '''
case "$VMCHECK_MACHINE1_PORT_80" in 127.0.0.1:*) ;; *) exit 1;; esac
# The vm helper's reader stops early: it ends as a command killed by SIGPIPE, no panic.
vm exec machine1 'seq 100000' | head -n 1
test -n "$VMCHECK_MACHINE1_PORT_8080"
python3 -c 'import sys, urllib.request; print(urllib.request.urlopen("http://" + sys.argv[1] + "/").read().decode())' "$VMCHECK_MACHINE1_PORT_80"
'''

# Nondestructive tests whose shared machine forwards a port: they share it.
[TestShared]
nondestructive = true
provision.machine1 = { forward = [80] }

[TestShared.testOne]
run = "mkdir -p /www && cat /proc/sys/kernel/random/boot_id > /www/index.html && (pidof httpd >/dev/null || httpd -p 80 -h /www)"
host = '''
python3 -c 'import sys, urllib.request; print("shared:", urllib.request.urlopen("http://" + sys.argv[1] + "/").read().decode())' "$VMCHECK_MACHINE1_PORT_80"
'''

[TestShared.testTwo]
run = "mkdir -p /www && cat /proc/sys/kernel/random/boot_id > /www/index.html && (pidof httpd >/dev/null || httpd -p 80 -h /www)"
host = '''
python3 -c 'import sys, urllib.request; print("shared:", urllib.request.urlopen("http://" + sys.argv[1] + "/").read().decode())' "$VMCHECK_MACHINE1_PORT_80"
'''
"#;

const PYTHON: &str = r#"#!/usr/bin/python3 -cimport os,shutil,sys;v=shutil.which("vmcheck") or sys.exit(sys.argv[1]+": vmcheck is not on PATH");os.execv(v,[v,"python",*sys.argv[1:]])
import urllib.request

import testlib


class TestPyWeb(testlib.MachineCase):
    provision = {"machine1": {"forward": [80]}}

    def testForward(self):
        self.machine.execute("mkdir -p /www && echo py-hello > /www/index.html && httpd -p 80 -h /www")
        address = self.machine.forward(80)
        self.assertTrue(address.startswith("127.0.0.1:"))
        print(urllib.request.urlopen(f"http://{address}/").read().decode().strip())
        with self.assertRaises(testlib.Error) as e:
            self.machine.forward(9090)
        print("error:", e.exception)


if __name__ == "__main__":
    testlib.test_main()
"#;

#[test]
fn forwarded_ports_reach_the_guest_from_the_host() {
    let dir = common::busybox_project_with_executable("check-pyweb", PYTHON);
    let root = dir.path();
    std::fs::write(root.join("test/verify/check-web"), CHECK).unwrap();
    let events = root.join("events.jsonl");
    let out = common::output_leaving_nothing(
        common::vmcheck_run_in(root)
            .env("TEST_OS", "busybox")
            .env("PATH", common::path_with_vmcheck())
            .args(["-j", "1", "--events"])
            .arg(&events),
    );
    let tap = String::from_utf8_lossy(&out.stdout);
    common::assert_code(&out, &tap, exit_codes::OK);
    let stream = std::fs::read_to_string(&events).unwrap();
    // Output comes in chunks cut anywhere (Python's print writes "error:" and the rest apart):
    // the tests' text, joined (they ran one after the other).
    let output: String = stream
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["event"] == "test-output")
        .map(|e| e["data"].as_str().unwrap_or("").to_owned())
        .collect();
    assert!(output.contains("hello-from-guest"), "{stream}");
    assert!(!stream.contains("panicked"), "{stream}");
    assert!(output.contains("py-hello"), "{stream}");
    assert!(
        output.contains("error: machine1: port 9090 is not forwarded (forwarded: 80;"),
        "{stream}"
    );
    // The two nondestructive tests reached the same shared machine (one boot id).
    let ids: std::collections::BTreeSet<&str> = output
        .split("shared: ")
        .skip(1)
        .map(|rest| &rest[..36])
        .collect();
    assert_eq!(ids.len(), 1, "{output}");
    assert_eq!(output.matches("shared: ").count(), 2, "{output}");
}
