"""vmcheck's Python test library for executable check files (`test/verify/check-*`).

A check file written in Python subclasses `MachineCase`, marks tests with Cockpit's
decorators (`nondestructive`, `timeout`, `skipImage`, ...) and ends with `test_main()`.
This module owns the check file's side of vmcheck's protocol (design issue 11, the
"executable check files" protocol, v1):

- `FILE --vmcheck-list` prints the file's tests and their settings as JSON;
- `FILE --vmcheck-run Class.method` runs one test against the machines vmcheck booted,
  which it reaches through vmcheck's control socket (`$VMCHECK_CONTROL`);
- any other command line (a developer running the file by hand) becomes
  `vmcheck exec FILE ARGS...`.

vmcheck, not this module, decides skips (`skipImage`, `onlyImage`), expected failures
(`todo`), retries and restores. Standard library only.
"""

import faulthandler
import inspect
import json
import linecache
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import unittest

__all__ = [
    "Error",
    "InfrastructureError",
    "ExecuteError",
    "Machine",
    "MachineCase",
    "Network",
    "nondestructive",
    "destructive",
    "timeout",
    "todo",
    "skipImage",
    "onlyImage",
    "no_retry_when_changed",
    "settings",
    "test_main",
]

# The exit code of a skipped test and of a command-line mistake.
_EXIT_SKIP = 77
_EXIT_USAGE = 2

# Decorators store each listing key as an attribute named with this prefix (Cockpit's).
_PREFIX = "_testlib__"

# An environment variable name accepted by `Machine.execute(environment=...)`.
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

class Error(Exception):
    """Base class of this module's errors."""


class InfrastructureError(Error):
    """The test could not run for a reason outside it: a machine died, the deadline passed.

    Raised by the library, or by a test itself; vmcheck then reports an infrastructure
    failure and retries the test instead of failing it.
    """


class ExecuteError(Error, subprocess.CalledProcessError):
    """A command run by `Machine.execute` exited with a non-zero status.

    Carries `returncode`, `cmd`, `stdout` (also `output`), `stderr` and `machine`.
    """

    def __init__(self, machine, returncode, cmd, stdout, stderr):
        subprocess.CalledProcessError.__init__(self, returncode, cmd, stdout, stderr)
        self.machine = machine

    def __str__(self):
        text = f"{self.machine}: command {self.cmd!r} failed with exit status {self.returncode}"
        for name, output in (("stdout", self.stdout), ("stderr", self.stderr)):
            tail = (output or "").strip().splitlines()[-20:]
            if tail:
                text += f"\n{name}:\n" + "\n".join(tail)
        return text


def _request(request):
    """Send one request to the runner's control socket and return its answer (a dict).

    Raises InfrastructureError when the runner cannot be reached or says the failure is not
    the test's doing (a machine went away, the deadline passed), Error when it refused the
    request.
    """
    path = os.environ.get("VMCHECK_CONTROL")
    if not path:
        raise Error("VMCHECK_CONTROL is not set: machines are only reachable while vmcheck runs the test")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(path)
            sock.sendall(json.dumps(request).encode() + b"\n")
            with sock.makefile("rb") as answer:
                line = answer.readline()
    except OSError as e:
        raise InfrastructureError(f"vmcheck's control socket {path}: {e}") from e
    if not line:
        raise InfrastructureError("vmcheck closed the control connection without answering")
    answer = json.loads(line)
    error = answer.get("error")
    if error:
        what = f"vmcheck could not carry out {request['op']!r}"
        if "machine" in request:
            what += f" on {request['machine']}"
        if answer.get("infrastructure"):
            raise InfrastructureError(f"{what}: {error}")
        raise Error(f"{what}: {error}")
    return answer


