//! Network faults applied for real between two network namespaces (root
//! only; each test prints why it skips otherwise): nftables partition and
//! loss, the htb rate cap, and that stampede's tc tree never replaces a root
//! qdisc an operator made. netem is in `netns_netem.rs`.

mod support;

use std::time::Instant;

use serde_json::json;
use stampede_agent::fault::net::{parse_route_dev, RateDriver};
use stampede_agent::fault::nft::{self, LossDriver, PartitionDriver};
use stampede_agent::fault::{Driver, FaultActions, Node};
use stampede_common::plan::Fault;
use support::netns::{Pair, CLIENT_ADDR, CLIENT_DEV, SERVER_ADDR, SERVER_DEV};

fn fault(name: &str, v: serde_json::Value) -> Fault {
    let mut f = json!({ "name": name, "at": "1s", "duration": "10s" });
    f.as_object_mut().unwrap().extend(v.as_object().unwrap().clone());
    serde_json::from_value(f).unwrap()
}

/// `dev: auto` resolved inside `ns`, as the agent resolves it on its node.
fn node_in(ns: &str) -> Node {
    let ns = ns.to_string();
    Node {
        route_dev: Box::new(move |addr| {
            let out = std::process::Command::new("ip").args(["-n", &ns, "-o", "route", "get", &addr.to_string()]).output().map_err(|e| e.to_string())?;
            parse_route_dev(&String::from_utf8_lossy(&out.stdout))
        }),
        agent_exe: "/bin/false".into(),
    }
}

fn actions(driver: &dyn Driver, f: &Fault, node: &Node) -> FaultActions {
    driver.actions(f, node).unwrap()
}

/// Whether a TCP fetch from the client to the server's `port` succeeds within 1 s.
fn reachable(pair: &Pair, port: u16, src: Option<&str>) -> bool {
    let port = port.to_string();
    let mut args = vec!["fetch", SERVER_ADDR, port.as_str(), "1"];
    args.extend(src);
    pair.netio(&pair.client, &args).0
}

fn tables(pair: &Pair) -> Vec<String> {
    nft::stampede_tables(&pair.check(&pair.client, &["nft", "list", "tables"]))
}

#[test]
fn partition_cuts_only_the_scope_and_reverts() {
    let Some(pair) = Pair::new("part", &["nft"]) else { return };
    let mut server = pair.spawn_netio(&pair.server, &["serve", SERVER_ADDR, "20", "100", "8080", "8081"]);
    assert_eq!(server.wait_ready(), "ready");
    assert!(reachable(&pair, 8080, None) && reachable(&pair, 8081, None), "servers unreachable before the fault");

    let f = fault("split-a", json!({"kind": "partition", "scope": {"dst": format!("{SERVER_ADDR}/32"), "port": 8080}}));
    let a = actions(&PartitionDriver, &f, &node_in(&pair.client));
    pair.run_actions(&pair.client, &a.apply).unwrap();
    // Applying again (a retried apply) replaces the table instead of stacking rules.
    pair.run_actions(&pair.client, &a.apply).unwrap();
    let listed = pair.check(&pair.client, &["nft", "list", "table", "inet", "stampede_split_a"]);
    assert_eq!(listed.matches(" drop").count(), 2, "{listed}");
    assert_eq!(tables(&pair), ["stampede_split_a"]);

    let started = Instant::now();
    assert!(!reachable(&pair, 8080, None), "the scoped port is still reachable during the partition");
    println!("partitioned connect failed after {:?}", started.elapsed());
    assert!(reachable(&pair, 8081, None), "another port on the same host must stay reachable");

    pair.run_actions(&pair.client, &a.revert).unwrap();
    assert!(reachable(&pair, 8080, None), "the scoped port must come back after revert");
    assert!(tables(&pair).is_empty());
    pair.run_actions(&pair.client, &a.revert).expect("revert is idempotent");

    // A crashed agent's table is found by its prefix and swept.
    pair.run_actions(&pair.client, &a.apply).unwrap();
    pair.check(&pair.client, &["nft", "add", "table", "inet", "operator"]);
    let sweep = nft::sweep_actions(&tables(&pair));
    assert_eq!(sweep.len(), 1);
    pair.run_actions(&pair.client, &sweep).unwrap();
    assert!(tables(&pair).is_empty());
    let all = pair.check(&pair.client, &["nft", "list", "tables"]);
    assert!(all.contains("table inet operator"), "the sweep removed an operator's table: {all}");
    assert!(reachable(&pair, 8080, None));
}

