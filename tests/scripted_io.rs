//! The connection over scripted I/O, no sockets: reads that return one byte at a time, `Pending`
//! in the middle of frames, short writes and write errors — the situations a real network
//! produces rarely and at random.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use connect::proto::example::HelloWorld;
use connect::{Connection, ConnectionConfig, ConnectionInfo, Error};
use futures::executor::block_on;
use futures::io::{AsyncRead, AsyncWrite};
use futures::{SinkExt, StreamExt};
use prost_types::Any;

/// One step of what the scripted transport does when read from.
#[derive(Debug)]
enum Read {
    /// Hand out these bytes, at most `max_per_read` at a time.
    Data(Vec<u8>),
    /// Return `Pending` once (waking the task at once, as a readiness event would).
    Pending,
    /// Fail with this error.
    Error(io::ErrorKind),
}

/// A transport that plays a script on reads and records writes, taking at most `max_per_write`
/// bytes per call and returning `Pending` on every other write.
#[derive(Debug)]
struct Scripted {
    reads: VecDeque<Read>,
    max_per_read: usize,
    written: Vec<u8>,
    max_per_write: usize,
    write_calls: usize,
    fail_writes_after: Option<usize>,
    flushes: usize,
    closed: bool,
}

impl Scripted {
    fn new(reads: Vec<Read>, max_per_read: usize, max_per_write: usize) -> Self {
        Self {
            reads: reads.into(),
            max_per_read,
            written: Vec::new(),
            max_per_write,
            write_calls: 0,
            fail_writes_after: None,
            flushes: 0,
            closed: false,
        }
    }
}

impl AsyncRead for Scripted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let max = self.max_per_read;
        match self.reads.front_mut() {
            None => Poll::Ready(Ok(0)),
            Some(Read::Pending) => {
                self.reads.pop_front();
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Some(Read::Error(kind)) => {
                let kind = *kind;
                self.reads.pop_front();
                Poll::Ready(Err(kind.into()))
            }
            Some(Read::Data(data)) => {
                let n = data.len().min(buf.len()).min(max);
                buf[..n].copy_from_slice(&data[..n]);
                data.drain(..n);
                if data.is_empty() {
                    self.reads.pop_front();
                }
                Poll::Ready(Ok(n))
            }
        }
    }
}

impl AsyncWrite for Scripted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.write_calls += 1;
        if self.write_calls.is_multiple_of(2) {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if let Some(limit) = self.fail_writes_after {
            if self.written.len() >= limit {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
        }
        let n = buf.len().min(self.max_per_write);
        self.written.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.flushes += 1;
        Poll::Ready(Ok(()))
    }

    fn poll_close(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.closed = true;
        Poll::Ready(Ok(()))
    }
}

fn hello(sequence: u64) -> HelloWorld {
    HelloWorld {
        text: format!("message {sequence} {}", "x".repeat(sequence as usize % 50)),
        sequence,
    }
}

/// The frames of `msgs`, as one byte string.
fn wire(msgs: &[HelloWorld]) -> Vec<u8> {
    let mut conn = Connection::new(Scripted::new(vec![], 1, usize::MAX));
    block_on(async {
        for m in msgs {
            conn.feed_message(m).await.unwrap();
        }
        conn.flush().await.unwrap();
    });
    conn.into_inner().written
}

fn read_all(io: Scripted) -> (Vec<HelloWorld>, Option<Error>) {
    let mut conn = Connection::new(io);
    block_on(async {
        let mut got = Vec::new();
        loop {
            match conn.recv_message::<HelloWorld>().await {
                Ok(Some(m)) => got.push(m),
                Ok(None) => return (got, None),
                Err(e) => return (got, Some(e)),
            }
        }
    })
}

#[test]
fn one_byte_reads_with_pending_between_every_byte() {
    let msgs: Vec<_> = (0..20).map(hello).collect();
    let mut script = Vec::new();
    for byte in wire(&msgs) {
        script.push(Read::Data(vec![byte]));
        script.push(Read::Pending);
    }
    let (got, err) = read_all(Scripted::new(script, 1, usize::MAX));
    assert!(err.is_none(), "{err:?}");
    assert_eq!(got, msgs);
}

