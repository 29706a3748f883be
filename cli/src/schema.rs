//! Message types known at run time: .proto files compiled without protoc (`protox`), the
//! well-known types and connect's own protos built in, and the protobuf JSON mapping
//! (`prost-reflect`) between `Any` frames and JSON.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, SerializeOptions};
use prost_types::Any;
use protox::file::{
    ChainFileResolver, File, FileResolver, GoogleFileResolver, IncludeFileResolver,
};

/// connect's own protos, embedded so every `connect` binary knows them.
const BUILT_IN: &[(&str, &str)] = &[
    (
        "connect/v1/session.proto",
        include_str!("../../proto/connect/v1/session.proto"),
    ),
    (
        "connect/reliable/v1/reliable.proto",
        include_str!("../../proto/connect/reliable/v1/reliable.proto"),
    ),
    (
        "connect/tunnel/v1/tunnel.proto",
        include_str!("../../proto/connect/tunnel/v1/tunnel.proto"),
    ),
    (
        "connect/rpc/v1/rpc.proto",
        include_str!("../../proto/connect/rpc/v1/rpc.proto"),
    ),
    (
        "connect/pubsub/v1/pubsub.proto",
        include_str!("../../proto/connect/pubsub/v1/pubsub.proto"),
    ),
    (
        "connect/example/v1/calc.proto",
        include_str!("../../proto/connect/example/v1/calc.proto"),
    ),
    (
        "connect/example/v1/hello.proto",
        include_str!("../../proto/connect/example/v1/hello.proto"),
    ),
];

/// The well-known types loaded even when no file imports them.
const WELL_KNOWN: &[&str] = &[
    "google/protobuf/any.proto",
    "google/protobuf/duration.proto",
    "google/protobuf/empty.proto",
    "google/protobuf/field_mask.proto",
    "google/protobuf/struct.proto",
    "google/protobuf/timestamp.proto",
    "google/protobuf/wrappers.proto",
];

struct BuiltIn;

impl FileResolver for BuiltIn {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        match BUILT_IN.iter().find(|(file, _)| *file == name) {
            Some((file, source)) => File::from_source(file, source),
            None => Err(protox::Error::file_not_found(name)),
        }
    }
}

/// The type URL prefix every `Any.pack` writes.
const TYPE_URL_PREFIX: &str = "type.googleapis.com/";

/// Every message type the tool can show and build.
pub struct Schema {
    pool: DescriptorPool,
}

