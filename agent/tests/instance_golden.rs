//! Golden tests: every instance driver × kind × force, apply and revert, as
//! exact argument lists. The process driver's guard scripts are checked by
//! shape here (their behaviour is tested for real in `instance_process.rs`).

use stampede_agent::fault::instance::InstanceDriver;
use stampede_agent::fault::{Action, Driver, FaultActions, Node};
use stampede_common::plan::{Fault, FaultKind, Instance, InstanceDriver as Kind};

fn node() -> Node {
    Node { route_dev: Box::new(|_| Ok("eth0".into())), agent_exe: "/usr/bin/stampede-agent".into() }
}

fn fault(kind: FaultKind, instance: Instance) -> Fault {
    let mut f: Fault = serde_json::from_value(serde_json::json!({"name": "f1", "kind": "stop", "at": "1s", "duration": "30s"})).unwrap();
    f.kind = kind;
    f.instance = Some(instance);
    f
}

fn named(driver: Kind, name: &str, force: bool) -> Instance {
    Instance { driver, name: Some(name.into()), pid: None, pid_file: None, force, start: vec![] }
}

fn build(kind: FaultKind, inst: Instance) -> FaultActions {
    InstanceDriver.actions(&fault(kind, inst), &node()).unwrap()
}

/// An action as (argv, ok_if), the script of `sh -c` shown as `<script>`.
fn shape(a: &Action) -> (Vec<String>, Vec<String>) {
    match a {
        Action::Run { argv, stdin: None, ok_if } => {
            let mut argv = argv.clone();
            if argv.len() > 2 && argv[0] == "sh" && argv[1] == "-c" {
                argv[2] = "<script>".into();
            }
            (argv, ok_if.clone())
        }
        // The process driver's actions on exact pids, as a dry run shows them.
        other => (vec![other.display()], Vec::new()),
    }
}

/// Expected actions, written as lines: `argv words [| ok_if]`.
fn lines(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .map(|a| {
            let (argv, ok_if) = shape(a);
            let line = argv.join(" ");
            if ok_if.is_empty() {
                line
            } else {
                format!("{line} | {}", ok_if.join(", "))
            }
        })
        .collect()
}

fn check(kind: FaultKind, inst: Instance, apply: &[&str], revert: &[&str]) {
    let what = format!("{kind:?} {inst:?}");
    let got = build(kind, inst);
    assert_eq!(lines(&got.apply), apply, "apply of {what}");
    assert_eq!(lines(&got.revert), revert, "revert of {what}");
}

#[test]
fn docker_golden() {
    use FaultKind::*;
    let d = |force| named(Kind::Docker, "web-1", force);
    check(Stop, d(false), &["docker stop web-1"], &["docker start web-1"]);
    check(Stop, d(true), &["docker kill web-1"], &["docker start web-1"]);
    for force in [false, true] {
        check(Pause, d(force), &["docker pause web-1"], &["docker unpause web-1 | is not paused"]);
    }
    check(Restart, d(false), &["docker restart web-1"], &["docker start web-1"]);
    check(Restart, d(true), &["docker restart --time 0 web-1"], &["docker start web-1"]);
}

#[test]
fn incus_golden() {
    use FaultKind::*;
    let i = |force| named(Kind::Incus, "backend-api-1", force);
    let start = ["incus start backend-api-1 | already running"];
    check(Stop, i(false), &["incus stop backend-api-1"], &start);
    check(Stop, i(true), &["incus stop --force backend-api-1"], &start);
    for force in [false, true] {
        check(Pause, i(force), &["incus pause backend-api-1"], &start);
    }
    check(Restart, i(false), &["incus restart backend-api-1"], &start);
    check(Restart, i(true), &["incus restart --force backend-api-1"], &start);
}

#[test]
fn systemd_golden() {
    use FaultKind::*;
    let s = |force| named(Kind::Systemd, "broker.service", force);
    let start = ["systemctl start broker.service"];
    check(Stop, s(false), &["systemctl stop broker.service"], &start);
    check(Stop, s(true), &["systemctl kill --signal=SIGKILL broker.service", "systemctl stop broker.service"], &start);
    for force in [false, true] {
        check(Pause, s(force), &["systemctl kill --signal=SIGSTOP broker.service"], &["systemctl kill --signal=SIGCONT broker.service"]);
    }
    check(Restart, s(false), &["systemctl restart broker.service"], &start);
    check(Restart, s(true), &["systemctl kill --signal=SIGKILL broker.service", "systemctl restart broker.service"], &start);
}

fn proc_pid(pid: u32, force: bool) -> Instance {
    Instance { driver: Kind::Process, name: None, pid: Some(pid), pid_file: None, force, start: vec!["/opt/app/server".into(), "--port".into(), "8080".into()] }
}

