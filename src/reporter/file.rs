//! Report output files (`--events`, `--junit`, `--status-file`): opened before the run, so a
//! bad path is an input error, without touching an earlier report until the run really
//! writes; private to the user (the process umask, see `main.rs`).
//!
//! - A *streamed* file (JSON events) is emptied at its first write and grows as the run
//!   goes; a run that never writes (an input error found later) leaves an earlier file as it
//!   was, and removes the file it created.
//! - A *replaced* file (JUnit) is written to a temporary file beside it and renamed over it by
//!   [`std::io::Write::flush`], the reporter's last call: readers see the old report or the
//!   whole new one, never half of one.

use std::fs::{File, OpenOptions};
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};

pub struct ReportFile {
    path: PathBuf,
    file: File,
    mode: Mode,
}

enum Mode {
    Streamed {
        /// The file was there before this run: never removed.
        existed: bool,
        /// Emptied and written to.
        started: bool,
    },
    Replaced {
        /// The temporary file; `None` once renamed over `path`.
        tmp: Option<tempfile::TempPath>,
    },
}

impl ReportFile {
    /// A file written as the run goes.
    pub fn streamed(path: &Path) -> std::io::Result<ReportFile> {
        let existed = path.symlink_metadata().is_ok();
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        // A pipe or a device (`/dev/stdout`) has nothing to empty.
        let regular = file.metadata()?.is_file();
        Ok(ReportFile {
            path: path.to_path_buf(),
            file,
            mode: Mode::Streamed {
                existed,
                started: !regular,
            },
        })
    }

    /// A file written whole and put in place by `flush`. A path that is not a regular file
    /// (`/dev/stdout`, a FIFO) is written directly, and a symbolic link's target is the
    /// file replaced: nothing but a report file is ever renamed over.
    pub fn replaced(path: &Path) -> std::io::Result<ReportFile> {
        let path = match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::IsADirectory,
                    "is a directory",
                ));
            }
            Ok(m) if !m.is_file() => {
                let file = OpenOptions::new().write(true).open(path)?;
                return Ok(ReportFile {
                    path: path.to_path_buf(),
                    file,
                    mode: Mode::Streamed {
                        existed: true,
                        started: true,
                    },
                });
            }
            _ => rename_target(path),
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        let (file, tmp) = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .tempfile_in(dir)?
            .into_parts();
        Ok(ReportFile {
            path,
            file,
            mode: Mode::Replaced { tmp: Some(tmp) },
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The file that replacing `path` by a rename must rename onto: `path`, or the file its
/// symbolic links lead to (which may not exist yet), so that a link stays a link.
pub fn rename_target(path: &Path) -> PathBuf {
    let mut path = path.to_path_buf();
    for _ in 0..40 {
        match std::fs::read_link(&path) {
            Ok(target) => {
                path = match path.parent() {
                    Some(dir) => dir.join(target),
                    None => target,
                }
            }
            Err(_) => break,
        }
    }
    path
}

impl Write for ReportFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Mode::Streamed { started, .. } = &mut self.mode
            && !*started
        {
            self.file.set_len(0)?;
            self.file.rewind()?;
            *started = true;
        }
        self.file.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        if let Mode::Replaced { tmp } = &mut self.mode
            && let Some(t) = tmp.take()
        {
            t.persist(&self.path).map_err(|e| e.error)?;
        }
        Ok(())
    }
}

impl Drop for ReportFile {
    fn drop(&mut self) {
        if let Mode::Streamed {
            existed: false,
            started: false,
        } = self.mode
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    #[test]
    fn an_earlier_report_survives_until_the_run_writes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("events.jsonl");
        std::fs::write(&p, "earlier run\n").unwrap();
        drop(ReportFile::streamed(&p).unwrap());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "earlier run\n");
        let mut f = ReportFile::streamed(&p).unwrap();
        f.write_all(b"new\n").unwrap();
        drop(f);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "new\n");
        let mut null = ReportFile::streamed(Path::new("/dev/null")).unwrap();
        null.write_all(b"x").unwrap();
        // A file this run created and never wrote is removed.
        let q = dir.path().join("new.jsonl");
        drop(ReportFile::streamed(&q).unwrap());
        assert!(!q.exists());
    }

    #[test]
    fn a_replaced_file_appears_whole_at_flush() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("junit.xml");
        std::fs::write(&p, "old").unwrap();
        let mut f = ReportFile::replaced(&p).unwrap();
        f.write_all(b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "old");
        f.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "new");
        drop(f);
        // Not flushed: the old file stays and no temporary file is left.
        let mut f = ReportFile::replaced(&p).unwrap();
        f.write_all(b"half").unwrap();
        drop(f);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "new");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(ReportFile::replaced(dir.path()).is_err(), "a directory");
        // Not a regular file: written in place, never renamed over.
        let mut null = ReportFile::replaced(Path::new("/dev/null")).unwrap();
        null.write_all(b"x").unwrap();
        null.flush().unwrap();
        assert!(
            std::fs::metadata("/dev/null")
                .unwrap()
                .file_type()
                .is_char_device()
        );
        // A link: its target is replaced, the link stays.
        let link = dir.path().join("link.xml");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        let mut f = ReportFile::replaced(&link).unwrap();
        f.write_all(b"via link").unwrap();
        f.flush().unwrap();
        assert!(link.symlink_metadata().unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "via link");
        assert!(ReportFile::replaced(&dir.path().join("no/such/dir/x.xml")).is_err());
    }
}
