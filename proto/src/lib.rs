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
