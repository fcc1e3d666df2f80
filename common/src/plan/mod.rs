//! Plans: the model users write (`model`), loading any of YAML/TOML/JSON
//! through the `config` crate (`load`), mapping field paths back to source
//! lines (`lines`), and the checks serde cannot express (`validate`).

mod abort;
mod error;
mod fault;
mod limits;
mod lines;
mod load;
mod model;
mod validate;

pub use abort::AbortRule;
pub use error::{printable, PlanError};
pub use fault::*;
pub use limits::{MAX_DEPTH, MAX_EXPANDED_BYTES, MAX_NODES, MAX_PLAN_BYTES};
pub use load::{load_file, load_str, Format};
pub use model::*;
pub use validate::validate;
