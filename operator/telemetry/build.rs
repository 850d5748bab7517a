//! Compiles the protocol with protox (pure Rust), so no protoc binary is needed anywhere.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/telemetry.proto");
    let fds = protox::compile(["proto/telemetry.proto"], ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
