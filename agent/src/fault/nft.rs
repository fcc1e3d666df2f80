//! Partition and loss faults with nftables, in one table per fault that
//! stampede owns (`inet stampede_<fault name>`): revert deletes that table and
//! nothing else, and a sweep finds what a crashed agent left by its prefix.
//!
//! `partition` with `scope: { dst: 198.18.0.2/32, port: 8080 }` applies, as one
//! `nft -f -` transaction:
//! ```text
//! table inet stampede_split {}
//! delete table inet stampede_split
//! table inet stampede_split {
//!     set scope {
//!         type ipv4_addr; flags interval, timeout;
//!         elements = { 198.18.0.2/32 timeout 30100ms }
//!     }
//!     chain input {
//!         type filter hook input priority -150; policy accept;
//!         ip saddr @scope meta l4proto { tcp, udp } th sport 8080 drop
//!     }
//!     chain output {
//!         type filter hook output priority -150; policy accept;
//!         ip daddr @scope meta l4proto { tcp, udp } th dport 8080 drop
//!     }
//! }
//! ```
//! for a 30 s window: the set element carries the window + [`KERNEL_GRACE`]
//! as its kernel timeout, so the partition ends in the kernel on time even
//! when the agent is SIGSTOPped or killed (issue 8 item 6); the revert and
//! the fault's watchdog process then delete the inert table.
//! and reverts with `nft delete table inet stampede_split`. `loss` puts
//! `numgen random mod 10000 < N` before `drop` (N = ratio × 10 000), in both
//! directions, so each scoped packet is dropped with the plan's probability.
//!
//! The first two lines make apply idempotent: they create the table if it is
//! missing and delete it, so the script replaces whatever an earlier attempt
//! left instead of adding its rules a second time. Priority -150 (mangle) runs
//! before the usual filter chains (0), so an operator's accept rules there
//! cannot let scoped packets through.

use std::time::Duration;

use stampede_common::plan::Fault;

use super::net::{plan_error, scoped, Scoped};
use super::{Action, Driver, FaultActions, FaultError, Node};

/// Tables stampede owns start with this.
pub const TABLE_PREFIX: &str = "stampede_";
/// What `nft delete table` prints when the table is already gone.
pub const TABLE_GONE: [&str; 1] = ["No such file or directory"];

/// Drops everything between this node and the scope, both directions.
pub struct PartitionDriver;
/// Drops a share of the packets between this node and the scope, both directions.
pub struct LossDriver;

/// The fault's table: `stampede_` + its name with `-` mapped to `_` (names
/// are letters, digits, `-` and `_`, validated with the plan).
pub fn table_name(fault: &Fault) -> String {
    format!("{TABLE_PREFIX}{}", fault.name.replace('-', "_"))
}

/// How long the scope's set element outlives the fault's window: the
/// agent's own revert comes first when it can act at all.
pub const KERNEL_GRACE: Duration = Duration::from_millis(100);

/// The match for one direction: `ip daddr @scope [meta l4proto { tcp, udp } th dport P]`.
fn matcher(s: &Scoped, outgoing: bool) -> String {
    let (addr, port) = if outgoing { ("daddr", "dport") } else { ("saddr", "sport") };
    match s.port {
        Some(p) => format!("ip {addr} @scope meta l4proto {{ tcp, udp }} th {port} {p}"),
        None => format!("ip {addr} @scope"),
    }
}

/// The `nft -f -` script; `verdict` follows the scope's match (`drop`, or
/// `numgen random mod 10000 < N drop`). The scope is the one element of the
/// set `scope`, with a kernel timeout of `expires`: at its end the rules
/// match nothing, even if the agent is stopped or gone (issue 8 item 6).
fn script(table: &str, s: &Scoped, verdict: &str, expires: Duration) -> String {
    let chain = |name: &str, outgoing: bool| {
        format!(
            "\tchain {name} {{\n\t\ttype filter hook {name} priority -150; policy accept;\n\t\t{} {verdict}\n\t}}\n",
            matcher(s, outgoing)
        )
    };
    format!(
        "table inet {table} {{}}\ndelete table inet {table}\ntable inet {table} {{\n\tset scope {{\n\t\ttype ipv4_addr; flags interval, timeout;\n\t\telements = {{ {} timeout {}ms }}\n\t}}\n{}{}}}\n",
        s.cidr,
        expires.as_millis().max(1),
        chain("input", false),
        chain("output", true)
    )
}

/// Deletes one of stampede's tables; already gone counts as done.
pub fn delete_table(table: &str) -> Action {
    Action::run_ok_if(&["nft", "delete", "table", "inet", table], &TABLE_GONE)
}

/// The `inet` tables named `stampede_*` in `nft list tables` output
/// (`table inet stampede_split`, one a line); an operator's tables, and
/// tables of other families, are never listed.
pub fn stampede_tables(list_tables: &str) -> Vec<String> {
    list_tables
        .lines()
        .filter_map(|line| match line.split_whitespace().collect::<Vec<_>>()[..] {
            ["table", "inet", name] if name.starts_with(TABLE_PREFIX) => Some(name.to_string()),
            _ => None,
        })
        .collect()
}