impl Schema {
    /// Compiles `protos` (found under one of `includes`) on top of the built-in files. Without
    /// `includes`, each file's own directory is where its imports are looked for.
    pub fn load(protos: &[PathBuf], includes: &[PathBuf]) -> anyhow::Result<Self> {
        let mut dirs: Vec<PathBuf> = includes.to_vec();
        for proto in protos.iter().filter(|_| includes.is_empty()) {
            if let Some(parent) = proto.parent() {
                let parent = if parent.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    parent
                };
                if !dirs.iter().any(|dir| dir == parent) {
                    dirs.push(parent.to_path_buf());
                }
            }
        }
        let mut resolver = ChainFileResolver::new();
        for dir in &dirs {
            resolver.add(IncludeFileResolver::new(dir.clone()));
        }
        resolver.add(BuiltIn);
        resolver.add(GoogleFileResolver::new());
        let mut compiler = protox::Compiler::with_file_resolver(resolver);
        compiler.include_imports(true);
        for (name, _) in BUILT_IN {
            compiler.open_file(name)?;
        }
        compiler.open_files(WELL_KNOWN)?;
        for proto in protos {
            compiler.open_file(proto).with_context(|| {
                format!(
                    "cannot compile {}; pass the directory its imports are relative to with --include DIR",
                    proto.display()
                )
            })?;
        }
        let pool = compiler.descriptor_pool();
        Ok(Self { pool })
    }

    /// The message type called `name` (a full name such as `shop.v1.Order`, or a type URL).
    pub fn message(&self, name: &str) -> anyhow::Result<MessageDescriptor> {
        let full_name = connect::codec::type_name(name);
        match self.pool.get_message_by_name(full_name) {
            Some(descriptor) => Ok(descriptor),
            None => bail!(
                "unknown message type {full_name:?}: pass the .proto file that defines it with --proto FILE \
                 (and --include DIR for its imports)"
            ),
        }
    }

    /// `json` (the protobuf JSON mapping) as a message of type `name`, packed in an `Any`.
    pub fn pack(&self, name: &str, json: &str) -> anyhow::Result<Any> {
        let descriptor = self.message(name)?;
        let mut deserializer = serde_json::Deserializer::from_str(json);
        let message = DynamicMessage::deserialize(descriptor.clone(), &mut deserializer)
            .with_context(|| format!("{json:?} is not a JSON {}", descriptor.full_name()))?;
        deserializer.end().with_context(|| {
            format!(
                "trailing characters after the JSON {}",
                descriptor.full_name()
            )
        })?;
        Ok(Any {
            type_url: format!("{TYPE_URL_PREFIX}{}", descriptor.full_name()),
            value: message.encode_to_vec(),
        })
    }

    /// The JSON form of `any`'s message, or `None` when its type is unknown here. Fails when
    /// the bytes are not a message of the type its URL names.
    pub fn to_json(&self, any: &Any) -> anyhow::Result<Option<String>> {
        let name = connect::codec::type_name(&any.type_url);
        let Some(descriptor) = self.pool.get_message_by_name(name) else {
            return Ok(None);
        };
        let message = DynamicMessage::decode(descriptor, any.value.as_slice())
            .with_context(|| format!("the bytes are not a valid {name}"))?;
        let options = SerializeOptions::new().skip_default_fields(true);
        let mut out = Vec::new();
        let mut serializer = serde_json::Serializer::new(&mut out);
        message.serialize_with_options(&mut serializer, &options)?;
        Ok(Some(String::from_utf8(out)?))
    }

    /// One line describing a frame: its type, size and body (JSON, or hex when the type is
    /// unknown or the bytes do not decode).
    pub fn describe(&self, any: &Any) -> String {
        let name = connect::codec::type_name(&any.type_url);
        let size = any.encoded_len();
        match self.to_json(any) {
            Ok(Some(json)) => format!("{name} ({size} bytes) {json}"),
            Ok(None) => format!(
                "{name} ({size} bytes) unknown type, value {}; pass its .proto with --proto",
                hex(&any.value)
            ),
            Err(e) => format!(
                "{name} ({size} bytes) {}, value {}",
                crate::chain(&e),
                hex(&any.value)
            ),
        }
    }
}

/// `bytes` as lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_types_round_trip_through_json() {
        let schema = Schema::load(&[], &[]).unwrap();
        let any = schema
            .pack(
                "connect.example.v1.HelloWorld",
                r#"{"text":"hi","sequence":"7"}"#,
            )
            .unwrap();
        assert_eq!(
            any.type_url,
            "type.googleapis.com/connect.example.v1.HelloWorld"
        );
        let json = schema.to_json(&any).unwrap().unwrap();
        assert_eq!(json, r#"{"text":"hi","sequence":"7"}"#);
        let ts = schema
            .pack("google.protobuf.Timestamp", r#""2026-01-02T03:04:05Z""#)
            .unwrap();
        assert_eq!(
            schema.to_json(&ts).unwrap().unwrap(),
            r#""2026-01-02T03:04:05Z""#
        );
    }

    #[test]
    fn unknown_types_and_bad_json_say_what_to_do() {
        let schema = Schema::load(&[], &[]).unwrap();
        let e = schema.pack("shop.v1.Order", "{}").unwrap_err();
        assert!(format!("{e:#}").contains("--proto"), "{e:#}");
        let e = schema
            .pack("connect.example.v1.HelloWorld", r#"{"nope":1}"#)
            .unwrap_err();
        assert!(format!("{e:#}").contains("HelloWorld"), "{e:#}");
    }
}
