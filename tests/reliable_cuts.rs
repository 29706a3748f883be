//! Reliable streams through cuts at chosen bytes: a close cut at every byte of its connection
//! completes once with no phantom stream, and a server restart whose first `Resume` answer is
//! cut at every byte leaves the client on a new stream with nothing lost.
//!
//! A scripted proxy sits between client and server: each new connection takes the next cut of
//! its plan (none once the plan is empty), and `kill_all` cuts every live connection (the
//! server process "dies").

mod support;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_std::net::{TcpListener as RawListener, TcpStream};
use async_std::task;
use connect::reliable::{Backoff, Event, ReliableConfig, ReliableServer, ReliableStream};
use connect::session::SessionConfig;
use connect::transport::tcp::{self, TcpListener};
use futures::{AsyncReadExt, AsyncWriteExt};

use support::{numbered as hello, sequence, within};

fn session_config() -> SessionConfig {
    SessionConfig::new().with_heartbeat(Some(Duration::from_millis(500)))
}

fn client(addr: SocketAddr) -> ReliableStream {
    let config = ReliableConfig::new().with_backoff(
        Backoff::new()
            .with_initial(Duration::from_millis(1))
            .with_max(Duration::from_millis(20))
            .with_max_attempts(Some(500)),
    );
    tcp::connect_reliable(addr, session_config(), config, |task| {
        async_std::task::spawn(task);
    })
}

/// Where the proxy cuts one connection.
#[derive(Clone, Copy, Debug)]
enum Cut {
    /// After this many bytes from the client.
    Up(usize),
    /// After this many bytes from the server.
    Down(usize),
    /// Inside the server's frame number `frame` (0: the Welcome), after `offset` of its bytes
    /// (prefix included); no cut if the frame is shorter. With `keep_server`, only the
    /// client's side is cut: the server's stays open (until `kill_all`), so the server has sent
    /// its frame whole and has not seen the drop when the client comes back.
    DownFrame {
        frame: usize,
        offset: usize,
        keep_server: bool,
    },
}

#[derive(Default)]
struct ProxyState {
    plan: VecDeque<Cut>,
    /// Bytes each finished connection carried (up, down).
    carried: Vec<(usize, usize)>,
    /// Whether the last `DownFrame` cut fell inside its frame.
    cut_in_frame: Option<bool>,
    live: Vec<(TcpStream, TcpStream)>,
}

#[derive(Clone)]
struct Proxy {
    addr: SocketAddr,
    state: Arc<Mutex<ProxyState>>,
}

impl Proxy {
    fn plan(&self, cut: Cut) {
        let mut s = self.state.lock().unwrap();
        s.plan.push_back(cut);
        s.cut_in_frame = None;
    }

    fn kill_all(&self) {
        for (a, b) in self.state.lock().unwrap().live.drain(..) {
            let _ = a.shutdown(std::net::Shutdown::Both);
            let _ = b.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Start offset and length of frame `index` in `bytes`, once its length prefix is there.
fn frame_bounds(bytes: &[u8], index: usize) -> Option<(usize, usize)> {
    let mut at = 0;
    for i in 0.. {
        let (mut len, mut shift, mut prefix) = (0usize, 0, 0);
        loop {
            let b = *bytes.get(at + prefix)?;
            len |= usize::from(b & 0x7f) << shift;
            shift += 7;
            prefix += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
        if i == index {
            return Some((at, prefix + len));
        }
        at += prefix + len;
    }
    None
}

async fn proxy(upstream: Arc<Mutex<SocketAddr>>) -> Proxy {
    let listener = RawListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(Mutex::new(ProxyState::default()));
    let st = state.clone();
    task::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                continue;
            };
            let to = *upstream.lock().unwrap();
            let Ok(server) = TcpStream::connect(to).await else {
                continue;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let cut = {
                let mut s = st.lock().unwrap();
                s.live.push((client.clone(), server.clone()));
                s.plan.pop_front()
            };
            let st = st.clone();
            task::spawn(async move {
                let up = pipe(client.clone(), server.clone(), cut, true, st.clone());
                let down = pipe(server, client, cut, false, st.clone());
                let (up, down) = futures::future::join(up, down).await;
                st.lock().unwrap().carried.push((up, down));
            });
        }
    });
    Proxy { addr, state }
}

/// Forwards `from` to `to`, cutting both where `cut` says (if it concerns this direction).
/// Returns the bytes forwarded.
async fn pipe(
    mut from: TcpStream,
    mut to: TcpStream,
    cut: Option<Cut>,
    up: bool,
    state: Arc<Mutex<ProxyState>>,
) -> usize {
    let mut seen: Vec<u8> = Vec::new();
    let mut forwarded = 0;
    let mut buf = vec![0u8; 8192];
    'outer: loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        seen.extend_from_slice(&buf[..n]);
        // How far we may forward now, and whether that is the cut.
        let (limit, cutting) = match (cut, up) {
            (Some(Cut::Up(at)), true) | (Some(Cut::Down(at)), false) => {
                (at.min(seen.len()), seen.len() >= at)
            }
            (Some(Cut::DownFrame { frame, offset, .. }), false) => {
                match frame_bounds(&seen, frame) {
                    // Hold the bytes back until the frame's position is known.
                    None => continue 'outer,
                    Some((start, len)) if offset < len => {
                        let at = start + offset;
                        if seen.len() >= at {
                            state.lock().unwrap().cut_in_frame = Some(true);
                        }
                        (at.min(seen.len()), seen.len() >= at)
                    }
                    Some(_) => {
                        state.lock().unwrap().cut_in_frame = Some(false);
                        (seen.len(), false)
                    }
                }
            }
            _ => (seen.len(), false),
        };
        if limit > forwarded {
            if to.write_all(&seen[forwarded..limit]).await.is_err() {
                break;
            }
            forwarded = limit;
        }
        if cutting {
            break;
        }
    }
    let (client_side, server_side) = if up { (from, to) } else { (to, from) };
    let _ = client_side.shutdown(std::net::Shutdown::Both);
    if !matches!(
        cut,
        Some(Cut::DownFrame {
            keep_server: true,
            ..
        })
    ) {
        let _ = server_side.shutdown(std::net::Shutdown::Both);
    }
    forwarded
}

