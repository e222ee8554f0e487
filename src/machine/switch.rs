//! The private network of a test's machines: a layer-2 switch on the host, one thread, that
//! forwards Ethernet frames between the machines' second NICs and applies the faults a test
//! asks for (a link blocked, delayed, or losing frames at random), counting what they did.
//!
//! Each machine is one *port*: a pair of Unix datagram sockets in a directory the caller
//! owns (a 0700 run directory): the switch's `switch-N.sock`, bound here, and the machine's
//! `machine-N.sock`, which qemu binds (`-netdev dgram`, see `qemu.rs`) and sends its frames
//! from to the switch's socket. Nobody else can reach either (the directory is private),
//! and the switch takes a port's frames only from its machine's socket, so no other local
//! process can inject frames or listen in (as anyone could on the multicast group this
//! replaces).
//!
//! Forwarding is a learning switch's: a frame's source MAC teaches which port it lives
//! behind; a frame to a known unicast MAC goes to that port only, every other frame
//! (broadcast, multicast, unknown) to every other port. Faults are per direction of a pair
//! of ports ([`Link`]), checked for every frame crossing it: blocked frames are discarded,
//! lost ones discarded with the link's probability (a seeded generator, so a run is
//! reproducible for the same traffic), delayed ones queued and sent when due (in order for
//! one delay). A delayed frame that finds its link blocked when due is discarded. The
//! thread stops, and the sockets close, when the [`Switch`] is dropped.

use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The faults on one direction of a link between two ports.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Link {
    /// Every frame is discarded.
    pub blocked: bool,
    /// Every frame waits this long before it is sent on.
    pub delay: Duration,
    /// Percent of frames discarded at random (0 to 100).
    pub loss: f64,
}

impl Link {
    /// No fault: frames cross at once.
    pub fn is_clear(&self) -> bool {
        *self == Link::default()
    }
}

/// What crossed one direction of a link (frames).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Sent on to the other port (delayed ones when they were sent).
    pub forwarded: u64,
    /// Discarded because the link was blocked.
    pub blocked: u64,
    /// Discarded at random (loss), or because too many frames were waiting.
    pub dropped: u64,
    /// Held back by a delay.
    pub delayed: u64,
}

/// Where one port's two sockets are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortPaths {
    /// The switch's socket, which the machine sends its frames to.
    pub switch: PathBuf,
    /// The machine's socket (qemu binds it), which the switch sends frames to.
    pub machine: PathBuf,
}

/// The longest path a Unix socket address holds (`sun_path`, less its final NUL).
const SOCKET_PATH_MAX: usize = 107;
/// The most frames waiting for their delay at once; more are dropped (and counted).
const QUEUE_LIMIT: usize = 10_000;
/// The most frames read from one port in a row, so that a busy port starves no other.
const BURST: usize = 64;
/// Ethernet frames are smaller; a larger datagram is cut and then not forwarded.
const FRAME_MAX: usize = 65_536;
/// The most frames kept for a machine that is not reading fast enough (its socket's queue
/// holds only `net.unix.max_dgram_qlen` datagrams, 10 by default); more are lost.
const BACKLOG_LIMIT: usize = 1024;
/// How soon sending a backlog is tried again (a peer's queue cannot be polled for room).
const BACKLOG_RETRY: Duration = Duration::from_millis(1);

/// Rules and counters, shared by the switch's thread and its handle.
struct Table {
    /// `links[from][to]`.
    links: Vec<Vec<Link>>,
    counts: Vec<Vec<Counts>>,
}

