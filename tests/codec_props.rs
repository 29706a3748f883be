//! Property tests of the codec: whatever the message list and however the byte stream is cut,
//! decoding gives the same list back; random bytes never panic nor make the decoder reserve more
//! than the maximum frame length.

use bytes::BytesMut;
use connect::codec::Codec;
use connect::Error;
use proptest::prelude::*;
use prost_types::Any;

fn any_strategy() -> impl Strategy<Value = Any> {
    (
        prop_oneof![
            Just(String::new()),
            "[a-z]{1,10}(\\.[A-Za-z]{1,10}){0,3}".prop_map(|n| format!("type.googleapis.com/{n}")),
            ".{0,40}",
        ],
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64),
            proptest::collection::vec(any::<u8>(), 100..3000),
        ],
    )
        .prop_map(|(type_url, value)| Any { type_url, value })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_list_survives_any_cutting(
        msgs in proptest::collection::vec(any_strategy(), 0..20),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..30),
    ) {
        let codec = Codec::new();
        let mut wire = BytesMut::new();
        for m in &msgs {
            codec.encode(m, &mut wire).unwrap();
        }
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
        points.push(0);
        points.push(wire.len());
        points.sort_unstable();
        points.dedup();

        let mut received = BytesMut::new();
        let mut decoded = Vec::new();
        for pair in points.windows(2) {
            received.extend_from_slice(&wire[pair[0]..pair[1]]);
            while let Some(any) = codec.decode(&mut received).unwrap() {
                decoded.push(any);
            }
        }
        prop_assert!(received.is_empty());
        prop_assert_eq!(decoded, msgs);
    }

    #[test]
    fn random_bytes_never_panic_nor_over_reserve(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        max in 0usize..4096,
    ) {
        let codec = Codec::with_max_frame_len(max);
        let mut buf = BytesMut::from(&bytes[..]);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(any)) => prop_assert!(any.type_url.len() + any.value.len() <= max),
                Ok(None) => break,
                Err(Error::FrameTooLarge { len, max: m }) => {
                    prop_assert!(len > max as u64 && m == max);
                    break;
                }
                Err(Error::InvalidLengthPrefix | Error::Decode { .. }) => break,
                Err(other) => prop_assert!(false, "unexpected error {other:?}"),
            }
        }
        // Room is reserved for at most one announced frame (BytesMut may round up to twice).
        prop_assert!(buf.capacity() <= bytes.len().max(2 * (max + 10)), "capacity {}", buf.capacity());
    }
}
