//! A fleet that loses pieces mid-run, in network namespaces through the real
//! binaries (`support/fleet.rs`): the control link of one agent cut for 5 s
//! (the agent keeps its load, reconnects and resends; nothing is lost and the
//! verdict stands), and an agent killed for good (the run is `incomplete`,
//! exit 3, naming the agent and its missing intervals). Root only; each test
//! prints why it skips otherwise.

mod support;

use std::time::{Duration, Instant};

use support::fleet::{plan_path, Fleet, COORD_ADDR};

/// Every agent's requests as the coordinator counted them, and the sum.
fn agent_requests(report: &serde_json::Value) -> (Vec<(String, u64)>, u64) {
    let agents: Vec<(String, u64)> =
        report["agents"].as_array().expect("agents").iter().map(|a| (a["id"].as_str().unwrap().to_string(), a["requests"].as_u64().unwrap())).collect();
    let sum = agents.iter().map(|(_, r)| r).sum();
    (agents, sum)
}

/// Drops every packet between `member`'s namespace and the coordinator's
/// gRPC port, both ways, in a table of the test's own (not `stampede_*`:
/// this is the test's doing, not a fault); the namespace's removal takes it.
fn cut_control_link(fleet: &Fleet, member: &str) {
    let script = format!(
        "table inet sptest_ctl {{
           chain out {{ type filter hook output priority 0; ip daddr {COORD_ADDR} tcp dport 7000 drop; }}
           chain in {{ type filter hook input priority 0; ip saddr {COORD_ADDR} tcp sport 7000 drop; }}
         }}"
    );
    let out = fleet.exec(member, &["nft", &script], Duration::from_secs(5));
    assert!(out.status.success(), "nft in {member}: {}", String::from_utf8_lossy(&out.stderr));
}

