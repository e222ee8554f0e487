//! Building an image: run its recipe in a scratch directory, then hash what it wrote,
//! write the manifest and publish the result as `NAME-<sha256>` in the store.
//!
//! A build is all or nothing. It holds a per-name lock (two vmcheck processes never build
//! the same image at once), runs the recipe in its own process group, and on failure or
//! cancellation stops the recipe (SIGTERM, then SIGKILL), unmounts anything the recipe left
//! mounted below its scratch directory (debootstrap mounts /proc in its chroot) and only
//! then deletes the scratch directory.
//!
//! The recipe's group dies with vmcheck however vmcheck ends (SIGKILL, a second Ctrl-C): the
//! recipe has `PR_SET_PDEATHSIG`, and a small guard process kills the whole group when
//! vmcheck is gone. The scratch directory, `<store>/.build/<pid>.<start>-NAME-…`, is named
//! after its owner like machine run directories, so [`sweep_scratch`] (run by every vmcheck
//! that opens a project, and before every build) removes those whose owner is dead.

use super::ImageError;
use super::hash::{sha256_bytes, sha256_file, sha256_files};
use super::manifest::{BootConfig, MANIFEST_FORMAT, Manifest};
use super::store::{CLIENT_KEY, INITRD, Image, ImageStore, KERNEL, MANIFEST};
use crate::machine::rundir;
use crate::signal::Cancel;
use std::io::{BufRead, Write};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The line every image prints on its serial console when sshd accepts connections.
pub const READY_MARKER: &str = "VMCHECK-READY-7c1e";

/// The directory of the store that holds the scratch directories of builds.
const SCRATCH_DIR: &str = ".build";

pub(super) struct BuildRequest<'a> {
    pub name: &'a str,
    pub recipe: &'a Path,
    pub store: &'a ImageStore,
    /// Stream the recipe's output to stderr as well as to the build log.
    pub verbose: bool,
    pub cancel: &'a Cancel,
}

/// Build the image and return it (already verified: we just hashed it).
pub(super) fn build(req: &BuildRequest) -> Result<Image, ImageError> {
    let name = req.name;
    let scratch_dir = req.store.dir.join(SCRATCH_DIR);
    sweep_scratch(&req.store.dir);
    sweep_unowned_scratch(&req.store.dir, name);
    std::fs::create_dir_all(&scratch_dir).map_err(ImageError::io(format!(
        "creating {}",
        scratch_dir.display()
    )))?;
    let scratch = tempfile::Builder::new()
        .prefix(&format!("{}{name}-", rundir::owner_prefix()))
        .tempdir_in(&scratch_dir)
        .map_err(ImageError::io("creating a build directory"))?;
    let result = build_in(req, scratch.path());
    if !unmount_below(scratch.path()) {
        // Deleting it would reach into what is still mounted there.
        let kept = scratch.keep();
        crate::say!(
            "vmcheck: warning: {} still has mounts below it; not removed",
            kept.display()
        );
    }
    result.map(|(image, elapsed)| {
        crate::say!(
            "vmcheck: built image {} in {:.1}s",
            image.short_id(),
            elapsed.as_secs_f64()
        );
        image
    })
}

/// Remove the scratch directories of builds in the store at `store_dir` whose vmcheck is
/// gone (killed mid-build), after unmounting what its recipe left mounted there.
pub(super) fn sweep_scratch(store_dir: &Path) {
    rundir::sweep_where(&store_dir.join(SCRATCH_DIR), unmount_below);
}

