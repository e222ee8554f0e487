//! End-to-end: network faults between the machines of a test (`vm net …`, testlib's
//! `self.network`) on real busybox guests, through the attempt's switch: a block cuts
//! pings, a heal restores them, a delay shows in the round-trip time, a full loss cuts
//! them, bad requests are one line, and the test's output sums up what the faults did.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use vmcheck::events::Event;
use vmcheck::exit_codes;

/// A host script that checks each fault with pings from machine1 to machine2 and prints
/// the round-trip times it measured (`rtt-clear=`, `rtt-delayed=`: busybox ping's minimum,
/// in ms).
const TOML_CHECK: &str = r#"
[TestNet.testFaults]
provision.machine1 = {}
provision.machine2 = {}
host = '''
ip2=$VMCHECK_MACHINE2_IP
ping2() { vm exec machine1 "ping -c $1 -W $2 $ip2"; }
rtt() { ping2 3 5 | sed -n 's|^round-trip min/avg/max = \([0-9.]*\)/.*|\1|p'; }
echo "rtt-clear=$(rtt)"
vm net block machine1 machine2
vm net show
if ping2 2 2; then echo "FAIL: a ping crossed the block"; exit 1; fi
vm net heal
ping2 1 5
vm net delay machine1 machine2 300ms
echo "rtt-delayed=$(rtt)"
vm net delay machine1 machine2 0
vm net drop machine2 machine1 100%
if ping2 2 2; then echo "FAIL: a ping crossed a 100% loss"; exit 1; fi
vm net heal machine1 machine2
for bad in "block machine1 nosuch" "delay machine1 machine2 300" "drop machine1 machine2 120%" "heal machine1"; do
  if said=$(vm net $bad 2>&1); then echo "FAIL: vm net $bad succeeded"; exit 1; fi
  echo "bad: vm net $bad: $said ($(printf '%s\n' "$said" | wc -l) line)"
done
# A reboot is a new qemu on the same sockets; the machine has its name and address again.
vm reboot machine2
test "$(vm exec machine2 hostname)" = machine2
ping2 1 5
# Left in place: the runner heals it when the body ends.
vm net block machine1 machine2
'''

[TestNet.testAlone]
host = '''
if said=$(vm net heal 2>&1); then exit 1; fi
echo "$said"
'''
"#;

/// The same through the Python testlib.
const PYTHON_CHECK: &str = r#"#!/usr/bin/python3 -cimport os,shutil,sys;v=shutil.which("vmcheck") or sys.exit(sys.argv[1]+": vmcheck is not on PATH");os.execv(v,[v,"python",*sys.argv[1:]])
import testlib


class TestPyNet(testlib.MachineCase):
    provision = {"alice": {}, "server": {}}

    def ping(self, count=1, wait=5):
        return self.machines["alice"].execute(f"ping -c {count} -W {wait} {self.machines['server'].ip}")

    def testFaults(self):
        alice, server = self.machines["alice"], self.machines["server"]
        self.ping()
        self.network.block(alice, "server")
        with self.assertRaises(testlib.ExecuteError):
            self.ping(2, 2)
        self.assertIn("alice -> server: blocked", self.network.show())
        self.network.heal()
        self.ping()
        self.network.delay(alice, server, 0.3)
        out = self.ping(2)
        print("py-" + out.strip().splitlines()[-1])
        with self.assertRaises(testlib.Error) as e:
            self.network.drop(alice, "nobody", 10)
        print("py-error:", e.exception)


if __name__ == "__main__":
    testlib.test_main()
"#;

/// Each test's output, by name, from a run's event stream.
fn outputs(events: &Path) -> BTreeMap<String, String> {
    let stream = vmcheck::results::merge::read(events).unwrap();
    let mut by_id: BTreeMap<usize, String> = BTreeMap::new();
    let mut names: BTreeMap<usize, String> = BTreeMap::new();
    for e in &stream.events {
        match e {
            Event::TestOutput { id, data, .. } => {
                by_id
                    .entry(*id)
                    .or_default()
                    .push_str(&String::from_utf8_lossy(data));
            }
            Event::TestFinished { test, .. } => {
                names.insert(test.id, test.name.clone());
            }
            _ => {}
        }
    }
    by_id
        .into_iter()
        .map(|(id, out)| (names.get(&id).cloned().unwrap_or_default(), out))
        .collect()
}

