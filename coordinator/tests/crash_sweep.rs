//! `stampede-agent sweep` for real, on everything a crashed agent can leave
//! — a pending journal entry, `inet stampede_*` tables, stampede's root
//! qdisc, a pressure helper — next to an operator's table, qdisc and
//! process, which it must not touch.
//!
//! A sweep acts on the whole node, so it runs in throwaway namespaces
//! (`unshare --net --pid --mount-proc`): it sees only the namespace's
//! tables, qdiscs and processes, never those of other tests running now,
//! and everything in there dies with the namespace. Root only; it prints
//! why it skips otherwise.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use stampede_agent::fault::journal::{Entry, Journal};
use stampede_agent::fault::nft::delete_table;
use support::agent_bin;

fn skip_reason() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if !status.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")) {
        return Some("not root: needs namespaces, nftables and tc".into());
    }
    let probe = Command::new("unshare").args(["--net", "--pid", "--fork", "--mount-proc", "--kill-child", "sh", "-c", "nft list tables && tc qdisc show"]).output();
    match probe {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!("cannot use nft and tc in a new namespace: {}", String::from_utf8_lossy(&o.stderr).trim())),
        Err(e) => Some(format!("unshare: {e}")),
    }
}

/// Runs `script` in fresh network, pid and mount namespaces, killed after
/// `limit`. Named network namespaces live in /run/netns, which unshare does
/// not isolate: the script gets a private one, so a sweep sees no other
/// test's (or the host's) probe namespaces.
fn in_namespaces(script: &str, limit: Duration) -> (bool, String, String) {
    let script = format!("set -e\nmkdir -p /run/netns && mount -t tmpfs stampede-test /run/netns\n{script}");
    let child = Command::new("unshare")
        .args(["--net", "--pid", "--fork", "--mount-proc", "--kill-child", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("unshare starts");
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(limit).is_err() {
            // A positive pid: unshare itself; --kill-child takes the namespace down with it.
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
    });
    let out = child.wait_with_output().expect("unshare runs");
    let _ = done_tx.send(());
    let _ = watchdog.join();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The lines of `out` between `--- name` and the next `---` marker.
fn section<'a>(out: &'a str, name: &str) -> Vec<&'a str> {
    let marker = format!("--- {name}");
    out.lines().skip_while(|l| *l != marker).skip(1).take_while(|l| !l.starts_with("--- ")).collect()
}

#[test]
fn sweep_removes_only_what_stampede_left() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let journal = Journal::open(state.path()).unwrap();
    journal
        .record_apply(&Entry {
            id: "run-1/journaled".into(),
            run_id: "run-1".into(),
            fault: "journaled".into(),
            kind: "partition".into(),
            revert: vec![delete_table("stampede_journaled")],
            deadline_unix_ms: 1,
        })
        .unwrap();
    let agent = agent_bin().display().to_string();
    let script = format!(
        r#"ip link set lo up
ip link add op-a type veth peer name op-b
nft -f - <<'EOF'
table inet stampede_journaled {{}}
table inet stampede_left_1 {{}}
table inet stampede_left_2 {{
	chain output {{
		type filter hook output priority -150; policy accept;
	}}
}}
table inet operator_keep {{}}
table ip stampede_other_family {{}}
EOF
tc qdisc add dev lo root handle 5ea7: htb direct_qlen 1000
tc qdisc add dev op-a root handle 1: htb
tc qdisc add dev op-b root handle 5ea8: tbf rate 1mbit burst 16kb latency 50ms
'{agent}' stress cpu --workers 1 --load 1 --for 20s &
sleep 20 &
sleep 0.3
echo "--- dry run"
'{agent}' sweep --state-dir '{state}' --dry-run
echo "--- after dry run"
nft list tables; tc qdisc show | grep -c 5ea7: || true
echo "--- sweep"
'{agent}' sweep --state-dir '{state}'
echo "--- again"
'{agent}' sweep --state-dir '{state}'
echo "--- tables"
nft list tables
echo "--- qdiscs"
tc qdisc show
echo "--- processes"
for p in /proc/[0-9]*; do tr '\0' ' ' < $p/cmdline 2>/dev/null; echo; done | grep -v '^$'
echo "--- end"
"#,
        state = state.path().display()
    );
    let (ok, out, err) = in_namespaces(&script, Duration::from_secs(30));
    assert!(ok, "the script failed:\nstdout:\n{out}\nstderr:\n{err}");
    println!("{out}");

    let helper = format!("{agent} stress cpu --workers 1 --load 1 --for 20s");
    let dry = section(&out, "dry run");
    assert_eq!(dry.len(), 6, "{dry:#?}");
    assert_eq!(dry[0], "would revert fault journaled (partition) of run run-1 from the journal: nft delete table inet stampede_journaled");
    assert_eq!(dry[1..5], [
        "would delete nft table inet stampede_journaled",
        "would delete nft table inet stampede_left_1",
        "would delete nft table inet stampede_left_2",
        "would delete qdisc 5ea7: (root) on dev lo",
    ]);
    assert!(dry[5].starts_with("would kill pressure helper pid ") && dry[5].ends_with(&format!(": {helper}")), "{}", dry[5]);
    // The dry run changed nothing.
    let after_dry = section(&out, "after dry run");
    for t in ["stampede_journaled", "stampede_left_1", "stampede_left_2"] {
        assert!(after_dry.contains(&format!("table inet {t}").as_str()), "{after_dry:#?}");
    }
    assert_eq!(after_dry.last(), Some(&"1"), "the qdisc must survive a dry run: {after_dry:#?}");

    let swept = section(&out, "sweep");
    // (Its first line also shows that the dry run left the journal entry pending.)
    assert_eq!(swept.len(), 5, "{swept:#?}");
    assert_eq!(swept[..4], [
        "reverted fault journaled (partition) of run run-1 from the journal: nft delete table inet stampede_journaled",
        "deleted nft table inet stampede_left_1",
        "deleted nft table inet stampede_left_2",
        "deleted qdisc 5ea7: (root) on dev lo",
    ]);
    assert!(swept[4].starts_with("killed pressure helper pid ") && swept[4].ends_with(&format!(": {helper}")), "{}", swept[4]);
    assert_eq!(section(&out, "again"), ["nothing to sweep"]);
    assert!(Journal::open(state.path()).unwrap().pending().unwrap().is_empty());

    // What is left is exactly the operator's.
    assert_eq!(section(&out, "tables"), ["table inet operator_keep", "table ip stampede_other_family"]);
    let qdiscs = section(&out, "qdiscs").join("\n");
    assert!(!qdiscs.contains("5ea7:"), "{qdiscs}");
    assert!(qdiscs.contains("qdisc htb 1: dev op-a root") && qdiscs.contains("qdisc tbf 5ea8: dev op-b root"), "{qdiscs}");
    let procs = section(&out, "processes");
    assert!(!procs.iter().any(|p| p.starts_with(&format!("{agent} stress"))), "the helper survived:\n{procs:#?}");
    assert!(procs.iter().any(|p| p.starts_with("sleep 20")), "the operator's process was killed:\n{procs:#?}");
}

