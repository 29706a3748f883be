//! The codec against the golden frames in `proto/testdata/golden-frames.json`, which were made
//! with the official Python protobuf package: our encoder produces the same bytes, our decoder
//! reads them back.

use bytes::BytesMut;
use connect::codec::Codec;
use prost_types::Any;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

#[test]
fn golden_frames_encode_and_decode_exactly() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/proto/testdata/golden-frames.json"
    );
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("golden file")).expect("json");
    let cases = doc["cases"].as_array().expect("cases");
    assert!(cases.len() >= 5);
    let codec = Codec::new();
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let any = Any {
            type_url: case["type_url"].as_str().expect("type_url").to_owned(),
            value: unhex(case["value_hex"].as_str().expect("value_hex")),
        };
        let frame = case["frame_hex"].as_str().expect("frame_hex");

        let mut encoded = BytesMut::new();
        codec.encode(&any, &mut encoded).unwrap();
        assert_eq!(hex(&encoded), frame, "encoding {name}");

        let mut wire = BytesMut::from(&unhex(frame)[..]);
        assert_eq!(
            codec.decode(&mut wire).unwrap(),
            Some(any),
            "decoding {name}"
        );
        assert!(wire.is_empty());
    }
}

#[test]
fn typed_encoding_matches_the_golden_hello_world() {
    use connect::proto::example::HelloWorld;
    let mut encoded = BytesMut::new();
    Codec::new()
        .encode_message(
            &HelloWorld {
                text: "hi".into(),
                sequence: 1,
            },
            &mut encoded,
        )
        .unwrap();
    let expected = "3b0a31747970652e676f6f676c65617069732e636f6d2f636f6e6e6563742e6578616d706c652e76312e48656c6c6f576f726c6412060a0268691001";
    assert_eq!(hex(&encoded), expected);
}

/// The `hex:` blocks of a numbered section of `proto/PROTOCOL.md`, in order, as bytes.
fn protocol_md_examples(section: &str) -> Vec<Vec<u8>> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/proto/PROTOCOL.md"))
        .expect("PROTOCOL.md");
    let start = doc.find(&format!("\n## {section} ")).expect("the section");
    let body = &doc[start + 1..];
    let body = &body[..body.find("\n## ").unwrap_or(body.len())];
    let mut examples = Vec::new();
    let mut current: Option<String> = None;
    for line in body.lines() {
        if let Some(hex) = line.strip_prefix("hex: ") {
            current = Some(hex.to_owned());
        } else if let (Some(hex), true) = (current.as_mut(), line.starts_with("     ")) {
            hex.push(' ');
            hex.push_str(line.trim());
        } else if let Some(hex) = current.take() {
            examples.push(unhex(&hex.replace(' ', "")));
        }
    }
    examples
}

#[test]
fn request_reply_examples_in_protocol_md_are_what_we_encode() {
    use connect::proto::example::HelloWorld;
    use connect::proto::rpc::{response, Cancel, Request, Response, Status, StatusCode};
    let hello = |text: &str| {
        Any::from_msg(&HelloWorld {
            text: text.into(),
            sequence: 1,
        })
        .unwrap()
    };
    let expected = [
        Any::from_msg(&Request {
            id: 1,
            body: Some(hello("hi")),
            timeout_ms: 5000,
            metadata: [("user".to_owned(), "ada".to_owned())].into(),
        }),
        Any::from_msg(&Response {
            id: 1,
            result: Some(response::Result::Body(hello("HI"))),
        }),
        Any::from_msg(&Response {
            id: 2,
            result: Some(response::Result::Status(Status {
                code: StatusCode::NotFound as i32,
                message: "no handler".into(),
            })),
        }),
        Any::from_msg(&Cancel { id: 2 }),
    ];
    let documented = protocol_md_examples("11.");
    assert_eq!(documented.len(), expected.len());
    let codec = Codec::new();
    for (any, bytes) in expected.into_iter().zip(documented) {
        let any = any.unwrap();
        let mut encoded = BytesMut::new();
        codec.encode(&any, &mut encoded).unwrap();
        assert_eq!(hex(&encoded), hex(&bytes), "{}", any.type_url);
        let mut wire = BytesMut::from(&bytes[..]);
        assert_eq!(codec.decode(&mut wire).unwrap(), Some(any));
    }
}

#[test]
fn work_queue_examples_in_protocol_md_are_what_we_encode() {
    use connect::proto::example::HelloWorld;
    use connect::proto::queue::{
        Ack, Begin, Commit, Consume, Deliver, Enqueue, EnqueueStatus, Enqueued, Reject, Requeue,
        TransactionDone, TransactionStatus,
    };
    let hello = Any::from_msg(&HelloWorld {
        text: "hi".into(),
        sequence: 1,
    })
    .unwrap();
    let expected = [
        Any::from_msg(&Consume { credit: 8 }),
        Any::from_msg(&Enqueue {
            id: 1,
            message: Some(hello.clone()),
            ttl_ms: 30_000,
            transaction: 0,
        }),
        Any::from_msg(&Enqueued {
            id: 1,
            status: EnqueueStatus::Ok as i32,
            message: String::new(),
        }),
        Any::from_msg(&Deliver {
            id: 1,
            message: Some(hello.clone()),
            delivery_count: 1,
            redelivered: false,
        }),
        Any::from_msg(&Ack {
            ids: vec![1],
            transaction: 0,
        }),
        Any::from_msg(&Reject {
            ids: vec![2, 3],
            transaction: 0,
        }),
        Any::from_msg(&Requeue { ids: vec![4] }),
        Any::from_msg(&Begin { transaction: 5 }),
        Any::from_msg(&Enqueue {
            id: 2,
            message: Some(hello),
            ttl_ms: 0,
            transaction: 5,
        }),
        Any::from_msg(&Commit { transaction: 5 }),
        Any::from_msg(&TransactionDone {
            transaction: 5,
            status: TransactionStatus::Committed as i32,
        }),
    ];
    let documented = protocol_md_examples("14.");
    assert_eq!(documented.len(), expected.len());
    let codec = Codec::new();
    for (any, bytes) in expected.into_iter().zip(documented) {
        let any = any.unwrap();
        let mut encoded = BytesMut::new();
        codec.encode(&any, &mut encoded).unwrap();
        assert_eq!(hex(&encoded), hex(&bytes), "{}", any.type_url);
        let mut wire = BytesMut::from(&bytes[..]);
        assert_eq!(codec.decode(&mut wire).unwrap(), Some(any));
    }
}