#[test]
fn loss_drops_about_the_requested_share_each_way() {
    let Some(pair) = Pair::new("loss", &["nft"]) else { return };
    let mut echo = pair.spawn_netio(&pair.server, &["udp-echo", SERVER_ADDR, "9000", "15"]);
    assert_eq!(echo.wait_ready(), "ready");
    let f = fault("lossy", json!({"kind": "loss", "scope": {"dst": SERVER_ADDR, "port": 9000}, "loss": "30%"}));
    let a = actions(&LossDriver, &f, &node_in(&pair.client));
    pair.run_actions(&pair.client, &a.apply).unwrap();

    let (ok, report) = pair.netio(&pair.client, &["udp-blast", SERVER_ADDR, "9000", "400"]);
    assert!(ok, "{report}");
    let arrived: f64 = echo.finish().trim().parse().unwrap();
    let (sent, echoed) = report.split_once(' ').map(|(s, e)| (s.parse::<f64>().unwrap(), e.parse::<f64>().unwrap())).unwrap();
    let out_loss = 1.0 - arrived / sent;
    let back_loss = 1.0 - echoed / arrived;
    println!("loss 30%: client→server {:.1}%, server→client {:.1}% ({sent} sent, {arrived} arrived, {echoed} echoed)", out_loss * 100.0, back_loss * 100.0);
    // 400 draws at p = 0.3: one standard deviation is 2.3 points.
    assert!((0.15..=0.45).contains(&out_loss), "client→server loss {out_loss}");
    assert!((0.15..=0.45).contains(&back_loss), "server→client loss {back_loss}");

    pair.run_actions(&pair.client, &a.revert).unwrap();
    pair.run_actions(&pair.client, &a.revert).unwrap();
    assert!(tables(&pair).is_empty());
}

/// Bytes per second of a download from the server to the client, from `src`.
fn download(pair: &Pair, src: &str) -> f64 {
    let (ok, report) = pair.netio(&pair.client, &["fetch", SERVER_ADDR, "7000", "10", src]);
    assert!(ok, "download failed: {report}");
    let (bytes, secs) = report.split_once(' ').unwrap();
    bytes.parse::<f64>().unwrap() / secs.parse::<f64>().unwrap()
}

#[test]
fn rate_caps_only_the_scope() {
    let Some(pair) = Pair::new("rate", &["tc"]) else { return };
    // A second client address: the same link, outside the scope.
    pair.check(&pair.client, &["ip", "addr", "add", "198.18.0.3/24", "dev", support::netns::CLIENT_DEV]);
    let mut server = pair.spawn_netio(&pair.server, &["serve", SERVER_ADDR, "20", "500000", "7000"]);
    assert_eq!(server.wait_ready(), "ready");

    // tbf/htb shape what a device sends, so the cap goes on the server's side,
    // scoped to the client's address; `dev: auto` finds v1 by the route.
    let f = fault("cap", json!({"kind": "rate", "scope": {"dst": CLIENT_ADDR}, "rate": "2mbit"}));
    let a = actions(&RateDriver, &f, &node_in(&pair.server));
    assert!(a.apply[0].display().contains(&format!("dev {SERVER_DEV} root")), "{:?}", a.apply[0]);
    pair.run_actions(&pair.server, &a.apply).unwrap();

    let cap = 2e6 / 8.0;
    let capped = download(&pair, CLIENT_ADDR);
    let free = download(&pair, "198.18.0.3");
    println!("rate 2mbit (cap {:.0} KB/s): scoped {:.1} KB/s ({:+.1}%), unscoped {:.0} KB/s", cap / 1e3, capped / 1e3, (capped / cap - 1.0) * 100.0, free / 1e3);
    assert!((0.8 * cap..=1.2 * cap).contains(&capped), "scoped throughput {capped:.0} B/s, cap {cap} B/s");
    assert!(free > 4.0 * cap, "unscoped traffic was shaped too: {free:.0} B/s");

    pair.run_actions(&pair.server, &a.revert).unwrap();
    pair.run_actions(&pair.server, &a.revert).expect("revert is idempotent");
    let qdiscs = pair.check(&pair.server, &["tc", "qdisc", "show", "dev", SERVER_DEV]);
    assert!(qdiscs.contains("noqueue 0: root"), "the default root is not back: {qdiscs}");
    assert!(download(&pair, CLIENT_ADDR) > 4.0 * cap, "still capped after revert");
}