class Machine:
    """One machine of the test's topology, driven through vmcheck.

    `name` ("machine1"), `image`, `ip` (its private-network address, or None for
    single-machine tests), `ssh_address` ("host:port") and `forward(port)`.
    """

    def __init__(self, name, image, ip=None, ssh_address=None, forwards=None):
        self.name = name
        self.image = image
        self.ip = ip
        self.ssh_address = ssh_address
        self._forwards = dict(forwards or {})

    def forward(self, port):
        """Where the machine's TCP `port` is reached from the host: "127.0.0.1:NNNNN".

        The port must be in the machine's `forward` list (`provision`)."""
        try:
            return self._forwards[str(int(port))]
        except KeyError:
            raise Error(f"{self.name}: port {port} is not forwarded "
                        f"(forwarded: {', '.join(sorted(self._forwards)) or 'none'}; "
                        f"add it to provision's \"forward\")") from None

    def __repr__(self):
        return f"<Machine {self.name} ({self.image})>"

    def _call(self, op, **fields):
        return _request({"op": op, "machine": self.name, **fields})

    def execute(self, command, input=None, environment=None, timeout=120, check=True):
        """Run the shell code `command` as root in the machine and return its stdout.

        `input` is its stdin text; `environment` a dict of variables exported before it;
        `timeout` in seconds (None: until the test's deadline). The command's stderr goes
        to the test's stderr. A non-zero exit raises ExecuteError, unless `check` is false.
        """
        script = command
        if environment:
            exports = []
            for name, value in environment.items():
                if not _ENV_NAME.match(name):
                    raise ValueError(f"invalid environment variable name {name!r}")
                exports.append(f"export {name}={shlex.quote(str(value))}\n")
            script = "".join(exports) + command
        request = {"command": script}
        if input is not None:
            request["input"] = input
        if timeout is not None:
            request["timeout"] = timeout
        answer = self._call("exec", **request)
        stdout, stderr = answer.get("stdout", ""), answer.get("stderr", "")
        if stderr:
            sys.stderr.write(stderr)
            sys.stderr.flush()
        if check and answer["exit"] != 0:
            raise ExecuteError(self.name, answer["exit"], command, stdout, stderr)
        return stdout

    def write(self, path, content, append=False, owner=None, perm=None):
        """Write the text `content` to `path` (its directory must exist).

        `append` adds to the file; `owner` ("user[:group]") and `perm` ("0644") are set after.
        """
        target = shlex.quote(path)
        command = f"cat {'>>' if append else '>'} {target}"
        if owner:
            command += f" && chown {shlex.quote(owner)} {target}"
        if perm:
            command += f" && chmod {shlex.quote(str(perm))} {target}"
        self.execute(command, input=content)

    def upload(self, local_paths, remote_dir):
        """Copy local files and directories (recursively) into the directory `remote_dir`.

        `local_paths` is one path or a list of them; each lands as
        `remote_dir/<its base name>`. Missing remote directories are created.
        """
        if isinstance(local_paths, (str, os.PathLike)):
            local_paths = [local_paths]
        remote_dir = remote_dir.rstrip("/") or "/"
        dirs, files = [remote_dir], []
        for local in map(os.path.abspath, local_paths):
            remote = os.path.join(remote_dir, os.path.basename(local))
            if os.path.isdir(local):
                for top, _, names in os.walk(local):
                    rel = os.path.relpath(top, local)
                    remote_top = os.path.normpath(os.path.join(remote, rel))
                    dirs.append(remote_top)
                    files += [(os.path.join(top, n), os.path.join(remote_top, n)) for n in names]
            elif os.path.exists(local):
                files.append((local, remote))
            else:
                raise FileNotFoundError(f"upload: no such file or directory: {local}")
        self.execute("mkdir -p -- " + " ".join(map(shlex.quote, dirs)))
        for local, remote in files:
            self._call("upload", local=local, remote=remote)

    def download(self, remote, local):
        """Copy the machine's file `remote` to the local path `local`."""
        self._call("download", remote=remote, local=os.path.abspath(local))

    def spawn(self, command, log):
        """Start the shell code `command` in the background, detached, and return its pid.

        Its output goes to `/var/log/<log>` (or to `log` if it is an absolute path).
        """
        path = log if log.startswith("/") else f"/var/log/{log}"
        return int(
            self.execute(
                f"setsid sh -c {shlex.quote(command)} </dev/null >{shlex.quote(path)} 2>&1 & echo $!"
            )
        )

    def reboot(self):
        """Reboot the machine and wait until it is back."""
        self._call("reboot")

    def wait_reboot(self):
        """Wait for the machine to come back from a reboot the test caused."""
        self._call("wait-reboot")


def _number(x):
    """A number as vmcheck reads it: plain decimals, no exponent (`200`, `0.5`)."""
    return f"{x:.3f}".rstrip("0").rstrip(".")


