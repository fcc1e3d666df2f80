//! netem for real where the kernel has it, and tc's own parser as the judge
//! of every command line the netem driver writes where it does not (root
//! only; each test prints why it skips otherwise).

mod support;

use serde_json::json;
use stampede_agent::fault::net::{netem_args, NetemDriver};
use stampede_agent::fault::probe::probe;
use stampede_agent::fault::{Action, Driver, Node};
use stampede_common::plan::{Fault, Netem};
use support::netns::{Pair, CLIENT_DEV, SERVER_ADDR};

fn fault(v: serde_json::Value) -> Fault {
    let mut f = json!({ "name": "slow", "kind": "netem", "at": "1s", "duration": "10s" });
    f.as_object_mut().unwrap().extend(v.as_object().unwrap().clone());
    serde_json::from_value(f).unwrap()
}

fn node() -> Node {
    Node { route_dev: Box::new(|_| Ok(CLIENT_DEV.into())), agent_exe: "/bin/false".into() }
}

/// tc parsed the line when it succeeded or the kernel answered (`Error: ...`
/// is netlink's message); a parse error prints usage or a complaint instead.
fn tc_accepts(pair: &Pair, argv: &[String]) -> Result<(), String> {
    let args: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = pair.exec(&pair.client, &args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() || stderr.starts_with("Error: ") {
        Ok(())
    } else {
        Err(format!("{}: {stderr}", argv.join(" ")))
    }
}

#[test]
fn every_netem_line_parses_with_tc() {
    let Some(pair) = Pair::new("grammar", &["tc"]) else { return };
    let options = [
        json!({"delay": "200ms"}),
        json!({"delay": "200ms", "jitter": "20ms"}),
        json!({"delay": "200ms", "jitter": "20ms", "correlation": "25%"}),
        json!({"delay": "1.5ms", "jitter": "500us", "distribution": "normal"}),
        json!({"delay": "10ms", "jitter": "2ms", "correlation": "5%", "distribution": "pareto"}),
        json!({"delay": "10ms", "jitter": "2ms", "distribution": "paretonormal"}),
        json!({"delay": "10ms", "jitter": "2ms", "distribution": "uniform"}),
        json!({"loss": "1%"}),
        json!({"loss": "0.0001%"}),
        json!({"duplicate": "0.1%"}),
        json!({"corrupt": "0.1%"}),
        json!({"delay": "10ms", "reorder": "25%"}),
        json!({"rate": "1mbit"}),
        json!({"delay": "200ms", "jitter": "20ms", "correlation": "25%", "distribution": "normal", "loss": "1%",
               "duplicate": "0.1%", "corrupt": "0.05%", "reorder": "5%", "rate": "10mbit"}),
    ];
    for o in options {
        let netem: Netem = serde_json::from_value(o.clone()).unwrap();
        let mut argv: Vec<String> = ["tc", "qdisc", "add", "dev", "lo", "root", "handle", "1:", "netem"].map(String::from).to_vec();
        argv.extend(netem_args(&netem));
        tc_accepts(&pair, &argv).unwrap();
        let _ = pair.exec(&pair.client, &["tc", "qdisc", "del", "dev", "lo", "root"]);
        // The driver's whole tree, with and without a port, one line at a time.
        for port in [json!(8080), serde_json::Value::Null] {
            let f = fault(json!({"scope": {"dst": "198.18.0.0/24", "port": port, "dev": "auto"}, "netem": o}));
            for action in NetemDriver.actions(&f, &node()).unwrap().apply {
                let Action::Run { argv, .. } = action else { panic!() };
                tc_accepts(&pair, &argv).unwrap();
            }
            let _ = pair.exec(&pair.client, &["tc", "qdisc", "del", "dev", CLIENT_DEV, "root", "handle", "5ea7:"]);
        }
    }
    // The check above does tell a parse error from a kernel answer.
    let bad = ["tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "10ms", "distribution", "uniform"].map(String::from);
    assert!(tc_accepts(&pair, &bad).is_err());
}

/// The fastest of three fetches from the client to `port`, in milliseconds.
fn fetch_ms(pair: &Pair, port: &str) -> f64 {
    (0..3)
        .map(|_| {
            let (ok, report) = pair.netio(&pair.client, &["fetch", SERVER_ADDR, port, "5"]);
            assert!(ok, "{report}");
            report.split_once(' ').unwrap().1.parse::<f64>().unwrap() * 1e3
        })
        .fold(f64::INFINITY, f64::min)
}

#[test]
fn netem_delays_the_scope_where_the_kernel_has_it() {
    let Some(pair) = Pair::new("netem", &["tc"]) else { return };
    let caps = probe();
    let get = |n: &str| caps.iter().find(|c| c.name == n).unwrap().clone();
    let (netem, prio) = (get("qdisc.netem"), get("qdisc.prio"));
    let f = fault(json!({"scope": {"dst": SERVER_ADDR, "port": 8080, "dev": CLIENT_DEV}, "netem": {"delay": "100ms"}}));
    let a = NetemDriver.actions(&f, &node()).unwrap();

    if !(netem.available && prio.available) {
        // Probe says why, applying fails with the kernel's word for it, and
        // the failed apply leaves the device as it was.
        let missing = if netem.available { &prio } else { &netem };
        assert!(!missing.detail.is_empty(), "{missing:?}");
        let err = pair.run_actions(&pair.client, &a.apply).unwrap_err().to_string();
        assert!(err.contains("Specified qdisc kind is unknown"), "{err}");
        pair.run_actions(&pair.client, &a.revert).unwrap();
        let qdiscs = pair.check(&pair.client, &["tc", "qdisc", "show", "dev", CLIENT_DEV]);
        assert!(qdiscs.contains("noqueue 0: root"), "{qdiscs}");
        println!("skipped the delay measurement: {} unavailable: {}", missing.name, missing.detail);
        return;
    }
    let mut server = pair.spawn_netio(&pair.server, &["serve", SERVER_ADDR, "20", "100", "8080", "8081"]);
    assert_eq!(server.wait_ready(), "ready");
    pair.run_actions(&pair.client, &a.apply).unwrap();
    let (scoped, other) = (fetch_ms(&pair, "8080"), fetch_ms(&pair, "8081"));
    println!("netem delay 100ms: scoped fetch {scoped:.1} ms, other port {other:.1} ms");
    pair.run_actions(&pair.client, &a.revert).unwrap();
    pair.run_actions(&pair.client, &a.revert).unwrap();
    assert!(scoped - other >= 80.0, "scoped {scoped} ms vs other {other} ms");
    assert!(other < 50.0, "unscoped traffic was delayed: {other} ms");
    assert!(fetch_ms(&pair, "8080") < 50.0, "still delayed after revert");
}
