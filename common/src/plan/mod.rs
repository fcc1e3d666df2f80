//! Plans: the model users write (`model`), loading any of YAML/TOML/JSON
//! through the `config` crate (`load`), mapping field paths back to source
//! lines (`lines`), and the checks serde cannot express (`validate`).

mod abort;
mod check;
mod error;
mod fault;
mod limits;
mod lines;
mod load;
mod model;
mod phase;
mod probe;
mod slo_rules;
mod validate;

pub use abort::AbortRule;
pub use check::*;
pub use error::{printable, PlanError};
pub use fault::*;
pub use limits::{MAX_DEPTH, MAX_EXPANDED_BYTES, MAX_NODES, MAX_PLAN_BYTES};
pub use load::{load_file, load_str, Format};
pub use model::*;
pub use phase::{PhaseStep, MAX_ITERATIONS};
pub use probe::*;
pub use slo_rules::{outside_fault_rules, probe_names};
pub use validate::validate;
