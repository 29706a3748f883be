//! `connect`, every layer of it, next to raw TCP, tokio + prost and zmq.rs, measured in one run
//! on loopback.
//!
//! ```text
//! cargo run --release -p connect-bench            # everything, 3 rounds, about ten minutes
//! cargo run --release -p connect-bench -- --quick # a smoke run of every row, about a minute
//! cargo run --release -p connect-bench -- --rounds 1 --only session --size 64 --throughput
//! cargo run --release -p connect-bench -- --rounds 1 --only feed --size 1048576 --seconds 30
//! cargo run --release -p connect-bench -- --only loss --loss
//! cargo run --release -p connect-bench -- --idle --links 2000
//! ```
//!
//! W1, one-way throughput: one connection, the sender on one thread sends as fast as it can,
//! the receiver on another times itself for one second after a 250 ms warm-up. W2, ping-pong:
//! 64-byte messages echoed, 20 000 timed round trips after 2 000 untimed ones. The two sides
//! are pinned to CPUs 0 and 1 (`--no-pin` leaves them to the scheduler). A W1 result is the
//! median of `--rounds` runs (by messages/s); a W2 percentile is the median of that percentile
//! over twice as many rounds. Ratios compare with raw async-std TCP and with the bare
//! connection (`feed_message` / `recv_message`) measured in the same run.
//!
//! Rows: the bare connection, the dispatcher, a session (no authentication, default
//! heartbeats), a reliable stream, TLS 1.3 (rcgen certificates made in memory), a session over
//! TLS, SCTP over UDP with its default and an 8 KiB MTU, and WebSocket (`ws.rs`, with the goals
//! of issue 16); each with CPU time per message (of
//! the receiving thread over the timed window, of the sending thread over its run, and of the
//! whole process, drivers included, over the window) and heap allocations per message (a
//! counting global allocator, the same three ways). Then SCTP through an in-process lossy UDP
//! relay (none, 5 % and 20 % loss, with 2 % duplication and 3 % reordering; messages of 64 B to
//! 200 KiB, checked complete and in order), and memory per idle link: N idle connections and N
//! idle sessions between two child processes of this binary (RSS growth per link, and the CPU
//! the idle links cost per second). The goals of issue 12 and the targets of issue 6 are
//! printed as `met` / `MISSED` lines.
//!
//! Every run of a row has a time limit: a row that fails, panics or hangs is reported as
//! FAILED and the suite exits non-zero (what `--quick` in CI relies on).

mod alloc;
mod conn;
mod dispatch;
mod harness;
mod idle;
mod layers;
mod lossy;
mod pubsub;
mod queue;
mod raw;
mod rpc;
mod tokio_prost;
#[cfg(feature = "tonic")]
mod tonic_unary;
mod ws;
mod zmq;

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use harness::{Latency, Throughput};

#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;

const SIZES: [(usize, &str); 4] = [
    (64, "64 B"),
    (1024, "1 KiB"),
    (64 * 1024, "64 KiB"),
    (1024 * 1024, "1 MiB"),
];

/// A current-thread tokio runtime: one per thread, like the async-std `block_on` sides.
pub fn tokio_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

type ThroughputFn = fn(usize) -> anyhow::Result<Throughput>;
type LatencyFn = fn() -> anyhow::Result<Latency>;

const RAW: &str = "raw TCP, async-std (baseline)";
/// The bare connection every layer is compared with (W1).
const BARE: &str = "connect, feed_message + flush";
/// The bare connection in W2.
const BARE_W2: &str = "connect, async-std";
const ZMQ: &str = "zmq.rs PUSH/PULL";
const DISPATCHER: &str = "connect dispatcher, serve";
const SESSION: &str = "session (no auth, default heartbeats)";
const RELIABLE: &str = "reliable stream";
const TLS: &str = "TLS 1.3 connection";
const SESSION_TLS: &str = "session over TLS 1.3";
const SCTP: &str = "SCTP connection (MTU 1200, default)";
const SCTP_8K: &str = "SCTP connection (MTU 8192)";
const WS_W1: &str = "connect over WebSocket, feed_message + flush";
const WS_W2: &str = "connect over WebSocket, async-std";

