//! Issue 9, section 4: `stampede halt --coordinator URL`, from a second
//! process, stops the standing coordinator's run in progress, reverts every
//! fault on every agent and says what it reverted, per agent; the run's own
//! report says it was halted. Only an operator certificate may halt.
//!
//! The fleet test needs root (network namespaces, nft) and skips with a
//! printed reason otherwise; the certificate test runs on loopback.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::fleet::{insecure_flag, plan_path, Fleet, COORD_URL};
use support::{accepts, free_port, stampede, stampede_output, wait_until, Procs};

const AGENTS: [&str; 3] = ["agent1", "agent2", "agent3"];

/// `stampede halt` run inside the coordinator's namespace: exit code and stdout.
fn halt(fleet: &Fleet) -> (i32, String, String) {
    let bin = stampede().to_str().unwrap();
    let mut argv = vec![bin, "halt", "--coordinator", COORD_URL];
    let tls = insecure_flag(stampede(), Some("halt"));
    argv.extend(tls.iter().map(String::as_str));
    let out = fleet.exec("coord", &argv, Duration::from_secs(45));
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn halt_from_a_second_process_reverts_every_fault_on_three_agents_and_says_so() {
    let Some(mut fleet) = Fleet::up(3, &["nft"]) else { return };
    fleet.start_all(&[]);
    let run = fleet.start_run(&plan_path("fleet-halt.yaml"), 3);
    let applied = wait_until(Duration::from_secs(15), || AGENTS.iter().all(|a| fleet.nft_tables(a).contains("stampede_cut")));
    assert!(applied, "the partition was not applied on every agent\n{}", fleet.logs());

    let asked = Instant::now();
    let (code, stdout, stderr) = halt(&fleet);
    let took = asked.elapsed();
    println!("stampede halt (exit {code}, {took:?}):\n{stdout}{stderr}");
    assert_eq!(code, 0, "{stdout}\n{stderr}\n{}", fleet.logs());
    // Every namespace is clean by the time halt answers, long before the
    // fault's own end (27 s after its start) or its kernel timeout.
    for a in AGENTS {
        let tables = fleet.nft_tables(a);
        assert!(!tables.contains("stampede_"), "{a} still has the partition after `stampede halt` answered:\n{tables}");
        assert!(stdout.contains(&format!("agent {a}: stopped; 1 fault(s)")), "{a} is not reported stopped:\n{stdout}");
    }
    assert_eq!(stdout.matches("  cut (partition): reverted").count(), 3, "{stdout}");

    let out = run.finish(Duration::from_secs(30));
    let r = out.report.as_ref().unwrap_or_else(|| panic!("the halted run wrote no report:\n{}\n{}", out.stderr, fleet.logs()));
    assert_eq!((out.code, r["verdict"].as_str()), (3, Some("incomplete")), "{}", out.stderr);
    let reasons: Vec<&str> = r["verdict_reasons"].as_array().unwrap().iter().filter_map(|x| x.as_str()).collect();
    assert!(reasons.iter().any(|x| x.contains("halted by an insecure (plain-text) client at 198.18.0.1")), "{reasons:?}");
    assert!(out.elapsed < Duration::from_secs(20), "the 30 s run was not stopped early: {:?}", out.elapsed);
    for f in r["faults"].as_array().unwrap() {
        assert_eq!(f["status"], "reverted", "{f:#}");
    }

    // Nothing to halt any more: said so, exit 0 (the state asked for holds).
    let (code, stdout, _) = halt(&fleet);
    assert_eq!((code, stdout.trim()), (0, format!("no run in progress on {COORD_URL}: nothing to halt").as_str()));
    fleet.assert_clean();
}

#[test]
fn only_an_operator_certificate_may_halt() {
    let mut procs = Procs::new();
    let dir = procs.dir.path().to_path_buf();
    let ca = dir.join("ca");
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    for args in [
        vec!["certs", "init", "--dir", &s(&ca)],
        vec!["certs", "issue", "--dir", &s(&ca), "--role", "coordinator", "--name", "coordinator", "--san", "127.0.0.1"],
        vec!["certs", "issue", "--dir", &s(&ca), "--role", "agent", "--name", "agent1"],
        vec!["certs", "issue", "--dir", &s(&ca), "--role", "operator", "--name", "oncall"],
        vec!["certs", "token", "--out", &s(&dir.join("token"))],
    ] {
        let out = stampede_output(&args, Duration::from_secs(20));
        assert!(out.status.success(), "stampede {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let flags = |name: &str| -> Vec<String> {
        vec!["--ca".into(), s(&ca.join("ca.pem")), "--cert".into(), s(&ca.join(format!("{name}.pem"))), "--key".into(), s(&ca.join(format!("{name}-key.pem")))]
    };
    let halt_as = |url: &str, name: &str| {
        let mut args = vec!["halt".to_string(), "--coordinator".into(), url.into()];
        args.extend(flags(name));
        stampede_output(&args.iter().map(String::as_str).collect::<Vec<_>>(), Duration::from_secs(20))
    };
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut cmd = Command::new(stampede());
    cmd.args(["coordinator", "--listen", &addr.to_string(), "--token-file", &s(&dir.join("token"))]).args(flags("coordinator")).arg("--data").arg(procs.data_dir("coordinator"));
    procs.spawn("coordinator", cmd);
    assert!(wait_until(Duration::from_secs(10), || !procs.alive("coordinator") || accepts(addr)), "{}", procs.logs());
    let url = format!("https://{addr}");

    let agent = halt_as(&url, "agent1");
    let err = String::from_utf8_lossy(&agent.stderr);
    assert_eq!(agent.status.code(), Some(2), "{err}");
    assert!(err.contains("ControlService.Halt") && err.contains("takes only operator certificates"), "{err}");

    let operator = halt_as(&url, "oncall");
    let out = String::from_utf8_lossy(&operator.stdout);
    assert_eq!(operator.status.code(), Some(0), "{out}{}", String::from_utf8_lossy(&operator.stderr));
    assert!(out.contains("no run in progress"), "{out}");
}