#[test]
fn pending_in_the_middle_of_length_prefix_and_body() {
    let big = HelloWorld {
        text: "y".repeat(1000), // two-byte length prefix
        sequence: 7,
    };
    let bytes = wire(std::slice::from_ref(&big));
    let script = vec![
        Read::Data(bytes[..1].to_vec()), // half the varint
        Read::Pending,
        Read::Data(bytes[1..10].to_vec()),
        Read::Pending,
        Read::Pending,
        Read::Data(bytes[10..].to_vec()),
    ];
    let (got, err) = read_all(Scripted::new(script, 3, usize::MAX));
    assert!(err.is_none(), "{err:?}");
    assert_eq!(got, vec![big]);
}

#[test]
fn eof_inside_a_frame_is_an_error_after_the_complete_ones() {
    let msgs: Vec<_> = (0..3).map(hello).collect();
    let bytes = wire(&msgs);
    let cut = bytes.len() - 4;
    let (got, err) = read_all(Scripted::new(vec![Read::Data(bytes[..cut].to_vec())], 5, 1));
    assert_eq!(got, msgs[..2]);
    assert!(
        matches!(err, Some(Error::Truncated { buffered }) if buffered > 0),
        "{err:?}"
    );
}

#[test]
fn eof_inside_a_length_prefix_is_an_error() {
    let (got, err) = read_all(Scripted::new(vec![Read::Data(vec![0x80])], 5, 1));
    assert!(got.is_empty());
    assert!(
        matches!(err, Some(Error::Truncated { buffered: 1 })),
        "{err:?}"
    );
}

#[test]
fn read_errors_end_the_stream_after_delivering_what_arrived() {
    let msgs: Vec<_> = (0..2).map(hello).collect();
    let script = vec![
        Read::Data(wire(&msgs)),
        Read::Error(io::ErrorKind::ConnectionReset),
        Read::Data(wire(&msgs)), // never read: the stream has ended
    ];
    let mut conn = Connection::new(Scripted::new(script, 1000, 1));
    block_on(async {
        for m in &msgs {
            assert_eq!(
                conn.recv_message::<HelloWorld>().await.unwrap().as_ref(),
                Some(m)
            );
        }
        let err = conn.recv().await.unwrap_err();
        assert!(
            matches!(&err, Error::Io(e) if e.kind() == io::ErrorKind::ConnectionReset),
            "{err:?}"
        );
        assert!(conn.next().await.is_none());
    });
}

#[test]
fn interrupted_reads_are_retried() {
    let msgs: Vec<_> = (0..2).map(hello).collect();
    let bytes = wire(&msgs);
    let script = vec![
        Read::Data(bytes[..5].to_vec()),
        Read::Error(io::ErrorKind::Interrupted),
        Read::Data(bytes[5..].to_vec()),
    ];
    let (got, err) = read_all(Scripted::new(script, 1000, 1));
    assert!(err.is_none(), "{err:?}");
    assert_eq!(got, msgs);
}

#[test]
fn short_and_pending_writes_lose_nothing() {
    let msgs: Vec<_> = (0..500).map(hello).collect();
    let expected = wire(&msgs);
    for max_per_write in [1, 3, 1000] {
        let mut conn = Connection::new(Scripted::new(vec![], 1, max_per_write));
        block_on(async {
            for m in &msgs {
                conn.feed_message(m).await.unwrap();
            }
            conn.close().await.unwrap();
        });
        let io = conn.into_inner();
        assert_eq!(io.written, expected, "max_per_write {max_per_write}");
        assert!(io.closed);
    }
}

