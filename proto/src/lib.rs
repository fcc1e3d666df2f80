//! stampede's wire contract: the generated code for `proto/stampede/v1/agent.proto`.
//!
//! The `.proto` file is the source of truth; its header documents the session
//! shape and the versioning rules.
#![forbid(unsafe_code)]

pub mod v1 {
    tonic::include_proto!("stampede.v1");
}

pub use v1::*;

/// A secret's value never reaches a log line, even through `{:?}` of the
/// message that carries it.
impl std::fmt::Debug for v1::Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret").field("name", &self.name).field("value", &"***").finish()
    }
}

/// A data file's values may be credentials: `{:?}` shows how many.
impl std::fmt::Debug for v1::DataRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DataRow({} values)", self.values.len())
    }
}

/// A data set (or `rows` of it) for the wire.
pub fn data_to_wire(file: &str, step: u32, set: &stampede_common::plan::data::DataSet, rows: std::ops::Range<usize>) -> v1::DataFile {
    let rows = set.rows[rows].iter().map(|r| v1::DataRow { values: r.clone() }).collect();
    v1::DataFile { file: file.to_string(), step, columns: set.columns.clone(), rows }
}

/// The wire's data file as the plan model keeps it; `Err` for a row whose
/// length is not the columns'.
pub fn data_from_wire(d: &v1::DataFile) -> Result<stampede_common::plan::data::DataSet, String> {
    if let Some(i) = d.rows.iter().position(|r| r.values.len() != d.columns.len()) {
        return Err(format!("data file {}: row {} has {} values for {} columns", d.file, i + 1, d.rows[i].values.len(), d.columns.len()));
    }
    Ok(stampede_common::plan::data::DataSet { columns: d.columns.clone(), rows: d.rows.iter().map(|r| r.values.clone()).collect() })
}

/// Secret values as the plan model keeps them (`plan::SecretValues`), for the wire.
pub fn secrets_to_wire(values: &stampede_common::plan::SecretValues) -> Vec<v1::Secret> {
    values.iter().map(|(name, value)| v1::Secret { name: name.clone(), value: value.clone() }).collect()
}

/// The wire's secrets as the plan model takes them.
pub fn secrets_from_wire(secrets: &[v1::Secret]) -> stampede_common::plan::SecretValues {
    secrets.iter().map(|s| (s.name.clone(), s.value.clone())).collect()
}

pub mod convert;
pub mod limits;
