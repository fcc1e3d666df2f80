//! libFuzzer target (cargo-fuzz, nightly): bytes → a protobuf `Snapshot` →
//! the measurement types, and bytes → one histogram. See
//! `stampede_fuzz::snapshot_decoder`.
//!
//! Built without cargo-fuzz (no `--cfg fuzzing`), this binary reproduces:
//! `cargo run --release --manifest-path fuzz/Cargo.toml --bin snapshot_decoder -- FILE...`
#![cfg_attr(fuzzing, no_main)]

#[cfg(fuzzing)]
libfuzzer_sys::fuzz_target!(|data: &[u8]| stampede_fuzz::snapshot_decoder(data));

#[cfg(not(fuzzing))]
fn main() {
    stampede_fuzz::reproduce(stampede_fuzz::snapshot_decoder_outcome);
}