#[test]
fn sweep_deletes_stale_probe_namespaces_only() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let agent = agent_bin().display().to_string();
    // In a private /run/netns: a probe namespace left by a killed agent, one
    // made just now (a probe may be using it), and an operator's namespace.
    // A namespace's age cannot be faked (its file is nsfs), so the first is
    // made 2 s before the sweep and the sweep's threshold is 1 s.
    let script = format!(
        r#"ip netns add stp-probe-4000001-0
sleep 2
ip netns add stp-probe-4000002-0
ip netns add operator-ns
echo "--- sweep"
{agent} sweep --state-dir {state} --probe-min-age 1s
echo "--- left"
ip netns list | cut -d' ' -f1 | sort
"#,
        state = state.path().display()
    );
    let (ok, out, err) = in_namespaces(&script, Duration::from_secs(30));
    assert!(ok, "stdout:\n{out}\nstderr:\n{err}");
    assert_eq!(section(&out, "sweep"), ["deleted probe namespace stp-probe-4000001-0 (left by agent pid 4000001)"]);
    assert_eq!(section(&out, "left"), ["operator-ns", "stp-probe-4000002-0"]);
}

#[test]
fn sweep_removes_an_ingress_faults_plumbing_only() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let agent = agent_bin().display().to_string();
    // What a killed agent leaves of an ingress fault (an ifb of its own and
    // an ingress qdisc redirecting to it), beside an operator's ingress
    // qdisc redirecting to the operator's own ifb.
    let script = format!(
        r#"ip link set lo up
ip link add op-a type veth peer name op-b
ip link set op-a up
ip link add stpifb0badcafe type ifb
ip link add ifbop type ifb
tc qdisc add dev lo handle ffff: ingress
tc filter add dev lo parent ffff: protocol ip prio 1 u32 match ip src 198.18.0.2/32 action mirred egress redirect dev stpifb0badcafe
tc qdisc add dev op-a handle ffff: ingress
tc filter add dev op-a parent ffff: protocol ip prio 1 u32 match ip src 10.0.0.0/8 action mirred egress redirect dev ifbop
echo "--- sweep"
{agent} sweep --state-dir {state}
echo "--- links"
ip -o link show | cut -d' ' -f2 | tr -d ':' | cut -d@ -f1 | sort
echo "--- ingress"
tc qdisc show | grep ingress | cut -d' ' -f5 | sort
"#,
        state = state.path().display()
    );
    let (ok, out, err) = in_namespaces(&script, Duration::from_secs(30));
    assert!(ok, "stdout:\n{out}\nstderr:\n{err}");
    assert_eq!(section(&out, "sweep"), ["deleted ingress qdisc on dev lo (redirecting to a stampede ifb)", "deleted ifb device stpifb0badcafe"]);
    assert_eq!(section(&out, "links"), ["ifbop", "lo", "op-a", "op-b"]);
    assert_eq!(section(&out, "ingress"), ["op-a"]);
}
