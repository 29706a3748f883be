//! Compiles `proto/**/*.proto` with prost-build into `OUT_DIR`.
//!
//! protoc comes from `protoc-bin-vendored`, so a fresh machine needs no system protoc. Type names
//! are enabled with the `type.googleapis.com` domain so that `prost::Name::type_url()` equals what
//! every other language's `Any.pack` writes.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/connect/example/v1/hello.proto",
        "proto/connect/example/v1/calc.proto",
        "proto/connect/v1/session.proto",
        "proto/connect/reliable/v1/reliable.proto",
        "proto/connect/rpc/v1/rpc.proto",
        "proto/connect/pubsub/v1/pubsub.proto",
        "proto/connect/tunnel/v1/tunnel.proto",
        "proto/connect/queue/v1/queue.proto",
    ];
    for proto in &protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let protoc: PathBuf = protoc_bin_vendored::protoc_bin_path()?;
    let mut config = prost_build::Config::new();
    config
        .protoc_executable(protoc)
        .enable_type_names()
        .type_name_domain(["."], "type.googleapis.com")
        // Secrets: src/session/auth.rs implements a Debug that redacts them.
        .skip_debug([".connect.v1.Plain", ".connect.v1.Bearer"])
        // Request metadata: a deterministic encoding order (and byte examples that hold).
        .btree_map([".connect.rpc.v1.Request.metadata"]);
    config.compile_protos(&protos, &["proto"])?;
    Ok(())
}
