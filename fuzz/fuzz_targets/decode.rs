//! Fuzzes the frame decoder with arbitrary bytes delivered in arbitrary pieces.
//!
//! Checks: no panic; no reservation beyond one maximum-sized frame; every decoded `Any`
//! re-encodes to a frame that decodes to the same `Any`.
//!
//! ```text
//! cargo install cargo-fuzz
//! cargo fuzz run decode --sanitizer none      # from the repository root; works on stable
//! ```
#![no_main]

use bytes::BytesMut;
use connect::codec::Codec;
use libfuzzer_sys::fuzz_target;

const MAX_FRAME_LEN: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, data)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let codec = Codec::with_max_frame_len(MAX_FRAME_LEN);
    let mut buf = BytesMut::new();
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(any)) => {
                    let mut again = BytesMut::new();
                    codec
                        .encode(&any, &mut again)
                        .expect("a decoded Any fits the maximum");
                    assert_eq!(codec.decode(&mut again).ok().flatten(), Some(any));
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(buf.capacity() <= 2 * (MAX_FRAME_LEN + 10) + data.len());
    }
});
