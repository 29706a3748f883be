//! What every workload shares: the payload message, the receiver's meter, round-trip statistics
//! and the per-thread memory counters read from `/proc`.

use std::sync::atomic::{AtomicBool, Ordering};
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

/// How long the receiver lets traffic settle before it starts timing.
pub const WARM_UP: Duration = Duration::from_millis(250);

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
}

impl Throughput {
    pub fn messages_per_sec(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64()
    }

    pub fn megabytes_per_sec(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64() / 1e6
    }
}

/// Counts what the receiver gets: waits out [`WARM_UP`], then times at least `window`, then
/// raises the stop flag the sender watches.
pub struct Meter {
    stop: Arc<AtomicBool>,
    window: Duration,
    started: Instant,
    timing: Option<(Instant, u64, (u64, u64))>,
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
            None if now - self.started >= WARM_UP => {
                self.timing = Some((now, thread_minor_faults(), thread_schedstat()));
                self.messages = 0;
                self.bytes = 0;
                self.started = now;
                self.rss_start = rss_kib();
            }
            None => {}
            Some((start, faults, (cpu, wait))) if now - start >= self.window => {
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
}

impl Latency {
    pub fn from_samples(mut samples: Vec<u64>) -> Self {
        samples.sort_unstable();
        Self { sorted_ns: samples }
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

/// Round trips timed per ping-pong run, after [`PING_PONG_WARM_UP`] untimed ones.
pub const PING_PONG_ROUNDS: usize = 20_000;
/// Untimed round trips before the timed ones.
pub const PING_PONG_WARM_UP: usize = 2_000;
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
    let stop = Arc::new(AtomicBool::new(false));
    let window = Duration::from_millis(WINDOW_MS.load(Ordering::Relaxed));
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
            sender(addr, stop)?;
            let sent = SENT.with(|n| n.get()).max(1);
            Ok::<_, anyhow::Error>((thread_schedstat().0 - cpu) as f64 / sent as f64)
        })?;
    let result = rx
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))?;
    let sender_cpu = tx
        .join()
        .map_err(|_| anyhow::anyhow!("sender panicked"))??;
    result.map(|t| Throughput {
        sender_cpu_ns_per_message: sender_cpu,
        ..t
    })
}

/// Runs a ping-pong workload: `server` echoes on its own thread, `client` times round trips on
/// the calling thread and finally sends an empty message, on which the server stops.
pub fn ping_pong<S, C>(server: S, client: C) -> anyhow::Result<Latency>
where
    S: FnOnce(std::net::TcpListener) -> anyhow::Result<()> + Send + 'static,
    C: FnOnce(std::net::SocketAddr) -> anyhow::Result<Vec<u64>>,
{
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
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

/// How long the receiver times a one-way run (after [`WARM_UP`]), in milliseconds: one second
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
    start: Instant,
    samples: Vec<u64>,
}

impl Default for Rounds {
    fn default() -> Self {
        Self {
            done: 0,
            start: Instant::now(),
            samples: Vec::with_capacity(PING_PONG_ROUNDS),
        }
    }
}

impl Rounds {
    /// Starts the next round trip; `false` once all are done.
    #[inline]
    pub fn begin(&mut self) -> bool {
        self.start = Instant::now();
        self.done < PING_PONG_WARM_UP + PING_PONG_ROUNDS
    }

    /// Ends the round trip started by the last [`begin`](Self::begin).
    #[inline]
    pub fn end(&mut self) {
        if self.done >= PING_PONG_WARM_UP {
            self.samples.push(self.start.elapsed().as_nanos() as u64);
        }
        self.done += 1;
    }

    pub fn samples(self) -> Vec<u64> {
        self.samples
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
