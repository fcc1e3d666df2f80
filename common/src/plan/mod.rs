//! Plans: the model users write (`model`), loading any of YAML/TOML/JSON
//! through the `config` crate (`load`), mapping field paths back to source
//! lines (`lines`), and the checks serde cannot express (`validate`).

mod error;
mod fault;
mod lines;
mod load;
mod model;
mod validate;

pub use error::PlanError;
pub use fault::*;
pub use load::{load_file, load_str, Format};
pub use model::*;
pub use validate::validate;
