//! `connect` next to raw TCP, tokio + prost and zmq.rs, measured in one run on loopback.
//!
//! ```text
//! cargo run --release -p connect-bench            # everything, 3 rounds, three to four minutes
//! cargo run --release -p connect-bench -- --rounds 1 --only connect --size 64 --throughput
//! cargo run --release -p connect-bench -- --rounds 1 --only feed --size 1048576 --seconds 30
//! cargo run --release -p connect-bench -- --rounds 5 --only dispatcher --throughput
//! ```
//!
//! W1, one-way throughput: one connection, the sender on one thread sends as fast as it can,
//! the receiver on another times itself for one second after a 250 ms warm-up. W2, ping-pong:
//! 64-byte messages echoed, 20 000 timed round trips after 2 000 untimed ones. The two sides
//! are pinned to CPUs 0 and 1 (`--no-pin` leaves them to the scheduler). A W1 result is the
//! median of `--rounds` runs (by messages/s); a W2 percentile is the median of that percentile
//! over twice as many rounds. Every ratio compares with raw async-std TCP measured in the same
//! run. CPU time and minor page faults are per message, of the receiving thread over the timed
//! window and of the sending thread over its whole run; RSS is the process's at the start and
//! end of the timed window.

mod conn;
mod dispatch;
mod harness;
mod raw;
mod rpc;
mod tokio_prost;
#[cfg(feature = "tonic")]
mod tonic_unary;
mod zmq;

use harness::{Latency, Throughput};

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

fn throughput_impls() -> Vec<(&'static str, ThroughputFn)> {
    vec![
        (RAW, raw::throughput),
        ("connect, feed_message + flush", |s| {
            conn::throughput(s, conn::SendMode::Feed)
        }),
        ("connect, send_message (flush each)", |s| {
            conn::throughput(s, conn::SendMode::SendEach)
        }),
        (
            "tokio + LengthDelimitedCodec + prost Any",
            tokio_prost::throughput,
        ),
        ("zmq.rs PUSH/PULL", zmq::throughput),
        ("connect dispatcher, serve", |s| {
            dispatch::throughput(s, dispatch::Path::Serve)
        }),
        ("connect dispatcher, recv Any + dispatch", |s| {
            dispatch::throughput(s, dispatch::Path::AnyThenDispatch)
        }),
    ]
}

fn latency_impls() -> Vec<(&'static str, LatencyFn)> {
    vec![
        (RAW, raw::ping_pong),
        ("blocking std TCP (floor)", raw::ping_pong_blocking),
        ("connect, async-std", conn::ping_pong),
        ("connect, smol", conn::ping_pong_smol),
        ("connect, tokio (compat)", conn::ping_pong_tokio),
        (
            "tokio + LengthDelimitedCodec + prost Any",
            tokio_prost::ping_pong,
        ),
        ("zmq.rs REQ/REP", zmq::ping_pong),
    ]
}

struct Args {
    rounds: usize,
    only: Option<String>,
    skip_latency: bool,
    skip_throughput: bool,
    size: Option<usize>,
    /// Leave raw TCP out (for profiling one implementation alone); ratios are then to the
    /// first row shown.
    no_baseline: bool,
}

fn args() -> anyhow::Result<Args> {
    let mut args = Args {
        rounds: 3,
        only: None,
        skip_latency: false,
        skip_throughput: false,
        size: None,
        no_baseline: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--rounds" => args.rounds = it.next().unwrap_or_default().parse()?,
            "--only" => args.only = it.next(),
            "--throughput" => args.skip_latency = true,
            "--latency" => args.skip_throughput = true,
            "--seconds" => {
                let seconds: f64 = it.next().unwrap_or_default().parse()?;
                anyhow::ensure!(seconds >= 1.0, "--seconds must be at least 1");
                harness::WINDOW_MS.store((seconds * 1000.0) as u64, std::sync::atomic::Ordering::Relaxed);
            }
            "--no-pin" => harness::PIN.store(false, std::sync::atomic::Ordering::Relaxed),
            "--no-baseline" => args.no_baseline = true,
            "--size" => args.size = Some(it.next().unwrap_or_default().parse()?),
            other => anyhow::bail!(
                "unknown argument {other:?}; use --rounds N, --only TEXT, --size BYTES, --seconds S, --no-pin, --no-baseline, --throughput, --latency"
            ),
        }
    }
    anyhow::ensure!(args.rounds > 0, "--rounds must be at least 1");
    Ok(args)
}

fn selected(args: &Args, name: &str) -> bool {
    (name == RAW && !args.no_baseline)
        || args.only.as_deref().is_none_or(|only| name.contains(only))
}

fn median_by<T: Clone>(mut runs: Vec<T>, key: impl Fn(&T) -> f64) -> T {
    runs.sort_by(|a, b| key(a).total_cmp(&key(b)));
    runs[runs.len() / 2].clone()
}

/// The 1-minute load average, or NaN where unavailable.
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

