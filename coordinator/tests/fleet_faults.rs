//! End-to-end faults on a fleet in network namespaces: the real `stampede`
//! coordinator, target and `stampede-agent`s, each in its own namespace
//! (`support/fleet.rs`, `deploy/netns/fleet.sh`), a plan submitted with
//! `stampede run --coordinator`, and assertions on the `report.json` it
//! writes — what the faults did to the load, that they were reverted, and
//! that the control channel kept working meanwhile.
//!
//! Needs root (network namespaces, nft, tc); skips with a printed reason
//! otherwise. Each test takes 1–13 s (plus building the agent binary
//! when it is stale); they run one at a time
//! (`.config/nextest.toml`), and so does `cargo test` within this file's
//! binary because of [`serial`].

mod support;

use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;
use support::fleet::{faults, num, phase, plan_path, timeline, Fleet, RunOutcome};

/// `cargo test` runs a file's tests on parallel threads: fleets share the
/// addresses of their namespaces (harmless) but would measure each other on
/// a 2-core machine.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A run is bounded: 1 s start lead + the plan + grace, well under this.
const RUN_LIMIT: Duration = Duration::from_secs(35);

fn describe(run: &RunOutcome, fleet: &Fleet) -> String {
    format!("exit {} after {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}\n{}", run.code, run.elapsed, run.stdout, run.stderr, fleet.logs())
}

fn report<'a>(run: &'a RunOutcome, fleet: &Fleet) -> &'a Value {
    run.report.as_ref().unwrap_or_else(|| panic!("no report.json\n{}", describe(run, fleet)))
}

/// The control channel survived the fault: a verdict made of complete data
/// and every agent complete, with no lost session and no missing interval.
fn assert_control_channel_held(r: &Value, agents: &[&str]) {
    let verdict = r["verdict"].as_str().unwrap();
    assert_ne!(verdict, "incomplete", "data went missing: {}", r["verdict_reasons"]);
    let listed: Vec<&Value> = r["agents"].as_array().unwrap().iter().collect();
    assert_eq!(listed.len(), agents.len(), "{}", r["agents"]);
    for a in listed {
        assert!(agents.contains(&a["id"].as_str().unwrap()), "{a}");
        assert_eq!(a["complete"], true, "agent not complete: {a}");
        assert!(a["lost"].is_null(), "agent lost: {a}");
        assert!(a["missing_intervals"].as_array().is_none_or(|m| m.is_empty()), "{a}");
    }
}

/// The exit code is the verdict's. `invalid` (exit 3) is accepted: on a
/// busy 2-core machine the open-model client may start more than 1 % of its
/// arrivals over 10 ms late, and then says so instead of passing; that is
/// about the client's timing, not about the control channel or the fault.
fn assert_exit_matches_verdict(run: &RunOutcome, r: &Value) {
    let verdict = r["verdict"].as_str().unwrap();
    let want = match verdict {
        "pass" | "warn" => 0,
        "fail" => 1,
        "invalid" => 3,
        other => panic!("verdict {other}: {}", r["verdict_reasons"]),
    };
    assert_eq!(run.code, want, "exit code of verdict {verdict}");
    if verdict == "invalid" {
        println!("note: verdict invalid (client timing on a busy machine): {}", r["verdict_reasons"]);
    }
}

/// Each named fault ran once per expected agent and was reverted.
fn assert_reverted(r: &Value, fault: &str, agents: &[&str]) -> Vec<Value> {
    let got = faults(r, fault);
    let mut on: Vec<&str> = got.iter().map(|f| f["agent"].as_str().unwrap()).collect();
    on.sort();
    assert_eq!(on, agents, "fault {fault} ran on {on:?}: {}", r["faults"]);
    for f in &got {
        assert_eq!(f["status"], "reverted", "{f}");
        assert!(f["applied_at"].is_string() && f["reverted_at"].is_string(), "{f}");
    }
    got.into_iter().cloned().collect()
}

