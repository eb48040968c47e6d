//! Compiles the etcd subset the benchmark drives (client only) with a pure-Rust
//! protobuf compiler (protox), so building needs no protoc. Only this crate builds it.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let etcd = "proto/etcd_v3_subset.proto";
    println!("cargo:rerun-if-changed={etcd}");
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(protox::compile([etcd], ["proto"])?)?;
    Ok(())
}
