//! Files built into the binary and written, once per version, into a private directory of
//! the cache named by their hash: vmcheck's Python `testlib` (see `testlib.rs`) and the
//! Debian image recipe that `vmcheck autopkgtest` builds its machines from when it runs
//! outside a vmcheck project (a source tree anywhere, as `autopkgtest` itself is run).

use std::path::{Path, PathBuf};

/// One file: its path under the directory, its content, its mode.
pub type File = (&'static str, &'static str, u32);

/// The image recipes of `vmcheck autopkgtest` outside a project: `debian-12` and the
/// library it sources, as they are in this repository's `bots/images/`.
pub const DEBIAN_RECIPES: &[File] = &[
    (
        "bots/images/debian-12",
        include_str!("../bots/images/debian-12"),
        0o755,
    ),
    (
        "bots/images/lib/common.sh",
        include_str!("../bots/images/lib/common.sh"),
        0o644,
    ),
    (
        "bots/images/lib/debootstrap.sh",
        include_str!("../bots/images/lib/debootstrap.sh"),
        0o644,
    ),
    (
        "bots/images/lib/guest.sh",
        include_str!("../bots/images/lib/guest.sh"),
        0o644,
    ),
    (
        "bots/images/lib/initramfs.sh",
        include_str!("../bots/images/lib/initramfs.sh"),
        0o644,
    ),
    (
        "bots/images/lib/kernel.sh",
        include_str!("../bots/images/lib/kernel.sh"),
        0o644,
    ),
];

/// The directory holding `files`: `<cache>/vmcheck/<kind>/<sha256 of them, 16 hex digits>/`,
/// private to the user, written the first time it is asked for (each file atomically
/// renamed into place, a damaged one written again).
pub fn written(cache: &Path, kind: &str, files: &[File]) -> std::io::Result<PathBuf> {
    let mut all = String::new();
    for (path, content, mode) in files {
        all.push_str(&format!("{path} {mode:o} {}\n", content.len()));
        all.push_str(content);
    }
    let hash = crate::image::hash::sha256_bytes(all.as_bytes());
    let base = cache.join("vmcheck").join(kind);
    let dir = base.join(&hash[..16]);
    crate::private::create_dir(&base)?;
    crate::private::create_dir(&dir)?;
    for (path, content, mode) in files {
        let file = dir.join(path);
        if std::fs::read(&file).is_ok_and(|b| b == content.as_bytes()) {
            continue;
        }
        let parent = file.parent().unwrap_or(&dir);
        for d in parent
            .ancestors()
            .take_while(|d| d.starts_with(&dir) && *d != dir)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            crate::private::create_dir(d)?;
        }
        let mut tmp = tempfile::NamedTempFile::new_in(parent)?;
        std::io::Write::write_all(&mut tmp, content.as_bytes())?;
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(*mode))?;
        tmp.persist(&file).map_err(|e| e.error)?;
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn written_once_private_and_repaired() {
        let home = tempfile::tempdir().unwrap();
        let dir = written(home.path(), "recipes", DEBIAN_RECIPES).unwrap();
        assert!(dir.starts_with(home.path().join("vmcheck/recipes")));
        let recipe = dir.join("bots/images/debian-12");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&recipe), 0o755);
        assert_eq!(mode(&dir.join("bots/images/lib/common.sh")), 0o644);
        for d in [&dir, &dir.join("bots"), &dir.join("bots/images/lib")] {
            assert_eq!(mode(d), 0o700, "{}", d.display());
        }
        assert_eq!(
            std::fs::read_to_string(&recipe).unwrap(),
            DEBIAN_RECIPES[0].1
        );
        // A damaged copy is written again; the directory stays the same.
        std::fs::write(&recipe, "broken").unwrap();
        assert_eq!(
            written(home.path(), "recipes", DEBIAN_RECIPES).unwrap(),
            dir
        );
        assert_eq!(
            std::fs::read_to_string(&recipe).unwrap(),
            DEBIAN_RECIPES[0].1
        );
        // It is a project vmcheck finds.
        let found = crate::project::Project::discover(&dir).unwrap();
        assert_eq!(found.recipes_dir(), dir.join("bots/images"));
    }

    #[test]
    fn every_file_the_recipe_sources_is_built_in() {
        let recipe = DEBIAN_RECIPES[0].1;
        for line in recipe.lines().filter(|l| l.starts_with(". ")) {
            let lib = line.rsplit('/').next().unwrap().trim_end_matches('"');
            assert!(
                DEBIAN_RECIPES
                    .iter()
                    .any(|(p, ..)| *p == format!("bots/images/lib/{lib}")),
                "{lib} is not built in"
            );
        }
    }
}
