//! stampede's wire contract: the generated code for `proto/stampede/v1/agent.proto`.
//!
//! The `.proto` file is the source of truth; its header documents the session
//! shape and the versioning rules.
#![forbid(unsafe_code)]

pub mod v1 {
    tonic::include_proto!("stampede.v1");
}

pub use v1::*;

pub mod convert;
pub mod limits;
