//! The guest kernel's log, streamed to the host as it is written. The guest agent
//! (`agent.sh`) copies `/dev/kmsg` record by record to a virtio-serial port,
//! `org.vmcheck.kmsg.0`, whose host side is a FIFO in the machine's private run directory
//! (`-chardev pipe`). The checks after a test (`runner/guest_log.rs`) then read a test's kernel
//! messages on the host, with no program started in the guest: the test's start marker opens
//! its part, and an end marker written after its body closes it and shows that the stream has
//! caught up. Under TCG that saves a `dmesg | sed` in the guest for every test.
//!
//! The host reads the FIFO only while it looks for a test's part, and keeps only what came
//! after that part's end (at most one read). In between, a full FIFO holds the guest's copier
//! back (virtio-serial waits for room), so the kernel's ring is the buffer, as it is for
//! `dmesg`, and nothing from the guest piles up on the host.
//!
//! The stream is live in a guest whose agent vmcheck started (a machine restored from a
//! snapshot that holds it, or the machine that saved one) and dies with that qemu. What the
//! guest writes to the port is not trusted: lines that are not kmsg records are skipped,
//! lines are bounded, records are taken in sequence order only (a reader that fell behind
//! the ring starts again from its oldest record, and its repeats are skipped), and a stream
//! that does not bring the end marker in time is given up for the machine's life: the
//! caller then reads the log in the guest, as for any other machine.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// The name of the guest's virtio-serial port for the stream.
pub const PORT: &str = "org.vmcheck.kmsg.0";

use super::lines::Lines;

/// qemu's `-chardev pipe` path in the run directory `dir`: it writes `<it>.out`.
pub fn pipe_base(dir: &Path) -> PathBuf {
    dir.join("kmsg")
}

/// New, empty FIFOs for a qemu about to start in `dir`.
pub fn make_fifos(dir: &Path) -> std::io::Result<()> {
    super::agent::make_fifo_pair(&pipe_base(dir))
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KmsgError {
    #[error("the kernel log stream is not live")]
    NotLive,
    #[error("reading the kernel log stream: {0}")]
    Io(String),
    #[error("the kernel log stream did not bring the test's end marker within {0:?}")]
    Late(Duration),
    #[error("the kernel log stream has no start marker before the test's end marker")]
    NoStart,
}

/// One machine's kernel log stream.
#[derive(Debug)]
pub struct KmsgStream {
    /// The FIFO qemu writes the port's data to.
    fifo: PathBuf,
    live: AtomicBool,
    /// Whether the guest has a journal to read besides (learnt at the first read).
    journal: Mutex<Option<bool>>,
    /// What was read after the last part's end marker (the next part may start in it).
    rest: tokio::sync::Mutex<Vec<u8>>,
}

impl KmsgStream {
    pub fn new(dir: &Path) -> KmsgStream {
        KmsgStream {
            fifo: super::agent::fifo_end(&pipe_base(dir), "out"),
            live: AtomicBool::new(false),
            journal: Mutex::new(None),
            rest: tokio::sync::Mutex::new(Vec::new()),
        }
    }

    /// Whether the guest's copier is running into this qemu's port.
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Relaxed)
    }

    /// Started (the agent runs in a new qemu's guest: nothing read yet), or gone (a new
    /// qemu, a late marker).
    pub fn set_live(&self, live: bool) {
        self.live.store(live, Ordering::Relaxed);
        if let Ok(mut rest) = self.rest.try_lock() {
            rest.clear();
        }
    }

    /// Whether the guest has a journal, if known.
    pub fn journal(&self) -> Option<bool> {
        *self.journal.lock().expect("poisoned")
    }

    pub fn set_journal(&self, has: bool) {
        *self.journal.lock().expect("poisoned") = Some(has);
    }

    /// Feed `sink` the kernel messages after the record `start` and before the record `end`
    /// (their texts), each line as `dmesg` prints it. Waits up to `limit` for `end` to
    /// arrive; a stream that fails is no longer live.
    pub async fn read_between(
        &self,
        (start, end): (&str, &str),
        limit: Duration,
        sink: &mut (dyn FnMut(&[u8]) + Send),
    ) -> Result<(), KmsgError> {
        if !self.is_live() {
            return Err(KmsgError::NotLive);
        }
        let mut rest = self.rest.lock().await;
        let done = tokio::time::timeout(limit, self.read_until(&mut rest, (start, end), sink))
            .await
            .unwrap_or(Err(KmsgError::Late(limit)));
        if done.is_err() {
            rest.clear();
            self.live.store(false, Ordering::Relaxed);
        }
        done
    }

    async fn read_until(
        &self,
        rest: &mut Vec<u8>,
        markers: (&str, &str),
        sink: &mut (dyn FnMut(&[u8]) + Send),
    ) -> Result<(), KmsgError> {
        let mut part = Part::new(markers);
        let mut data = std::mem::take(rest);
        let mut fifo = None;
        let mut buf = vec![0u8; 64 * 1024];
        let io = |e: std::io::Error| KmsgError::Io(format!("{}: {e}", self.fifo.display()));
        loop {
            if let Some(used) = part.feed(&data, sink) {
                *rest = data.split_off(used);
                return if part.started {
                    part.finish(sink);
                    Ok(())
                } else {
                    Err(KmsgError::NoStart)
                };
            }
            // qemu holds its end open: no EOF while it runs.
            let reader = match &mut fifo {
                Some(r) => r,
                None => fifo.insert(
                    tokio::net::unix::pipe::OpenOptions::new()
                        .open_receiver(&self.fifo)
                        .map_err(io)?,
                ),
            };
            let n = reader.read(&mut buf).await.map_err(io)?;
            if n == 0 {
                return Err(KmsgError::Io("the channel closed (qemu exited)".into()));
            }
            data = buf[..n].to_vec();
        }
    }
}

