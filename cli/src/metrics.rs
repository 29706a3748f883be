//! `connect listen --metrics[=SECS]`: every SECS seconds, one line per open link with its
//! snapshot (`connect::metrics`), and a line of totals over every link so far.
//!
//! ```text
//! metrics 127.0.0.1:50432 frames_in=12 bytes_in=708 frames_out=12 bytes_out=708 rtt_ms=0.41
//! metrics total links_open=1 links_closed=3 frames_in=40 bytes_in=2360 frames_out=40 bytes_out=2360
//! ```
//!
//! Plain lines on a terminal and in a pipe alike, so scripts and people read the same thing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::link::Link;

/// The frame counts of one link, and what its layer adds.
#[derive(Clone, Debug, Default)]
struct Snapshot {
    frames_in: u64,
    bytes_in: u64,
    frames_out: u64,
    bytes_out: u64,
    /// The layer's own counters, already formatted (` rtt_ms=...`, ` resumes=...`).
    extra: String,
}

fn snapshot(link: &Link) -> Snapshot {
    let frames = |s: connect::ConnectionStats| Snapshot {
        frames_in: s.frames_received,
        bytes_in: s.bytes_received,
        frames_out: s.frames_sent,
        bytes_out: s.bytes_sent,
        extra: String::new(),
    };
    #[allow(unreachable_patterns)] // a transport added later falls back to no numbers
    match link {
        Link::Tcp(c) => frames(c.stats()),
        Link::Tls(c) => frames(c.stats()),
        #[cfg(feature = "sctp")]
        Link::Sctp(c) => frames(c.stats()),
        Link::Session(s) => {
            let stats = s.stats();
            let mut extra = String::new();
            if let Some(rtt) = stats.rtt {
                let _ = write!(extra, " rtt_ms={:.2}", rtt.as_secs_f64() * 1000.0);
            }
            let _ = write!(extra, " queued_in_bytes={}", stats.received_bytes_queued);
            Snapshot {
                frames_in: stats.frames_received,
                bytes_in: stats.bytes_received,
                frames_out: stats.frames_sent,
                bytes_out: stats.bytes_sent,
                extra,
            }
        }
        Link::Reliable(r) => {
            let s = r.stats();
            Snapshot {
                extra: format!(
                    " sent={} confirmed={} retransmitted={} reconnects={} resumes={} queued_out={} queued_in={}",
                    s.sent,
                    s.confirmed,
                    s.retransmitted,
                    s.reconnects,
                    s.resumes,
                    s.outgoing_messages,
                    s.inbound_messages
                ),
                ..Snapshot::default()
            }
        }
        _ => Snapshot::default(),
    }
}

/// The links of a listener and their latest snapshots. Cheap to clone.
#[derive(Clone, Default)]
pub struct Board(Arc<Mutex<Inner>>);

#[derive(Default)]
struct Inner {
    next: u64,
    open: BTreeMap<u64, (String, Snapshot)>,
    closed_links: u64,
    closed: Snapshot,
}

impl Board {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new link from `peer`; its number for [`update`](Self::update) and
    /// [`close`](Self::close).
    pub fn open(&self, peer: &str, link: &Link) -> u64 {
        let mut inner = self.inner();
        inner.next += 1;
        let id = inner.next;
        inner.open.insert(id, (peer.to_owned(), snapshot(link)));
        id
    }

    /// Link `id` moved frames.
    pub fn update(&self, id: u64, link: &Link) {
        if let Some((_, s)) = self.inner().open.get_mut(&id) {
            *s = snapshot(link);
        }
    }

    /// Link `id` is over: its final counts go into the totals.
    pub fn close(&self, id: u64, link: &Link) {
        let last = snapshot(link);
        let mut inner = self.inner();
        inner.open.remove(&id);
        inner.closed_links += 1;
        let closed = &mut inner.closed;
        closed.frames_in += last.frames_in;
        closed.bytes_in += last.bytes_in;
        closed.frames_out += last.frames_out;
        closed.bytes_out += last.bytes_out;
    }

    /// One line per open link, then the totals.
    pub fn lines(&self) -> Vec<String> {
        let inner = self.inner();
        let mut total = inner.closed.clone();
        let mut lines = Vec::new();
        for (peer, s) in inner.open.values() {
            lines.push(format!(
                "metrics {peer} frames_in={} bytes_in={} frames_out={} bytes_out={}{}",
                s.frames_in, s.bytes_in, s.frames_out, s.bytes_out, s.extra
            ));
            total.frames_in += s.frames_in;
            total.bytes_in += s.bytes_in;
            total.frames_out += s.frames_out;
            total.bytes_out += s.bytes_out;
        }
        lines.push(format!(
            "metrics total links_open={} links_closed={} frames_in={} bytes_in={} frames_out={} bytes_out={}",
            inner.open.len(),
            inner.closed_links,
            total.frames_in,
            total.bytes_in,
            total.frames_out,
            total.bytes_out
        ));
        lines
    }

    /// Prints [`lines`](Self::lines) every `every`, forever.
    pub async fn print_every(self, every: Duration) {
        loop {
            async_std::task::sleep(every).await;
            for line in self.lines() {
                println!("{line}");
            }
        }
    }
}