#[test]
fn feeding_coalesces_into_few_writes_and_one_flush() {
    let msgs: Vec<_> = (0..1000).map(hello).collect();
    let mut conn = Connection::new(Scripted::new(vec![], 1, usize::MAX));
    block_on(async {
        for m in &msgs {
            conn.feed_message(m).await.unwrap();
        }
        conn.flush().await.unwrap();
    });
    let io = conn.into_inner();
    assert_eq!(io.flushes, 1);
    // ~60 KB of frames, written whenever the buffer passes the 64 KiB high-water mark or at the
    // flush: a handful of writes (each taking a Pending turn), not one per message.
    assert!(io.write_calls <= 6, "{} write calls", io.write_calls);
}

#[test]
fn the_sink_interface_sends_anys_in_order() {
    let anys: Vec<Any> = (0..50).map(|i| Any::from_msg(&hello(i)).unwrap()).collect();
    let mut conn = Connection::new(Scripted::new(vec![], 1, 7));
    block_on(async {
        let mut items = futures::stream::iter(anys.clone().into_iter().map(Ok));
        conn.send_all(&mut items).await.unwrap();
    });
    let written = conn.into_inner().written;
    let mut back = Connection::new(Scripted::new(vec![Read::Data(written)], 13, 1));
    let got: Vec<Any> = block_on(back.by_ref().map(|r| r.unwrap()).collect());
    assert_eq!(got, anys);
}

#[test]
fn a_failed_write_closes_the_writer() {
    let mut io = Scripted::new(vec![], 1, 10);
    io.fail_writes_after = Some(20);
    let mut conn = Connection::new(io);
    block_on(async {
        let err = conn.send_message(&hello(1)).await.unwrap_err();
        assert!(
            matches!(&err, Error::Io(e) if e.kind() == io::ErrorKind::BrokenPipe),
            "{err:?}"
        );
        assert!(matches!(
            conn.send_message(&hello(2)).await,
            Err(Error::Closed)
        ));
    });
}

#[test]
fn oversized_outgoing_message_is_refused_and_the_writer_stays_usable() {
    let config = ConnectionConfig::default().with_max_frame_len(100);
    let io = Scripted::new(vec![], 1, usize::MAX);
    let mut conn = Connection::with_config(io, &config, ConnectionInfo::new());
    block_on(async {
        let big = HelloWorld {
            text: "z".repeat(200),
            sequence: 1,
        };
        assert!(matches!(
            conn.send_message(&big).await,
            Err(Error::FrameTooLarge { max: 100, .. })
        ));
        conn.send_message(&hello(2)).await.unwrap();
    });
    assert_eq!(conn.into_inner().written, wire(&[hello(2)]));
}

#[test]
fn reunite_refuses_halves_of_different_connections() {
    let a = Connection::new(Scripted::new(vec![], 1, 1));
    let b = Connection::new(Scripted::new(vec![], 1, 1));
    let (reader_a, writer_a) = a.split();
    let (reader_b, writer_b) = b.split();
    assert!(!reader_a.is_pair_of(&writer_b));
    let connect::ReuniteError(reader_a, writer_b) = reader_a.reunite(writer_b).unwrap_err();
    assert!(reader_a.reunite(writer_a).is_ok());
    assert!(reader_b.reunite(writer_b).is_ok());
}

#[test]
fn reunite_keeps_buffered_input() {
    let msgs: Vec<_> = (0..3).map(hello).collect();
    let conn = Connection::new(Scripted::new(vec![Read::Data(wire(&msgs))], 10_000, 1));
    let (mut reader, writer) = conn.split();
    let first: HelloWorld = block_on(reader.recv_message()).unwrap().unwrap();
    assert_eq!(first, msgs[0]);
    assert!(
        reader.buffered_len() > 0,
        "the rest arrived in the same read"
    );
    let mut conn = reader.reunite(writer).unwrap();
    let rest: Vec<HelloWorld> = block_on(async {
        let mut rest = Vec::new();
        while let Some(m) = conn.recv_message().await.unwrap() {
            rest.push(m);
        }
        rest
    });
    assert_eq!(rest, msgs[1..]);
}