fn proc_name(name: &str, force: bool) -> Instance {
    Instance { driver: Kind::Process, name: Some(name.into()), pid: None, pid_file: None, force, start: vec!["/opt/app/server".into(), "--port".into(), "8080".into()] }
}

#[test]
fn process_by_pid_golden() {
    use FaultKind::*;
    // Issue 8 item 9: exact pids, resolved at apply and journaled under the
    // tag; the revert signals exactly those.
    let sel = "pid 4242, resolved at apply as stampede-process-f1";
    let wait = "wait until the processes of stampede-process-f1 are gone";
    let start = "sh -c <script> sh 4242 /opt/app/server --port 8080";
    for force in [false, true] {
        check(Pause, proc_pid(4242, force), &[&format!("kill -STOP <{sel}>")], &["kill -CONT <the processes of stampede-process-f1>"]);
    }
    check(Stop, proc_pid(4242, false), &[&format!("kill -TERM <{sel}>"), wait], &[start]);
    check(Stop, proc_pid(4242, true), &[&format!("kill -KILL <{sel}>"), wait], &[start]);
    // By pid a restart cannot be told apart from "never came back": no revert.
    check(Restart, proc_pid(4242, false), &[&format!("kill -TERM <{sel}>"), wait, start], &[]);
    check(Restart, proc_pid(4242, true), &[&format!("kill -KILL <{sel}>"), wait, start], &[]);
}

#[test]
fn process_by_name_golden() {
    use FaultKind::*;
    // The start script's "running already?" check is `pgrep -x` with regex
    // characters escaped; the signals go to the exact pids (never pkill).
    let n = r"python3\.11";
    let sel = "processes named `python3.11`, resolved at apply as stampede-process-f1";
    let wait = "wait until the processes of stampede-process-f1 are gone";
    let start = format!("sh -c <script> sh {n} /opt/app/server --port 8080");
    for force in [false, true] {
        check(Pause, proc_name("python3.11", force), &[&format!("kill -STOP <{sel}>")], &["kill -CONT <the processes of stampede-process-f1>"]);
    }
    check(Stop, proc_name("python3.11", false), &[&format!("kill -TERM <{sel}>"), wait], &[&start]);
    check(Stop, proc_name("python3.11", true), &[&format!("kill -KILL <{sel}>"), wait], &[&start]);
    check(Restart, proc_name("python3.11", false), &[&format!("kill -TERM <{sel}>"), wait, &start], &[&start]);
    check(Restart, proc_name("python3.11", true), &[&format!("kill -KILL <{sel}>"), wait, &start], &[&start]);
}

#[test]
fn scripts_take_values_as_arguments_never_as_text() {
    let f = build(FaultKind::Stop, proc_name("a;rm", false));
    for a in f.apply.iter().chain(&f.revert) {
        if let Action::Run { argv, .. } = a {
            if argv[0] == "sh" {
                assert!(!argv[2].contains("a;rm") && !argv[2].contains("server"), "{}", argv[2]);
            }
        }
    }
}

#[test]
fn bad_instances_are_refused() {
    let refuse = |kind, inst: Instance| InstanceDriver.actions(&fault(kind, inst), &node()).unwrap_err().to_string();
    assert!(refuse(FaultKind::Pause, proc_pid(1, false)).contains("pid 1"));
    assert!(refuse(FaultKind::Pause, proc_pid(0, false)).contains("pid 0"));
    assert!(refuse(FaultKind::Pause, proc_pid(u32::MAX, false)).contains("4294967295"));
    assert!(refuse(FaultKind::Pause, proc_pid(std::process::id(), false)).contains("agent itself"));
    assert!(refuse(FaultKind::Pause, proc_name("a-name-longer-than-15", false)).contains("15"));
    assert!(refuse(FaultKind::Stop, Instance { start: vec![], ..proc_pid(4242, false) }).contains("start"));
    assert!(refuse(FaultKind::Stop, named(Kind::Docker, "--all", false)).contains("must not start with `-`"));
    assert!(refuse(FaultKind::Stop, Instance { name: None, ..named(Kind::Incus, "x", false) }).contains("needs the instance's `name`"));
    assert!(refuse(FaultKind::Cpu, named(Kind::Docker, "x", false)).contains("not an instance fault"));
}

#[test]
fn requirements() {
    let req = |driver| InstanceDriver.requires(&fault(FaultKind::Stop, named(driver, "x", false)));
    assert_eq!(req(Kind::Docker), ["docker"]);
    assert_eq!(req(Kind::Incus), ["incus"]);
    assert_eq!(req(Kind::Systemd), ["systemctl"]);
    assert!(req(Kind::Process).is_empty());
}
