"""Unit tests of testlib.py, without any VM.

Check files are written into a temporary directory and run as subprocesses with
`--vmcheck-list` / `--vmcheck-run NAME`; a fake runner (a thread serving the control
socket) records their requests and answers them per the protocol, running `exec`
commands locally with `sh -c`.

Run: cd python && python3 -m unittest -v test_testlib
"""

import json
import os
import socketserver
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import unittest
import unittest.mock

sys.dont_write_bytecode = True
import testlib  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

TOPOLOGY = {
    "version": 1,
    "test": "TestFoo.testBar",
    "machines": [
        {
            "name": "machine1",
            "image": "busybox",
            "ip": "10.111.0.1",
            "ssh": {"host": "127.0.0.1", "port": 2201, "user": "root",
                    "identity": "/k", "known_hosts": "/h"},
        },
        {
            "name": "machine2",
            "image": "debian-12",
            "ip": "10.111.0.2",
            "ssh": {"host": "127.0.0.1", "port": 2202, "user": "root",
                    "identity": "/k", "known_hosts": "/h"},
        },
    ],
}


class FakeRunner:
    """Serves the control socket: records requests, runs `exec` locally, fails on demand.

    `errors` maps a machine name to the `(error, infrastructure)` its requests are answered
    with (a machine that died: True; a refused request: False); `canned` (if set) is the
    stdout of every `exec`, not run.
    """

    def __init__(self, directory):
        self.path = os.path.join(directory, "control.sock")
        self.requests = []
        self.errors = {}
        self.canned = None
        # The answer to every `net` request (None: an empty success).
        self.net_answer = None
        fake = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                request = json.loads(self.rfile.readline())
                fake.requests.append(request)
                answer = fake.answer(request)
                self.wfile.write(json.dumps(answer).encode() + b"\n")

        self.server = socketserver.ThreadingUnixStreamServer(self.path, Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def answer(self, request):
        if request.get("machine") in self.errors:
            error, infrastructure = self.errors[request["machine"]]
            return {"exit": 255, "stdout": "", "stderr": "", "error": error,
                    "infrastructure": infrastructure}
        if request["op"] == "net" and self.net_answer is not None:
            return self.net_answer
        if request["op"] != "exec":
            return {"exit": 0, "stdout": "", "stderr": "", "error": None}
        if self.canned is not None:
            return {"exit": 0, "stdout": self.canned, "stderr": "", "error": None}
        done = subprocess.run(["sh", "-c", request["command"]], input=request.get("input", ""),
                              capture_output=True, text=True, timeout=request.get("timeout"))
        return {"exit": done.returncode, "stdout": done.stdout, "stderr": done.stderr, "error": None}

    def ops(self, op):
        return [r for r in self.requests if r["op"] == op]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class CheckFileTest(unittest.TestCase):
    """Writes check files into a temp dir and runs them against a fake runner."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        self.dir = self.tmp.name
        self.runner = FakeRunner(self.dir)
        self.addCleanup(self.runner.close)
        self.topology = os.path.join(self.dir, "topology.json")
        with open(self.topology, "w") as f:
            json.dump(TOPOLOGY, f)
        self.infra_file = os.path.join(self.dir, "infrastructure-failure")

    def check_file(self, body, name="check-foo"):
        """Write a check file: imports, `body`, then test_main()."""
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write("#!/usr/bin/env python3\nimport testlib\n")
            f.write(textwrap.dedent(body))
            f.write("\nif __name__ == '__main__':\n    testlib.test_main()\n")
        os.chmod(path, 0o755)
        return path

    def env(self, vmcheck=True, **extra):
        env = {
            "PATH": os.environ["PATH"],
            "PYTHONPATH": HERE,
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        if vmcheck:
            env.update({
                "VMCHECK_CONTROL": self.runner.path,
                "VMCHECK_TOPOLOGY": self.topology,
                "VMCHECK_INFRASTRUCTURE_FAILURE_FILE": self.infra_file,
            })
        env.update(extra)
        return env

    def run_file(self, path, *args, merged=False, vmcheck=True, **env):
        """Run a check file; stdout and stderr separately, or merged into stdout."""
        return subprocess.run(
            [sys.executable, path, *args], env=self.env(vmcheck, **env), cwd=self.dir,
            stdin=subprocess.DEVNULL, capture_output=not merged, text=True, timeout=60,
            **({"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT} if merged else {}))

    def run_test(self, body, name="TestFoo.testBar", **kwargs):
        return self.run_file(self.check_file(body), "--vmcheck-run", name, **kwargs)

    def assertExit(self, done, code):
        self.assertEqual(done.returncode, code,
                         f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}")

    def listing(self, body, covers=None):
        path = self.check_file(body)
        if covers is not None:
            with open(path) as f:
                text = f.read().replace("test_main()", f"test_main(covers={covers!r})")
            with open(path, "w") as f:
                f.write(text)
        done = self.run_file(path, "--vmcheck-list", vmcheck=False)
        self.assertExit(done, 0)
        return json.loads(done.stdout)

    def infrastructure_reason(self):
        with open(self.infra_file) as f:
            return f.read()


class Listing(CheckFileTest):
    def test_keys_and_def_lines(self):
        doc = self.listing("""\
            class TestMotd(testlib.MachineCase):
                @testlib.nondestructive
                @testlib.timeout(300)
                def testWrite(self):
                    pass

                def testPlain(self):
                    pass

                def helper(self):
                    pass

            @testlib.skipImage("no systemd", "busybox", "alpine-*")
            @testlib.onlyImage("needs qemu", "debian-*")
            class TestTwo(testlib.MachineCase):
                @testlib.todo("flaky (#3)")
                @testlib.no_retry_when_changed
                @testlib.settings(artifacts=["/var/log/x"], env={"A": "b"},
                                  restore=["/etc/motd"], allow_journal=["oops.*"])
                def testAll(self):
                    pass

            class NotATest:
                def testNothing(self):
                    pass

            import unittest
            class TestPlainUnittest(unittest.TestCase):
                def testNotAMachineCase(self):
                    pass
            """)
        # lines: 1 shebang, 2 import, 3 class TestMotd, the body from there
        self.assertEqual(doc, {"version": 1, "tests": [
            {"name": "TestMotd.testPlain", "line": 9},
            {"name": "TestMotd.testWrite", "line": 6, "nondestructive": True, "timeout": 300},
            {"name": "TestTwo.testAll", "line": 22,
             "allow_journal": ["oops.*"], "artifacts": ["/var/log/x"], "env": {"A": "b"},
             "no_retry_when_changed": True,
             "only": {"os": ["debian-*"], "reason": "needs qemu"},
             "restore": ["/etc/motd"],
             "skip": {"os": ["busybox", "alpine-*"], "reason": "no systemd"},
             "todo": "flaky (#3)"},
        ]})

    def test_method_wins_over_class_over_inherited(self):
        doc = self.listing("""\
            @testlib.nondestructive
            @testlib.timeout(100)
            @testlib.todo("base")
            class Base(testlib.MachineCase):
                pass

            @testlib.timeout(200)
            class TestChild(Base):
                @testlib.destructive
                @testlib.timeout(300)
                def testMethod(self):
                    pass

                def testClass(self):
                    pass

            class TestInherited(Base):
                def testBase(self):
                    pass

                @testlib.todo()
                def testTodo(self):
                    pass
            """)
        got = {t["name"]: (t.get("nondestructive"), t.get("timeout"), t.get("todo"))
               for t in doc["tests"]}
        self.assertEqual(got, {
            "TestChild.testMethod": (False, 300, "base"),
            "TestChild.testClass": (True, 200, "base"),
            "TestInherited.testBase": (True, 100, "base"),
            # Cockpit allows a todo without reason; vmcheck's settings need one.
            "TestInherited.testTodo": (True, 100, "(no reason given)"),
        })

    def test_matrix(self):
        doc = self.listing("""\
            @testlib.matrix(server=["busybox", "debian-12"], fs=["ext4", "xfs"],
                            exclude=[{"server": "busybox", "fs": "xfs"}],
                            include=[{"fs": "xfs", "mkfs": "mkfs.xfs"}])
            class TestStorage(testlib.MachineCase):
                provision = {"machine1": {"image": "{matrix.server}"}}
                def testMount(self):
                    pass
            """)
        self.assertEqual(doc["tests"], [{
            "name": "TestStorage.testMount", "line": 8,
            "provision": {"machine1": {"image": "{matrix.server}"}},
            "matrix": {"server": ["busybox", "debian-12"], "fs": ["ext4", "xfs"]},
            "matrix_exclude": [{"server": "busybox", "fs": "xfs"}],
            "matrix_include": [{"fs": "xfs", "mkfs": "mkfs.xfs"}],
        }])

    def test_provision_translated(self):
        doc = self.listing("""\
            class TestTwo(testlib.MachineCase):
                provision = {"machine1": {},
                             "machine2": {"image": "debian-12", "memory_mb": 1024, "cpus": 2,
                                          "forward": True}}
                def testA(self):
                    pass

            class TestSub(TestTwo):
                @testlib.settings(provision={"machine1": {"memory": "1G"}})
                def testB(self):
                    pass
            """)
        tests = {t["name"]: t for t in doc["tests"]}
        self.assertEqual(list(tests["TestTwo.testA"]["provision"].items()), [
            ("machine1", {}),
            ("machine2", {"image": "debian-12", "memory": "1024M", "cpus": 2, "forward": True}),
        ])
        self.assertEqual(tests["TestSub.testA"]["provision"], tests["TestTwo.testA"]["provision"])
        self.assertEqual(tests["TestSub.testB"]["provision"], {"machine1": {"memory": "1G"}})

    def test_covers_and_sorting(self):
        doc = self.listing("""\
            class TestB(testlib.MachineCase):
                def testZ(self): pass
                def testA(self): pass

            class TestA(testlib.MachineCase):
                def testY(self): pass
            """, covers=["src/foo/*", "src/bar/**"])
        self.assertEqual(doc["covers"], ["src/foo/*", "src/bar/**"])
        self.assertEqual([t["name"] for t in doc["tests"]],
                         ["TestA.testY", "TestB.testA", "TestB.testZ"])

    def test_imported_class_is_listed_without_line(self):
        with open(os.path.join(self.dir, "shared.py"), "w") as f:
            f.write("import testlib\n\nclass TestShared(testlib.MachineCase):\n"
                    "    def testS(self):\n        pass\n")
        doc = self.listing("""\
            from shared import TestShared
            """)
        self.assertEqual(doc["tests"], [{"name": "TestShared.testS"}])

    def test_two_hundred_tests_list_fast(self):
        body = "".join(
            f"class TestC{c}(testlib.MachineCase):\n"
            + "".join(f"    @testlib.timeout({m + 1})\n    def test{m}(self):\n        pass\n"
                      for m in range(20))
            for c in range(10))
        path = self.check_file(body)
        start = time.monotonic()
        done = self.run_file(path, "--vmcheck-list", vmcheck=False)
        elapsed = time.monotonic() - start
        self.assertExit(done, 0)
        self.assertEqual(len(json.loads(done.stdout)["tests"]), 200)
        self.assertLess(elapsed, 1.0)


class Run(CheckFileTest):
    def test_pass(self):
        done = self.run_test("""\
            class TestFoo(testlib.MachineCase):
                def testBar(self):
                    print("in the test")
            """)
        self.assertExit(done, 0)
        self.assertIn("in the test", done.stdout)

    def test_failure_prints_traceback(self):
        done = self.run_test("""\
            class TestFoo(testlib.MachineCase):
                def testBar(self):
                    self.assertEqual(1, 2, "numbers differ")
            """)
        self.assertExit(done, 1)
        self.assertIn("AssertionError: 1 != 2 : numbers differ", done.stdout)
        self.assertIn("line 5, in testBar", done.stdout)

    def test_error_and_cleanups(self):
        done = self.run_test("""\
            class TestFoo(testlib.MachineCase):
                def testBar(self):
                    self.addCleanup(print, "cleaned up")
                    raise RuntimeError("kaputt")

                def tearDown(self):
                    print("torn down")
            """)
        self.assertExit(done, 1)
        self.assertIn("RuntimeError: kaputt", done.stdout)
        self.assertIn("torn down", done.stdout)
        self.assertIn("cleaned up", done.stdout)

    def test_runtime_skip_reason_is_last_line(self):
        done = self.run_test("""\
            import unittest
            class TestFoo(testlib.MachineCase):
                def testBar(self):
                    self.machine.execute("echo noise >&2")
                    raise unittest.SkipTest("not on this image")
            """, merged=True)
        self.assertExit(done, 77)
        self.assertEqual(done.stdout.splitlines()[-1], "not on this image")

    def test_library_does_not_skip_by_itself(self):
        done = self.run_test("""\
            class TestFoo(testlib.MachineCase):
                @testlib.skipImage("never here", "*")
                @testlib.onlyImage("never here", "nothing")
                def testBar(self):
                    print("ran")
            """, TEST_OS="busybox")
        self.assertExit(done, 0)
        self.assertIn("ran", done.stdout)

    def test_sigterm_shows_where_the_test_was(self):
        path = self.check_file("""\
            import time
            class TestFoo(testlib.MachineCase):
                def testBar(self):
                    self.wait_forever()

                def wait_forever(self):
                    print("waiting")
                    while True:
                        time.sleep(0.01)
            """)
        process = subprocess.Popen([sys.executable, path, "--vmcheck-run", "TestFoo.testBar"],
                                   env=self.env(), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        self.addCleanup(process.kill)
        self.assertEqual(process.stdout.readline(), "# TestFoo.testBar\n")
        self.assertEqual(process.stdout.readline(), "waiting\n")
        process.terminate()
        _, stderr = process.communicate(timeout=30)
        self.assertEqual(process.returncode, -15)
        self.assertIn(f'in wait_forever\n  File "{path}", line 6 in testBar\n', stderr)

    def test_unknown_test(self):
        path = self.check_file("""\
            class TestFoo(testlib.MachineCase):
                def testBar(self):
                    pass
                def helper(self):
                    pass
            """)
        for name in ["TestFoo.testNope", "TestNope.testBar", "TestFoo.helper", "TestFoo"]:
            done = self.run_file(path, "--vmcheck-run", name)
            self.assertExit(done, 2)
            self.assertIn(f"no test '{name}'", done.stderr)
            self.assertEqual(done.stdout, "")

    def test_machines_from_topology(self):
        done = self.run_test("""\
            class TestFoo(testlib.MachineCase):
                def testBar(self):
                    for m in self.machines.values():
                        print(m.name, m.image, m.ip, m.ssh_address)
                    print("first", self.machine.name)
            """)
        self.assertExit(done, 0)
        self.assertIn("machine1 busybox 10.111.0.1 127.0.0.1:2201\n"
                      "machine2 debian-12 10.111.0.2 127.0.0.1:2202\n"
                      "first machine1\n", done.stdout)


class Execute(CheckFileTest):
    def test_stdout_input_and_stderr(self):
        done = self.run_test("""\
            class TestFoo(testlib.MachineCase):
                def testBar(self):
                    out = self.machine.execute("cat; echo to-stderr >&2", input="from stdin\\n")
                    assert out == "from stdin\\n", repr(out)
            """)
        self.assertExit(done, 0)
        self.assertIn("to-stderr", done.stderr)
        self.assertEqual(self.runner.ops("exec"), [{
            "op": "exec", "machine": "machine1", "command": "cat; echo to-stderr >&2",
            "input": "from stdin\n", "timeout": 120}])

    def test_execute_error_fields_and_check_false(self):
        done = self.run_test("""\
            import json, subprocess
            class TestFoo(testlib.MachineCase):
                def testBar(self):
                    m2 = self.machines["machine2"]
                    try:
                        m2.execute("echo out; echo err >&2; exit 3", timeout=5)
                    except testlib.ExecuteError as e:
                        assert isinstance(e, subprocess.CalledProcessError)
                        assert isinstance(e, testlib.Error)
                        print(json.dumps([e.returncode, e.cmd, e.stdout, e.output, e.stderr,
                                          e.machine, str(e)]))
                    print(repr(m2.execute("echo fine; exit 4", check=False)))
            """)
        self.assertExit(done, 0)
        fields = json.loads(done.stdout.splitlines()[1])
        self.assertEqual(fields, [3, "echo out; echo err >&2; exit 3", "out\n", "out\n", "err\n",
                                  "machine2",
                                  "machine2: command 'echo out; echo err >&2; exit 3' failed "
                                  "with exit status 3\nstdout:\nout\nstderr:\nerr"])
        self.assertIn("'fine\\n'", done.stdout)
        self.assertEqual(self.runner.ops("exec")[0]["timeout"], 5)

    def test_uncaught_execute_error_fails_the_test(self):
        done = self.run_test("""\
            class TestFoo(testlib.MachineCase):
                def testBar(self):
                    self.machine.execute("false")
            """)
        self.assertExit(done, 1)
        self.assertIn("testlib.ExecuteError: machine1: command 'false' failed with exit status 1",
                      done.stdout)
        self.assertFalse(os.path.exists(self.infra_file))

    def test_environment_is_quoted(self):
        value = """a b 'single' "double" $HOME `id` \\ ; end"""
        done = self.run_test(f"""\
            class TestFoo(testlib.MachineCase):
                def testBar(self):
                    out = self.machine.execute('printf %s "$V"; printf /%s "$W"',
                                               environment={{"V": {value!r}, "W": 7}})
                    print("got:" + out)
                    try:
                        self.machine.execute("true", environment={{"A B": "x"}})
                    except ValueError as e:
                        print("rejected:", e)
            """)
        self.assertExit(done, 0)
        self.assertIn(f"got:{value}/7\n", done.stdout)
        self.assertIn("rejected: invalid environment variable name 'A B'", done.stdout)
        self.assertEqual(len(self.runner.ops("exec")), 1)


class Requests(CheckFileTest):
    def test_write(self):
        target = os.path.join(self.dir, "motd")
        done = self.run_test(f"""\
            class TestFoo(testlib.MachineCase):
                def testBar(self):
                    self.machine.write({target!r}, "hello\\n")
                    self.machine.write({target!r}, "more\\n", append=True, perm="0600")
                    self.machines["machine2"].write("/nonexistent-dir/x", "y", owner="joe:users")
            """, merged=True)
        self.assertExit(done, 1)  # the parent dir does not exist
        with open(target) as f:
            self.assertEqual(f.read(), "hello\nmore\n")
        self.assertEqual(stat.S_IMODE(os.stat(target).st_mode), 0o600)
        execs = self.runner.ops("exec")
        self.assertEqual([(r["machine"], r["command"], r["input"]) for r in execs], [
            ("machine1", f"cat > {target}", "hello\n"),
            ("machine1", f"cat >> {target} && chmod 0600 {target}", "more\n"),
            ("machine2", "cat > /nonexistent-dir/x && chown joe:users /nonexistent-dir/x", "y"),
        ])

    def test_upload_files_and_directories(self):
        os.makedirs(os.path.join(self.dir, "tree/sub/empty"))
        for rel in ["single.txt", "tree/a", "tree/sub/b"]:
            with open(os.path.join(self.dir, rel), "w") as f:
                f.write(rel)
        done = self.run_test("""\
            class TestFoo(testlib.MachineCase):
                def testBar(self):
                    self.machine.upload(["single.txt", "tree"], "/srv/data/")
                    self.machine.upload("single.txt", "/")
                    try:
                        self.machine.upload(["missing"], "/srv")
                    except FileNotFoundError as e:
                        print("missing:", e)
            """)
        self.assertExit(done, 0)
        d = self.dir
        uploads = [(r["machine"], r["local"], r["remote"]) for r in self.runner.ops("upload")]
        self.assertEqual(sorted(uploads[:3]), [
            ("machine1", f"{d}/single.txt", "/srv/data/single.txt"),
            ("machine1", f"{d}/tree/a", "/srv/data/tree/a"),
            ("machine1", f"{d}/tree/sub/b", "/srv/data/tree/sub/b"),
        ])
        self.assertEqual(uploads[3:], [("machine1", f"{d}/single.txt", "/single.txt")])
        mkdirs = [r["command"] for r in self.runner.ops("exec")]
        self.assertEqual(len(mkdirs), 2, mkdirs)
        self.assertTrue(mkdirs[0].startswith("mkdir -p -- /srv/data /srv/data/tree "), mkdirs)
        self.assertEqual(set(mkdirs[0].split()[3:]), {"/srv/data", "/srv/data/tree",
                                                      "/srv/data/tree/sub",
                                                      "/srv/data/tree/sub/empty"})
        self.assertIn(f"missing: upload: no such file or directory: {d}/missing", done.stdout)

    def test_download(self):
        done = self.run_test("""\
            class TestFoo(testlib.MachineCase):
                def testBar(self):
                    self.machines["machine2"].download("/etc/hostname", "out/hostname")
            """)
        self.assertExit(done, 0)
        self.assertEqual(self.runner.ops("download"), [{
            "op": "download", "machine": "machine2", "remote": "/etc/hostname",
            "local": os.path.join(self.dir, "out/hostname")}])

    def test_spawn_runs_detached(self):
        log = os.path.join(self.dir, "spawned.log")
        done = self.run_test(f"""\
            class TestFoo(testlib.MachineCase):
                def testBar(self):
                    pid = self.machine.spawn("echo started $(ps -o sid= -p $$); cat", {log!r})
                    assert isinstance(pid, int)
                    print("pid", pid)
            """)
        self.assertExit(done, 0)
        pid = int(done.stdout.split("pid ")[1].split()[0])
        for _ in range(100):
            if os.path.exists(log) and os.path.getsize(log):
                break
            time.sleep(0.05)
        with open(log) as f:
            words = f.read().split()
        # its own session (setsid: session id = its pid), stdin at EOF (cat ended)
        self.assertEqual(words, ["started", str(pid)])
        command = self.runner.ops("exec")[0]["command"]
        self.assertIn("</dev/null", command)

    def test_spawn_log_under_var_log(self):
        self.runner.canned = "4242\n"
        done = self.run_test("""\
            class TestFoo(testlib.MachineCase):
                def testBar(self):
                    assert self.machine.spawn("my daemon", "daemon.log") == 4242
            """)
        self.assertExit(done, 0)
        self.assertEqual(self.runner.ops("exec")[0]["command"],
                         "setsid sh -c 'my daemon' </dev/null >/var/log/daemon.log 2>&1 & echo $!")

    def test_restore_allow_journal_reboot(self):
        done = self.run_test("""\
            class TestFoo(testlib.MachineCase):
                def testBar(self):
                    self.restore_file("/etc/motd")
                    self.restore_dir("/etc/cockpit")
                    self.allow_journal_messages("oops .*", "audit.*")
                    self.machines["machine2"].reboot()
                    self.machine.wait_reboot()
            """)
        self.assertExit(done, 0)
        self.assertEqual(self.runner.requests, [
            {"op": "restore", "machine": "machine1", "paths": ["/etc/motd"]},
            {"op": "restore", "machine": "machine1", "paths": ["/etc/cockpit"]},
            {"op": "allow-journal", "patterns": ["oops .*", "audit.*"]},
            {"op": "reboot", "machine": "machine2"},
            {"op": "wait-reboot", "machine": "machine1"},
        ])

    def test_network_faults(self):
        done = self.run_test("""\
            class TestFoo(testlib.MachineCase):
                def testBar(self):
                    m2 = self.machines["machine2"]
                    self.network.block(self.machine, m2)
                    self.network.unblock("machine1", "machine2")
                    self.network.delay(m2, self.machine, "200ms")
                    self.network.delay(m2, self.machine, 0.25)
                    self.network.drop(self.machine, m2, 30)
                    self.network.drop(self.machine, m2, "0.5%")
                    self.network.heal(self.machine, m2)
                    self.network.heal()
                    assert self.network.show() == ""
                    try:
                        self.network.heal(self.machine)
                    except ValueError:
                        pass
                    else:
                        raise AssertionError("heal of one machine")
            """)
        self.assertExit(done, 0)
        pair = ["machine1", "machine2"]
        self.assertEqual(self.runner.ops("net"), [
            {"op": "net", "action": "block", "machines": pair},
            {"op": "net", "action": "unblock", "machines": pair},
            {"op": "net", "action": "delay", "machines": pair[::-1], "value": "200ms"},
            {"op": "net", "action": "delay", "machines": pair[::-1], "value": "250ms"},
            {"op": "net", "action": "drop", "machines": pair, "value": "30%"},
            {"op": "net", "action": "drop", "machines": pair, "value": "0.5%"},
            {"op": "net", "action": "heal", "machines": pair},
            {"op": "net", "action": "heal"},
            {"op": "net", "action": "show"},
        ])

    def test_network_errors_and_show(self):
        self.runner.net_answer = {"exit": 0, "stdout": "machine1 -> machine2: blocked\n",
                                  "stderr": "", "error": None}
        done = self.run_test("""\
            class TestFoo(testlib.MachineCase):
                def testBar(self):
                    assert "blocked" in self.network.show()
            """)
        self.assertExit(done, 0)
        error = "no machine 'nobody' on this test's private network (machines: machine1, machine2)"
        self.runner.net_answer = {"exit": 255, "stdout": "", "stderr": "", "error": error}
        done = self.run_test("""\
            class TestFoo(testlib.MachineCase):
                def testBar(self):
                    self.network.block("machine1", "nobody")
            """)
        self.assertExit(done, 1)
        self.assertIn(f"testlib.Error: vmcheck could not carry out 'net': {error}", done.stdout)
        self.assertFalse(os.path.exists(self.infra_file))


class Infrastructure(CheckFileTest):
    BODY = """\
        class TestFoo(testlib.MachineCase):
            def testBar(self):
                self.machines["machine2"].execute("true")
        """

    def test_dead_machine(self):
        self.runner.errors["machine2"] = ("machine machine2: qemu was killed by signal 9 (SIGKILL)", True)
        done = self.run_test(self.BODY)
        self.assertExit(done, 1)
        self.assertEqual(self.infrastructure_reason(),
                         "vmcheck could not carry out 'exec' on machine2: "
                         "machine machine2: qemu was killed by signal 9 (SIGKILL)\n")
        self.assertIn("testlib.InfrastructureError", done.stdout)

    def test_deadline_passed(self):
        self.runner.errors["machine2"] = ("the test's deadline passed", True)
        done = self.run_test(self.BODY)
        self.assertExit(done, 1)
        self.assertIn("deadline passed", self.infrastructure_reason())

    def test_multi_line_reason_is_one_line(self):
        self.runner.errors["machine2"] = ("machine machine2: qemu exited (exit status: 1)\nconsole\ntail", True)
        done = self.run_test(self.BODY)
        self.assertExit(done, 1)
        self.assertTrue(self.infrastructure_reason().endswith(
            "qemu exited (exit status: 1) console tail\n"))

    def test_bad_request_is_a_test_failure(self):
        for error in ["no machine 'machine2' in this test (machines: machine1)",
                      "machine machine2: command timed out after 5s: true"]:
            self.runner.errors["machine2"] = (error, False)
            done = self.run_test(self.BODY)
            self.assertExit(done, 1)
            self.assertIn(f"testlib.Error: vmcheck could not carry out 'exec' on machine2: {error}",
                          done.stdout)
            self.assertFalse(os.path.exists(self.infra_file))

    def test_raised_by_the_test(self):
        done = self.run_test("""\
            class TestFoo(testlib.MachineCase):
                def testBar(self):
                    raise testlib.InfrastructureError("the lab network is down")
            """)
        self.assertExit(done, 1)
        self.assertEqual(self.infrastructure_reason(), "the lab network is down\n")

    def test_raised_in_a_subtest(self):
        done = self.run_test("""\
            class TestFoo(testlib.MachineCase):
                def testBar(self):
                    with self.subTest(case=1):
                        pass
                    with self.subTest(case=2):
                        raise testlib.InfrastructureError("lost in case 2")
            """)
        self.assertExit(done, 1)
        self.assertEqual(self.infrastructure_reason(), "lost in case 2\n")

    def test_without_the_file_variable(self):
        done = self.run_test("""\
            class TestFoo(testlib.MachineCase):
                def testBar(self):
                    raise testlib.InfrastructureError("no file")
            """, VMCHECK_INFRASTRUCTURE_FAILURE_FILE="")
        self.assertExit(done, 1)
        self.assertIn("infrastructure failure: no file", done.stderr)

    def test_runner_gone(self):
        done = self.run_test(self.BODY, VMCHECK_CONTROL=os.path.join(self.dir, "nothing.sock"))
        self.assertExit(done, 1)
        self.assertIn("control socket", self.infrastructure_reason())


class Standalone(CheckFileTest):
    def test_execs_vmcheck(self):
        bindir = os.path.join(self.dir, "bin")
        os.mkdir(bindir)
        record = os.path.join(self.dir, "argv.json")
        fake = os.path.join(bindir, "vmcheck")
        with open(fake, "w") as f:
            f.write(f"#!{sys.executable}\nimport json, sys\n"
                    f"json.dump(sys.argv[1:], open({record!r}, 'w'))\nsys.exit(5)\n")
        os.chmod(fake, 0o755)
        self.check_file("class TestFoo(testlib.MachineCase):\n    def testBar(self): pass\n")
        done = self.run_file("check-foo", "TestFoo.testBar", "--sit", vmcheck=False,
                             PATH=bindir + os.pathsep + os.environ["PATH"])
        self.assertExit(done, 5)
        with open(record) as f:
            self.assertEqual(json.load(f),
                             ["exec", os.path.join(self.dir, "check-foo"), "TestFoo.testBar", "--sit"])

    def test_vmcheck_not_on_path(self):
        empty = os.path.join(self.dir, "empty")
        os.mkdir(empty)
        path = self.check_file("class TestFoo(testlib.MachineCase):\n    def testBar(self): pass\n")
        done = self.run_file(path, vmcheck=False, PATH=empty)
        self.assertExit(done, 2)
        self.assertEqual(len(done.stderr.splitlines()), 1, done.stderr)
        self.assertIn("vmcheck is not on PATH", done.stderr)

    def test_bad_vmcheck_arguments(self):
        path = self.check_file("class TestFoo(testlib.MachineCase):\n    def testBar(self): pass\n")
        for args in [["--vmcheck-run"], ["--vmcheck-list", "x"], ["--vmcheck-frob"]]:
            done = self.run_file(path, *args, vmcheck=False, PATH="/nonexistent")
            self.assertExit(done, 2)
            self.assertIn("usage:", done.stderr)


class InProcess(unittest.TestCase):
    def test_execute_error_is_both(self):
        e = testlib.ExecuteError("m", 2, "ls /x", "", "a\n" * 30 + "last\n")
        self.assertIsInstance(e, testlib.Error)
        self.assertIsInstance(e, subprocess.CalledProcessError)
        self.assertEqual(str(e).splitlines()[:2],
                         ["m: command 'ls /x' failed with exit status 2", "stderr:"])
        self.assertEqual(len(str(e).splitlines()), 22)
        self.assertEqual(str(e).splitlines()[-1], "last")
        both = str(testlib.ExecuteError("m", 3, "x", "o1\no2\n", "e\n"))
        self.assertEqual(both.splitlines()[1:], ["stdout:", "o1", "o2", "stderr:", "e"])
        self.assertEqual(str(testlib.ExecuteError("m", 1, "false", "", "")),
                         "m: command 'false' failed with exit status 1")

    def test_infrastructure_error_is_an_error(self):
        self.assertTrue(issubclass(testlib.InfrastructureError, testlib.Error))

    def test_the_runner_says_which_errors_are_infrastructure(self):
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        runner = FakeRunner(tmp.name)
        self.addCleanup(runner.close)
        machine = testlib.Machine("machine1", "busybox")
        # The words do not matter, the runner's `infrastructure` flag does.
        cases = [
            ("machine machine1: qemu was killed by signal 9 (SIGKILL)", True),
            ("the test's deadline passed", True),
            ("no machine 'machine1' in this test (machines: machine2)", False),
            ("the command timed out after 5s", False),
            ("machine machine1 died", False),
        ]
        with unittest.mock.patch.dict(os.environ, {"VMCHECK_CONTROL": runner.path}):
            for error, infrastructure in cases:
                runner.errors["machine1"] = (error, infrastructure)
                with self.assertRaises(testlib.Error) as raised:
                    machine.execute("true")
                self.assertEqual(isinstance(raised.exception, testlib.InfrastructureError),
                                 infrastructure, error)
                self.assertTrue(str(raised.exception).endswith(error))

    def test_execute_without_runner(self):
        env = {k: v for k, v in os.environ.items() if k != "VMCHECK_CONTROL"}
        with unittest.mock.patch.dict(os.environ, env, clear=True):
            with self.assertRaisesRegex(testlib.Error, "VMCHECK_CONTROL is not set"):
                testlib.Machine("machine1", "busybox").execute("true")


if __name__ == "__main__":
    unittest.main()