/// What the server's application saw: each new stream's messages.
type Seen = Arc<Mutex<Vec<Vec<u64>>>>;

/// A reliable server on loopback recording what each new stream receives; reads at most
/// `take` messages per stream, then holds the stream without reading.
async fn server(config: ReliableConfig, take: usize) -> (SocketAddr, ReliableServer, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = ReliableServer::new(session_config(), config);
    let seen: Seen = Arc::default();
    let (srv, sn) = (server.clone(), seen.clone());
    task::spawn(async move {
        loop {
            let Ok(conn) = listener.accept().await else {
                continue;
            };
            let (srv, sn) = (srv.clone(), sn.clone());
            task::spawn(async move {
                let Ok(accepted) = srv.accept(conn).await else {
                    return;
                };
                match accepted {
                    connect::reliable::Accepted::NewStream { mut stream, driver } => {
                        let index = {
                            let mut s = sn.lock().unwrap();
                            s.push(Vec::new());
                            s.len() - 1
                        };
                        task::spawn(async move {
                            for _ in 0..take {
                                match stream.recv().await {
                                    Ok(Some(any)) => sn.lock().unwrap()[index].push(sequence(&any)),
                                    _ => return,
                                }
                            }
                            // Hold the stream (dropping it would close it) until it ends.
                            let _ = stream.next_event().await;
                            while stream.next_event().await.is_some() {}
                        });
                        driver.await;
                    }
                    connect::reliable::Accepted::Resumed { driver } => driver.await,
                    _ => {}
                }
            });
        }
    });
    (addr, server, seen)
}

async fn events_until_closed(events: connect::reliable::Events) -> Vec<Event> {
    within(20, "events end", futures::StreamExt::collect(events)).await
}

/// One stream: three messages, then close; returns its events.
async fn send_three_and_close(addr: SocketAddr) -> Vec<Event> {
    let mut stream = client(addr);
    let events = stream.events();
    for i in 0..3 {
        stream.feed(hello(i)).await.unwrap();
    }
    within(30, "close", stream.close()).await.unwrap();
    events_until_closed(events).await
}

