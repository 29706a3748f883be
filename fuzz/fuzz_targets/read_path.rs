//! Fuzzes what a connection runs on every byte it receives: `ConnectionReader::poll_next` over
//! a scripted transport that hands out the input in pieces whose sizes (and `Pending`s) come
//! from the input itself.
//!
//! Checks: no panic; the reader never holds more than one maximum frame, its length prefix and
//! one read; once it reports an error or the end, it stays ended.
//!
//! ```text
//! cargo fuzz run read_path --sanitizer none
//! ```
#![no_main]

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use connect::{ConnectionConfig, ConnectionInfo, ConnectionReader};
use futures_core::Stream;
use futures_io::AsyncRead;
use libfuzzer_sys::fuzz_target;

const MAX_FRAME_LEN: usize = 4096;
/// The largest piece the transport hands out at once.
const MAX_READ: usize = 255;

/// Hands out `data` in pieces: each control byte says how many bytes the next read returns
/// (0 means `Pending`, after waking the task).
struct Scripted {
    control: Vec<u8>,
    data: Vec<u8>,
    step: usize,
    pos: usize,
}

impl AsyncRead for Scripted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let size = this
            .control
            .get(this.step % this.control.len().max(1))
            .copied()
            .unwrap_or(64);
        this.step += 1;
        if size == 0 {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let n = usize::from(size)
            .min(buf.len())
            .min(this.data.len() - this.pos);
        buf[..n].copy_from_slice(&this.data[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(n))
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&control_len, rest)) = input.split_first() else {
        return;
    };
    let (control, data) = rest.split_at(usize::from(control_len).min(rest.len()));
    let io = Scripted {
        control: control.to_vec(),
        data: data.to_vec(),
        step: 0,
        pos: 0,
    };
    let config = ConnectionConfig::default().with_max_frame_len(MAX_FRAME_LEN);
    let mut reader = ConnectionReader::new(io, &config, ConnectionInfo::new());
    let mut cx = Context::from_waker(Waker::noop());
    let mut ended = false;
    // Every poll makes progress or is one of the script's `Pending`s: bounded.
    for _ in 0..4 * (data.len() + control.len() + 2) {
        match Pin::new(&mut reader).poll_next(&mut cx) {
            Poll::Ready(Some(Ok(any))) => {
                assert!(!ended, "a message after the end");
                assert!(any.type_url.len() + any.value.len() <= MAX_FRAME_LEN);
            }
            Poll::Ready(Some(Err(_))) | Poll::Ready(None) => ended = true,
            Poll::Pending => {}
        }
        assert!(
            reader.buffered_len() <= MAX_FRAME_LEN + 10 + MAX_READ,
            "{} bytes buffered",
            reader.buffered_len()
        );
        if ended {
            // Stays ended.
            assert!(!matches!(
                Pin::new(&mut reader).poll_next(&mut cx),
                Poll::Ready(Some(Ok(_)))
            ));
            return;
        }
    }
});
