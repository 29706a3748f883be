//! SCTP under loss: an in-process UDP relay between an SCTP client and server drops, duplicates
//! and reorders datagrams in both directions (a deterministic pseudo-random sequence per
//! direction), while the client sends messages of mixed sizes up to 200 KiB. The receiver
//! checks that every message arrives complete and in order, and times itself like W1.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use connect::transport::sctp::{self, SctpConfig, SctpListener};

use crate::harness::{self, Meter, Payload, Throughput};

/// What the relay does to datagrams, as probabilities per datagram.
#[derive(Clone, Copy, Debug)]
pub struct Impairment {
    pub loss: f64,
    pub duplication: f64,
    pub reordering: f64,
}

impl Impairment {
    pub const NONE: Self = Self {
        loss: 0.0,
        duplication: 0.0,
        reordering: 0.0,
    };
}

/// Messages of these sizes, in a fixed pseudo-random order.
const SIZES: [usize; 6] = [64, 1024, 8 * 1024, 64 * 1024, 150 * 1024, 200 * 1024];

/// xorshift64*: small, deterministic, good enough to pick fates and sizes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The size of message number `seq` (its first 8 bytes carry `seq`).
fn size_of(seq: u64) -> usize {
    let mut rng = Rng(seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    SIZES[(rng.next() % SIZES.len() as u64) as usize]
}

fn message(seq: u64) -> Payload {
    let mut data = vec![(seq % 251) as u8; size_of(seq)];
    data[..8].copy_from_slice(&seq.to_le_bytes());
    Payload {
        data: Bytes::from(data),
    }
}

/// Forwards what `recv` gets to `send`, impaired, until `stop`. A datagram held back for
/// reordering goes out after the next one, or when nothing arrives for a moment.
fn forward(
    mut recv: impl FnMut(&mut [u8]) -> std::io::Result<usize>,
    send: impl Fn(&[u8]),
    impairment: Impairment,
    seed: u64,
    stop: &AtomicBool,
) {
    let mut rng = Rng(seed);
    let mut buf = vec![0; 65_536];
    let mut held: Option<Vec<u8>> = None;
    while !stop.load(Ordering::Relaxed) {
        // Errors are the read timeout, or ICMP "port unreachable" from a peer that is gone.
        let Ok(n) = recv(&mut buf) else {
            if let Some(late) = held.take() {
                send(&late);
            }
            continue;
        };
        let datagram = &buf[..n];
        let fate = rng.unit();
        let duplicate = impairment.loss + impairment.duplication;
        if fate < impairment.loss {
            continue;
        } else if fate < duplicate {
            send(datagram);
            send(datagram);
        } else if fate < duplicate + impairment.reordering && held.is_none() {
            held = Some(datagram.to_vec());
            continue;
        } else {
            send(datagram);
        }
        if let Some(late) = held.take() {
            send(&late);
        }
    }
}

fn udp_socket() -> anyhow::Result<UdpSocket> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    // Large enough that the relay itself does not add loss of its own at loopback rates (the
    // kernel caps it at net.core.rmem_max).
    socket.set_recv_buffer_size(8 << 20)?;
    socket.set_send_buffer_size(8 << 20)?;
    socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    let socket: UdpSocket = socket.into();
    socket.set_read_timeout(Some(Duration::from_millis(2)))?;
    Ok(socket)
}

/// A relay from a front address (where the client sends) to `server`; runs until dropped.
struct Relay {
    front: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Relay {
    fn start(server: SocketAddr, impairment: Impairment, seed: u64) -> anyhow::Result<Self> {
        let front = udp_socket()?;
        let back = udp_socket()?;
        back.connect(server)?;
        let front_addr = front.local_addr()?;
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (front2, back2) = (front.try_clone()?, back.try_clone()?);
        let (client2, stop2) = (client.clone(), stop.clone());
        let upstream = std::thread::Builder::new()
            .name("relay up".into())
            .spawn(move || {
                let recv = |buf: &mut [u8]| {
                    let (n, from) = front2.recv_from(buf)?;
                    *client2.lock().unwrap_or_else(|e| e.into_inner()) = Some(from);
                    Ok(n)
                };
                let send = |datagram: &[u8]| drop(back2.send(datagram));
                forward(recv, send, impairment, seed, &stop2);
            })?;
        let stop3 = stop.clone();
        let downstream = std::thread::Builder::new()
            .name("relay down".into())
            .spawn(move || {
                let send = |datagram: &[u8]| {
                    if let Some(to) = *client.lock().unwrap_or_else(|e| e.into_inner()) {
                        let _ = front.send_to(datagram, to);
                    }
                };
                forward(
                    |buf| back.recv(buf),
                    send,
                    impairment,
                    seed ^ 0x5555_5555,
                    &stop3,
                );
            })?;
        Ok(Self {
            front: front_addr,
            stop,
            threads: vec![upstream, downstream],
        })
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// One-way SCTP (default configuration) through a relay with `impairment`, timed for `window`.
pub fn throughput(impairment: Impairment, window: Duration) -> anyhow::Result<Throughput> {
    let config = SctpConfig::default();
    let listener =
        async_std::task::block_on(SctpListener::bind_with("127.0.0.1:0", config.clone()))?;
    let relay = Relay::start(listener.local_addr(), impairment, 0x00c0_ffee)?;
    let result = harness::one_way_window(
        listener,
        relay.front,
        window,
        move |addr, stop| {
            async_std::task::block_on(async {
                let mut conn = sctp::connect_with(addr, &config).await?;
                let mut seq = 0;
                while !harness::stopped(&stop) {
                    seq += 1;
                    conn.feed_message(&message(seq)).await?;
                }
                conn.send_message(&Payload::default()).await?;
                sctp::shutdown(conn).await?;
                Ok(())
            })
        },
        |listener: SctpListener, mut meter: Meter| {
            async_std::task::block_on(async {
                let mut conn = listener.accept().await?;
                let mut expected = 1u64;
                while let Some(msg) = conn.recv_message::<Payload>().await? {
                    if msg.data.is_empty() {
                        break;
                    }
                    anyhow::ensure!(msg.data.len() >= 8, "a message of {} bytes", msg.data.len());
                    let seq = u64::from_le_bytes(msg.data[..8].try_into()?);
                    anyhow::ensure!(
                        seq == expected,
                        "message {seq} arrived where {expected} was due"
                    );
                    anyhow::ensure!(
                        msg.data.len() == size_of(seq)
                            && msg.data[8..].iter().all(|&b| b == (seq % 251) as u8),
                        "message {seq} arrived damaged"
                    );
                    expected += 1;
                    meter.tick(msg.data.len());
                }
                while conn.recv().await?.is_some() {}
                meter.finish()
            })
        },
    );
    drop(relay);
    result
}