fn throughput_impls() -> Vec<(&'static str, ThroughputFn)> {
    use layers::Layer;
    vec![
        (RAW, raw::throughput),
        (BARE, |s| conn::throughput(s, conn::SendMode::Feed)),
        ("connect, feed_encoded + flush", |s| {
            conn::throughput(s, conn::SendMode::FeedEncoded)
        }),
        ("connect, send_message (flush each)", |s| {
            conn::throughput(s, conn::SendMode::SendEach)
        }),
        (WS_W1, ws::throughput),
        (
            "tokio + LengthDelimitedCodec + prost Any",
            tokio_prost::throughput,
        ),
        (ZMQ, zmq::throughput),
        (DISPATCHER, |s| {
            dispatch::throughput(s, dispatch::Path::Serve)
        }),
        ("connect dispatcher, serve, on_sync handler", |s| {
            dispatch::throughput(s, dispatch::Path::ServeSync)
        }),
        ("connect dispatcher, recv Any + dispatch", |s| {
            dispatch::throughput(s, dispatch::Path::AnyThenDispatch)
        }),
        (SESSION, |s| layers::throughput(Layer::Session, s)),
        (RELIABLE, |s| layers::throughput(Layer::Reliable, s)),
        (TLS, |s| layers::throughput(Layer::Tls, s)),
        (SESSION_TLS, |s| layers::throughput(Layer::SessionTls, s)),
        (SCTP, |s| layers::throughput(Layer::Sctp(None), s)),
        (SCTP_8K, |s| layers::throughput(Layer::Sctp(Some(8192)), s)),
    ]
}

fn latency_impls() -> Vec<(&'static str, LatencyFn)> {
    use layers::Layer;
    vec![
        (RAW, raw::ping_pong),
        ("blocking std TCP (floor)", raw::ping_pong_blocking),
        (BARE_W2, conn::ping_pong),
        (WS_W2, ws::ping_pong),
        ("connect, smol", conn::ping_pong_smol),
        ("connect, tokio (compat)", conn::ping_pong_tokio),
        (
            "tokio + LengthDelimitedCodec + prost Any",
            tokio_prost::ping_pong,
        ),
        ("zmq.rs REQ/REP", zmq::ping_pong),
        (DISPATCHER, dispatch::ping_pong),
        (SESSION, || layers::ping_pong(Layer::Session)),
        (RELIABLE, || layers::ping_pong(Layer::Reliable)),
        (TLS, || layers::ping_pong(Layer::Tls)),
        (SESSION_TLS, || layers::ping_pong(Layer::SessionTls)),
        (SCTP, || layers::ping_pong(Layer::Sctp(None))),
        (SCTP_8K, || layers::ping_pong(Layer::Sctp(Some(8192)))),
    ]
}

/// The rows of the SCTP-under-loss section: name, impairment.
fn loss_impls() -> Vec<(&'static str, lossy::Impairment)> {
    use lossy::Impairment;
    vec![
        ("SCTP via relay, no loss", Impairment::NONE),
        (
            LOSS_5,
            Impairment {
                loss: 0.05,
                duplication: 0.02,
                reordering: 0.03,
            },
        ),
        (
            "SCTP via relay, 20 % loss, 2 % dup., 3 % reord.",
            Impairment {
                loss: 0.20,
                duplication: 0.02,
                reordering: 0.03,
            },
        ),
    ]
}

const LOSS_5: &str = "SCTP via relay, 5 % loss, 2 % dup., 3 % reord.";
const IDLE_CONNECTIONS: &str = "idle connections";
const IDLE_SESSIONS: &str = "idle sessions (default heartbeats)";

struct Args {
    rounds: usize,
    only: Option<String>,
    skip_latency: bool,
    skip_throughput: bool,
    skip_loss: bool,
    skip_idle: bool,
    size: Option<usize>,
    /// Leave raw TCP and the bare connection out (for profiling one implementation alone).
    no_baseline: bool,
    quick: bool,
    /// Idle links to open for the memory measurement.
    links: usize,
    /// How long the idle links are watched for the CPU their heartbeats cost.
    idle: Duration,
    /// How long each SCTP-under-loss run is timed.
    loss_window: Duration,
    /// How long a W1 or W2 run may take before it counts as hung.
    row_limit: Duration,
}

const USAGE: &str = "use --quick, --rounds N, --only TEXT, --size BYTES, --seconds S, --links N, \
     --no-pin, --no-baseline, --throughput, --latency, --loss, --idle";

