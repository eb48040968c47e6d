//! Compiles proto/ with a pure-Rust protobuf compiler (protox), so building needs no
//! protoc. The configwatch descriptor set is also written out for gRPC server
//! reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);

    let api = "proto/configwatch/v1/config.proto";
    println!("cargo:rerun-if-changed={api}");
    let fds = protox::compile([api], ["proto"])?;
    std::fs::write(
        out.join("configwatch_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    // The messages and the client, as any user of the API would generate them.
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .codec_path("crate::api::codec::LeanCodec")
        .compile_fds(fds.clone())?;
    // The server on its own, over the messages above, except that a Watch stream
    // sends `WatchFrame`s: the same bytes, built from the hub's shared entries (see
    // src/api/frame.rs). Calls start with a small encode buffer, and a request that
    // cannot be decoded is INVALID_ARGUMENT (src/api/codec.rs).
    let server = out.join("server");
    std::fs::create_dir_all(&server)?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(false)
        .out_dir(&server)
        .extern_path(".configwatch.v1", "crate::proto")
        .extern_path(
            ".configwatch.v1.WatchResponse",
            "crate::api::frame::WatchFrame",
        )
        .codec_path("crate::api::codec::ServerCodec")
        .compile_fds(fds)?;
    Ok(())
}