/// A running switch with `ports` ports; stops when dropped.
pub struct Switch {
    ports: Vec<PortPaths>,
    table: Arc<Mutex<Table>>,
    stop: Arc<AtomicBool>,
    wake: UnixDatagram,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Switch {
    /// Bind the switch's sockets for `ports` ports in `dir` and start forwarding. `seed`
    /// seeds the random losses.
    pub fn start(dir: &Path, ports: usize, seed: u64) -> io::Result<Switch> {
        let paths: Vec<PortPaths> = (1..=ports)
            .map(|n| PortPaths {
                switch: dir.join(format!("switch-{n}.sock")),
                machine: dir.join(format!("machine-{n}.sock")),
            })
            .collect();
        if let Some(p) = paths.last()
            && let Some(long) = [&p.switch, &p.machine]
                .into_iter()
                .find(|p| p.as_os_str().len() > SOCKET_PATH_MAX)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the private network's socket {} is longer than a Unix socket address \
                     allows ({SOCKET_PATH_MAX} bytes): set TMPDIR to a shorter directory",
                    long.display()
                ),
            ));
        }
        let sockets = paths
            .iter()
            .map(|p| {
                let s = UnixDatagram::bind(&p.switch)?;
                s.set_nonblocking(true)?;
                Ok(s)
            })
            .collect::<io::Result<Vec<_>>>()?;
        let (wake, woken) = UnixDatagram::pair()?;
        woken.set_nonblocking(true)?;
        let table = Arc::new(Mutex::new(Table {
            links: vec![vec![Link::default(); ports]; ports],
            counts: vec![vec![Counts::default(); ports]; ports],
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let mut forwarder = Forwarder {
            sockets,
            peers: paths.iter().map(|p| p.machine.clone()).collect(),
            table: table.clone(),
            macs: HashMap::new(),
            queue: BinaryHeap::new(),
            backlog: vec![VecDeque::new(); ports],
            seq: 0,
            rng: SplitMix64(seed),
        };
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("vmcheck-switch".into())
            .spawn(move || forwarder.run(&woken, &stopping))?;
        Ok(Switch {
            ports: paths,
            table,
            stop,
            wake,
            thread: Some(thread),
        })
    }

    /// The sockets of port `port` (0-based).
    pub fn port(&self, port: usize) -> &PortPaths {
        &self.ports[port]
    }

    pub fn len(&self) -> usize {
        self.ports.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Change the faults of both directions between ports `a` and `b`.
    pub fn update(&self, a: usize, b: usize, change: impl Fn(&mut Link)) {
        let mut t = self.table();
        change(&mut t.links[a][b]);
        change(&mut t.links[b][a]);
    }

    /// The faults from port `from` to port `to`.
    pub fn link(&self, from: usize, to: usize) -> Link {
        self.table().links[from][to]
    }

    /// What crossed from port `from` to port `to` so far.
    pub fn counts(&self, from: usize, to: usize) -> Counts {
        self.table().counts[from][to]
    }

    /// Remove every fault (counts are kept).
    pub fn heal(&self) {
        for row in &mut self.table().links {
            row.fill(Link::default());
        }
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.wake.send(b"x");
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A frame waiting for its delay.
struct Pending {
    due: Instant,
    seq: u64,
    from: usize,
    to: usize,
    frame: Vec<u8>,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    /// Reversed: the heap's top is the frame due first (the oldest of equal times).
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

/// The switch's thread.
struct Forwarder {
    sockets: Vec<UnixDatagram>,
    /// Each port's machine socket: where its frames go, and the only sender it takes.
    peers: Vec<PathBuf>,
    table: Arc<Mutex<Table>>,
    /// Which port each source MAC was last seen on.
    macs: HashMap<[u8; 6], usize>,
    queue: BinaryHeap<Pending>,
    /// Frames for each port that its machine had no room for yet, oldest first.
    backlog: Vec<VecDeque<Vec<u8>>>,
    seq: u64,
    rng: SplitMix64,
}

impl Forwarder {
    fn run(&mut self, woken: &UnixDatagram, stop: &AtomicBool) {
        use nix::poll::{PollFd, PollFlags, PollTimeout};
        let mut buf = vec![0u8; FRAME_MAX];
        while !stop.load(Ordering::SeqCst) {
            let due = self
                .queue
                .peek()
                .map(|p| p.due.saturating_duration_since(Instant::now()));
            let retry = self
                .backlog
                .iter()
                .any(|b| !b.is_empty())
                .then_some(BACKLOG_RETRY);
            let timeout = match due.into_iter().chain(retry).min() {
                None => PollTimeout::NONE,
                Some(wait) => {
                    // Rounded up: waking early would spin until the frame is due.
                    let ms = wait.as_micros().div_ceil(1000).min(i32::MAX as u128);
                    PollTimeout::try_from(ms as i32).unwrap_or(PollTimeout::MAX)
                }
            };
            let ready: Vec<bool> = {
                let mut fds: Vec<PollFd> = std::iter::once(woken)
                    .chain(&self.sockets)
                    .map(|s| PollFd::new(s.as_fd(), PollFlags::POLLIN))
                    .collect();
                match nix::poll::poll(&mut fds, timeout) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    // Cannot happen with valid descriptors; stop rather than spin.
                    Err(_) => return,
                }
                fds.iter()
                    .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                    .collect()
            };
            if ready[0] {
                while woken.recv(&mut buf).is_ok() {}
            }
            for (port, _) in ready[1..].iter().enumerate().filter(|(_, r)| **r) {
                for _ in 0..BURST {
                    let Ok((n, from)) = self.sockets[port].recv_from(&mut buf) else {
                        break;
                    };
                    if from.as_pathname() == Some(self.peers[port].as_path()) && n < FRAME_MAX {
                        self.frame(port, &buf[..n]);
                    }
                }
            }
            self.release_due();
            for port in 0..self.backlog.len() {
                self.flush(port);
            }
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forward a frame that arrived on `port`.
    fn frame(&mut self, port: usize, frame: &[u8]) {
        if frame.len() < 14 {
            return;
        }
        let dst: [u8; 6] = frame[0..6].try_into().expect("six bytes");
        let src: [u8; 6] = frame[6..12].try_into().expect("six bytes");
        if src[0] & 1 == 0 {
            self.macs.insert(src, port);
        }
        let to: Vec<usize> = match self.macs.get(&dst) {
            Some(&known) if dst[0] & 1 == 0 => vec![known],
            _ => (0..self.sockets.len()).collect(),
        };
        let now = Instant::now();
        let table = self.table.clone();
        let mut t = table.lock().unwrap_or_else(|e| e.into_inner());
        for to in to.into_iter().filter(|&to| to != port) {
            let link = t.links[port][to];
            let counts = &mut t.counts[port][to];
            if link.blocked {
                counts.blocked += 1;
            } else if link.loss > 0.0 && self.rng.percent() < link.loss {
                counts.dropped += 1;
            } else if link.delay.is_zero() {
                counts.forwarded += 1;
                self.send(to, frame);
            } else if self.queue.len() >= QUEUE_LIMIT {
                counts.dropped += 1;
            } else {
                counts.delayed += 1;
                self.seq += 1;
                self.queue.push(Pending {
                    due: now + link.delay,
                    seq: self.seq,
                    from: port,
                    to,
                    frame: frame.to_vec(),
                });
            }
        }
    }

    /// Send on the delayed frames that are due, unless their link is blocked by now.
    fn release_due(&mut self) {
        let now = Instant::now();
        while self.queue.peek().is_some_and(|p| p.due <= now) {
            let p = self.queue.pop().expect("peeked");
            let blocked = {
                let mut t = self.table();
                let blocked = t.links[p.from][p.to].blocked;
                let counts = &mut t.counts[p.from][p.to];
                if blocked {
                    counts.blocked += 1;
                } else {
                    counts.forwarded += 1;
                }
                blocked
            };
            if !blocked {
                self.send(p.to, &p.frame);
            }
        }
    }

    /// Send a frame out of `port` (to its machine), from the switch's socket of that port,
    /// after the frames waiting for room there. A machine that is not there (not started
    /// yet, rebooting) loses it, as on a real cable.
    fn send(&mut self, port: usize, frame: &[u8]) {
        if self.backlog[port].is_empty() {
            match self.sockets[port].send_to(frame, &self.peers[port]) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                _ => return,
            }
        }
        if self.backlog[port].len() < BACKLOG_LIMIT {
            self.backlog[port].push_back(frame.to_vec());
        }
    }

    /// Send what waits for room at `port`, until its machine's queue is full again.
    fn flush(&mut self, port: usize) {
        while let Some(frame) = self.backlog[port].front() {
            match self.sockets[port].send_to(frame, &self.peers[port]) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // Sent, or the machine is gone: either way not kept.
                _ => {
                    self.backlog[port].pop_front();
                }
            }
        }
    }
}

/// A small seeded generator (SplitMix64): reproducible losses without a dependency.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 100).
    fn percent(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 * 100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for a machine: a datagram socket bound where qemu's would be.
    struct Nic {
        socket: UnixDatagram,
        switch: PathBuf,
        mac: [u8; 6],
    }

    impl Nic {
        fn attach(switch: &Switch, port: usize) -> Nic {
            let paths = switch.port(port);
            let socket = UnixDatagram::bind(&paths.machine).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            Nic {
                socket,
                switch: paths.switch.clone(),
                mac: [0x52, 0x54, 0x01, 0, 0, port as u8 + 1],
            }
        }

        /// Send a frame to `dst` holding `payload`.
        fn send(&self, dst: [u8; 6], payload: &[u8]) {
            let mut frame = dst.to_vec();
            frame.extend_from_slice(&self.mac);
            frame.extend_from_slice(&[0x88, 0xb5]);
            frame.extend_from_slice(payload);
            self.socket.send_to(&frame, &self.switch).unwrap();
        }

        /// The payloads that arrive within the read timeout.
        fn received(&self) -> Vec<Vec<u8>> {
            let mut got = Vec::new();
            let mut buf = [0u8; 2048];
            while let Ok(n) = self.socket.recv(&mut buf) {
                got.push(buf[14..n].to_vec());
            }
            got
        }
    }

    const BROADCAST: [u8; 6] = [0xff; 6];

    fn lan(ports: usize) -> (tempfile::TempDir, Switch, Vec<Nic>) {
        let dir = tempfile::tempdir().unwrap();
        let switch = Switch::start(dir.path(), ports, 7).unwrap();
        let nics = (0..ports).map(|p| Nic::attach(&switch, p)).collect();
        (dir, switch, nics)
    }

    #[test]
    fn floods_broadcasts_and_unknown_macs_then_forwards_by_learned_mac() {
        let (_dir, switch, nics) = lan(3);
        let [a, b, c] = &nics[..] else { unreachable!() };
        a.send(BROADCAST, b"who has");
        assert_eq!(b.received(), vec![b"who has".to_vec()]);
        assert_eq!(c.received(), vec![b"who has".to_vec()]);
        assert!(a.received().is_empty(), "not back to its sender");
        // b is not known yet: flooded; a is known from its broadcast: only to a.
        a.send(b.mac, b"to b, unknown");
        assert_eq!(c.received().len(), 1);
        assert_eq!(b.received().len(), 1);
        b.send(a.mac, b"to a");
        assert_eq!(a.received(), vec![b"to a".to_vec()]);
        assert!(
            c.received().is_empty(),
            "a unicast to a known MAC reaches only it"
        );
        a.send(b.mac, b"to b");
        assert_eq!(b.received(), vec![b"to b".to_vec()]);
        assert!(c.received().is_empty());
        assert_eq!(switch.counts(0, 1).forwarded, 3);
        assert_eq!(switch.counts(1, 2), Counts::default());
    }

    #[test]
    fn a_block_cuts_both_directions_of_one_pair_only_until_healed() {
        let (_dir, switch, nics) = lan(3);
        let [a, b, c] = &nics[..] else { unreachable!() };
        switch.update(0, 1, |l| l.blocked = true);
        a.send(BROADCAST, b"1");
        assert!(b.received().is_empty());
        assert_eq!(c.received().len(), 1, "the third machine still hears a");
        b.send(a.mac, b"2");
        assert!(a.received().is_empty());
        assert_eq!(switch.counts(0, 1).blocked, 1);
        assert_eq!(switch.counts(1, 0).blocked, 1);
        assert!(switch.link(1, 0).blocked);
        switch.heal();
        assert!(switch.link(0, 1).is_clear() && switch.link(1, 0).is_clear());
        b.send(a.mac, b"3");
        assert_eq!(a.received(), vec![b"3".to_vec()]);
        assert_eq!(switch.counts(1, 0).blocked, 1, "counts outlive the heal");
    }

    #[test]
    fn a_delay_holds_frames_back_in_order() {
        let (_dir, switch, nics) = lan(2);
        let [a, b] = &nics[..] else { unreachable!() };
        switch.update(0, 1, |l| l.delay = Duration::from_millis(300));
        b.socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let sent = Instant::now();
        for i in 0..5u8 {
            a.send(BROADCAST, &[i]);
        }
        let mut buf = [0u8; 64];
        let mut order = Vec::new();
        for _ in 0..5 {
            let n = b.socket.recv(&mut buf).unwrap();
            order.push(buf[14..n].to_vec());
        }
        assert!(
            sent.elapsed() >= Duration::from_millis(300),
            "{:?}",
            sent.elapsed()
        );
        assert_eq!(order, (0..5u8).map(|i| vec![i]).collect::<Vec<_>>());
        let counts = switch.counts(0, 1);
        assert_eq!((counts.delayed, counts.forwarded), (5, 5));
        // A delayed frame whose link is blocked by the time it is due is discarded.
        switch.update(0, 1, |l| l.delay = Duration::from_millis(200));
        a.send(BROADCAST, b"late");
        switch.update(0, 1, |l| l.blocked = true);
        b.socket
            .set_read_timeout(Some(Duration::from_millis(600)))
            .unwrap();
        assert!(b.received().is_empty());
        assert_eq!(switch.counts(0, 1).blocked, 1);
    }

    #[test]
    fn losses_follow_the_percentage_and_the_seed() {
        let run = |seed: u64, loss: f64| {
            let dir = tempfile::tempdir().unwrap();
            let switch = Switch::start(dir.path(), 2, seed).unwrap();
            let (a, b) = (Nic::attach(&switch, 0), Nic::attach(&switch, 1));
            switch.update(0, 1, |l| l.loss = loss);
            b.socket
                .set_read_timeout(Some(Duration::from_secs(1)))
                .unwrap();
            // Read while sending: a machine's socket queues only a few datagrams.
            let got = std::thread::scope(|s| {
                let reader = s.spawn(|| b.received());
                for i in 0..400u16 {
                    a.send(BROADCAST, &i.to_be_bytes());
                }
                reader.join().unwrap()
            });
            let counts = switch.counts(0, 1);
            assert_eq!(counts.dropped + counts.forwarded, 400);
            assert_eq!(got.len() as u64, counts.forwarded);
            got
        };
        let first = run(1, 30.0);
        // 30 % of 400: 120 expected; far outside a binomial's spread would be a bug.
        assert!((220..=340).contains(&first.len()), "{}", first.len());
        assert_eq!(run(1, 30.0), first, "the same seed drops the same frames");
        assert_eq!(run(1, 100.0).len(), 0);
        assert_eq!(run(1, 0.0).len(), 400);
    }

    #[test]
    fn a_machine_that_reads_late_still_gets_every_frame_in_order() {
        // Its socket queues only a few datagrams (net.unix.max_dgram_qlen): the switch
        // keeps the rest until there is room.
        let (_dir, _switch, nics) = lan(2);
        let [a, b] = &nics[..] else { unreachable!() };
        for i in 0..200u8 {
            a.send(BROADCAST, &[i]);
        }
        std::thread::sleep(Duration::from_millis(300));
        let got = b.received();
        assert_eq!(got, (0..200u8).map(|i| vec![i]).collect::<Vec<_>>());
    }

    #[test]
    fn frames_from_another_socket_are_not_taken() {
        let (dir, switch, nics) = lan(2);
        let intruder = UnixDatagram::bind(dir.path().join("intruder.sock")).unwrap();
        let mut frame = BROADCAST.to_vec();
        frame.extend_from_slice(&[2, 0, 0, 0, 0, 9, 0x88, 0xb5, 1]);
        intruder.send_to(&frame, &switch.port(0).switch).unwrap();
        // Unbound senders are refused too.
        UnixDatagram::unbound()
            .unwrap()
            .send_to(&frame, &switch.port(0).switch)
            .unwrap();
        assert!(nics[1].received().is_empty());
        assert_eq!(switch.counts(0, 1), Counts::default());
    }

    #[test]
    fn runt_frames_are_ignored_and_a_missing_machine_loses_its_frames() {
        let dir = tempfile::tempdir().unwrap();
        let switch = Switch::start(dir.path(), 3, 0).unwrap();
        let a = Nic::attach(&switch, 0);
        let b = Nic::attach(&switch, 1);
        // Port 3 has no machine (not started yet): frames to it are lost, nothing breaks.
        a.socket.send_to(b"short", &a.switch).unwrap();
        a.send(BROADCAST, b"x");
        assert_eq!(b.received(), vec![b"x".to_vec()]);
        assert_eq!(switch.counts(0, 2).forwarded, 1);
        assert_eq!(switch.len(), 3);
    }

    #[test]
    fn a_socket_path_too_long_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let long = dir.path().join("d".repeat(100));
        std::fs::create_dir(&long).unwrap();
        let err = Switch::start(&long, 2, 0).err().unwrap().to_string();
        assert!(err.contains("set TMPDIR to a shorter directory"), "{err}");
    }
}
