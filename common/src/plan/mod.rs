//! Plans: the model users write (`model`), loading any of YAML/TOML/JSON
//! through the `config` crate (`load`), mapping field paths back to source
//! lines (`lines`), and the checks serde cannot express (`validate`);
//! `${NAME}` and `--set`/`--target` (`params`), secret values (`secret`).

mod abort;
mod check;
pub mod data;
mod error;
mod fault;
mod flow;
mod limits;
mod lines;
mod load;
mod model;
mod params;
mod phase;
mod probe;
mod secret;
mod slo_rules;
pub mod template;
mod tls;
mod validate;

pub use abort::AbortRule;
pub use check::*;
pub use error::{printable, PlanError};
pub use fault::*;
pub use flow::*;
pub use limits::{MAX_DEPTH, MAX_EXPANDED_BYTES, MAX_NODES, MAX_PLAN_BYTES};
pub use load::{load_file, load_file_with, load_str, load_str_with, Format};
pub use model::*;
pub use params::{process_env, substitute, Params};
pub use phase::{PhaseStep, MAX_ITERATIONS};
pub use probe::*;
pub use secret::{fill_agent_secrets, redact, resolve_secrets, Secret, SecretSource, SecretValues, Text, REDACTED};
pub use slo_rules::{outside_fault_rules, probe_names};
pub use tls::{TargetTls, INSECURE_SKIP_VERIFY_WARNING};
pub use validate::validate;