class Network:
    """The private network between the test's machines (tests with two machines or more).

    Trafficlight's network proxy, for VMs: vmcheck's switch between the machines applies
    these faults to the frames between two machines, in both directions, until they are
    undone or healed; every fault is healed when the test ends. Machines are `Machine`
    objects or their names. A machine name the test does not have, a bad delay or
    percentage raises `Error`. In a test: `self.network`.
    """

    @staticmethod
    def _names(a, b):
        return [m.name if isinstance(m, Machine) else m for m in (a, b)]

    def _call(self, action, machines=(), value=None):
        request = {"op": "net", "action": action}
        if machines:
            request["machines"] = self._names(*machines)
        if value is not None:
            request["value"] = value
        return _request(request)

    def block(self, a, b):
        """Cut all traffic between `a` and `b`."""
        self._call("block", (a, b))

    def unblock(self, a, b):
        """Undo `block` between `a` and `b` (their other faults stay)."""
        self._call("unblock", (a, b))

    def delay(self, a, b, delay):
        """Hold every frame between `a` and `b` back by `delay`, each way.

        `delay` is a string ("200ms", "1.5s") or seconds as a number; 0 removes the delay.
        """
        if isinstance(delay, (int, float)):
            delay = _number(delay * 1000) + "ms"
        self._call("delay", (a, b), delay)

    def drop(self, a, b, percent):
        """Lose `percent` (0 to 100, or a string "30%") of the frames between `a` and `b`."""
        if isinstance(percent, (int, float)):
            percent = _number(percent) + "%"
        self._call("drop", (a, b), percent)

    def heal(self, a=None, b=None):
        """Remove every fault, or (given two machines) those between `a` and `b`."""
        if (a is None) != (b is None):
            raise ValueError("heal takes two machines or none")
        self._call("heal", () if a is None else (a, b))

    def show(self):
        """The faults and the frames that crossed, one line per direction, as a string."""
        return self._call("show").get("stdout", "")


class MachineCase(unittest.TestCase):
    """A test run against the machines vmcheck booted for it.

    `provision` (class attribute, Cockpit's form) names the machines and their options:
    `{"machine1": {}, "machine2": {"image": "debian-12", "memory_mb": 1024, "cpus": 2}}`;
    None means vmcheck's default, one `machine1`. In a test, `self.machine` is the first
    machine of the topology, `self.machines` maps every name to its `Machine`,
    `self.network` breaks and heals the private network between them (`Network`), and in a
    case of a matrix (`@matrix`), `self.matrix` maps each key to the case's value (else `{}`).
    """

    provision = None
    # The first machine's port that `self.browser.open("/path")` goes to (Cockpit's).
    web_port = 9090

    def setUp(self):
        super().setUp()
        self._browser = None
        path = os.environ.get("VMCHECK_TOPOLOGY")
        if not path:
            raise Error("VMCHECK_TOPOLOGY is not set: run this test with vmcheck")
        with open(path) as f:
            topology = json.load(f)
        self.machines = {}
        for m in topology["machines"]:
            ssh = m.get("ssh") or {}
            address = f"{ssh['host']}:{ssh['port']}" if "host" in ssh else None
            self.machines[m["name"]] = Machine(m["name"], m.get("image"), m.get("ip"), address,
                                               m.get("forward"))
        self.machine = next(iter(self.machines.values()))
        self.network = Network()
        prefix = "VMCHECK_MATRIX_"
        self.matrix = {k[len(prefix):].lower(): v for k, v in os.environ.items()
                       if k.startswith(prefix)}

    def restore_file(self, path):
        """Have vmcheck save `path` now and put it back after the test."""
        _request({"op": "restore", "machine": self.machine.name, "paths": [path]})

    def restore_dir(self, path):
        """Have vmcheck save the directory `path` now and put it back after the test."""
        self.restore_file(path)

    def allow_journal_messages(self, *patterns):
        """Allow journal messages matching these regexes for the rest of this attempt."""
        _request({"op": "allow-journal", "patterns": list(patterns)})

    @property
    def browser(self):
        """Headless Chromium on the host (`browser.Browser`), started on first use; its
        `open("/path")` goes to the first machine's forwarded `web_port`."""
        if self._browser is None:
            import browser

            # `--browser HOST:PORT` names an existing machine's web interface.
            address = (os.environ.get("VMCHECK_BROWSER")
                       or self.machine._forwards.get(str(self.web_port)))
            if address is None:
                raise Error(f"{self.machine.name} does not forward web_port {self.web_port}: "
                            f"add it to provision's \"forward\" (or give --browser HOST:PORT)")
            artifacts = os.environ.get("VMCHECK_ARTIFACTS") or os.getcwd()
            self._browser = browser.Browser(address, artifacts=artifacts)
        return self._browser

    def allow_browser_errors(self, *patterns):
        """Allow JavaScript errors (thrown, or console.error) matching these regexes."""
        self.browser.allow_errors(*patterns)

    def tearDown(self):
        b, self._browser = self._browser, None
        if b is not None and b._process is not None:
            try:
                failed = not getattr(self._outcome, "success", True)
                errors = b.errors()
                if failed or errors:
                    for path in b.save_evidence(self.id().split(".", 1)[-1]):
                        print(f"browser: saved {path}")
            finally:
                b.kill()
            if errors and not failed:
                self.fail("JavaScript errors in the page (allow them with "
                          "self.allow_browser_errors):\n" + "\n".join(errors))
        super().tearDown()


