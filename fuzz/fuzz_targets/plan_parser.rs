//! libFuzzer target (cargo-fuzz, nightly): bytes → a plan; the first byte
//! picks YAML, TOML or JSON. See `stampede_fuzz::plan_parser`.
//!
//! Built without cargo-fuzz (no `--cfg fuzzing`), this binary reproduces:
//! `cargo run --release --manifest-path fuzz/Cargo.toml --bin plan_parser -- FILE...`
#![cfg_attr(fuzzing, no_main)]

#[cfg(fuzzing)]
libfuzzer_sys::fuzz_target!(|data: &[u8]| stampede_fuzz::plan_parser(data));

#[cfg(not(fuzzing))]
fn main() {
    stampede_fuzz::reproduce(stampede_fuzz::plan_parser_outcome);
}
