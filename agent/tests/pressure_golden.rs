//! Golden tests of the pressure driver: the exact helper command lines.

use stampede_agent::fault::pressure::PressureDriver;
use stampede_agent::fault::{Action, Driver, Node};
use stampede_common::plan::{CpuPressure, Fault, FaultKind, MemoryPressure};
use stampede_common::units::{Dur, Percent};

fn node() -> Node {
    Node { route_dev: Box::new(|_| Ok("eth0".into())), agent_exe: "/usr/bin/stampede-agent".into() }
}

fn pressure(kind: FaultKind, duration: Dur) -> Fault {
    let mut f: Fault = serde_json::from_value(serde_json::json!({"name": "burn", "kind": "cpu", "at": "1s", "duration": "30s"})).unwrap();
    f.kind = kind;
    f.duration = duration;
    match kind {
        FaultKind::Cpu => f.cpu = Some(CpuPressure { workers: 2, load: "80%".parse::<Percent>().unwrap() }),
        _ => f.memory = Some(MemoryPressure { size: "1GiB".into() }),
    }
    f
}

#[test]
fn pressure_golden() {
    let tag = "stampede-pressure-burn".to_string();
    let cpu = PressureDriver.actions(&pressure(FaultKind::Cpu, Dur::from_secs(30)), &node()).unwrap();
    let argv = ["/usr/bin/stampede-agent", "stress", "cpu", "--workers", "2", "--load", "80", "--for", "35s"];
    assert_eq!(cpu.apply, [Action::Spawn { argv: argv.map(String::from).to_vec(), tag: tag.clone() }]);
    assert_eq!(cpu.revert, [Action::KillSpawned { tag: tag.clone() }]);

    let mem = PressureDriver.actions(&pressure(FaultKind::Memory, Dur::from_millis(1500)), &node()).unwrap();
    let argv = ["/usr/bin/stampede-agent", "stress", "memory", "--size", "1GiB", "--for", "6500ms"];
    assert_eq!(mem.apply, [Action::Spawn { argv: argv.map(String::from).to_vec(), tag: tag.clone() }]);
    assert_eq!(mem.revert, [Action::KillSpawned { tag }]);

    assert!(PressureDriver.requires(&pressure(FaultKind::Cpu, Dur::from_secs(1))).is_empty());
    let mut bad = pressure(FaultKind::Memory, Dur::from_secs(1));
    bad.memory = Some(MemoryPressure { size: "lots".into() });
    assert!(PressureDriver.actions(&bad, &node()).is_err());
}
