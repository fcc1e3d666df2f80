//! Generates the gRPC code at build time. protoc comes from
//! `protoc-bin-vendored`, so a fresh machine builds with plain `cargo build`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        // SAFETY-free: build scripts are single-threaded at this point.
        std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    }
    println!("cargo:rerun-if-changed=stampede/v1/agent.proto");
    // `Secret` and `DataRow` get hand-written Debugs (src/lib.rs) that never print a value.
    tonic_prost_build::configure().skip_debug(["stampede.v1.Secret", "stampede.v1.DataRow"]).compile_protos(&["stampede/v1/agent.proto"], &["."])?;
    Ok(())
}