fn main() -> anyhow::Result<()> {
    let args = args()?;
    let load_before = load_average();
    // Before any thread is pinned, which would narrow what the process may use.
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut rows: Vec<[String; 5]> = Vec::new();
    let mut checks: Vec<(String, bool)> = Vec::new();

    if !args.skip_throughput {
        let impls: Vec<_> = throughput_impls()
            .into_iter()
            .filter(|(name, _)| selected(&args, name))
            .collect();
        for (size, size_name) in SIZES {
            if args.size.is_some_and(|s| s != size) {
                continue;
            }
            let mut runs: Vec<Vec<Throughput>> = vec![Vec::new(); impls.len()];
            // Rounds interleave the implementations, so a noisy neighbour hurts all alike.
            for _ in 0..args.rounds {
                for (i, (name, run)) in impls.iter().enumerate() {
                    let result =
                        run(size).map_err(|e| e.context(format!("{name}, {size_name}")))?;
                    eprintln!(
                        "W1 {size_name:>6} {name:<42} {:>12.0} msg/s  CPU/msg rx {:>7.0} ns, tx {:>7.0} ns; rx {:>3.0}% waiting for a CPU",
                        result.messages_per_sec(),
                        result.cpu_ns_per_message,
                        result.sender_cpu_ns_per_message,
                        result.run_queue_wait * 100.0,
                    );
                    runs[i].push(result);
                }
            }
            let medians: Vec<Throughput> = runs
                .into_iter()
                .map(|r| median_by(r, Throughput::messages_per_sec))
                .collect();
            let raw = medians[0].messages_per_sec();
            for ((name, _), t) in impls.iter().zip(&medians) {
                let ratio = t.messages_per_sec() / raw;
                rows.push([
                    format!("W1 one-way {size_name}"),
                    name.to_string(),
                    format!(
                        "{} msg/s, {:.0} MB/s",
                        si(t.messages_per_sec()),
                        t.megabytes_per_sec()
                    ),
                    format!("{ratio:.2}×"),
                    format!(
                        "CPU/msg rx {} tx {}, {:.3} minor faults/msg, RSS {} → {} MiB",
                        nanos(t.cpu_ns_per_message),
                        nanos(t.sender_cpu_ns_per_message),
                        t.faults_per_message,
                        t.rss_start_kib / 1024,
                        t.rss_end_kib / 1024
                    ),
                ]);
                if name.starts_with("connect, feed") {
                    let target = match size {
                        64 => 0.5,
                        1024 => 0.85,
                        _ => 0.9,
                    };
                    checks.push((
                        format!("W1 {size_name}: connect {ratio:.2}× raw, target ≥ {target}×"),
                        ratio >= target,
                    ));
                    if size == 1024 * 1024 {
                        checks.push((
                            format!(
                                "W1 1 MiB: {:.3} minor faults per message, target < 1",
                                t.faults_per_message
                            ),
                            t.faults_per_message < 1.0,
                        ));
                    }
                }
            }
        }
    }

    if !args.skip_latency {
        let impls: Vec<_> = latency_impls()
            .into_iter()
            .filter(|(name, _)| selected(&args, name))
            .collect();
        let mut runs: Vec<Vec<Latency>> = vec![Vec::new(); impls.len()];
        // Ping-pong rounds are short: twice as many as for W1.
        for _ in 0..2 * args.rounds {
            for (i, (name, run)) in impls.iter().enumerate() {
                let result = run().map_err(|e| e.context(name.to_string()))?;
                eprintln!(
                    "W2 {name:<42} p50 {:>7.1} µs  p99 {:>7.1} µs",
                    result.quantile_us(0.5),
                    result.quantile_us(0.99)
                );
                runs[i].push(result);
            }
        }
        // Each percentile is the median of the rounds' values, so one round spoilt by a burst
        // of other load on the machine does not decide it.
        let medians: Vec<[f64; 3]> = runs
            .iter()
            .map(|r| {
                [0.5, 0.99, 0.999].map(|q| {
                    let mut v: Vec<f64> = r.iter().map(|l| l.quantile_us(q)).collect();
                    v.sort_by(f64::total_cmp);
                    v[v.len() / 2]
                })
            })
            .collect();
        let raw_p50 = medians[0][0];
        for ((name, _), &[p50, p99, p999]) in impls.iter().zip(&medians) {
            rows.push([
                "W2 ping-pong 64 B".into(),
                name.to_string(),
                format!("p50 {p50:.1} µs, p99 {p99:.1} µs, p99.9 {p999:.1} µs"),
                format!("{:.2}× (p50)", p50 / raw_p50),
                format!("p99 = {:.2}× own p50", p99 / p50),
            ]);
            if *name == "connect, async-std" {
                checks.push((
                    format!(
                        "W2 p50: connect {:.2}× raw async-std, target ≤ 1.15×",
                        p50 / raw_p50
                    ),
                    p50 / raw_p50 <= 1.15,
                ));
                checks.push((
                    format!("W2 p99: {:.2}× own p50, target ≤ 1.6×", p99 / p50),
                    p99 / p50 <= 1.6,
                ));
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
            &mut checks,
        )?;
    }

    println!(
        "{} CPUs, load average {load_before:.1} before and {:.1} after; loopback; {} round(s)\n",
        cpus,
        load_average(),
        args.rounds
    );
    println!("| workload | implementation | result | vs raw TCP | notes |");
    println!("|---|---|---|---|---|");
    for row in &rows {
        println!("| {} |", row.join(" | "));
    }
    println!();
    for (check, ok) in &checks {
        println!("{} {check}", if *ok { "met:    " } else { "MISSED: " });
    }
    Ok(())
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