/// Remove what builds of `name` by vmcheck versions before scratch directories carried
/// their owner left behind (`<store>/.build-NAME-XXXXXX`, up to 1.1 GB each). Called under
/// NAME's build lock, which those builds held too: none of them still runs.
fn sweep_unowned_scratch(store_dir: &Path, name: &str) {
    let prefix = format!(".build-{name}-");
    let Ok(entries) = std::fs::read_dir(store_dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let file_name = entry.file_name();
        // tempfile's suffix: six letters or digits (so `.build-debian-12-…` is not debian's).
        let ours = file_name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .is_some_and(|rest| rest.len() == 6 && rest.chars().all(|c| c.is_ascii_alphanumeric()));
        let path = entry.path();
        if ours && path.is_dir() && !path.is_symlink() && unmount_below(&path) {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

fn build_in(req: &BuildRequest, scratch: &Path) -> Result<(Image, Duration), ImageError> {
    let started = Instant::now();
    let name = req.name;
    let (out, work, keys) = (
        scratch.join("out"),
        scratch.join("work"),
        scratch.join("keys"),
    );
    for d in [&out, &work, &keys] {
        std::fs::create_dir(d).map_err(ImageError::io(format!("creating {}", d.display())))?;
    }
    let cache = req.store.dir.join(".cache");
    std::fs::create_dir_all(&cache).map_err(ImageError::io("creating the download cache"))?;
    let client_key = keys.join(CLIENT_KEY);
    let host_key = keys.join("ssh_host_ed25519_key");
    keygen(&client_key, "vmcheck-client")?;
    keygen(&host_key, &format!("vmcheck-host-{name}"))?;

    let log_path = req.store.dir.join(format!("{name}.build.log"));
    let recipes_dir = req.recipe.parent().unwrap_or(Path::new("."));
    let recipe_sha = sha256_file(req.recipe)
        .map_err(ImageError::io(format!("reading {}", req.recipe.display())))?;
    run_recipe(req, &work, &log_path, |cmd| {
        cmd.env("VMCHECK_OUT", &out)
            .env("VMCHECK_CACHE", &cache)
            .env(
                "VMCHECK_AUTHORIZED_KEY",
                keys.join(format!("{CLIENT_KEY}.pub")),
            )
            .env("VMCHECK_HOST_KEY", &host_key)
            .env("VMCHECK_READY_MARKER", READY_MARKER)
            .env("VMCHECK_LIB", recipes_dir.join("lib"));
    })?;

    let bad = |problem: String| ImageError::BadRecipeOutput {
        name: name.to_string(),
        problem,
    };
    let boot_text = std::fs::read_to_string(out.join("image.toml"))
        .map_err(|e| bad(format!("the recipe wrote no readable image.toml: {e}")))?;
    let boot = BootConfig::parse(&boot_text).map_err(|e| bad(format!("image.toml: {e}")))?;
    for required in [KERNEL, INITRD].into_iter().chain(boot.disk.as_deref()) {
        if !out.join(required).is_file() {
            return Err(bad(format!("the recipe did not write {required}")));
        }
    }
    for f in [CLIENT_KEY.to_string(), format!("{CLIENT_KEY}.pub")] {
        std::fs::copy(keys.join(&f), out.join(&f))
            .map_err(ImageError::io(format!("copying {f}")))?;
    }
    let host_key_pub = std::fs::read_to_string(keys.join("ssh_host_ed25519_key.pub"))
        .map_err(ImageError::io("reading the host key"))?;

    let files: Vec<String> = std::fs::read_dir(&out)
        .map_err(ImageError::io("listing the recipe output"))?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|f| f != MANIFEST)
        .collect();
    let paths: Vec<PathBuf> = files.iter().map(|f| out.join(f)).collect();
    let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
    let mut hashes = std::collections::BTreeMap::new();
    for (f, h) in files.iter().zip(sha256_files(&refs)) {
        hashes.insert(
            f.clone(),
            h.map_err(ImageError::io(format!("hashing {f}")))?,
        );
    }
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        name: name.to_string(),
        recipe_sha256: recipe_sha,
        built_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        host_key: host_key_pub.trim().to_string(),
        boot,
        files: hashes,
    };
    let text = manifest.to_toml();
    std::fs::write(out.join(MANIFEST), &text).map_err(ImageError::io("writing the manifest"))?;
    for f in files.iter().map(String::as_str).chain([MANIFEST]) {
        // The client key must stay private to the user, or ssh refuses to use it.
        let mode = if f == CLIENT_KEY { 0o400 } else { 0o444 };
        std::fs::set_permissions(out.join(f), std::fs::Permissions::from_mode(mode))
            .map_err(ImageError::io(format!("making {f} read-only")))?;
    }
    let sha256 = sha256_bytes(text.as_bytes());
    let dest = req.store.image_dir(name, &sha256);
    std::fs::rename(&out, &dest).map_err(ImageError::io(format!(
        "moving the image to {}",
        dest.display()
    )))?;
    let image = Image {
        name: name.to_string(),
        sha256,
        dir: dest,
        manifest,
    };
    Ok((image, started.elapsed()))
}

fn keygen(path: &Path, comment: &str) -> Result<(), ImageError> {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .status()
        .map_err(|e| ImageError::Io {
            context: "running ssh-keygen (install the Debian package openssh-client)".into(),
            source: e,
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(ImageError::Io {
            context: format!("ssh-keygen for {} failed ({status})", path.display()),
            source: std::io::Error::other("ssh-keygen failed"),
        })
    }
}

/// Run the recipe with its output going to `log_path` (and stderr when verbose), watching
/// `cancel`; on cancellation the recipe's process group gets SIGTERM, then SIGKILL.
fn run_recipe(
    req: &BuildRequest,
    work: &Path,
    log_path: &Path,
    set_env: impl FnOnce(&mut Command),
) -> Result<(), ImageError> {
    let mut log = std::fs::File::create(log_path)
        .map_err(ImageError::io(format!("creating {}", log_path.display())))?;
    let (reader, writer) = std::io::pipe().map_err(ImageError::io("creating a pipe"))?;
    let mut cmd = Command::new(req.recipe);
    cmd.current_dir(work)
        .stdin(Stdio::null())
        .stdout(
            writer
                .try_clone()
                .map_err(ImageError::io("duplicating a pipe"))?,
        )
        .stderr(writer)
        .process_group(0);
    crate::private::give_caller_umask(&mut cmd);
    set_env(&mut cmd);
    // SAFETY: see `die_with_parent`. The death signal fires when this thread ends, which is
    // after the recipe's end.
    unsafe {
        cmd.pre_exec(crate::machine::spawn::die_with_parent());
    }
    let mut child = cmd.spawn().map_err(ImageError::io(format!(
        "running recipe {}",
        req.recipe.display()
    )))?;
    drop(cmd); // closes our copies of the pipe's write end
    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
    // From here on the group is killed on every way out, vmcheck's death included.
    let _guard = crate::machine::spawn::GroupGuard::start(pgid);
    let verbose = req.verbose;
    let copier = std::thread::spawn(move || {
        let mut tail = std::collections::VecDeque::new();
        for line in std::io::BufReader::new(reader).split(b'\n') {
            let Ok(line) = line else { break };
            let _ = log.write_all(&line);
            let _ = log.write_all(b"\n");
            if verbose {
                crate::say!("  | {}", String::from_utf8_lossy(&line));
            }
            tail.push_back(String::from_utf8_lossy(&line).into_owned());
            if tail.len() > 20 {
                tail.pop_front();
            }
        }
        tail.into_iter().collect::<Vec<_>>().join("\n")
    });
    let mut term_sent: Option<Instant> = None;
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .map_err(ImageError::io("waiting for the recipe"))?
        {
            break status;
        }
        if req.cancel.is_cancelled() {
            match term_sent {
                None => {
                    let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::SIGTERM);
                    term_sent = Some(Instant::now());
                }
                Some(t) if t.elapsed() > Duration::from_secs(10) => {
                    let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::SIGKILL);
                }
                Some(_) => {}
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Stragglers of the recipe may still hold the pipe open.
    let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::SIGKILL);
    let tail = copier.join().unwrap_or_default();
    if req.cancel.is_cancelled() {
        return Err(ImageError::Interrupted {
            name: req.name.to_string(),
        });
    }
    if !status.success() {
        return Err(ImageError::RecipeFailed {
            name: req.name.to_string(),
            recipe: req.recipe.to_path_buf(),
            status: status.to_string(),
            log: log_path.to_path_buf(),
            tail,
        });
    }
    Ok(())
}

/// Unmount (lazily) every mount point at or below `dir`, deepest first, so that deleting
/// `dir` can never reach into a bind-mounted host directory. True when nothing is mounted
/// below `dir` any more.
fn unmount_below(dir: &Path) -> bool {
    let mut points = mounts_below(dir);
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
    }
    mounts_below(dir).is_empty()
}