/// What removes every stampede table found (for `stampede-agent sweep` and
/// start-up recovery); tables not named `stampede_*` are left alone.
pub fn sweep_actions(existing_tables: &[String]) -> Vec<Action> {
    existing_tables.iter().filter(|t| t.starts_with(TABLE_PREFIX)).map(|t| delete_table(t)).collect()
}

fn nft_actions(fault: &Fault, verdict: &str) -> Result<FaultActions, FaultError> {
    let s = scoped(fault)?;
    let table = table_name(fault);
    // Applied at the window's start: the element expires at its end.
    let expires = fault.duration.as_duration() + KERNEL_GRACE;
    let apply = Action::Run { argv: vec!["nft".into(), "-f".into(), "-".into()], stdin: Some(script(&table, &s, verdict, expires)), ok_if: Vec::new() };
    Ok(FaultActions { apply: vec![apply], revert: vec![delete_table(&table)] })
}

impl Driver for PartitionDriver {
    fn actions(&self, fault: &Fault, _node: &Node) -> Result<FaultActions, FaultError> {
        nft_actions(fault, "drop")
    }

    fn requires(&self, _fault: &Fault) -> Vec<String> {
        vec!["nft".into(), "net_admin".into()]
    }
}

impl Driver for LossDriver {
    fn actions(&self, fault: &Fault, _node: &Node) -> Result<FaultActions, FaultError> {
        let loss = fault.loss.ok_or_else(|| plan_error(fault, "a loss fault needs `loss`"))?;
        let n = (loss.ratio() * 10_000.0).round().clamp(0.0, 10_000.0) as u32;
        nft_actions(fault, &format!("numgen random mod 10000 < {n} drop"))
    }

    fn requires(&self, _fault: &Fault) -> Vec<String> {
        vec!["nft".into(), "net_admin".into()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(v: serde_json::Value) -> Fault {
        let mut f = serde_json::json!({ "name": "split-1", "at": "1s", "duration": "5s" });
        f.as_object_mut().unwrap().extend(v.as_object().unwrap().clone());
        serde_json::from_value(f).unwrap()
    }

    fn node() -> Node {
        Node { route_dev: Box::new(|_| Err("not used".into())), agent_exe: "/bin/false".into() }
    }

    #[test]
    fn partition_with_port_exactly() {
        let f = fault(serde_json::json!({"kind": "partition", "scope": {"dst": "198.18.0.2", "port": 8080}}));
        let a = PartitionDriver.actions(&f, &node()).unwrap();
        assert_eq!(a.apply, [Action::Run {
            argv: vec!["nft".into(), "-f".into(), "-".into()],
            stdin: Some(
                "table inet stampede_split_1 {}\ndelete table inet stampede_split_1\ntable inet stampede_split_1 {\n\
                 \tset scope {\n\t\ttype ipv4_addr; flags interval, timeout;\n\t\telements = { 198.18.0.2/32 timeout 5100ms }\n\t}\n\
                 \tchain input {\n\t\ttype filter hook input priority -150; policy accept;\n\
                 \t\tip saddr @scope meta l4proto { tcp, udp } th sport 8080 drop\n\t}\n\
                 \tchain output {\n\t\ttype filter hook output priority -150; policy accept;\n\
                 \t\tip daddr @scope meta l4proto { tcp, udp } th dport 8080 drop\n\t}\n}\n"
                    .into()
            ),
            ok_if: vec![],
        }]);
        assert_eq!(a.revert, [Action::run_ok_if(&["nft", "delete", "table", "inet", "stampede_split_1"], &["No such file or directory"])]);
        assert_eq!(PartitionDriver.requires(&f), ["nft", "net_admin"]);
    }

    #[test]
    fn loss_without_port_in_both_directions() {
        let f = fault(serde_json::json!({"kind": "loss", "scope": {"dst": "198.18.0.9/24"}, "loss": "30%"}));
        let a = LossDriver.actions(&f, &node()).unwrap();
        let Action::Run { stdin: Some(script), .. } = &a.apply[0] else { panic!("{a:?}") };
        let rules: Vec<&str> = script.lines().filter(|l| l.contains("drop")).map(str::trim).collect();
        assert_eq!(rules, [
            "ip saddr @scope numgen random mod 10000 < 3000 drop",
            "ip daddr @scope numgen random mod 10000 < 3000 drop",
        ]);
        assert!(script.contains("elements = { 198.18.0.0/24 timeout 5100ms }"), "{script}");
        let tiny = fault(serde_json::json!({"kind": "loss", "scope": {"dst": "198.18.0.9"}, "loss": "0.07%"}));
        let Action::Run { stdin: Some(script), .. } = &LossDriver.actions(&tiny, &node()).unwrap().apply[0] else { panic!() };
        assert!(script.contains("mod 10000 < 7 drop"), "{script}");
    }

    #[test]
    fn sweep_finds_only_stampede_inet_tables() {
        let listed = "table inet filter\ntable inet stampede_split_1\ntable ip stampede_other\ntable inet stampede_loss\ntable ip6 nat\n";
        let tables = stampede_tables(listed);
        assert_eq!(tables, ["stampede_split_1", "stampede_loss"]);
        let mut with_foreign = tables.clone();
        with_foreign.push("filter".into());
        assert_eq!(sweep_actions(&with_foreign), [delete_table("stampede_split_1"), delete_table("stampede_loss")]);
        assert!(stampede_tables("").is_empty());
    }
}
