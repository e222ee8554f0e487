//! The helpers a test calls back into vmcheck with: `vmcheck python` (python3 with the
//! testlib on its path) and `vmcheck vm-ctl`, the `vm` helper of host scripts.

use super::errors::CliError;
use std::io::Write;
use vmcheck::exit_codes;

/// `vmcheck python ARGS…`: becomes `python3 ARGS…` with the testlib on `PYTHONPATH` and
/// the caller's umask; returns only if that cannot be done.
pub(super) fn python(args: &[std::ffi::OsString]) -> Result<i32, CliError> {
    use std::os::unix::process::CommandExt;
    let path = vmcheck::testlib::python_path_env()
        .map_err(|e| CliError::Usage(format!("cannot write vmcheck's Python testlib: {e}")))?;
    let mut cmd = std::process::Command::new("python3");
    cmd.args(args).env("PYTHONPATH", path);
    vmcheck::private::give_caller_umask(&mut cmd);
    let e = cmd.exec();
    Err(CliError::Usage(format!("cannot run python3: {e}")))
}

/// The `vm` helper of host scripts: one request to the runner, its answer printed.
pub(super) fn vm_ctl(args: &[String]) -> i32 {
    use vmcheck::runner::control;
    let request = match control::parse_args(args) {
        Ok(r) => r,
        Err(usage) => {
            vmcheck::say!("vm: {usage}");
            return exit_codes::INPUT_ERROR;
        }
    };
    let Some(socket) = std::env::var_os("VMCHECK_CONTROL") else {
        vmcheck::say!("vm: VMCHECK_CONTROL is not set: vm works only inside a test's host script");
        return exit_codes::INPUT_ERROR;
    };
    match control::call(std::path::Path::new(&socket), &request) {
        Ok(r) => {
            let written = std::io::stdout()
                .write_all(r.stdout.as_bytes())
                .and_then(|()| std::io::stdout().flush());
            vmcheck::say_raw!("{}", r.stderr);
            match written {
                // A reader that stopped early (`vm exec m cat log | head`): as a command
                // killed by SIGPIPE exits in a shell.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 128 + 13,
                _ => r.exit,
            }
        }
        Err(e) => {
            vmcheck::say!("vm: cannot reach the runner: {e}");
            255
        }
    }
}
