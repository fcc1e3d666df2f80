//! libFuzzer target (cargo-fuzz, nightly): bytes → an agent's session
//! message → the coordinator's bounds, decode and checked merge. See
//! `stampede_fuzz::grpc_message`.
//!
//! Built without cargo-fuzz (no `--cfg fuzzing`), this binary reproduces:
//! `cargo run --release --manifest-path fuzz/Cargo.toml --bin grpc_message -- FILE...`
#![cfg_attr(fuzzing, no_main)]

#[cfg(fuzzing)]
libfuzzer_sys::fuzz_target!(|data: &[u8]| stampede_fuzz::grpc_message(data));

#[cfg(not(fuzzing))]
fn main() {
    stampede_fuzz::reproduce(stampede_fuzz::grpc_message::grpc_message_outcome);
}
