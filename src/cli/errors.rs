//! The one error type the CLI shows to users, and its mapping to exit codes
//! ([`vmcheck::exit_codes`]). Every expected failure becomes a `CliError`; `process_exit_code`
//! is the only place that decides a code.

use vmcheck::exit_codes;
use vmcheck::image::ImageError;
use vmcheck::machine::vm::MachineError;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("not inside a vmcheck project: no bots/images/ in {} or above (use --project-dir)", .0.display())]
    NoProject(std::path::PathBuf),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Machine(#[from] MachineError),
    #[error("interrupted")]
    Interrupted,
    /// Every problem in every check file, one `path:line:col: message` per line.
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    CheckFiles(Vec<vmcheck::checkfile::CheckFileError>),
    #[error("no tests selected")]
    NoTests,
    /// A source package vmcheck autopkgtest cannot run (autopkgtest's "erroneous package").
    #[error("{0}")]
    BadPackage(String),
    /// Every bad known-issue pattern file, one `path: message` per line.
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Naughty(Vec<vmcheck::naughty::NaughtyError>),
}

impl CliError {
    pub fn process_exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_)
            | CliError::NoProject(_)
            | CliError::CheckFiles(_)
            | CliError::Naughty(_) => exit_codes::INPUT_ERROR,
            CliError::NoTests => exit_codes::NO_TESTS,
            CliError::BadPackage(_) => exit_codes::AUTOPKGTEST_BADPKG,
            CliError::Image(e) if e.is_input_error() => exit_codes::INPUT_ERROR,
            CliError::Image(ImageError::Interrupted { .. }) => exit_codes::INTERRUPTED,
            CliError::Image(_) => exit_codes::INFRASTRUCTURE,
            CliError::Machine(MachineError::Cancelled) | CliError::Interrupted => {
                exit_codes::INTERRUPTED
            }
            CliError::Machine(_) => exit_codes::INFRASTRUCTURE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_by_kind() {
        let unknown = CliError::Image(ImageError::Unknown {
            name: "x".into(),
            known: vec![],
        });
        assert_eq!(unknown.process_exit_code(), exit_codes::INPUT_ERROR);
        let missing = CliError::Machine(MachineError::Missing {
            program: "qemu-system-x86_64",
            package: "qemu-system-x86",
        });
        assert_eq!(missing.process_exit_code(), exit_codes::INFRASTRUCTURE);
        assert_eq!(
            missing.to_string(),
            "qemu-system-x86_64 not found in PATH: install the Debian package qemu-system-x86 (or run bots/install-deps)"
        );
        assert_eq!(
            CliError::Interrupted.process_exit_code(),
            exit_codes::INTERRUPTED
        );
        let build = CliError::Image(ImageError::Interrupted {
            name: "debian-12".into(),
        });
        assert_eq!(build.process_exit_code(), exit_codes::INTERRUPTED);
    }
}
