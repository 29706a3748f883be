//! With the `tonic` feature: tonic's client and server for `proto/echo.proto`, generated into
//! `OUT_DIR` with the same vendored protoc as the main crate. Without it: nothing.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    #[cfg(feature = "tonic")]
    {
        println!("cargo:rerun-if-changed=proto/echo.proto");
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        // prost-build (under tonic-prost-build) finds protoc through this variable.
        std::env::set_var("PROTOC", protoc);
        tonic_prost_build::compile_protos("proto/echo.proto")?;
    }
    Ok(())
}