fn args(argv: &[String]) -> anyhow::Result<Args> {
    let mut args = Args {
        rounds: 3,
        only: None,
        skip_latency: false,
        skip_throughput: false,
        skip_loss: false,
        skip_idle: false,
        size: None,
        no_baseline: false,
        quick: false,
        links: 10_000,
        idle: Duration::from_secs(10),
        loss_window: Duration::from_secs(5),
        row_limit: Duration::from_secs(90),
    };
    let mut links = None;
    let mut rounds = None;
    let mut seconds = None;
    let mut sections: Vec<&str> = Vec::new();
    let mut it = argv.iter().map(String::as_str);
    while let Some(arg) = it.next() {
        let mut value = || it.next().unwrap_or_default();
        match arg {
            "--quick" => args.quick = true,
            "--rounds" => rounds = Some(value().parse()?),
            "--only" => args.only = Some(value().to_string()),
            "--throughput" | "--latency" | "--loss" | "--idle" => sections.push(arg),
            "--seconds" => {
                let s: f64 = value().parse()?;
                anyhow::ensure!(s >= 0.1, "--seconds must be at least 0.1");
                seconds = Some(s);
            }
            "--links" => links = Some(value().parse()?),
            "--no-pin" => harness::PIN.store(false, Ordering::Relaxed),
            "--no-baseline" => args.no_baseline = true,
            "--size" => args.size = Some(value().parse()?),
            other => anyhow::bail!("unknown argument {other:?}; {USAGE}"),
        }
    }
    if !sections.is_empty() {
        args.skip_throughput = !sections.contains(&"--throughput");
        args.skip_latency = !sections.contains(&"--latency");
        args.skip_loss = !sections.contains(&"--loss");
        args.skip_idle = !sections.contains(&"--idle");
    }
    if args.quick {
        // A smoke run: every row once, short windows, small N.
        args.rounds = 1;
        args.links = 200;
        args.idle = Duration::from_secs(1);
        args.loss_window = Duration::from_millis(500);
        args.row_limit = Duration::from_secs(30);
        harness::WINDOW_MS.store(200, Ordering::Relaxed);
        harness::WARM_UP_MS.store(50, Ordering::Relaxed);
        harness::PING_PONG_WARM_UP.store(100, Ordering::Relaxed);
        harness::PING_PONG_ROUNDS.store(500, Ordering::Relaxed);
    }
    if let Some(rounds) = rounds {
        args.rounds = rounds;
    }
    if let Some(links) = links {
        args.links = links;
    }
    if let Some(seconds) = seconds {
        harness::WINDOW_MS.store((seconds * 1000.0) as u64, Ordering::Relaxed);
    }
    anyhow::ensure!(args.rounds > 0, "--rounds must be at least 1");
    anyhow::ensure!(args.links > 0, "--links must be at least 1");
    Ok(args)
}

fn selected(args: &Args, name: &str) -> bool {
    ((name == RAW || name == BARE || name == BARE_W2) && !args.no_baseline)
        || args.only.as_deref().is_none_or(|only| name.contains(only))
}

fn median_by<T: Clone>(mut runs: Vec<T>, key: impl Fn(&T) -> f64) -> Option<T> {
    runs.sort_by(|a, b| key(a).total_cmp(&key(b)));
    runs.get(runs.len() / 2).cloned()
}

/// The 1-minute load average, or NaN where unavailable.
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// Runs `work` on its own thread and gives up on it after `limit`: a layer that hangs fails
/// its row instead of the whole run (its threads are left behind; the run exits non-zero).
fn guarded<T: Send + 'static>(
    limit: Duration,
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("workload".into())
        .spawn(move || {
            let _ = tx.send(work());
        })?;
    match rx.recv_timeout(limit) {
        Ok(result) => result,
        Err(RecvTimeoutError::Timeout) => anyhow::bail!("hung: no result within {limit:?}"),
        Err(RecvTimeoutError::Disconnected) => anyhow::bail!("panicked"),
    }
}

/// A ratio `a / b`, or "–" where either side is missing.
fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    Some(a? / b?)
}

fn show_ratio(r: Option<f64>, suffix: &str) -> String {
    r.map_or("–".into(), |r| format!("{r:.2}×{suffix}"))
}

/// Goal lines: description, met.
#[derive(Default)]
struct Checks(Vec<(String, bool)>);

impl Checks {
    /// A "ratio ≥ target" goal; a missing ratio (a row that failed or was not run) is skipped.
    fn at_least(&mut self, what: &str, ratio: Option<f64>, of: &str, target: f64) {
        if let Some(r) = ratio {
            self.0.push((
                format!("{what}: {r:.2}× {of}, target ≥ {target}×"),
                r >= target,
            ));
        }
    }

