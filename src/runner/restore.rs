//! Saving and putting back the guest paths a nondestructive test changes: those its check
//! file declares (`restore`), saved before it runs, and those it asks for while it runs
//! (`vm restore`, the testlib's `restore_file`), each saved as a numbered tarball under
//! `SAVE_DIR` in the shared machine, so that a killed test's changes are undone too.

/// Where the saved paths are kept in the guest.
const SAVE_DIR: &str = "/var/lib/vmcheck-restore";

/// A script saving `paths` as numbers `first`, `first + 1`, …; with `fresh`, what an
/// earlier test saved is dropped first. A path that does not exist is recorded by the
/// absence of its tarball.
pub(super) fn save_command(paths: &[String], first: usize, fresh: bool) -> String {
    let mut cmd = format!("set -e; d={SAVE_DIR}\n");
    if fresh {
        cmd.push_str("rm -rf \"$d\"\n");
    }
    cmd.push_str(
        "mkdir -p \"$d\"\ns() { if [ -e \"$2\" ] || [ -L \"$2\" ]; then tar -C / -cf \"$d/$1.tar\" \"${2#/}\"; fi; }\n",
    );
    for (i, p) in paths.iter().enumerate() {
        cmd.push_str(&format!("s {} {}\n", first + i, crate::shell::quote(p)));
    }
    cmd
}

/// A script putting back every saved path (`paths` in the order they were saved, numbered
/// from 1): each is removed and unpacked from its tarball, the last saved first, so that
/// a path saved twice ends as it was when first saved. The saved tarballs go too.
pub(super) fn restore_command(paths: &[String]) -> String {
    let mut cmd = format!(
        "set -e; d={SAVE_DIR}\nr() {{ rm -rf \"$2\"; if [ -f \"$d/$1.tar\" ]; then tar -C / -xpf \"$d/$1.tar\"; fi; }}\n"
    );
    for (i, p) in paths.iter().enumerate().rev() {
        cmd.push_str(&format!("r {} {}\n", i + 1, crate::shell::quote(p)));
    }
    cmd.push_str("rm -rf \"$d\"\n");
    cmd
}

/// Whether `path` may be saved: absolute, without a line end or NUL (the check-file rule).
pub(super) fn valid_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        Err(format!("{path:?} is not an absolute path"))
    } else if path.contains(['\n', '\r', '\0']) {
        Err(format!("{path:?} contains a line end or NUL"))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_quote_paths() {
        let paths = vec!["/etc/motd".to_string(), "/var/lib/a b".to_string()];
        let save = save_command(&paths, 1, true);
        assert!(
            save.contains("s 1 /etc/motd\ns 2 '/var/lib/a b'\n"),
            "{save}"
        );
        let restore = restore_command(&paths);
        assert!(
            restore.contains("r 2 '/var/lib/a b'\nr 1 /etc/motd\n"),
            "{restore}"
        );
        assert!(restore.ends_with("rm -rf \"$d\"\n"));
        assert!(valid_path("etc").is_err() && valid_path("/a\nb").is_err());
    }

    /// The scripts, run by a real shell on a scratch directory standing in for `/`: a
    /// changed file comes back, a created file goes away, and a path saved again later
    /// (after the test changed it) still ends as it first was.
    #[test]
    fn save_and_restore_round_trip() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path().display().to_string();
        std::fs::write(root.path().join("kept"), "original").unwrap();
        let declared = vec![format!("{r}/kept"), format!("{r}/created")];
        let run = |script: String| {
            let script = script.replace(SAVE_DIR, &format!("{r}/.save"));
            let ok = std::process::Command::new("sh")
                .arg("-c")
                .arg(&script)
                .status()
                .unwrap();
            assert!(ok.success(), "{script}");
        };
        run(save_command(&declared, 1, true));
        std::fs::write(root.path().join("kept"), "changed").unwrap();
        std::fs::write(root.path().join("created"), "new").unwrap();
        // Asked for while the test runs, after it changed both.
        let asked = vec![
            format!("{r}/kept"),
            format!("{r}/created"),
            format!("{r}/later"),
        ];
        run(save_command(&asked, 3, false));
        std::fs::write(root.path().join("later"), "new").unwrap();
        std::fs::write(root.path().join("kept"), "changed again").unwrap();
        let all: Vec<String> = declared.into_iter().chain(asked).collect();
        run(restore_command(&all));
        assert_eq!(
            std::fs::read_to_string(root.path().join("kept")).unwrap(),
            "original"
        );
        assert!(!root.path().join("created").exists());
        assert!(!root.path().join("later").exists());
        assert!(!root.path().join(".save").exists());
    }
}