/// Seconds from the run's common start to an RFC 3339 time of the report.
fn offset_s(r: &Value, at: &Value) -> f64 {
    let parse = |v: &Value| humantime::parse_rfc3339_weak(v.as_str().unwrap_or_else(|| panic!("not a time: {v}"))).unwrap();
    let (t, start) = (parse(at), parse(&r["started_at"]));
    match t.duration_since(start) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

fn print_timeline(r: &Value) {
    for (t, req, err) in timeline(r) {
        println!("  t={t:>4.1}s requests {req:>4} errors {err:>4}");
    }
}

#[test]
fn partition_cuts_the_target_but_not_the_control_channel() {
    let _serial = serial();
    let Some(mut fleet) = Fleet::up(2, &["nft"]) else { return };
    fleet.start_all(&[]);
    let run = fleet.run(&plan_path("fleet-partition.yaml"), 2, RUN_LIMIT);
    let r = report(&run, &fleet);
    println!("verdict {} (exit {}), totals {}", r["verdict"], run.code, r["totals"]);
    print_timeline(r);

    // The fault: once per agent (each namespace is its own node), applied,
    // effective (the probe's connects failed) and reverted.
    let split = assert_reverted(r, "split", &["agent1", "agent2"]);
    for f in &split {
        let effect = &f["effect"];
        println!("  {} on {}: {}", f["name"], f["agent"], effect);
        assert_eq!(effect["effective"], true, "{f}");
        assert_eq!(effect["measure"], "connect_failure_ratio", "{f}");
        assert!(num(effect, "during") >= 0.9 && num(effect, "baseline") == 0.0, "{f}");
    }

    // Requests are recorded in the interval they were due in (docs/plan.md,
    // "Timeline and intervals"). The window is [2 s, 5 s): every request due
    // in it times out, so the intervals starting at 2, 3 and 4 s hold only
    // timeouts, and from 5 s on only answers — except the requests sent
    // between 5 s and the moment the revert took hold (a few ms; more on a
    // busy machine), which belong to the interval at 5 s.
    // report.md's timeline marks the rows of the window [2 s, 5 s), and no other.
    let md = std::fs::read_to_string(run.out.join("report.md")).unwrap();
    for row in md.lines().skip_while(|l| *l != "## Timeline").filter(|l| l.starts_with("| +")) {
        let t: f64 = row[3..].split('s').next().unwrap().parse().unwrap();
        let marked = row.ends_with("| split |");
        assert_eq!(marked, (2.0..5.0).contains(&t), "row {row}\n{md}");
    }

    let tl = timeline(r);
    for &(t, req, err) in tl.iter().filter(|(t, _, _)| (2.0..5.0).contains(t)) {
        assert!(req >= 50, "t={t}: only {req} requests were due in the partition\n{}", describe(&run, &fleet));
        assert!(err as f64 >= 0.95 * req as f64, "t={t}: {err} of {req} failed during the partition");
    }
    let reverted = split.iter().map(|f| offset_s(r, &f["reverted_at"])).fold(0.0, f64::max);
    println!("  reverted at +{reverted:.3} s (planned +5.000 s)");
    let after: Vec<_> = tl.iter().filter(|(t, _, _)| (5.0..8.0).contains(t)).collect();
    assert_eq!(after.len(), 3, "{tl:?}");
    for &&(t, req, err) in &after {
        assert!(req >= 80, "t={t}: the load did not resume: {req} requests");
        // Sent in [t, t+1) while the partition was still in place (100/s), plus slack.
        let late = (reverted.min(t + 1.0) - t).max(0.0);
        let allowed = (late * 100.0).ceil() as u64 + 2;
        assert!(err <= allowed, "t={t}: {err} of {req} failed after the partition (revert at +{reverted:.3} s allows {allowed})");
    }
    assert!(r["totals"]["errors_by_kind"]["timeout"].as_u64().unwrap_or(0) >= 200, "{}", r["totals"]);

    // The control channel to 198.18.0.1:7000 was outside the scope: every
    // snapshot arrived, during the partition too.
    assert_control_channel_held(r, &["agent1", "agent2"]);
    assert_exit_matches_verdict(&run, r);

    // Nothing left behind.
    for a in ["agent1", "agent2"] {
        let tables = fleet.nft_tables(a);
        assert!(!tables.contains("stampede_"), "{a} kept a table:\n{tables}");
    }
    fleet.assert_clean();
}

#[test]
fn loss_fails_a_share_of_requests() {
    let _serial = serial();
    let Some(mut fleet) = Fleet::up(2, &["nft"]) else { return };
    fleet.start_all(&[]);
    let run = fleet.run(&plan_path("fleet-loss.yaml"), 2, RUN_LIMIT);
    let r = report(&run, &fleet);
    println!("verdict {} (exit {}), totals {}", r["verdict"], run.code, r["totals"]);
    print_timeline(r);

    let error_rate = num(&r["totals"], "error_rate");
    let mut effect_ratios = Vec::new();
    for f in assert_reverted(r, "lossy", &["agent1", "agent2"]) {
        println!("  {} on {}: {}", f["name"], f["agent"], f["effect"]);
        assert_eq!(f["effect"]["effective"], true, "{f}");
        effect_ratios.push(num(&f["effect"], "during"));
    }
    println!("request error rate {:.1} %, effect connect failure ratios {effect_ratios:?}", error_rate * 100.0);

    // 30 % of the scoped packets are dropped each way; neither figure below
    // is 30 %, and the bounds are wide on purpose.
    //
    // The effect probe (the fault's own measure) is a TCP connect with a
    // 0.9 s limit: it fails when the SYN or the SYN-ACK is dropped, since
    // either is retried only after 1 s: 1-(0.7)² = 51 %. Each agent takes a
    // dozen or so probes (a failed one lasts 0.9 s), so one agent's ratio
    // scatters (0.33–0.75 seen); their mean is checked within 10–80 %.
    let mean_effect = effect_ratios.iter().sum::<f64>() / effect_ratios.len() as f64;
    assert!((0.10..=0.80).contains(&mean_effect), "connect failure ratio {effect_ratios:?} under 30 % loss");
    // A request fails only without an answer within the 1 s timeout. On an
    // established connection TCP retransmits a lost segment after ~200 ms
    // (then 400, 800 ms), so most losses only delay a request: TCP hides
    // most of the loss (9.9–15.2 % of requests failed in a dozen trials).
    // What fails is mostly new connections (SYN or SYN-ACK lost, retried
    // after 1 s), which a timed-out connection's replacement needs. Lower
    // bound 5 %: clearly the fault (no failures without it); upper bound
    // 50 %: about a bare connect's failure rate, i.e. TCP's retransmits
    // would not have hidden anything.
    assert!((0.05..=0.50).contains(&error_rate), "error rate {error_rate} under 30 % loss\n{}", describe(&run, &fleet));
    let by_kind = &r["totals"]["errors_by_kind"];
    assert!(by_kind["timeout"].as_u64().unwrap_or(0) > 0, "{by_kind}");

    assert_control_channel_held(r, &["agent1", "agent2"]);
    assert_exit_matches_verdict(&run, r);
    fleet.assert_clean();
}

/// bits/s of one transfer of `bytes` that took `ms`.
fn bits_per_s(bytes: f64, ms: f64) -> f64 {
    bytes * 8.0 / (ms / 1e3)
}

#[test]
fn rate_cap_on_downloads_holds_at_the_target_and_with_ingress_on_the_agent() {
    let _serial = serial();
    const CAP: f64 = 2e6; // 2mbit
    const SIZE: f64 = 200_000.0;
    let Some(mut fleet) = Fleet::up(1, &["tc"]) else { return };
    fleet.start_coordinator();
    fleet.start_target(&[]);
    fleet.start_agent_in("agent1", "agent1", "zone=z1,role=load", &["--capacity", "100"]);
    // An agent next to the target, in its namespace: the only place where a
    // `rate` fault (an egress shaper) sees the download's packets leave.
    fleet.start_agent_in("target", "tside", "zone=z1,role=target-side", &["--capacity", "1"]);
    fleet.wait_for_agents(&["agent1", "tside"], Duration::from_secs(20));
    let run = fleet.run(&plan_path("fleet-rate-download.yaml"), 2, RUN_LIMIT);
    let r = report(&run, &fleet);
    println!("verdict {} (exit {}), totals {}", r["verdict"], run.code, r["totals"]);

    assert_reverted(r, "cap-at-agent", &["agent1"]);
    assert_reverted(r, "cap-at-target", &["tside"]);
    // The effect check reads each cap's own class counters. Both caps
    // throttled what they shape: at the target the download itself; at the
    // agent the ACK stream of downloads at full speed (about 2 Mbit/s of
    // 100-byte ACKs), which leaves the download far above the cap (below).
    assert_reverted(r, "cap-ingress", &["agent1"]);
    for name in ["cap-at-target", "cap-at-agent", "cap-ingress"] {
        let effect = faults(r, name)[0]["effect"].clone();
        println!("effect of {name}: {effect}");
        assert_eq!((effect["measure"].as_str(), effect["effective"].as_bool()), (Some("throughput_kbit"), Some(true)), "{effect}");
        assert!(num(&effect, "during") <= 2000.0 * 1.2, "more went through the cap than it allows: {effect}");
    }
    let mut measured = Vec::new();
    for name in ["free", "agent-cap", "target-cap", "agent-ingress"] {
        let p = phase(r, name);
        let (requests, errors, secs) = (num(p, "requests"), num(p, "errors"), num(p, "duration_s"));
        assert_eq!(errors, 0.0, "{p}");
        assert!(requests >= 2.0, "{p}");
        let p50 = num(&p["latency_ms"], "p50");
        // Per transfer: 200 kB over its median time; per phase: all bytes of
        // the requests started in it over its duration (closed model,
        // concurrency 1, so transfers never overlap).
        let per_transfer = bits_per_s(SIZE, p50);
        let per_phase = requests * SIZE * 8.0 / secs;
        println!("  {name:<10} {requests:>5} requests, p50 {p50:>8.2} ms: {:>8.2} Mbit/s per transfer, {:>8.2} Mbit/s over the phase", per_transfer / 1e6, per_phase / 1e6);
        measured.push((per_transfer, per_phase));
    }
    let [(free, _), (agent_side, _), (target_side, target_phase), (ingress_side, ingress_phase)] = measured[..] else { unreachable!() };
    assert!(free > 10.0 * CAP, "an unshaped download ran at only {free} bit/s");
    // The (egress) cap on the agent shapes what it sends — requests and
    // ACKs — not the download.
    assert!(agent_side > 5.0 * CAP, "the agent-side cap slowed the download to {agent_side} bit/s");
    // With `direction: ingress` the agent caps what it receives: the download.
    assert!((0.7 * CAP..=1.1 * CAP).contains(&ingress_side), "ingress-capped download at {ingress_side} bit/s, cap {CAP}");
    assert!((0.5 * CAP..=1.3 * CAP).contains(&ingress_phase), "ingress-capped phase at {ingress_phase} bit/s, cap {CAP}");
    let links = fleet.exec("agent1", &["ip", "-o", "link", "show"], Duration::from_secs(5));
    assert!(!String::from_utf8_lossy(&links.stdout).contains("stpifb"), "the ifb outlived the fault");
    // On the target's egress the download is capped: htb holds the rate, TCP
    // fills it (per-transfer median within 0.7–1.1 of the cap); the phase
    // figure is coarser (a transfer takes 0.8 s of a 4 s phase, and the last
    // one ends after the fault's revert).
    assert!((0.7 * CAP..=1.1 * CAP).contains(&target_side), "capped download at {target_side} bit/s, cap {CAP}");
    assert!((0.5 * CAP..=1.3 * CAP).contains(&target_phase), "capped phase at {target_phase} bit/s, cap {CAP}");

    assert_control_channel_held(r, &["agent1", "tside"]);
    assert_exit_matches_verdict(&run, r);
    fleet.assert_clean();
}

#[test]
fn rate_cap_on_the_agent_caps_uploads() {
    let _serial = serial();
    const CAP: f64 = 2e6; // 2mbit
    const BODY: usize = 100_000;
    let Some(mut fleet) = Fleet::up(1, &["tc"]) else { return };
    fleet.start_all(&[]);
    let template = std::fs::read_to_string(plan_path("fleet-rate-upload.yaml")).unwrap();
    let plan_text = template.replace("body: BODY", &format!("body: {}", "x".repeat(BODY)));
    assert_ne!(plan_text, template);
    let plan = fleet.dir.join("fleet-rate-upload.yaml");
    std::fs::write(&plan, plan_text).unwrap();
    let run = fleet.run(&plan, 1, RUN_LIMIT);
    let r = report(&run, &fleet);
    println!("verdict {} (exit {}), totals {}", r["verdict"], run.code, r["totals"]);

    assert_reverted(r, "cap-upload", &["agent1"]);
    // The uploads hit the cap: the effect check saw the class hold them back.
    let effect = faults(r, "cap-upload")[0]["effect"].clone();
    println!("effect: {effect}");
    assert_eq!((effect["measure"].as_str(), effect["effective"].as_bool()), (Some("throughput_kbit"), Some(true)), "{effect}");
    let mut rates = Vec::new();
    for name in ["free", "capped", "after"] {
        let p = phase(r, name);
        let (requests, errors) = (num(p, "requests"), num(p, "errors"));
        assert_eq!(errors, 0.0, "{p}");
        let p50 = num(&p["latency_ms"], "p50");
        let per_transfer = bits_per_s(BODY as f64, p50);
        println!("  {name:<7} {requests:>5} requests, p50 {p50:>8.2} ms: {:>8.2} Mbit/s per upload", per_transfer / 1e6);
        rates.push(per_transfer);
    }
    assert!(rates[0] > 5.0 * CAP && rates[2] > 5.0 * CAP, "uploads outside the window were slow: {rates:?}");
    assert!((0.7 * CAP..=1.1 * CAP).contains(&rates[1]), "capped upload at {} bit/s, cap {CAP}", rates[1]);
    let sent = r["totals"]["bytes_sent"].as_u64().unwrap();
    let requests = r["totals"]["requests"].as_u64().unwrap();
    assert!(sent >= requests * BODY as u64, "bytes_sent {sent} for {requests} uploads of {BODY}");

    assert_control_channel_held(r, &["agent1"]);
    assert_exit_matches_verdict(&run, r);
    fleet.assert_clean();
}

#[test]
fn netem_without_the_qdisc_is_refused_before_any_load() {
    let _serial = serial();
    let Some(mut fleet) = Fleet::up(1, &["tc"]) else { return };
    // This test is about a kernel without netem (or prio, under which the
    // netem driver puts it). Where both exist, there is nothing to refuse.
    let has = |q: &[&str]| {
        let mut argv = vec!["tc", "qdisc", "add", "dev", "lo", "root", "handle", "1:"];
        argv.extend(q);
        let ok = fleet.exec("agent1", &argv, Duration::from_secs(5)).status.success();
        if ok {
            fleet.exec("agent1", &["tc", "qdisc", "del", "dev", "lo", "root"], Duration::from_secs(5));
        }
        ok
    };
    let (netem, prio) = (has(&["netem", "delay", "1ms"]), has(&["prio"]));
    if netem && prio {
        println!("skipped: this kernel has the netem and prio qdiscs, so a netem fault is not refused");
        return;
    }
    fleet.start_all(&[]);
    let run = fleet.run(&plan_path("fleet-netem.yaml"), 1, RUN_LIMIT);
    println!("exit {} after {:?}: {}", run.code, run.elapsed, run.stderr.trim());
    assert_eq!(run.code, 2, "{}", describe(&run, &fleet));
    let missing = if prio { "qdisc.netem" } else { "qdisc.prio" };
    let err = run.stderr.lines().find(|l| l.starts_with("error:")).unwrap_or_else(|| panic!("no error line\n{}", describe(&run, &fleet)));
    for part in ["slow-target", "agent1", missing] {
        assert!(err.contains(part), "the error does not name `{part}`: {err}");
    }
    // Before any load: refused long before the plan's 8 s, no report, and
    // the agent never got an assignment.
    assert!(run.elapsed < Duration::from_secs(6), "refused only after {:?}", run.elapsed);
    assert!(run.report.is_none(), "a refused run wrote a report");
    let log = fleet.log("agent1");
    assert!(!log.contains("Assignment received"), "the agent was assigned the run:\n{log}");
    fleet.assert_clean();
}
