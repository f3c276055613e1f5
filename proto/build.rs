//! Generates the gRPC code from `proto/*.proto` with a vendored protoc, so no system protoc is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    tonic_prost_build::configure().compile_protos(
        &[
            "proto/coord.proto",
            "proto/types.proto",
            "proto/scheduler.proto",
            "proto/agent.proto",
            "proto/operator.proto",
            "proto/agent_files.proto",
            "proto/cluster.proto",
            "proto/acl.proto",
        ],
        &["proto"],
    )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
