//! Lines of what a guest sends (its kernel log, its journal), taken from chunks of any size:
//! each at most [`MAX_GUEST_LINE`] bytes. A longer line keeps its start and is marked cut, so
//! a guest that sends without end does not grow the host's memory without end.

use super::MAX_GUEST_LINE;

/// The line being gathered between chunks.
#[derive(Debug, Default)]
pub struct Lines {
    line: Vec<u8>,
    cut: bool,
}

impl Lines {
    /// Takes `data`: `each` gets every line it completes (without its newline) and whether
    /// that line was cut, and returns true to stop there. Then the answer is how much of
    /// `data` was taken; the rest is not.
    pub fn feed(
        &mut self,
        data: &[u8],
        mut each: impl FnMut(&[u8], bool) -> bool,
    ) -> Option<usize> {
        let mut rest = data;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            self.gather(&rest[..nl]);
            rest = &rest[nl + 1..];
            let cut = std::mem::replace(&mut self.cut, false);
            let stop = each(&self.line, cut);
            self.line.clear();
            if stop {
                return Some(data.len() - rest.len());
            }
        }
        self.gather(rest);
        None
    }

    /// The last line, when it had no newline: its bytes and whether it was cut.
    pub fn finish(self) -> Option<(Vec<u8>, bool)> {
        (!self.line.is_empty() || self.cut).then_some((self.line, self.cut))
    }

    /// How many bytes of a line are held.
    pub fn held(&self) -> usize {
        self.line.len()
    }

    fn gather(&mut self, piece: &[u8]) {
        let room = MAX_GUEST_LINE.saturating_sub(self.line.len());
        self.cut |= piece.len() > room;
        self.line.extend_from_slice(&piece[..piece.len().min(room)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(chunks: &[&[u8]]) -> Vec<(String, bool)> {
        let mut lines = Lines::default();
        let mut out = Vec::new();
        for chunk in chunks {
            let taken = lines.feed(chunk, |l, cut| {
                out.push((String::from_utf8_lossy(l).into_owned(), cut));
                false
            });
            assert_eq!(taken, None);
        }
        out.extend(
            (lines.finish()).map(|(l, cut)| (String::from_utf8_lossy(&l).into_owned(), cut)),
        );
        out
    }

    #[test]
    fn lines_come_whole_from_any_chunks_and_long_ones_are_cut() {
        let text = b"one\n\ntwo three\nlast";
        let want = [
            ("one", false),
            ("", false),
            ("two three", false),
            ("last", false),
        ]
        .map(|(l, c)| (l.to_string(), c));
        for size in [1, 2, 3, 100] {
            let chunks: Vec<&[u8]> = text.chunks(size).collect();
            assert_eq!(lines_of(&chunks), want, "chunks of {size}");
        }
        // A line longer than the bound, in one chunk or many, keeps its start and is cut;
        // no more than the bound is held.
        let long = format!("{}\nnext\n", "x".repeat(3 * MAX_GUEST_LINE));
        for size in [long.len(), 1000] {
            let chunks: Vec<&[u8]> = long.as_bytes().chunks(size).collect();
            let got = lines_of(&chunks);
            assert_eq!(got.len(), 2);
            assert_eq!((got[0].0.len(), got[0].1), (MAX_GUEST_LINE, true));
            assert_eq!(got[1], ("next".to_string(), false));
        }
        let mut lines = Lines::default();
        lines.feed(long.as_bytes()[..2 * MAX_GUEST_LINE].as_ref(), |_, _| false);
        assert_eq!(lines.held(), MAX_GUEST_LINE);
    }

    #[test]
    fn a_stop_says_how_much_was_taken() {
        let mut lines = Lines::default();
        let mut seen = Vec::new();
        let taken = lines.feed(b"a\nstop\nafter\n", |l, _| {
            seen.push(l.to_vec());
            l == b"stop"
        });
        assert_eq!(taken, Some(7));
        assert_eq!(seen, [b"a".to_vec(), b"stop".to_vec()]);
    }
}
