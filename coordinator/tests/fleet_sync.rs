//! The synchronized start, measured where it counts: at the target. Three
//! `stampede-agent`s in three namespaces, a standing coordinator and
//! `stampede target --arrivals FILE` in theirs (`support/fleet.rs`); a
//! closed-model plan whose every connection is due at the common start
//! instant. The target writes the wall-clock arrival of each agent's first
//! request; their spread must be within [`MAX_SPREAD_MS`].
//!
//! All namespaces share the host's clock, so the spread measures what the
//! product adds: the coordinator's clock-offset estimate (its error shifts
//! an agent's start), each agent turning the start into a local deadline,
//! the worker waking for it on a busy 2-core machine, the connect and the
//! request's trip to the target.
//!
//! Needs root (network namespaces); skips with a printed reason otherwise.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use support::fleet::{agent_addr, plan_path, Fleet};

/// The requirement: first-request arrivals at the target within 1 ms.
const MAX_SPREAD_MS: f64 = 1.0;
const AGENTS: usize = 3;

/// `PEER_IP UNIX_NANOS` lines → first arrival per IP.
fn read_arrivals(path: &std::path::Path) -> BTreeMap<String, i64> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let (ip, nanos) = line.split_once(' ').unwrap_or_else(|| panic!("bad arrivals line `{line}`"));
        let nanos: i64 = nanos.parse().unwrap_or_else(|_| panic!("bad arrivals line `{line}`"));
        assert!(out.insert(ip.to_string(), nanos).is_none(), "{ip} logged twice:\n{text}");
    }
    out
}

#[test]
fn a_fleet_starts_within_a_millisecond_at_the_target() {
    let Some(mut fleet) = Fleet::up(AGENTS, &[]) else { return };
    let arrivals_file = fleet.dir.join("arrivals");
    fleet.start_all(&["--arrivals", arrivals_file.to_str().unwrap()]);
    let agents_table = fleet.list_agents().unwrap_or_default();
    let run = fleet.run(&plan_path("fleet-sync.yaml"), AGENTS, Duration::from_secs(35));
    let describe = || format!("exit {} after {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}\n{}", run.code, run.elapsed, run.stdout, run.stderr, fleet.logs());
    let r: &Value = run.report.as_ref().unwrap_or_else(|| panic!("no report.json\n{}", describe()));

    // The run itself: passed, and the fleet's totals are the agents' counters.
    assert_eq!(r["verdict"], "pass", "{}\n{}", r["verdict_reasons"], describe());
    assert_eq!(run.code, 0, "{}", describe());
    let agents = r["agents"].as_array().expect("agents");
    assert_eq!(agents.len(), AGENTS, "{}", r["agents"]);
    let sum: u64 = agents.iter().map(|a| a["requests"].as_u64().expect("requests")).sum();
    assert_eq!(r["totals"]["requests"].as_u64(), Some(sum), "totals {} vs agents {}", r["totals"], r["agents"]);
    let mut skews = BTreeMap::new();
    for a in agents {
        assert_eq!(a["complete"], true, "{a}");
        assert!(a["requests"].as_u64().unwrap() > 0, "{a}");
        let skew = a["start_skew_ms"].as_f64().unwrap_or_else(|| panic!("no start_skew_ms: {a}"));
        skews.insert(a["id"].as_str().unwrap().to_string(), skew);
    }

    // What the target saw: one first arrival per agent address, and no one else.
    let arrivals = read_arrivals(&arrivals_file);
    let want: Vec<String> = (1..=AGENTS).map(agent_addr).collect();
    assert_eq!(arrivals.keys().cloned().collect::<Vec<_>>(), want, "arrivals file:\n{arrivals:?}");
    let first = *arrivals.values().min().unwrap();
    let last = *arrivals.values().max().unwrap();
    let spread_ms = (last - first) as f64 / 1e6;

    // The coordinator's clock-offset estimates (`stampede agents`, before the
    // run): the namespaces share one clock, so any non-zero value is
    // estimation error, and it moves that agent's start by as much — which
    // the target sees and the agent's own skew cannot.
    let offset = |id: &str| agents_table.lines().find(|l| l.split_whitespace().next() == Some(id)).and_then(|l| l.split_whitespace().nth(3)).unwrap_or("?").to_string();
    for k in 1..=AGENTS {
        let id = format!("agent{k}");
        let at = (arrivals[&agent_addr(k)] - first) as f64 / 1e6;
        println!("  {id} ({}): first request at the target +{at:.3} ms, reported start skew {:+.3} ms, clock offset estimate {}", agent_addr(k), skews[&id], offset(&id));
    }
    println!("SPREAD {spread_ms:.3} ms at the target (limit {MAX_SPREAD_MS} ms); reported skews {skews:?}");
    assert!(spread_ms <= MAX_SPREAD_MS, "first requests reached the target over {spread_ms:.3} ms (limit {MAX_SPREAD_MS} ms): {arrivals:?}");
}
