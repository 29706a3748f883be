//! A TCP proxy that cuts connections: it forwards between each client and `upstream`, and cuts
//! each connection after a random number of forwarded bytes (counted over both directions): a
//! fifth within the first 300 bytes (mid-handshake, mid-Resume), the rest anywhere up to
//! `max_budget`, mid-frame (and mid-TLS-record) included.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use async_std::net::{TcpListener, TcpStream};
use async_std::task;
use futures::{AsyncReadExt, AsyncWriteExt};

pub struct CuttingProxy {
    pub addr: SocketAddr,
    /// Connections cut so far.
    pub cuts: Arc<AtomicU64>,
    /// Cleared to let new connections through uncut.
    pub cutting: Arc<AtomicBool>,
}

pub fn random_below(n: u64) -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("random bytes");
    u64::from_le_bytes(bytes) % n
}

/// Starts a proxy to `upstream` on a loopback port of its own.
pub async fn cutting_proxy(upstream: SocketAddr, max_budget: u64) -> CuttingProxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let addr = listener.local_addr().expect("proxy address");
    let cuts = Arc::new(AtomicU64::new(0));
    let cutting = Arc::new(AtomicBool::new(true));
    let (c, on) = (cuts.clone(), cutting.clone());
    task::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                continue;
            };
            let Ok(server) = TcpStream::connect(upstream).await else {
                continue;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let budget = if random_below(5) == 0 {
                1 + random_below(300)
            } else {
                1 + random_below(max_budget)
            };
            let cut_here = on.load(Ordering::SeqCst);
            let left = Arc::new(AtomicU64::new(budget));
            let cuts = c.clone();
            let pipe = move |mut from: TcpStream, mut to: TcpStream, left: Arc<AtomicU64>| async move {
                let mut buf = vec![0u8; 8192];
                loop {
                    let n = match from.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let mut n = n as u64;
                    let mut cut = false;
                    if cut_here {
                        let before = left
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| {
                                Some(l.saturating_sub(n))
                            })
                            .unwrap_or(0);
                        if before <= n {
                            n = before;
                            cut = true;
                        }
                    }
                    if to.write_all(&buf[..n as usize]).await.is_err() {
                        break;
                    }
                    if cut {
                        break;
                    }
                }
                let _ = from.shutdown(std::net::Shutdown::Both);
                let _ = to.shutdown(std::net::Shutdown::Both);
            };
            task::spawn(async move {
                let up = pipe(client.clone(), server.clone(), left.clone());
                let down = pipe(server, client, left.clone());
                futures::future::join(up, down).await;
                if cut_here && left.load(Ordering::SeqCst) == 0 {
                    cuts.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    CuttingProxy {
        addr,
        cuts,
        cutting,
    }
}
