//! Local fault injection: each driver turns a plan's fault into exact
//! actions for this node; the injector journals them, applies them on the
//! run's timeline and guarantees the revert.
//!
//! # Layout
//! - [`action`]: actions as data and the runner that executes them.
//! - `net`: netem and rate (tc) actions scoped to a destination.
//! - `nft`: partition and loss (nftables) actions, in tables stampede owns.
//! - `instance`: stop / pause / restart of a process, systemd unit, docker or incus instance.
//! - `pressure`: CPU and memory pressure in a child process that bounds its own life.
//! - [`control`]: no network fault may cover the coordinator the agent dials.
//! - `probe`: which fault kinds this node can do (sent at registration).
//! - [`effect`]: what a network fault measurably did (achieved vs requested).
//! - [`journal`]: the fsynced on-disk record of applied faults and their reverts.
//! - [`injector`]: the timeline: journal, apply, hold, revert on every path, dead-man thread.
//! - [`procs`]: the exact processes a process fault signals, never stampede's own.
//! - [`watchdog`]: a process per applied fault that reverts it if the agent cannot.
//! - [`sweep`]: `stampede-agent sweep`, removing whatever stampede left on a node.
//! - [`simulate`]: `--simulate-faults`: each fault announced on the timeline, nothing touched.

pub mod action;
pub mod control;
pub mod effect;
pub mod instance;
pub mod pressure;
pub mod injector;
pub mod journal;
pub mod net;
pub mod nft;
pub mod probe;
pub mod procs;
pub mod simulate;
pub mod sweep;
pub mod watchdog;

use stampede_common::plan::{Fault, FaultKind};

pub use action::{Action, ActionError, FaultActions, Runner};

/// What a driver needs to know about the node it runs on.
pub struct Node {
    /// The network device carrying traffic to an address (`ip route get`).
    pub route_dev: Box<dyn Fn(std::net::Ipv4Addr) -> Result<String, String> + Send + Sync>,
    /// This agent's executable, to start pressure helpers from.
    pub agent_exe: std::path::PathBuf,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FaultError {
    #[error("fault `{fault}`: {message}")]
    Plan { fault: String, message: String },
}

/// One family of faults. Chaos Mesh's Apply/Recover contract, as data: the
/// driver builds the exact actions (pure, testable against exact argument
/// lists); the injector journals and runs them.
pub trait Driver {
    /// The actions that apply `fault` on `node`, and those that undo it.
    fn actions(&self, fault: &Fault, node: &Node) -> Result<FaultActions, FaultError>;
    /// A read-only command whose output, taken while the fault is active,
    /// tells what it did (the effect check); `None` when the effect is
    /// measured another way.
    fn observe(&self, _fault: &Fault, _node: &Node) -> Option<Action> {
        None
    }
    /// Whether `fault` can be applied on this node as planned, checked when
    /// the run is assigned, before any load: a scope with no route, an
    /// instance that does not exist. Read-only.
    fn check(&self, fault: &Fault, node: &Node, _runner: &Runner) -> Result<(), String> {
        self.actions(fault, node).map(drop).map_err(|e| e.to_string())
    }
    /// Capability names (as `probe` reports them) this fault needs on a node.
    fn requires(&self, fault: &Fault) -> Vec<String>;
}

/// The driver for each fault kind.
pub fn driver_for(kind: FaultKind) -> &'static dyn Driver {
    match kind {
        FaultKind::Netem => &net::NetemDriver,
        FaultKind::Rate => &net::RateDriver,
        FaultKind::Partition => &nft::PartitionDriver,
        FaultKind::Loss => &nft::LossDriver,
        FaultKind::Stop | FaultKind::Pause | FaultKind::Restart => &instance::InstanceDriver,
        FaultKind::Cpu | FaultKind::Memory => &pressure::PressureDriver,
    }
}