#[test]
fn ingress_rate_caps_downloads_on_the_receiving_side() {
    let Some(pair) = Pair::new("ingress", &["tc"]) else { return };
    let mut server = pair.spawn_netio(&pair.server, &["serve", SERVER_ADDR, "20", "500000", "7000"]);
    assert_eq!(server.wait_ready(), "ready");

    // On the client, the side that downloads: what comes in from the
    // server's port goes through the fault's ifb and its cap.
    let f = fault("down", json!({"kind": "rate", "scope": {"dst": SERVER_ADDR, "port": 7000, "direction": "ingress"}, "rate": "2mbit"}));
    let a = actions(&RateDriver, &f, &node_in(&pair.client));
    pair.run_actions(&pair.client, &a.apply).unwrap();
    let cap = 2e6 / 8.0;
    let capped = download(&pair, CLIENT_ADDR);
    println!("ingress rate 2mbit (cap {:.0} KB/s): download {:.1} KB/s ({:+.1}%)", cap / 1e3, capped / 1e3, (capped / cap - 1.0) * 100.0);
    assert!((0.8 * cap..=1.2 * cap).contains(&capped), "download {capped:.0} B/s under a cap of {cap} B/s");

    pair.run_actions(&pair.client, &a.revert).unwrap();
    pair.run_actions(&pair.client, &a.revert).expect("revert is idempotent");
    let links = pair.check(&pair.client, &["ip", "-o", "link", "show"]);
    assert!(!links.contains("stpifb"), "the ifb is left: {links}");
    let qdiscs = pair.check(&pair.client, &["tc", "qdisc", "show", "dev", CLIENT_DEV]);
    assert!(!qdiscs.contains("ingress"), "the ingress qdisc is left: {qdiscs}");
    let free = download(&pair, CLIENT_ADDR);
    assert!(free > 4.0 * cap, "still capped after revert: {free:.0} B/s");
}

#[test]
fn tc_tree_never_replaces_an_operators_root() {
    let Some(pair) = Pair::new("root", &["tc"]) else { return };
    let (s, dev) = (pair.server.as_str(), SERVER_DEV);
    let f = fault("cap", json!({"kind": "rate", "scope": {"dst": CLIENT_ADDR, "dev": dev}, "rate": "1mbit"}));
    let a = actions(&RateDriver, &f, &node_in(s));

    // The kernel's default root (noqueue, handle 0:) is replaced by `add`...
    pair.run_actions(s, &a.apply).unwrap();
    // ...but stampede's own tree is not replaced by a second tc fault,
    let err = pair.run_actions(s, &a.apply).unwrap_err().to_string();
    assert!(err.contains("Exclusivity flag on"), "{err}");
    pair.run_actions(s, &a.revert).unwrap();

    // ...nor is a root an operator configured: apply fails, revert deletes nothing.
    pair.check(s, &["tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "tbf", "rate", "100mbit", "burst", "100kb", "latency", "50ms"]);
    let err = pair.run_actions(s, &a.apply).unwrap_err().to_string();
    assert!(err.contains("NLM_F_REPLACE needed to override"), "{err}");
    pair.run_actions(s, &a.revert).expect("revert of a fault that never applied succeeds");
    let qdiscs = pair.check(s, &["tc", "qdisc", "show", "dev", dev]);
    assert!(qdiscs.contains("qdisc tbf 1: root"), "the operator's root is gone: {qdiscs}");
}
