//! What every workload shares: the payload message, the receiver's meter, round-trip statistics
//! and the per-thread memory counters read from `/proc`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// The message every `connect` and prost workload sends: one `bytes` field, held as
/// [`Bytes`] so that decoding it from a received frame can slice the frame instead of copying.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Payload {
    #[prost(bytes = "bytes", tag = "1")]
    pub data: Bytes,
}

impl prost::Name for Payload {
    const NAME: &'static str = "Payload";
    const PACKAGE: &'static str = "connect.bench.v1";

    fn full_name() -> String {
        "connect.bench.v1.Payload".into()
    }

    fn type_url() -> String {
        "type.googleapis.com/connect.bench.v1.Payload".into()
    }
}

/// How long the receiver lets traffic settle before it starts timing, ms: 250 unless `--quick`
/// says otherwise.
pub static WARM_UP_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(250);

pub fn warm_up() -> Duration {
    Duration::from_millis(WARM_UP_MS.load(Ordering::Relaxed))
}

/// One-way throughput as seen by the receiver.
#[derive(Clone, Copy, Debug, Default)]
pub struct Throughput {
    pub messages: u64,
    /// Payload bytes (not counting framing).
    pub bytes: u64,
    pub elapsed: Duration,
    /// Minor page faults of the receiving thread per message, over the timed window.
    pub faults_per_message: f64,
    /// Resident set size of the whole process at the start and end of the timed window, KiB.
    pub rss_start_kib: u64,
    pub rss_end_kib: u64,
    /// CPU time of the receiving thread per message, ns.
    pub cpu_ns_per_message: f64,
    /// CPU time of the sending thread per message, ns, over its whole run (set-up included, so
    /// a slight overestimate). For zmq.rs it misses the socket's background tasks.
    pub sender_cpu_ns_per_message: f64,
    /// Share of the window the receiving thread was runnable but waiting for a CPU: how much
    /// other load on the machine got in the way.
    pub run_queue_wait: f64,
    /// CPU time of the whole process per message over the timed window (both sides and any
    /// background task: session and reliable drivers, the SCTP transport), ns.
    pub process_cpu_ns_per_message: f64,
    /// Heap allocations per message of the receiving thread over the timed window.
    pub rx_allocs_per_message: f64,
    /// Heap allocations per message of the sending thread over its whole run.
    pub tx_allocs_per_message: f64,
    /// Heap allocations per message of the whole process over the timed window.
    pub process_allocs_per_message: f64,
}

impl Throughput {
    pub fn messages_per_sec(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64()
    }

    pub fn megabytes_per_sec(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64() / 1e6
    }
}

/// Allocation and CPU counters read at the start of a timed window.
#[derive(Clone, Copy, Debug)]
struct Counters {
    thread_allocs: u64,
    process_allocs: u64,
    process_cpu: u64,
}

impl Counters {
    fn now() -> Self {
        Self {
            thread_allocs: crate::alloc::thread_allocations(),
            process_allocs: crate::alloc::process_allocations(),
            process_cpu: crate::alloc::process_cpu_ns(),
        }
    }
}

/// Counts what the receiver gets: waits out the warm-up, then times at least `window`, then
/// raises the stop flag the sender watches.
pub struct Meter {
    stop: Arc<AtomicBool>,
    window: Duration,
    started: Instant,
    timing: Option<(Instant, u64, (u64, u64), Counters)>,
    messages: u64,
    bytes: u64,
    rss_start: u64,
    result: Option<Throughput>,
}

impl Meter {
    pub fn new(stop: Arc<AtomicBool>, window: Duration) -> Self {
        Self {
            stop,
            window,
            started: Instant::now(),
            timing: None,
            messages: 0,
            bytes: 0,
            rss_start: 0,
            result: None,
        }
    }

