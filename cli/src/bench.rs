//! `connect bench`: a quick W1 (throughput) and W2 (round-trip latency) against a running echo
//! server, the two workloads of the `connect-bench` suite seen from one client.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use prost_types::Any;

use crate::link::{Link, LinkOptions, Target};

/// What to measure.
#[derive(Args, Clone, Debug)]
pub struct BenchOptions {
    /// Payload bytes per message.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Messages in W1 (throughput).
    #[arg(long, default_value_t = 50_000)]
    pub messages: u64,
    /// Messages in flight at most in W1 (sent as one batch, then their echoes read).
    #[arg(long, default_value_t = 256)]
    pub window: u64,
    /// Round trips in W2 (latency).
    #[arg(long, default_value_t = 1_000)]
    pub pings: u64,
}

/// The message the bench sends: a `google.protobuf.BytesValue`-shaped payload under a type
/// URL of its own, which an echo server returns unchanged.
fn payload(size: usize, sequence: u64) -> Any {
    let mut value = vec![0u8; size];
    let n = size.min(8);
    value[..n].copy_from_slice(&sequence.to_le_bytes()[..n]);
    Any {
        type_url: "type.googleapis.com/connect.cli.v1.BenchPayload".into(),
        value,
    }
}

fn progress(len: u64, what: &str) -> Option<ProgressBar> {
    if !crate::on_terminal() {
        eprintln!("{what}: {len} messages");
        return None;
    }
    let bar = ProgressBar::new(len).with_message(what.to_string());
    if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({per_sec})") {
        bar.set_style(style);
    }
    Some(bar)
}

async fn expect_echo(link: &mut Link, sent: &Any) -> anyhow::Result<()> {
    match link.recv().await.context("receiving an echo failed")? {
        Some(echo) if echo == *sent => Ok(()),
        Some(other) => bail!(
            "the peer answered with {} ({} bytes) instead of the echo: is ADDR an echo server (`cargo run --example tcp-echo-server`)?",
            other.type_url,
            other.value.len()
        ),
        None => bail!("the peer closed the connection before echoing everything"),
    }
}

/// Runs W1 then W2 and prints one result line for each.
pub async fn run(
    target: &Target,
    options: &LinkOptions,
    bench: &BenchOptions,
) -> anyhow::Result<()> {
    if bench.window == 0 {
        bail!("--window must be at least 1");
    }
    let mut link = Link::connect(target, options).await?;

    // W1: batches of `window` messages, each batch flushed once, then its echoes read back.
    let bar = progress(bench.messages, "W1 throughput");
    let start = Instant::now();
    let mut sent = 0;
    while sent < bench.messages {
        let batch: Vec<Any> = (sent..bench.messages.min(sent + bench.window))
            .map(|seq| payload(bench.size, seq))
            .collect();
        for any in &batch {
            link.feed(any.clone()).await.context("sending failed")?;
        }
        link.flush().await.context("sending failed")?;
        for any in &batch {
            expect_echo(&mut link, any).await?;
        }
        sent += batch.len() as u64;
        if let Some(bar) = &bar {
            bar.set_position(sent);
        }
    }
    let elapsed = start.elapsed();
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let rate = bench.messages as f64 / elapsed.as_secs_f64().max(1e-9);
    println!(
        "W1 {} B: {} messages echoed in {:.2?}: {:.0} msg/s, {:.1} MB/s each way",
        bench.size,
        bench.messages,
        elapsed,
        rate,
        rate * bench.size as f64 / 1e6
    );

    // W2: one message at a time.
    let bar = progress(bench.pings, "W2 round trips");
    let mut rtts: Vec<Duration> = Vec::with_capacity(bench.pings as usize);
    for seq in 0..bench.pings {
        let any = payload(bench.size, seq);
        let start = Instant::now();
        link.send(any.clone()).await.context("sending failed")?;
        expect_echo(&mut link, &any).await?;
        rtts.push(start.elapsed());
        if let Some(bar) = &bar {
            bar.inc(1);
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    rtts.sort();
    let at = |p: f64| {
        rtts.get(((rtts.len() as f64 * p) as usize).min(rtts.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    println!(
        "W2 {} B: {} round trips: p50 {:.1?}, p99 {:.1?}, max {:.1?}",
        bench.size,
        rtts.len(),
        at(0.50),
        at(0.99),
        rtts.last().copied().unwrap_or_default()
    );
    let _ = link.close().await;
    Ok(())
}
