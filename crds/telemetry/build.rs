//! Compiles the protocol with protox (pure Rust), so no protoc binary is needed anywhere. The
//! messages and the client only: the server side is generated in the operator's crate.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/telemetry.proto");
    let fds = protox::compile(["proto/telemetry.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(fds)?;
    Ok(())
}