    /// Records one received message of `len` payload bytes.
    #[inline]
    pub fn tick(&mut self, len: usize) {
        if self.result.is_some() {
            return;
        }
        if self.messages == 0 && self.timing.is_none() {
            // The clock starts with the first message, not with the connection.
            self.started = Instant::now();
        }
        self.messages += 1;
        self.bytes += len as u64;
        // Reading the clock costs ~20 ns; for small messages look at it every 64th message.
        if len < 4096 && !self.messages.is_multiple_of(64) {
            return;
        }
        let now = Instant::now();
        match self.timing {
            None if now - self.started >= warm_up() => {
                self.timing = Some((
                    now,
                    thread_minor_faults(),
                    thread_schedstat(),
                    Counters::now(),
                ));
                self.messages = 0;
                self.bytes = 0;
                self.started = now;
                self.rss_start = rss_kib();
            }
            None => {}
            Some((start, faults, (cpu, wait), counters)) if now - start >= self.window => {
                let end = Counters::now();
                let per_message = |n: u64| n as f64 / self.messages as f64;
                let faults = thread_minor_faults() - faults;
                let (cpu_end, wait_end) = thread_schedstat();
                let elapsed = now - start;
                self.result = Some(Throughput {
                    messages: self.messages,
                    bytes: self.bytes,
                    elapsed,
                    faults_per_message: faults as f64 / self.messages as f64,
                    cpu_ns_per_message: (cpu_end - cpu) as f64 / self.messages as f64,
                    sender_cpu_ns_per_message: 0.0,
                    run_queue_wait: (wait_end - wait) as f64 / elapsed.as_nanos() as f64,
                    rss_start_kib: self.rss_start,
                    rss_end_kib: rss_kib(),
                    process_cpu_ns_per_message: per_message(
                        end.process_cpu.saturating_sub(counters.process_cpu),
                    ),
                    rx_allocs_per_message: per_message(end.thread_allocs - counters.thread_allocs),
                    tx_allocs_per_message: 0.0,
                    process_allocs_per_message: per_message(
                        end.process_allocs - counters.process_allocs,
                    ),
                });
                self.stop.store(true, Ordering::Relaxed);
            }
            Some(_) => {}
        }
    }

    pub fn finish(self) -> anyhow::Result<Throughput> {
        self.result
            .ok_or_else(|| anyhow::anyhow!("the sender stopped before the window was over"))
    }
}

/// Round-trip times of one ping-pong run, in nanoseconds, sorted.
#[derive(Clone, Debug, Default)]
pub struct Latency {
    pub sorted_ns: Vec<u64>,
    /// CPU time of the whole process per timed round trip, ns.
    pub cpu_ns_per_round_trip: f64,
    /// Heap allocations of the whole process per timed round trip (two messages).
    pub allocs_per_round_trip: f64,
}

impl Latency {
    pub fn from_samples(samples: RoundTrips) -> Self {
        let mut sorted_ns = samples.samples;
        sorted_ns.sort_unstable();
        let n = sorted_ns.len().max(1) as f64;
        Self {
            sorted_ns,
            cpu_ns_per_round_trip: samples.cpu_ns as f64 / n,
            allocs_per_round_trip: samples.allocs as f64 / n,
        }
    }

    /// The `q` quantile (0..=1), nearest rank.
    pub fn quantile_us(&self, q: f64) -> f64 {
        if self.sorted_ns.is_empty() {
            return f64::NAN;
        }
        let rank =
            ((q * self.sorted_ns.len() as f64).ceil() as usize).clamp(1, self.sorted_ns.len());
        self.sorted_ns[rank - 1] as f64 / 1000.0
    }
}

/// Minor page faults of the calling thread so far (field 10 of `/proc/thread-self/stat`), or 0
/// where that file does not exist.
pub fn thread_minor_faults() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/thread-self/stat") else {
        return 0;
    };
    // The command name (field 2) is in parentheses and may contain spaces: start after it.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    // Fields from 3 on; minflt is field 10.
    after_name
        .split_whitespace()
        .nth(7)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Nanoseconds the calling thread has run on a CPU and waited for one
/// (`/proc/thread-self/schedstat`), or zeros where unavailable.
pub fn thread_schedstat() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let mut fields = stat.split_whitespace().map(|v| v.parse().unwrap_or(0));
    (fields.next().unwrap_or(0), fields.next().unwrap_or(0))
}

/// Resident set size of the process in KiB (`/proc/self/statm`), or 0 where unavailable.
pub fn rss_kib() -> u64 {
    let pages: u64 = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0);
    pages * 4
}

