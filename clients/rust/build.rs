//! Generates the gRPC client from the repository's proto/ with a pure-Rust protobuf
//! compiler (protox), so building needs no protoc. Client only: no server code.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let api = "../../proto/configwatch/v1/config.proto";
    println!("cargo:rerun-if-changed={api}");
    let fds = protox::compile([api], ["../../proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