    fn at_most(&mut self, what: &str, ratio: Option<f64>, of: &str, target: f64) {
        if let Some(r) = ratio {
            self.0.push((
                format!("{what}: {r:.2}× {of}, target ≤ {target}×"),
                r <= target,
            ));
        }
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let result = match argv.first().map(String::as_str) {
        Some("--idle-server") => idle::server(&argv[1..]).map(|()| true),
        Some("--idle-client") => idle::client(&argv[1..]).map(|()| true),
        _ => args(&argv).and_then(run),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The whole suite; `false` if a row failed.
fn run(args: Args) -> anyhow::Result<bool> {
    let load_before = load_average();
    let started = Instant::now();
    // Before any thread is pinned, which would narrow what the process may use.
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut rows: Vec<[String; 7]> = Vec::new();
    let mut issue6 = Checks::default();
    let mut goals = Checks::default();
    let mut failures: Vec<String> = Vec::new();
    // Per layer, the most allocations per message over the W1 sizes: (allocations, where).
    let mut allocs: Vec<(&'static str, f64, &'static str)> = Vec::new();
    let row_limit = args.row_limit;

    if !args.skip_throughput {
        let impls: Vec<_> = throughput_impls()
            .into_iter()
            .filter(|(name, _)| selected(&args, name))
            .collect();
        for (size, size_name) in SIZES {
            if args.size.is_some_and(|s| s != size) {
                continue;
            }
            // The smoke run takes the smallest and the largest: the per-message path and the
            // large-message one (SCTP fragmentation, frame limits).
            if args.quick && args.size.is_none() && ![64, 1024 * 1024].contains(&size) {
                continue;
            }
            let mut runs: Vec<Vec<Throughput>> = vec![Vec::new(); impls.len()];
            let mut hung = vec![false; impls.len()];
            // Rows left out on purpose (not failures): the table says so.
            let mut skipped = vec![false; impls.len()];
            // Rounds interleave the implementations, so a noisy neighbour hurts all alike.
            for _ in 0..args.rounds {
                for (i, &(name, run)) in impls.iter().enumerate() {
                    if hung[i] {
                        continue;
                    }
                    if args.quick && size == 1024 * 1024 && name == ZMQ {
                        // zmq.rs 0.7 stalls with 1 MiB messages on this loaded 2-core VM
                        // (before this suite's layers were added, too); the full run shows it.
                        eprintln!("W1 {size_name:>6} {name:<42} skipped in --quick: it stalls");
                        skipped[i] = true;
                        continue;
                    }
                    match guarded(row_limit, move || run(size)) {
                        Ok(result) => {
                            eprintln!(
                                "W1 {size_name:>6} {name:<42} {:>12.0} msg/s  CPU/msg rx {:>7.0} ns, tx {:>7.0} ns, process {:>7.0} ns; allocs/msg {:.2}; rx {:>3.0}% waiting for a CPU",
                                result.messages_per_sec(),
                                result.cpu_ns_per_message,
                                result.sender_cpu_ns_per_message,
                                result.process_cpu_ns_per_message,
                                result.process_allocs_per_message,
                                result.run_queue_wait * 100.0,
                            );
                            runs[i].push(result);
                        }
                        Err(e) => {
                            // A hung run leaves its threads behind: not tried again.
                            hung[i] = e.to_string().starts_with("hung");
                            eprintln!("W1 {size_name:>6} {name:<42} FAILED: {e:#}");
                            failures.push(format!("W1 {size_name} {name}: {e:#}"));
                        }
                    }
                }
            }
            let medians: Vec<Option<Throughput>> = runs
                .into_iter()
                .map(|r| median_by(r, Throughput::messages_per_sec))
                .collect();
            let rate = |wanted: &str| {
                impls
                    .iter()
                    .zip(&medians)
                    .find(|((name, _), _)| *name == wanted)
                    .and_then(|(_, t)| t.as_ref().map(Throughput::messages_per_sec))
            };
            let (raw, bare) = (rate(RAW), rate(BARE));
            for (((name, _), t), skipped) in impls.iter().zip(&medians).zip(&skipped) {
                let Some(t) = t else {
                    let what = if *skipped {
                        "skipped in --quick (it stalls here)"
                    } else {
                        "FAILED"
                    };
                    rows.push([
                        format!("W1 one-way {size_name}"),
                        name.to_string(),
                        what.into(),
                        "–".into(),
                        "–".into(),
                        "–".into(),
                        "–".into(),
                    ]);
                    continue;
                };
                let rate = Some(t.messages_per_sec());
                let vs_raw = ratio(rate, raw);
                let vs_bare = ratio(rate, bare);
                rows.push([
                    format!("W1 one-way {size_name}"),
                    name.to_string(),
                    format!(
                        "{} msg/s, {:.0} MB/s; RSS {} → {} MiB",
                        si(t.messages_per_sec()),
                        t.megabytes_per_sec(),
                        t.rss_start_kib / 1024,
                        t.rss_end_kib / 1024
                    ),
                    show_ratio(vs_raw, ""),
                    show_ratio(vs_bare, ""),
                    format!(
                        "rx {} tx {}, process {}",
                        nanos(t.cpu_ns_per_message),
                        nanos(t.sender_cpu_ns_per_message),
                        nanos(t.process_cpu_ns_per_message),
                    ),
                    format!(
                        "rx {} tx {}, process {}",
                        count(t.rx_allocs_per_message),
                        count(t.tx_allocs_per_message),
                        count(t.process_allocs_per_message),
                    ),
                ]);
                match allocs.iter_mut().find(|(n, _, _)| n == name) {
                    Some(entry) if entry.1 >= t.process_allocs_per_message => {}
                    Some(entry) => *entry = (name, t.process_allocs_per_message, size_name),
                    None => allocs.push((name, t.process_allocs_per_message, size_name)),
                }
                let (low, high) = if size <= 1024 {
                    (0.8, 0.7)
                } else {
                    (0.95, 0.9)
                };
                match *name {
                    BARE => {
                        let target = match size {
                            64 => 0.5,
                            1024 => 0.85,
                            _ => 0.9,
                        };
                        issue6.at_least(&format!("W1 {size_name}: connect"), vs_raw, "raw", target);
                        if size == 1024 * 1024 {
                            issue6.0.push((
                                format!(
                                    "W1 1 MiB: {:.3} minor faults per message, target < 1",
                                    t.faults_per_message
                                ),
                                t.faults_per_message < 1.0,
                            ));
                        }
                        if size != 1024 {
                            let target = if size == 64 { 0.5 } else { 0.95 };
                            goals.at_least(
                                &format!("W1 {size_name}: bare connection"),
                                vs_raw,
                                "raw TCP",
                                target,
                            );
                        }
                    }
                    DISPATCHER => goals.at_least(
                        &format!("W1 {size_name}: dispatcher serve"),
                        vs_bare,
                        "bare",
                        0.9,
                    ),
                    SESSION => {
                        goals.at_least(&format!("W1 {size_name}: session"), vs_bare, "bare", low)
                    }
                    RELIABLE => goals.at_least(
                        &format!("W1 {size_name}: reliable stream"),
                        vs_bare,
                        "bare",
                        high,
                    ),
                    // Issue 16: 1 KiB one-way over WebSocket at least 0.8x a TCP connection.
                    WS_W1 if size == 1024 => {
                        goals.at_least("W1 1 KiB: WebSocket", vs_bare, "bare", 0.8)
                    }
                    _ => {}
                }
            }
        }
    }

    if !args.skip_throughput {
        pubsub_rows(&args, &mut rows, &mut goals, &mut failures);
        queue_rows(&args, &mut rows, &mut failures);
    }

    eprintln!("== {:.0} s", started.elapsed().as_secs_f64());
    if !args.skip_latency {
        let impls: Vec<_> = latency_impls()
            .into_iter()
            .filter(|(name, _)| selected(&args, name))
            .collect();
        let mut runs: Vec<Vec<Latency>> = vec![Vec::new(); impls.len()];
        // Ping-pong rounds are short: twice as many as for W1.
        for _ in 0..2 * args.rounds {
            for (i, &(name, run)) in impls.iter().enumerate() {
                match guarded(row_limit, run) {
                    Ok(result) => {
                        eprintln!(
                            "W2 {name:<42} p50 {:>7.1} µs  p99 {:>7.1} µs",
                            result.quantile_us(0.5),
                            result.quantile_us(0.99)
                        );
                        runs[i].push(result);
                    }
                    Err(e) => {
                        eprintln!("W2 {name:<42} FAILED: {e:#}");
                        failures.push(format!("W2 {name}: {e:#}"));
                    }
                }
            }
        }
        // Each percentile (and cost) is the median of the rounds' values, so one round spoilt
        // by a burst of other load on the machine does not decide it.
        let medians: Vec<Option<[f64; 5]>> = runs
            .iter()
            .map(|r| {
                if r.is_empty() {
                    return None;
                }
                let median = |f: &dyn Fn(&Latency) -> f64| {
                    let mut v: Vec<f64> = r.iter().map(f).collect();
                    v.sort_by(f64::total_cmp);
                    v[v.len() / 2]
                };
                Some([
                    median(&|l| l.quantile_us(0.5)),
                    median(&|l| l.quantile_us(0.99)),
                    median(&|l| l.quantile_us(0.999)),
                    median(&|l| l.cpu_ns_per_round_trip),
                    median(&|l| l.allocs_per_round_trip),
                ])
            })
            .collect();
        let p50 = |wanted: &str| {
            impls
                .iter()
                .zip(&medians)
                .find(|((name, _), _)| *name == wanted)
                .and_then(|(_, m)| m.map(|m| m[0]))
        };
        let (raw_p50, bare_p50) = (p50(RAW), p50(BARE_W2));
        for ((name, _), m) in impls.iter().zip(&medians) {
            let Some([p50, p99, p999, cpu, allocs]) = *m else {
                rows.push([
                    "W2 ping-pong 64 B".into(),
                    name.to_string(),
                    "FAILED".into(),
                    "–".into(),
                    "–".into(),
                    "–".into(),
                    "–".into(),
                ]);
                continue;
            };
            let vs_raw = ratio(Some(p50), raw_p50);
            let vs_bare = ratio(Some(p50), bare_p50);
            rows.push([
                "W2 ping-pong 64 B".into(),
                name.to_string(),
                format!("p50 {p50:.1} µs, p99 {p99:.1} µs, p99.9 {p999:.1} µs"),
                show_ratio(vs_raw, " (p50)"),
                show_ratio(vs_bare, " (p50)"),
                format!("process {} per round trip", nanos(cpu)),
                format!("process {} per round trip", count(allocs)),
            ]);
            match *name {
                BARE_W2 => {
                    issue6.at_most("W2 p50: connect", vs_raw, "raw async-std", 1.15);
                    issue6.at_most("W2 p99: connect", Some(p99 / p50), "own p50", 1.6);
                }
                SESSION => goals.at_most("W2 p50: session", vs_bare, "bare", 1.1),
                RELIABLE => goals.at_most("W2 p50: reliable stream", vs_bare, "bare", 1.2),
                WS_W2 => goals.at_most("W2 p50: WebSocket", vs_bare, "bare", 1.3),
                _ => {}
            }
        }
    }

    for (name, worst, size_name) in &allocs {
        if [
            BARE,
            DISPATCHER,
            SESSION,
            RELIABLE,
            TLS,
            SESSION_TLS,
            SCTP,
            SCTP_8K,
        ]
        .contains(name)
        {
            goals.0.push((
                format!(
                    "allocations: {name}, at most {} per message (W1 {size_name}, whole process), target 0 (< 0.01)",
                    count(*worst)
                ),
                *worst < 0.01,
            ));
        }
    }

    eprintln!("== {:.0} s", started.elapsed().as_secs_f64());
    let loss_selected = |name: &str| args.only.as_deref().is_none_or(|only| name.contains(only));
    if !args.skip_loss {
        for (name, impairment) in loss_impls() {
            if !loss_selected(name) {
                continue;
            }
            let window = args.loss_window;
            let limit = window + Duration::from_secs(120);
            match guarded(limit, move || lossy::throughput(impairment, window)) {
                Ok(t) => {
                    let mib = t.bytes as f64 / t.elapsed.as_secs_f64() / (1 << 20) as f64;
                    eprintln!("loss {name:<48} {mib:>8.1} MiB/s");
                    rows.push([
                        "SCTP under loss, 64 B–200 KiB".into(),
                        name.to_string(),
                        format!(
                            "{mib:.1} MiB/s, {} msg/s, complete and in order",
                            si(t.messages_per_sec())
                        ),
                        "–".into(),
                        "–".into(),
                        format!("process {}", nanos(t.process_cpu_ns_per_message)),
                        format!("process {}", count(t.process_allocs_per_message)),
                    ]);
                    if name == LOSS_5 {
                        goals.0.push((
                            format!("SCTP at 5 % loss: {mib:.1} MiB/s, target ≥ 30 MiB/s"),
                            mib >= 30.0,
                        ));
                    }
                }
                Err(e) => {
                    eprintln!("loss {name} FAILED: {e:#}");
                    failures.push(format!("{name}: {e:#}"));
                }
            }
        }
    }

    eprintln!("== {:.0} s", started.elapsed().as_secs_f64());
    if !args.skip_idle {
        for (name, kind) in [
            (IDLE_CONNECTIONS, idle::Kind::Connection),
            (IDLE_SESSIONS, idle::Kind::Session),
        ] {
            if !loss_selected(name) {
                continue;
            }
            let (links, idle_for) = (args.links, args.idle);
            match guarded(Duration::from_secs(300), move || {
                idle::measure(kind, links, idle_for)
            }) {
                Ok(m) => {
                    eprintln!(
                        "idle {name:<40} server {:.1} KiB/link, client {:.1} KiB/link",
                        m.server_kib_per_link, m.client_kib_per_link
                    );
                    rows.push([
                        format!("memory per idle link, {} links", m.links),
                        name.to_string(),
                        format!(
                            "server {:.1} KiB, client {:.1} KiB per link (RSS growth)",
                            m.server_kib_per_link, m.client_kib_per_link
                        ),
                        "–".into(),
                        "–".into(),
                        format!(
                            "while idle, over {:?}: server {:.1} ms/s, client {:.1} ms/s",
                            idle_for, m.server_cpu_ms_per_sec, m.client_cpu_ms_per_sec
                        ),
                        "–".into(),
                    ]);
                    goals.0.push((
                        format!(
                            "{name}: {:.1} KiB per link (accepting side, {} links), target ≤ 8 KiB",
                            m.server_kib_per_link, m.links
                        ),
                        m.server_kib_per_link <= 8.0,
                    ));
                }
                Err(e) => {
                    eprintln!("idle {name} FAILED: {e:#}");
                    failures.push(format!("{name}: {e:#}"));
                }
            }
        }
    }

    // Request/reply (`--only rpc`; with `--features tonic`, tonic's unary calls beside it).
    if args
        .only
        .as_deref()
        .is_none_or(|only| "rpc tonic".contains(only))
    {
        rpc::run(
            args.rounds,
            !args.skip_latency,
            !args.skip_throughput,
            &mut rows,
            &mut goals.0,
        )?;
    }

    // An empty selection is a mistyped `--only`, not an empty result.
    anyhow::ensure!(
        !rows.is_empty() || !failures.is_empty(),
        "no benchmark matches --only {:?} in the sections asked for",
        args.only.as_deref().unwrap_or_default()
    );
    println!(
        "{} CPUs, load average {load_before:.1} before and {:.1} after; loopback; {} round(s){}; {:.0} s\n",
        cpus,
        load_average(),
        args.rounds,
        if args.quick { ", --quick" } else { "" },
        started.elapsed().as_secs_f64(),
    );
    println!(
        "| workload | implementation | result | vs raw TCP | vs bare connection | CPU per message | heap allocations per message |"
    );
    println!("|---|---|---|---|---|---|---|");
    for row in &rows {
        println!("| {} |", row.join(" | "));
    }
    let print = |title: &str, checks: &Checks| {
        if !checks.0.is_empty() {
            println!("\n{title}\n");
            for (check, ok) in &checks.0 {
                println!("{} {check}", if *ok { "met:    " } else { "MISSED: " });
            }
        }
    };
    print(
        "Goals of issue 12 (ratios to the bare connection or raw TCP of this run):",
        &goals,
    );
    print(
        "Targets of issue 6 (ratios to raw TCP of this run):",
        &issue6,
    );
    if !failures.is_empty() {
        println!("\nFAILED rows:\n");
        for failure in &failures {
            println!("FAILED: {failure}");
        }
    }
    Ok(failures.is_empty())
}

/// 0.0 → "0", 0.004 → "0.004", 3.0 → "3.00".
fn count(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v < 0.1 {
        format!("{v:.3}")
    } else {
        format!("{v:.2}")
    }
}

type FanOutFn = fn(usize, usize) -> anyhow::Result<pubsub::FanOut>;

const QUEUE_CONNECT: &str = "connect work queue, acked";
const QUEUE_ZMQ: &str = "zmq.rs PUSH/PULL (baseline for queues)";

/// Messages per second through a work queue to 1, 4 and 16 workers at 64 B and 1 KiB
/// (connect, every message acknowledged, next to zmq.rs PUSH/PULL, none).
fn queue_rows(args: &Args, rows: &mut Vec<[String; 7]>, failures: &mut Vec<String>) {
    type QueueFn = fn(usize, usize) -> anyhow::Result<f64>;
    let wanted = |name: &str| args.only.as_deref().is_none_or(|o| name.contains(o));
    let worker_counts: &[usize] = if args.quick { &[4] } else { &[1, 4, 16] };
    for (size, size_name) in [(64, "64 B"), (1024, "1 KiB")] {
        if args.size.is_some_and(|s| s != size) || !(wanted(QUEUE_CONNECT) || wanted(QUEUE_ZMQ)) {
            continue;
        }
        for &workers in worker_counts {
            let impls: [(&str, QueueFn); 2] = [
                (QUEUE_ZMQ, queue::zmq_push_pull),
                (QUEUE_CONNECT, queue::connect_queue),
            ];
            let mut medians = Vec::new();
            for (name, run) in impls {
                if !wanted(name) {
                    continue;
                }
                let mut runs = Vec::new();
                for _ in 0..args.rounds {
                    match guarded(args.row_limit, move || run(workers, size)) {
                        Ok(r) => {
                            eprintln!(
                                "Q {size_name:>6} {workers:>3} workers {name:<40} {r:>12.0} msg/s"
                            );
                            runs.push(r);
                        }
                        Err(e) => {
                            eprintln!(
                                "Q {size_name:>6} {workers:>3} workers {name:<40} FAILED: {e:#}"
                            );
                            failures
                                .push(format!("queue {size_name} {workers} workers {name}: {e:#}"));
                        }
                    }
                }
                if let Some(median) = median_by(runs, |r| *r) {
                    medians.push((name, median));
                }
            }
            let base = medians
                .iter()
                .find(|(n, _)| *n == QUEUE_ZMQ)
                .map(|(_, r)| *r);
            for (name, r) in medians {
                rows.push([
                    format!("work queue {size_name}, {workers} workers"),
                    name.to_string(),
                    format!("{} msg/s", si(r)),
                    format!(
                        "{} (to zmq.rs PUSH/PULL)",
                        show_ratio(ratio(Some(r), base), "")
                    ),
                    "–".into(),
                    "–".into(),
                    "–".into(),
                ]);
            }
        }
    }
}

const PUBSUB_CONNECT: &str = "connect pub/sub, waiting policy";
const PUBSUB_ZMQ: &str = "zmq.rs PUB/SUB (baseline for pub/sub)";
const PUBSUB_MATCH: &str = "connect pub/sub matching, trie";

/// Fan-out to 1, 10 and 100 subscribers at 64 B and 1 KiB (connect next to zmq.rs), and the
/// matching cost with 10 000 filters. Each run is guarded like every other row.
fn pubsub_rows(
    args: &Args,
    rows: &mut Vec<[String; 7]>,
    goals: &mut Checks,
    failures: &mut Vec<String>,
) {
    let run_connect = args
        .only
        .as_deref()
        .is_none_or(|o| PUBSUB_CONNECT.contains(o));
    let run_zmq = args.only.as_deref().is_none_or(|o| PUBSUB_ZMQ.contains(o));
    let subscriber_counts: &[usize] = if args.quick { &[10] } else { &[1, 10, 100] };
    for (size, size_name) in [(64, "64 B"), (1024, "1 KiB")] {
        if args.size.is_some_and(|s| s != size) || !(run_connect || run_zmq) {
            continue;
        }
        for &subscribers in subscriber_counts {
            let (mut ours, mut theirs) = (Vec::new(), Vec::new());
            for _ in 0..args.rounds {
                let impls: [(&str, bool, FanOutFn); 2] = [
                    (PUBSUB_ZMQ, run_zmq, pubsub::zmq_fan_out),
                    (PUBSUB_CONNECT, run_connect, pubsub::connect_fan_out),
                ];
                for (name, wanted, run) in impls {
                    if !wanted {
                        continue;
                    }
                    match guarded(args.row_limit, move || run(subscribers, size)) {
                        Ok(r) => {
                            eprintln!(
                                "PS {size_name:>6} {subscribers:>3} subs {name:<40} {:>12.0} msg/s delivered, publisher CPU {:>6.0} ns/msg",
                                r.delivered_per_sec, r.publisher_cpu_ns_per_delivered
                            );
                            if name == PUBSUB_ZMQ {
                                theirs.push(r);
                            } else {
                                ours.push(r);
                            }
                        }
                        Err(e) => {
                            eprintln!(
                                "PS {size_name:>6} {subscribers:>3} subs {name:<40} FAILED: {e:#}"
                            );
                            failures.push(format!(
                                "pub/sub {size_name} {subscribers} subscribers {name}: {e:#}"
                            ));
                        }
                    }
                }
            }
            let key = |r: &pubsub::FanOut| r.delivered_per_sec;
            let zmq = median_by(theirs, key);
            let connect = median_by(ours, key);
            let base = zmq.as_ref().map(|z| z.delivered_per_sec);
            for (name, result) in [(PUBSUB_ZMQ, &zmq), (PUBSUB_CONNECT, &connect)] {
                let Some(r) = result else { continue };
                rows.push([
                    format!("pub/sub fan-out {size_name}, {subscribers} subscribers"),
                    name.to_string(),
                    format!("{} msg/s delivered", si(r.delivered_per_sec)),
                    format!(
                        "{} (to zmq.rs PUB/SUB)",
                        show_ratio(ratio(Some(r.delivered_per_sec), base), "")
                    ),
                    "–".into(),
                    format!(
                        "publisher thread {}/delivered msg",
                        nanos(r.publisher_cpu_ns_per_delivered)
                    ),
                    "–".into(),
                ]);
            }
            if subscribers == 10 {
                goals.at_least(
                    &format!("pub/sub fan-out {size_name}, 10 subscribers: connect delivered"),
                    ratio(connect.as_ref().map(|c| c.delivered_per_sec), base),
                    "zmq.rs PUB/SUB",
                    1.0,
                );
            }
        }
    }
    if args
        .only
        .as_deref()
        .is_none_or(|o| PUBSUB_MATCH.contains(o))
    {
        match guarded(args.row_limit, || Ok(pubsub::matching_cost())) {
            Ok((trie, scan, matched)) => {
                rows.push([
                    "pub/sub matching, 10 000 filters".into(),
                    PUBSUB_MATCH.into(),
                    format!("{} per topic ({matched:.1} links matched)", nanos(trie)),
                    format!("scan of every filter: {} per topic", nanos(scan)),
                    "–".into(),
                    "–".into(),
                    "–".into(),
                ]);
                goals.at_least(
                    "pub/sub matching with 10 000 filters: trie",
                    Some(scan / trie),
                    "faster than a scan",
                    10.0,
                );
            }
            Err(e) => failures.push(format!("pub/sub matching: {e:#}")),
        }
    }
}

/// 1234.0 → "1.2 µs".
fn nanos(ns: f64) -> String {
    if ns >= 1e3 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

/// 1234567.0 → "1.23 M".
fn si(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1} k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}