/// Round trips timed per ping-pong run, after [`PING_PONG_WARM_UP`] untimed ones (fewer with
/// `--quick`).
pub static PING_PONG_ROUNDS: AtomicUsize = AtomicUsize::new(20_000);
/// Untimed round trips before the timed ones.
pub static PING_PONG_WARM_UP: AtomicUsize = AtomicUsize::new(2_000);
/// Payload of a ping.
pub const PING_SIZE: usize = 64;

/// Runs a one-way workload: `receiver` on one thread accepting on a fresh loopback listener,
/// `sender` on another connecting to it. The sender keeps sending until the stop flag is up,
/// then sends an empty message as end marker, so the receiver can drain and both end cleanly.
pub fn one_way<S, R>(sender: S, receiver: R) -> anyhow::Result<Throughput>
where
    S: FnOnce(std::net::SocketAddr, Arc<AtomicBool>) -> anyhow::Result<()> + Send + 'static,
    R: FnOnce(std::net::TcpListener, Meter) -> anyhow::Result<Throughput> + Send + 'static,
{
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    one_way_on(listener, addr, sender, receiver)
}

/// [`one_way`] on a listener the caller bound (TLS, SCTP, ...), reachable at `addr`.
pub fn one_way_on<L, S, R>(
    listener: L,
    addr: std::net::SocketAddr,
    sender: S,
    receiver: R,
) -> anyhow::Result<Throughput>
where
    L: Send + 'static,
    S: FnOnce(std::net::SocketAddr, Arc<AtomicBool>) -> anyhow::Result<()> + Send + 'static,
    R: FnOnce(L, Meter) -> anyhow::Result<Throughput> + Send + 'static,
{
    let window = Duration::from_millis(WINDOW_MS.load(Ordering::Relaxed));
    one_way_window(listener, addr, window, sender, receiver)
}

/// [`one_way_on`] with its own timed window.
pub fn one_way_window<L, S, R>(
    listener: L,
    addr: std::net::SocketAddr,
    window: Duration,
    sender: S,
    receiver: R,
) -> anyhow::Result<Throughput>
where
    L: Send + 'static,
    S: FnOnce(std::net::SocketAddr, Arc<AtomicBool>) -> anyhow::Result<()> + Send + 'static,
    R: FnOnce(L, Meter) -> anyhow::Result<Throughput> + Send + 'static,
{
    let stop = Arc::new(AtomicBool::new(false));
    let meter = Meter::new(stop.clone(), window);
    let rx = std::thread::Builder::new()
        .name("receiver".into())
        .spawn(move || {
            pin(0);
            receiver(listener, meter)
        })?;
    let tx = std::thread::Builder::new()
        .name("sender".into())
        .spawn(move || {
            pin(1);
            let (cpu, _) = thread_schedstat();
            let allocs = crate::alloc::thread_allocations();
            sender(addr, stop)?;
            let sent = SENT.with(|n| n.get()).max(1) as f64;
            Ok::<_, anyhow::Error>((
                (thread_schedstat().0 - cpu) as f64 / sent,
                (crate::alloc::thread_allocations() - allocs) as f64 / sent,
            ))
        })?;
    let result = rx
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))?;
    let (sender_cpu, sender_allocs) = tx
        .join()
        .map_err(|_| anyhow::anyhow!("sender panicked"))??;
    result.map(|t| Throughput {
        sender_cpu_ns_per_message: sender_cpu,
        tx_allocs_per_message: sender_allocs,
        ..t
    })
}

/// Runs a ping-pong workload: `server` echoes on its own thread, `client` times round trips on
/// the calling thread and finally sends an empty message, on which the server stops.
pub fn ping_pong<S, C>(server: S, client: C) -> anyhow::Result<Latency>
where
    S: FnOnce(std::net::TcpListener) -> anyhow::Result<()> + Send + 'static,
    C: FnOnce(std::net::SocketAddr) -> anyhow::Result<RoundTrips>,
{
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    ping_pong_on(listener, addr, server, client)
}

