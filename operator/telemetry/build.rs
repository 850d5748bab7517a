//! Generates the gRPC server for the protocol in `crds/telemetry/proto` (protox: no protoc
//! needed). The messages and client are `sovereign-telemetry-api`'s; only the server is made
//! here, referring to them.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../../crds/telemetry/proto/telemetry.proto");
    let fds = protox::compile(["telemetry.proto"], ["../../crds/telemetry/proto"])?;
    tonic_prost_build::configure()
        .build_client(false)
        .extern_path(
            ".sovereign.telemetry.v1",
            "::sovereign_telemetry_api::proto",
        )
        .compile_fds(fds)?;
    Ok(())
}
