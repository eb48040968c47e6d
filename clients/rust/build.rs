//! Generates the gRPC client from the repository's proto/ with a pure-Rust protobuf
//! compiler (protox), so building needs no protoc. The library gets the client only;
//! the tests also get a server (in `OUT_DIR/test_server/`, included by tests only) to
//! script a fake configwatch server.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let api = "../../proto/configwatch/v1/config.proto";
    println!("cargo:rerun-if-changed={api}");
    let fds = protox::compile([api], ["../../proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(fds.clone())?;
    let test_server = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("test_server");
    std::fs::create_dir_all(&test_server)?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(false)
        .out_dir(test_server)
        .compile_fds(fds)?;
    Ok(())
}