/// The number after `key=` (or `key ` as busybox ping's summary has it) in `text`.
fn value_after(text: &str, key: &str) -> f64 {
    let rest = text
        .split(key)
        .nth(1)
        .unwrap_or_else(|| panic!("no {key} in:\n{text}"));
    let number: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    number
        .parse()
        .unwrap_or_else(|_| panic!("no number after {key} in:\n{text}"))
}

#[test]
fn faults_between_two_machines_cut_delay_and_heal_their_traffic() {
    common::image("busybox");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("check-net"), TOML_CHECK).unwrap();
    let python = dir.path().join("check-netpy");
    std::fs::write(&python, PYTHON_CHECK).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).unwrap();
    let events = dir.path().join("events.jsonl");
    let started = std::time::Instant::now();
    let out = common::output_leaving_nothing(
        common::vmcheck()
            .args(["run", "-j", "2", "--no-retry-fail", "--test-dir"])
            .arg(dir.path())
            .arg("--events")
            .arg(&events)
            .env("PATH", common::path_with_vmcheck()),
    );
    let took = started.elapsed();
    let tap = String::from_utf8_lossy(&out.stdout);
    let outputs = outputs(&events);
    common::assert_code(&out, &format!("{tap}\n{outputs:#?}"), exit_codes::OK);
    eprintln!("the run took {:.1}s", took.as_secs_f64());

    let toml = &outputs["TestNet.testFaults"];
    // Every request is in the output, as the script's other `vm` requests are.
    for line in [
        "+ vm net block machine1 machine2\n",
        "+ vm net show\n",
        "+ vm net heal\n",
        "+ vm net delay machine1 machine2 300ms\n",
        "+ vm net drop machine2 machine1 100%\n",
        "machine1 -> machine2: blocked; frames: ",
    ] {
        assert!(toml.contains(line), "{line:?} in:\n{toml}");
    }
    // Each direction is delayed: the round trip takes two delays. No upper bound: the
    // host may be loaded.
    let clear = value_after(toml, "rtt-clear=");
    let delayed = value_after(toml, "rtt-delayed=");
    eprintln!("ping round trip (min of 3): {clear} ms clear, {delayed} ms with 300ms each way");
    assert!(
        delayed >= 600.0,
        "rtt {delayed} ms with 300 ms each way:\n{toml}"
    );
    for says in [
        "bad: vm net block machine1 nosuch: vm: no machine 'nosuch' on this test's private \
         network (machines: machine1, machine2) (1 line)",
        "bad: vm net delay machine1 machine2 300: vm: not a delay: \"300\" (say 200ms or 1.5s) \
         (1 line)",
        "bad: vm net drop machine1 machine2 120%: vm: not a percentage from 0 to 100: \"120%\" \
         (say 30%) (1 line)",
        "bad: vm net heal machine1: vm: usage: vm net block|unblock",
    ] {
        assert!(toml.contains(says), "{says:?} in:\n{toml}");
    }
    // What the faults did, after the body: the last block's frames are counted too.
    let summary = toml
        .lines()
        .find(|l| l.starts_with("vmcheck: network faults (frames): "))
        .unwrap_or_else(|| panic!("no summary in:\n{toml}"));
    for part in [
        "machine1 -> machine2: ",
        " blocked",
        " delayed",
        "machine2 -> machine1: ",
        " dropped",
    ] {
        assert!(summary.contains(part), "{part:?} in {summary}");
    }
    assert!(
        outputs["TestNet.testAlone"].contains(
            "vm: this test has no private network: `vm net` needs a test with two machines or more"
        ),
        "{outputs:#?}"
    );

    let py = &outputs["TestPyNet.testFaults"];
    assert!(py.contains("+ vm net block alice server\n"), "{py}");
    assert!(py.contains("+ vm net delay alice server 300ms\n"), "{py}");
    let py_delayed = value_after(py, "py-round-trip min/avg/max = ");
    assert!(py_delayed >= 600.0, "{py}");
    assert!(
        py.contains(
            "py-error: vmcheck could not carry out 'net': no machine 'nobody' on this test's \
             private network (machines: alice, server)"
        ),
        "{py}"
    );
    assert!(
        py.contains("vmcheck: network faults (frames): alice -> server: "),
        "{py}"
    );
}