def _setting(key, value):
    """A decorator setting the listing key `key` on a test method or class."""

    def decorate(obj):
        setattr(obj, _PREFIX + key, value)
        return obj

    return decorate


def nondestructive(obj):
    """The test (or every test of the class) leaves its machine as it found it."""
    return _setting("nondestructive", True)(obj)


def destructive(obj):
    """The test needs machines of its own (opts a method out of a nondestructive class)."""
    return _setting("nondestructive", False)(obj)


def no_retry_when_changed(obj):
    """Do not rerun the test when the change under test affects it."""
    return _setting("no_retry_when_changed", True)(obj)


def timeout(seconds):
    """The test's wall-clock limit: seconds, or a duration string ("90s", "10m")."""
    return _setting("timeout", seconds)


def todo(reason=""):
    """The test is expected to fail, for `reason`."""
    return _setting("todo", reason or "(no reason given)")


def skipImage(reason, *globs):
    """vmcheck skips the test when TEST_OS matches one of the globs."""
    return _setting("skip", {"os": list(globs), "reason": reason})


def onlyImage(reason, *globs):
    """vmcheck runs the test only when TEST_OS matches one of the globs."""
    return _setting("only", {"os": list(globs), "reason": reason})


def matrix(exclude=None, include=None, **axes):
    """Run the test (or every test of the class) once per case of the product of `axes`,
    e.g. `@matrix(server=["busybox", "debian-12"], fs=["ext4", "xfs"],
    exclude=[{"server": "busybox", "fs": "xfs"}])`; `include` as GitHub Actions'. A machine's
    image takes a value with `provision = {"server": {"image": "{matrix.server}"}}`."""

    def decorate(obj):
        setattr(obj, _PREFIX + "matrix", dict(axes))
        if exclude is not None:
            setattr(obj, _PREFIX + "matrix_exclude", list(exclude))
        if include is not None:
            setattr(obj, _PREFIX + "matrix_include", list(include))
        return obj

    return decorate


def settings(**keys):
    """Set listing keys as written in a TOML check file, e.g. `artifacts=["/var/log/x"]`."""

    def decorate(obj):
        for key, value in keys.items():
            setattr(obj, _PREFIX + key, value)
        return obj

    return decorate


def _test_classes():
    """The MachineCase classes in `__main__` with tests: name -> (class, method names)."""
    main = sys.modules["__main__"]
    loader = unittest.TestLoader()
    classes = {}
    for name, obj in vars(main).items():
        if isinstance(obj, type) and issubclass(obj, MachineCase) and obj is not MachineCase:
            methods = loader.getTestCaseNames(obj)
            if methods:
                classes[name] = (obj, methods)
    return classes


def _provision(provision):
    """Cockpit's provision dict in the listing's form (`memory_mb` becomes `memory`)."""
    result = {}
    for name, options in provision.items():
        if isinstance(options, dict) and "memory_mb" in options:
            options = {
                ("memory" if k == "memory_mb" else k): (f"{v}M" if k == "memory_mb" else v)
                for k, v in options.items()
            }
        result[name] = options
    return result


def _def_line(function, main_file):
    """The 1-based line of `function`'s `def` in `main_file`, or None if it is elsewhere."""
    code = inspect.unwrap(function).__code__
    if os.path.abspath(code.co_filename) != main_file:
        return None
    pattern = re.compile(rf"\s*(async\s+)?def\s+{re.escape(code.co_name)}\b")
    lines = linecache.getlines(code.co_filename)
    for number in range(code.co_firstlineno, len(lines) + 1):
        if pattern.match(lines[number - 1]):
            return number
    return code.co_firstlineno


def _uses_browser(function):
    """Whether the test's own code drives `self.browser` (its browser's memory counts)."""
    try:
        source = inspect.getsource(inspect.unwrap(function))
    except (OSError, TypeError):
        return False
    return re.search(r"\bself\.(browser|allow_browser_errors)\b", source) is not None