/// The mount points at or below `dir` (none when the mount table cannot be read).
fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let Ok(dir) = dir.canonicalize() else {
        return Vec::new();
    };
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(std::ffi::OsString::from_vec(unescape_octal(p))))
        .filter(|p| p.starts_with(&dir))
        .collect()
}

/// A mountinfo path: space, tab, newline and backslash are written as `\ooo`.
fn unescape_octal(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let digits = b.get(i + 1..i + 4);
        match digits {
            Some(d) if b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)) => {
                out.push(
                    d.iter()
                        .fold(0u8, |acc, c| acc.wrapping_mul(8) + (c - b'0')),
                );
                i += 4;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_of_older_versions_is_swept_for_its_name_only() {
        let store = tempfile::tempdir().unwrap();
        let dir = |n: &str| {
            let d = store.path().join(n);
            std::fs::create_dir_all(d.join("work/sub")).unwrap();
            d
        };
        let old = dir(".build-debian-aB3x9Q");
        let other = dir(".build-debian-12-aB3x9Q");
        let image = dir("debian-0123abcd");
        sweep_unowned_scratch(store.path(), "debian");
        assert!(!old.exists(), "an older build's leftovers go");
        assert!(
            other.exists() && image.exists(),
            "another name's and images stay"
        );
    }

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape_octal(r"/a\040b\011c\134d\012"), b"/a b\tc\\d\n");
        assert_eq!(unescape_octal(r"/x\9"), b"/x\\9");
    }
}
