//! Pixel-test failures, which are never known issues: a changed screenshot is a real
//! difference to review, whatever else the output contains.
//!
//! Cockpit checks three strings, one of them stale since testlib rewrote its message
//! (cockpit 76cd6019b9). vmcheck checks all of them, the current wording and the
//! summary testlib raises after any pixel failure.

/// Strings whose presence anywhere in the (normalised) output marks a pixel-test failure.
pub const PIXEL_MARKERS: [&str; 4] = [
    // Cockpit's list (bots test-failure-policy)
    "Differences in pixel test",
    "New pixel test reference",
    "Unused reference image",
    // testlib.PIXEL_TEST_MESSAGE, raised at the end of a test with any pixel failure
    "Some pixel tests have failed",
];

/// Whether `output` reports a pixel-test failure: it contains one of [`PIXEL_MARKERS`], or
/// a line with `Pixel test ` followed later on the same line by `failed` (testlib's
/// current `Pixel test <name> failed: …`).
pub fn is_pixel_failure(output: &str) -> bool {
    PIXEL_MARKERS.iter().any(|m| output.contains(m))
        || output.lines().any(|line| {
            line.find("Pixel test ")
                .is_some_and(|at| line[at + "Pixel test ".len()..].contains("failed"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pixel_failures_are_recognised() {
        let yes = [
            "Differences in pixel test TestFoo-testBar-dialog",
            "New pixel test reference TestFoo-testBar-dialog-pixels.png",
            "x\nUnused reference image TestFoo-old-pixels.png\ny",
            "Error: Some pixel tests have failed",
            "Pixel test TestFoo-testBar-dialog-pixels.png failed: 25 pixels differ",
            "log\n  Pixel test x failed\nmore",
        ];
        for output in yes {
            assert!(is_pixel_failure(output), "{output:?}");
        }
        let no = [
            "",
            "Error: timeout",
            "Pixel test passed",
            // `failed` must follow on the same line
            "Pixel test x\nfailed",
            "failed: Pixel test x",
            // case-sensitive, as Cockpit
            "pixel test x failed",
            "differences in pixel test",
        ];
        for output in no {
            assert!(!is_pixel_failure(output), "{output:?}");
        }
    }
}