def _listing(covers):
    """The `--vmcheck-list` document of `__main__`'s tests."""
    main_file = os.path.abspath(sys.modules["__main__"].__file__)
    tests = []
    for class_name, (cls, methods) in _test_classes().items():
        class_keys = {k for k in dir(cls) if k.startswith(_PREFIX)}
        for method_name in methods:
            method = getattr(cls, method_name)
            entry = {"name": f"{class_name}.{method_name}"}
            line = _def_line(method, main_file)
            if line is not None:
                entry["line"] = line
            values = {}
            if cls.provision is not None:
                values["provision"] = _provision(cls.provision)
            keys = class_keys | {k for k in vars(method) if k.startswith(_PREFIX)}
            for key in sorted(keys):
                # Cockpit's get_decorator: the method's, else the class's (inherited).
                values[key[len(_PREFIX):]] = getattr(method, key, getattr(cls, key, None))
            if "browser" not in values and _uses_browser(method):
                values["browser"] = True
            entry.update(sorted(values.items()))
            tests.append(entry)
    tests.sort(key=lambda t: t["name"])
    document = {"version": 1}
    if covers is not None:
        document["covers"] = list(covers)
    document["tests"] = tests
    return document


class _Result(unittest.TextTestResult):
    """Keeps the first InfrastructureError a test raised, and the first failure that says it
    is not to be retried (an exception class with `no_retry = True`: a pixel test's)."""

    infrastructure = None
    final = None

    def _note(self, err):
        if err is not None and isinstance(err[1], InfrastructureError) and self.infrastructure is None:
            self.infrastructure = err[1]
        if err is not None and getattr(err[1], "no_retry", False) and self.final is None:
            self.final = err[1]

    def addError(self, test, err):
        self._note(err)
        super().addError(test, err)

    def addFailure(self, test, err):
        self._note(err)
        super().addFailure(test, err)

    def addSubTest(self, test, subtest, err):
        self._note(err)
        super().addSubTest(test, subtest, err)


def _run(name):
    """Run the test `Class.method` of `__main__`; the process's exit code."""
    class_name, _, method_name = name.partition(".")
    cls, methods = _test_classes().get(class_name, (None, ()))
    if method_name not in methods:
        print(f"{sys.argv[0]}: no test {name!r} in this file", file=sys.stderr)
        return _EXIT_USAGE
    sys.stdout.reconfigure(line_buffering=True)
    # vmcheck stops a test that ran out of time with SIGTERM: say where it was stuck.
    faulthandler.register(signal.SIGTERM, chain=True)
    print(f"# {name}")
    runner = unittest.TextTestRunner(stream=sys.stdout, verbosity=0, resultclass=_Result)
    result = runner.run(cls(method_name))
    sys.stderr.flush()
    if result.infrastructure is not None:
        reason = " ".join(str(result.infrastructure).split())[:1000]
        path = os.environ.get("VMCHECK_INFRASTRUCTURE_FAILURE_FILE")
        if path:
            with open(path, "w") as f:
                f.write(reason + "\n")
        else:
            print(f"infrastructure failure: {reason}", file=sys.stderr)
        return 1
    if not result.wasSuccessful():
        if result.final is not None:
            reason = f"{type(result.final).__name__}: {' '.join(str(result.final).split())}"[:1000]
            path = os.environ.get("VMCHECK_FINAL_FAILURE_FILE")
            if path:
                with open(path, "w") as f:
                    f.write(reason + "\n")
        return 1
    if result.skipped:
        print(" ".join(result.skipped[-1][1].split()))
        return _EXIT_SKIP
    return 0


def test_main(covers=None):
    """The check file's entry point: list, run one test, or hand the command line to vmcheck.

    `covers` is the file's list of source globs it tests (the listing's `covers`).
    """
    args = sys.argv[1:]
    if args == ["--vmcheck-list"]:
        json.dump(_listing(covers), sys.stdout, indent=2)
        print()
        sys.exit(0)
    if len(args) == 2 and args[0] == "--vmcheck-run":
        sys.exit(_run(args[1]))
    if args and args[0].startswith("--vmcheck-"):
        print(f"usage: {sys.argv[0]} --vmcheck-list | --vmcheck-run Class.method", file=sys.stderr)
        sys.exit(_EXIT_USAGE)
    path = os.path.abspath(sys.argv[0])
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp("vmcheck", ["vmcheck", "exec", path, *args])
    except FileNotFoundError:
        print(
            f"{sys.argv[0]}: cannot run `vmcheck exec {path}`: vmcheck is not on PATH",
            file=sys.stderr,
        )
        sys.exit(_EXIT_USAGE)