/// [`ping_pong`] on a listener the caller bound, reachable at `addr`.
pub fn ping_pong_on<L, S, C>(
    listener: L,
    addr: std::net::SocketAddr,
    server: S,
    client: C,
) -> anyhow::Result<Latency>
where
    L: Send + 'static,
    S: FnOnce(L) -> anyhow::Result<()> + Send + 'static,
    C: FnOnce(std::net::SocketAddr) -> anyhow::Result<RoundTrips>,
{
    let srv = std::thread::Builder::new()
        .name("server".into())
        .spawn(move || {
            pin(1);
            server(listener)
        })?;
    pin(0);
    let samples = client(addr);
    srv.join()
        .map_err(|_| anyhow::anyhow!("server panicked"))??;
    Ok(Latency::from_samples(samples?))
}

/// How long the receiver times a one-way run (after the warm-up), in milliseconds: one second
/// unless `--seconds` says otherwise.
pub static WINDOW_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1000);

/// Counts and times round trips: [`PING_PONG_WARM_UP`] untimed, then [`PING_PONG_ROUNDS`]
/// timed ones.
///
/// ```text
/// while rounds.begin() { /* one round trip */ rounds.end(); }
/// ```
pub struct Rounds {
    done: usize,
    warm_up: usize,
    rounds: usize,
    start: Instant,
    samples: Vec<u64>,
    /// Process CPU time and allocations when the timed round trips began.
    counters: Option<Counters>,
    totals: (u64, u64),
}

/// What a ping-pong client measured: its round trips, and the process's CPU time and heap
/// allocations over them.
#[derive(Clone, Debug, Default)]
pub struct RoundTrips {
    pub samples: Vec<u64>,
    pub cpu_ns: u64,
    pub allocs: u64,
}

impl Default for Rounds {
    fn default() -> Self {
        let rounds = PING_PONG_ROUNDS.load(Ordering::Relaxed);
        Self {
            done: 0,
            warm_up: PING_PONG_WARM_UP.load(Ordering::Relaxed),
            rounds,
            start: Instant::now(),
            samples: Vec::with_capacity(rounds),
            counters: None,
            totals: (0, 0),
        }
    }
}

impl Rounds {
    /// Starts the next round trip; `false` once all are done.
    #[inline]
    pub fn begin(&mut self) -> bool {
        if self.done == self.warm_up && self.counters.is_none() {
            self.counters = Some(Counters::now());
        }
        let more = self.done < self.warm_up + self.rounds;
        if !more {
            if let Some(start) = self.counters.take() {
                let end = Counters::now();
                self.totals = (
                    end.process_cpu.saturating_sub(start.process_cpu),
                    end.process_allocs - start.process_allocs,
                );
            }
        }
        self.start = Instant::now();
        more
    }

    /// Ends the round trip started by the last [`begin`](Self::begin).
    #[inline]
    pub fn end(&mut self) {
        if self.done >= self.warm_up {
            self.samples.push(self.start.elapsed().as_nanos() as u64);
        }
        self.done += 1;
    }

    pub fn samples(self) -> RoundTrips {
        RoundTrips {
            samples: self.samples,
            cpu_ns: self.totals.0,
            allocs: self.totals.1,
        }
    }
}

thread_local! {
    /// Messages the sender on this thread has sent (counted by [`stopped`]).
    static SENT: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Whether the two sides of a workload are pinned to CPUs 0 and 1 (`--no-pin` clears it).
pub static PIN: AtomicBool = AtomicBool::new(true);

/// Pins the calling thread to the `index`th CPU, if pinning is on and there are two CPUs.
///
/// Left to the scheduler, the two sides sometimes share a CPU and sometimes not, and a
/// round trip across CPUs of this VM costs about three times one that stays on a CPU: runs
/// came out bimodal. Pinned, every implementation meets the same conditions: the two sides on
/// different CPUs, as they would be on different machines.
pub fn pin(index: usize) {
    if !PIN.load(Ordering::Relaxed) {
        return;
    }
    if let Some(cores) = core_affinity::get_core_ids().filter(|c| c.len() >= 2) {
        core_affinity::set_for_current(cores[index % cores.len()]);
    }
}

/// Whether the sender should stop; called once before each message, so it also counts them.
#[inline]
pub fn stopped(stop: &AtomicBool) -> bool {
    SENT.with(|n| n.set(n.get() + 1));
    stop.load(Ordering::Relaxed)
}
