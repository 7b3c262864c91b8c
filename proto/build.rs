//! Compiles every contract under `grpcchat/` with a vendored `protoc`, so a fresh machine
//! builds offline, and writes one descriptor set that the servers use for reflection.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let include = protoc_bin_vendored::include_path()?;
    let includes = [PathBuf::from("."), include];
    // SAFETY: build scripts are single-threaded; nothing else reads the environment here.
    unsafe { std::env::set_var("PROTOC", protoc) };

    let protos: [PathBuf; 4] = [
        PathBuf::from("grpcchat/auth/v1/auth.proto"),
        PathBuf::from("grpcchat/chat/v1/chat.proto"),
        PathBuf::from("grpcchat/notification/v1/notification.proto"),
        PathBuf::from("grpcchat/saga/v1/saga.proto"),
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        // ChatService has an RPC named `Connect`, which would clash with the generated
        // `connect` constructor: clients are built with `new(channel)` instead.
        .build_transport(false)
        .file_descriptor_set_path(out.join("grpcchat_descriptor.bin"))
        .compile_protos(&protos, &includes)?;
    Ok(())
}