/// A kmsg record: `PRIO,SEQ,USEC,FLAGS[,…];TEXT` (continuation lines start with a space).
#[derive(Debug, PartialEq, Eq)]
struct Record<'a> {
    seq: u64,
    usec: u64,
    text: &'a [u8],
}

fn parse_record(line: &[u8]) -> Option<Record<'_>> {
    let semi = line.iter().position(|&b| b == b';')?;
    let mut fields = line[..semi].split(|&b| b == b',');
    let number = |f: Option<&[u8]>| -> Option<u64> {
        let f = f?;
        if f.is_empty() || !f.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(f).ok()?.parse().ok()
    };
    let _prio = number(fields.next())?;
    let seq = number(fields.next())?;
    let usec = number(fields.next())?;
    Some(Record {
        seq,
        usec,
        text: &line[semi + 1..],
    })
}

/// The test's part of a stream, fed in chunks: lines before its start marker are skipped, and
/// the end marker ends it.
struct Part<'m> {
    start: &'m [u8],
    end: &'m [u8],
    /// The record line being gathered (a cut one is skipped).
    lines: Lines,
    started: bool,
    last_seq: Option<u64>,
    lost: u64,
}

impl<'m> Part<'m> {
    fn new((start, end): (&'m str, &'m str)) -> Part<'m> {
        Part {
            start: start.as_bytes(),
            end: end.as_bytes(),
            lines: Lines::default(),
            started: false,
            last_seq: None,
            lost: 0,
        }
    }

    /// Take `data`; once the end marker was seen, how much of `data` was read (what follows
    /// it is not).
    fn feed(&mut self, data: &[u8], sink: &mut (dyn FnMut(&[u8]) + Send)) -> Option<usize> {
        let mut lines = std::mem::take(&mut self.lines);
        let taken = lines.feed(data, |line, cut| !cut && self.record(line, sink));
        self.lines = lines;
        taken
    }

    /// One whole line; true if it is the end marker.
    fn record(&mut self, line: &[u8], sink: &mut (dyn FnMut(&[u8]) + Send)) -> bool {
        let Some(r) = parse_record(line) else {
            return false;
        };
        if !self.started {
            if r.text == self.start {
                self.started = true;
                self.last_seq = Some(r.seq);
            }
            return r.text == self.end;
        }
        let last = self.last_seq.unwrap_or(0);
        if r.seq <= last {
            // A repeat: the copier started again from the ring's oldest record.
            return false;
        }
        self.lost += r.seq - last - 1;
        self.last_seq = Some(r.seq);
        if r.text == self.end {
            return true;
        }
        let mut out = format!("[{:5}.{:06}] ", r.usec / 1_000_000, r.usec % 1_000_000).into_bytes();
        out.extend_from_slice(r.text);
        out.push(b'\n');
        sink(&out);
        false
    }

    fn finish(&self, sink: &mut (dyn FnMut(&[u8]) + Send)) {
        if self.lost > 0 {
            sink(
                format!(
                    "vmcheck: {} kernel log records were lost before they were read (the ring overflowed)\n",
                    self.lost
                )
                .as_bytes(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::MAX_GUEST_LINE as MAX_LINE;

    fn part_of(stream: &[u8], chunk: usize) -> (bool, bool, String) {
        let mut part = Part::new(("vmcheck-start t1-a1", "vmcheck-end t1-a1"));
        let mut out = Vec::new();
        let mut ended = false;
        for c in stream.chunks(chunk) {
            if part
                .feed(c, &mut |d: &[u8]| out.extend_from_slice(d))
                .is_some()
            {
                ended = true;
                break;
            }
        }
        if ended {
            part.finish(&mut |d: &[u8]| out.extend_from_slice(d));
        }
        (ended, part.started, String::from_utf8(out).unwrap())
    }

    const STREAM: &str = "6,10,1000000,-;before the test\n\
        12,11,1500000,-;vmcheck-start t1-a1\n\
        4,12,1600001,-;BUG: unable to handle page fault\n \
        SUBSYSTEM=x\n\
        junk a guest wrote\n\
        6,13,1700000,c;segfault at 0\n\
        12,14,1800000,-;vmcheck-end t1-a1\n\
        6,15,1900000,-;after the test\n";

    #[test]
    fn the_part_between_the_markers_as_dmesg_prints_it() {
        let want = "[    1.600001] BUG: unable to handle page fault\n\
                    [    1.700000] segfault at 0\n";
        for chunk in [1, 2, 7, 64, 4096] {
            assert_eq!(
                part_of(STREAM.as_bytes(), chunk),
                (true, true, want.to_string()),
                "chunks of {chunk}"
            );
        }
    }

    #[test]
    fn repeats_are_skipped_and_gaps_counted() {
        // The copier fell behind (records 13 and 14 overwritten) and started again from the
        // ring's oldest record: the repeats are skipped, the gap said.
        let stream = "12,11,1,-;vmcheck-start t1-a1\n\
                      6,12,2,-;one\n\
                      6,11,1,-;vmcheck-start t1-a1\n\
                      6,12,2,-;one\n\
                      6,15,5,-;four\n\
                      12,16,6,-;vmcheck-end t1-a1\n";
        let (ended, started, out) = part_of(stream.as_bytes(), 5);
        assert!(ended && started);
        assert_eq!(
            out,
            "[    0.000002] one\n[    0.000005] four\n\
             vmcheck: 2 kernel log records were lost before they were read (the ring overflowed)\n"
        );
    }

    #[test]
    fn an_end_without_a_start_and_bad_records() {
        assert_eq!(
            part_of(b"6,1,1,-;vmcheck-end t1-a1\n", 3),
            (true, false, String::new())
        );
        // Not records: no seq, letters, no `;`; a marker that is only part of a text.
        for bad in [
            "6,,1,-;vmcheck-start t1-a1\n",
            "6,x,1,-;vmcheck-start t1-a1\n",
            "vmcheck-start t1-a1\n",
            "6,1,1,-;say vmcheck-start t1-a1\n",
        ] {
            let (ended, started, _) = part_of(bad.as_bytes(), 4);
            assert!(!ended && !started, "{bad:?}");
        }
    }

    #[test]
    fn an_endless_line_is_cut_and_skipped() {
        let mut stream = b"12,1,1,-;vmcheck-start t1-a1\n6,2,2,-;".to_vec();
        stream.extend(std::iter::repeat_n(b'B', 3 * MAX_LINE));
        stream.extend_from_slice(b"\n6,3,3,-;after\n12,4,4,-;vmcheck-end t1-a1\n");
        let mut part = Part::new(("vmcheck-start t1-a1", "vmcheck-end t1-a1"));
        let mut out = Vec::new();
        let mut most = 0;
        let mut ended = false;
        for c in stream.chunks(1000) {
            ended = part
                .feed(c, &mut |d: &[u8]| out.extend_from_slice(d))
                .is_some();
            most = most.max(part.lines.held());
            if ended {
                break;
            }
        }
        assert!(ended);
        assert!(most <= MAX_LINE, "kept {most} bytes of one line");
        assert_eq!(String::from_utf8(out).unwrap(), "[    0.000003] after\n");
    }

    use proptest::prelude::*;

    proptest! {
        /// Records of any text (but newlines) between the markers, some sent again after a
        /// copier restart, junk lines among them, the stream cut anywhere: the test's records
        /// come out once each, in order, as `dmesg` prints them.
        #[test]
        fn any_part_cut_anywhere_comes_out_whole(
            before in proptest::collection::vec("[^\n]{0,30}", 0..5),
            texts in proptest::collection::vec("[^\n]{0,40}", 0..20),
            repeat_at in proptest::collection::vec(any::<prop::sample::Index>(), 0..3),
            chunk in 1usize..50,
        ) {
            let (start, end) = ("vmcheck-start t1-a1", "vmcheck-end t1-a1");
            prop_assume!(texts.iter().chain(&before).all(|t| t != start && t != end));
            let mut stream = String::new();
            for (i, t) in before.iter().enumerate() {
                stream += &format!("6,{i},{i},-;{t}\njunk {t}\n");
            }
            let first = before.len() as u64;
            let record = |i: usize, t: &str| {
                let seq = first + 1 + i as u64;
                format!("4,{seq},{},-;{t}\n", seq * 1000)
            };
            stream += &format!("12,{first},0,-;{start}\n");
            let mut want = String::new();
            for (i, t) in texts.iter().enumerate() {
                stream += &record(i, t);
                let seq = first + 1 + i as u64;
                want += &format!("[{:5}.{:06}] {t}\n", seq / 1000, seq % 1000 * 1000);
                // A restart: the copier sends the ring again from an earlier record.
                for r in &repeat_at {
                    if r.index(texts.len()) == i {
                        stream += &format!("12,{first},0,-;{start}\n");
                        for (j, u) in texts.iter().enumerate().take(i + 1) {
                            stream += &record(j, u);
                        }
                    }
                }
            }
            let seq = first + 1 + texts.len() as u64;
            stream += &format!("12,{seq},0,-;{end}\n6,{},0,-;after\n", seq + 1);
            let (ended, started, out) = part_of(stream.as_bytes(), chunk);
            prop_assert!(ended && started);
            prop_assert_eq!(out, want);
        }
    }

    #[tokio::test]
    async fn parts_are_read_from_the_fifo_as_they_come_and_a_late_one_gives_up() {
        let dir = tempfile::tempdir().unwrap();
        make_fifos(dir.path()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let out = dir.path().join("kmsg.out");
        let mode = std::fs::metadata(&out).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let stream = KmsgStream::new(dir.path());
        let markers = |t: &'static str| -> (String, String) {
            (format!("vmcheck-start {t}"), format!("vmcheck-end {t}"))
        };
        let (s1, e1) = markers("t1-a1");
        let mut got = Vec::new();
        let mut sink = |d: &[u8]| got.extend_from_slice(d);
        assert_eq!(
            stream
                .read_between((&s1, &e1), Duration::from_secs(1), &mut sink)
                .await,
            Err(KmsgError::NotLive)
        );
        stream.set_live(true);
        // qemu's side: it holds the FIFO open and writes as the guest sends.
        let mut qemu = tokio::net::unix::pipe::OpenOptions::new()
            .read_write(true)
            .open_sender(&out)
            .unwrap();
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for chunk in [
                "6,1,1,-;before\n12,2,2,-;vmcheck-start t1-a1\n6,3,3,-;BU",
                "G: x\n",
                // The end, and the next test's start in the same read.
                "12,4,4,-;vmcheck-end t1-a1\n12,5,5,-;vmcheck-start t2-a1\n6,6,6,-;two\n",
                "12,7,7,-;vmcheck-end t2-a1\n",
            ] {
                tokio::time::sleep(Duration::from_millis(30)).await;
                qemu.write_all(chunk.as_bytes()).await.unwrap();
            }
            qemu
        });
        let first = stream
            .read_between((&s1, &e1), Duration::from_secs(10), &mut sink)
            .await;
        assert_eq!(first, Ok(()));
        let (s2, e2) = markers("t2-a1");
        let second = stream
            .read_between((&s2, &e2), Duration::from_secs(10), &mut sink)
            .await;
        assert_eq!(second, Ok(()));
        let _qemu = writer.await.unwrap();
        assert_eq!(
            String::from_utf8_lossy(&got),
            "[    0.000003] BUG: x\n[    0.000006] two\n"
        );
        // A stream that does not bring the end marker is given up.
        let (s3, e3) = markers("t3-a1");
        let late = stream
            .read_between((&s3, &e3), Duration::from_millis(50), &mut |_| {})
            .await;
        assert_eq!(late, Err(KmsgError::Late(Duration::from_millis(50))));
        assert!(!stream.is_live());
    }
}