fn heal_control_link(fleet: &Fleet, member: &str) {
    let out = fleet.exec(member, &["nft", "delete", "table", "inet", "sptest_ctl"], Duration::from_secs(5));
    assert!(out.status.success(), "nft delete in {member}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_five_second_control_partition_loses_no_snapshot() {
    let Some(mut fleet) = Fleet::up(2, &["nft"]) else { return };
    fleet.start_all(&[]);
    let run = fleet.start_run(&plan_path("fleet-steady.yaml"), 2);
    // 1 s start lead, then 3 s of load before the cut; 5 s cut; 4 s after.
    std::thread::sleep(Duration::from_secs(4));
    cut_control_link(&fleet, "agent1");
    let cut = Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    heal_control_link(&fleet, "agent1");
    println!("control link of agent1 cut for {:?}", cut.elapsed());
    let outcome = run.finish(Duration::from_secs(60));
    let report = outcome.report.as_ref().unwrap_or_else(|| panic!("no report:\n{}\n{}\n{}", outcome.stdout, outcome.stderr, fleet.logs()));
    let context = || format!("{}\n{}\n{}", outcome.stdout, outcome.stderr, fleet.logs());

    assert_eq!(report["verdict"], "pass", "verdict {} ({}):\n{}", report["verdict"], report["verdict_reasons"], context());
    assert_eq!(outcome.code, 0, "{}", context());
    for a in report["agents"].as_array().unwrap() {
        assert_eq!(a["complete"], true, "agent {} is not complete: {a}", a["id"]);
        // The field is left out when empty.
        assert_eq!(a["missing_intervals"].as_array().map_or(0, Vec::len), 0, "agent {} misses intervals: {a}", a["id"]);
    }
    let (per_agent, sum) = agent_requests(report);
    let total = report["totals"]["requests"].as_u64().unwrap();
    println!("requests per agent {per_agent:?}, fleet total {total}");
    assert_eq!(total, sum, "fleet total is not the sum of the agents' counts");
    // 100/s for 12 s, split in two: nothing was dropped by the cut.
    assert_eq!(total, 1200, "the open model's planned count");

    // It was a real break: the session was lost and resumed, with messages
    // sent again from the resend buffer.
    let coordinator = fleet.log("coordinator");
    assert!(coordinator.contains("no word from the agent"), "the coordinator never noticed the cut:\n{coordinator}");
    let agent = fleet.log("agent1");
    let resumed = agent.lines().filter(|l| l.contains("Registered with the coordinator.")).count();
    assert!(resumed >= 2, "agent1 did not register again after the cut:\n{agent}");
    let progress = format!("{}{}", outcome.stdout, outcome.stderr);
    assert!(progress.contains("agent agent1 is back"), "the run did not see agent1 come back:\n{progress}");
    for line in progress.lines().filter(|l| l.contains("agent1")) {
        println!("progress: {line}");
    }
    println!("agent1's sessions: {resumed}; its log:\n{}", agent.lines().filter(|l| l.contains("Registered") || l.contains("Session")).collect::<Vec<_>>().join("\n"));
}

#[test]
fn an_agent_killed_mid_run_makes_the_run_incomplete() {
    let Some(mut fleet) = Fleet::up(2, &[]) else { return };
    fleet.start_all(&[]);
    let run = fleet.start_run(&plan_path("fleet-steady.yaml"), 2);
    std::thread::sleep(Duration::from_secs(5));
    fleet.kill("agent2");
    let outcome = run.finish(Duration::from_secs(60));
    let context = || format!("{}\n{}\n{}", outcome.stdout, outcome.stderr, fleet.logs());
    let report = outcome.report.as_ref().unwrap_or_else(|| panic!("no report:\n{}", context()));

    assert_eq!(outcome.code, 3, "{}", context());
    assert_eq!(report["verdict"], "incomplete", "{}", context());
    let reasons = report["verdict_reasons"].to_string();
    assert!(reasons.contains("agent agent2 was lost") && reasons.contains("lease"), "the reasons do not name agent2 and its lease: {reasons}");
    assert!(reasons.contains("intervals missing"), "the reasons do not name the missing intervals: {reasons}");
    let agents = report["agents"].as_array().unwrap();
    let a2 = agents.iter().find(|a| a["id"] == "agent2").expect("agent2 in the report");
    let missing = a2["missing_intervals"].as_array().unwrap();
    assert!(!missing.is_empty() && a2["complete"] == false, "agent2: {a2}");
    let a1 = agents.iter().find(|a| a["id"] == "agent1").expect("agent1 in the report");
    assert_eq!(a1["complete"], true, "agent1 ran to the end: {a1}");
    println!("verdict incomplete: {reasons}; agent2 missing intervals {missing:?}; the run took {:?}", outcome.elapsed);
}

/// The cut spans the run's end: the agent finishes its share while it
/// cannot reach the coordinator, keeps its last snapshot and its totals in
/// the resend buffer, and delivers them when the link is back — the same
/// process, so the coordinator counts it as back, not as restarted.
#[test]
fn a_control_cut_across_the_end_of_the_run_loses_nothing() {
    let Some(mut fleet) = Fleet::up(2, &["nft"]) else { return };
    fleet.start_all(&[]);
    let run = fleet.start_run(&plan_path("fleet-steady.yaml"), 2);
    // 1 s start lead + 9 s of the 12 s of load, then 7 s without a link:
    // the run ends (t = 13 s) in the middle of the cut.
    std::thread::sleep(Duration::from_secs(10));
    cut_control_link(&fleet, "agent1");
    std::thread::sleep(Duration::from_secs(7));
    heal_control_link(&fleet, "agent1");
    let outcome = run.finish(Duration::from_secs(60));
    let context = || format!("{}\n{}\n{}", outcome.stdout, outcome.stderr, fleet.logs());
    let report = outcome.report.as_ref().unwrap_or_else(|| panic!("no report:\n{}", context()));

    assert_eq!(report["verdict"], "pass", "verdict {} ({}):\n{}", report["verdict"], report["verdict_reasons"], context());
    assert_eq!(outcome.code, 0, "{}", context());
    let (per_agent, sum) = agent_requests(report);
    assert_eq!(report["totals"]["requests"].as_u64(), Some(sum));
    assert_eq!(sum, 1200, "{per_agent:?}");
    let progress = format!("{}{}", outcome.stdout, outcome.stderr);
    assert!(progress.contains("agent agent1 is back"), "{progress}");
    assert!(fleet.log("agent1").contains("Run finished."), "{}", fleet.log("agent1"));
    println!("run took {:?}; requests per agent {per_agent:?}", outcome.elapsed);
}