#[async_std::test]
async fn a_close_cut_at_any_byte_completes_once_without_a_phantom_stream() {
    let _ = env_logger::builder().is_test(true).try_init();
    let config = ReliableConfig::new().with_resume_timeout(Duration::from_secs(30));
    let (upstream, server, seen) = server(config, usize::MAX).await;
    let proxy = proxy(Arc::new(Mutex::new(upstream))).await;

    // Calibration: the bytes an uncut stream carries each way.
    send_three_and_close(proxy.addr).await;
    let (up, down) = within(10, "calibration", async {
        loop {
            if let Some(&c) = proxy.state.lock().unwrap().carried.first() {
                break c;
            }
            task::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(up > 100 && down > 100, "carried {up} up, {down} down");

    let cuts = (0..=up).map(Cut::Up).chain((0..=down).map(Cut::Down));
    let mut runs = 1;
    for cut in cuts {
        proxy.plan(cut);
        let events = send_three_and_close(proxy.addr).await;
        runs += 1;
        let connected: Vec<&Event> = events
            .iter()
            .filter(|e| matches!(e, Event::Connected { .. }))
            .collect();
        assert!(
            matches!(
                connected.as_slice(),
                [Event::Connected {
                    new_stream: false,
                    ..
                }]
            ),
            "{cut:?}: {events:?}"
        );
        assert_eq!(
            events
                .iter()
                .filter(|e| matches!(e, Event::Closed { .. }))
                .count(),
            1,
            "{cut:?}: {events:?}"
        );
        assert_eq!(
            events.last(),
            Some(&Event::Closed { reason: None }),
            "{cut:?}"
        );
        // The close completes once the server's application has taken every message (taking
        // releases the acknowledgement), but the server task records a message only after
        // `recv` returns: give that record a moment; a message never taken still fails below.
        let recorded = async {
            while seen.lock().unwrap().get(runs - 1).map_or(0, Vec::len) < 3 {
                task::sleep(Duration::from_millis(1)).await;
            }
        };
        let _ = async_std::future::timeout(Duration::from_secs(10), recorded).await;
        let seen = seen.lock().unwrap();
        assert_eq!(
            seen.len(),
            runs,
            "{cut:?}: one stream per close, no phantom: {events:?}"
        );
        assert_eq!(seen[runs - 1], vec![0, 1, 2], "{cut:?}");
    }
    // Every stream ended; what is left is tombstones, bounded and expiring.
    within(10, "streams forgotten", async {
        while server.stream_count() > 0 {
            task::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(server.closed_count() <= runs);
}

#[async_std::test]
async fn a_restart_with_its_first_resume_answer_cut_at_any_byte_starts_a_new_stream() {
    let _ = env_logger::builder().is_test(true).try_init();
    let config = ReliableConfig::new().with_resume_timeout(Duration::from_secs(30));
    // The server sees the cut at once (it may not even finish sending its answer), or only
    // later (it sent the answer whole; the client's next connection finds the stream it
    // announced).
    for keep_server in [false, true] {
        restart_with_the_answer_cut(&config, keep_server).await;
    }
}

async fn restart_with_the_answer_cut(config: &ReliableConfig, keep_server: bool) {
    for offset in 0.. {
        // The first server takes 5 messages, then keeps 3 more unconfirmed when it "dies".
        let (first, _first_server, first_seen) = server(config.clone(), 5).await;
        let upstream = Arc::new(Mutex::new(first));
        let proxy = proxy(upstream.clone()).await;
        let mut stream = client(proxy.addr);
        let mut events = stream.events();
        for i in 0..5 {
            within(20, "confirmed", stream.send_confirmed(hello(i)))
                .await
                .unwrap();
        }
        for i in 5..8 {
            stream.feed(hello(i)).await.unwrap();
        }
        within(20, "written", async {
            while stream.stats().sent < 8 {
                task::sleep(Duration::from_millis(2)).await;
            }
        })
        .await;
        assert_eq!(
            first_seen.lock().unwrap().as_slice(),
            &[vec![0, 1, 2, 3, 4]]
        );

        // The server dies and a new one starts; the client's first connection to it is cut
        // inside the Resume answer (frame 1, after the Welcome).
        let (second, _second_server, second_seen) = server(config.clone(), usize::MAX).await;
        *upstream.lock().unwrap() = second;
        proxy.plan(Cut::DownFrame {
            frame: 1,
            offset,
            keep_server,
        });
        proxy.kill_all();
        // Message 8 must go to the new server only: had the client not yet seen the old
        // connection die, it would write 8 there too and count it among the retransmitted.
        within(20, "the old connection's end", async {
            while let Some(event) = futures::StreamExt::next(&mut events).await {
                if matches!(event, Event::Disconnected { .. }) {
                    break;
                }
            }
        })
        .await;

        within(
            30,
            "confirmed on the new server",
            stream.send_confirmed(hello(8)),
        )
        .await
        .unwrap();
        match proxy.state.lock().unwrap().cut_in_frame {
            Some(true) => {}
            Some(false) => break,
            None => panic!("offset {offset}: the planned connection never came"),
        }
        within(30, "close", stream.close()).await.unwrap();
        let mut new_streams = 0;
        while let Some(event) = within(20, "events", futures::StreamExt::next(&mut events)).await {
            if let Event::Connected {
                new_stream: true,
                retransmitted,
                ..
            } = event
            {
                new_streams += 1;
                assert_eq!(retransmitted, 3, "offset {offset}");
            }
        }
        assert_eq!(new_streams, 1, "offset {offset}");
        assert_eq!(
            second_seen.lock().unwrap().as_slice(),
            &[vec![5, 6, 7, 8]],
            "offset {offset}: what the dead server had not taken is sent again, once"
        );
        assert!(offset < 200, "the Resume answer is shorter than that");
    }
}
