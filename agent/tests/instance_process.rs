//! The process driver, for real, against `python3 -m http.server` processes
//! this test starts itself. Each server runs from a symlink to the Python
//! binary with a name unique to this test process, so by-name faults and
//! the cleanup can only ever reach our own servers. The servers are started
//! detached (`sh -c '… &'`), not as children of this test process: it plays
//! the agent, and the driver refuses to signal an agent's children (issue 8
//! item 9).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use stampede_agent::fault::instance::InstanceDriver;
use stampede_agent::fault::{Driver, FaultActions, Node, Runner};
use stampede_common::plan::{Fault, FaultKind, Instance, InstanceDriver as Kind};

/// One server from a uniquely named link to Python. Dropping it kills every
/// process started from that link (the original and any restarted copy),
/// found by its argv[0] in /proc and signalled by positive pid only.
struct Server {
    link: PathBuf,
    port: u16,
    /// The first server's pid (a restart makes another).
    pid: i32,
}

impl Server {
    fn start(label: char) -> Server {
        let out = Command::new("python3").args(["-c", "import sys; print(sys.executable)"]).output().expect("python3 is needed");
        let python = std::fs::canonicalize(String::from_utf8(out.stdout).unwrap().trim()).unwrap();
        // The kernel's `comm` is the link's name: at most 15 bytes.
        let name = format!("stpd{label}{}", std::process::id() % 10_000_000);
        let dir = std::env::temp_dir().join(format!("stampede-proc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let link = dir.join(&name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&python, &link).unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let out = Command::new("sh")
            .args(["-c", r#""$@" </dev/null >/dev/null 2>&1 & echo $!"#, "sh"])
            .arg(&link)
            .args(Self::args(port))
            .output()
            .unwrap();
        let pid: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().expect("the server's pid");
        let server = Server { link, port, pid };
        server.wait_up(Duration::from_secs(15));
        server
    }

    fn args(port: u16) -> Vec<String> {
        ["-m", "http.server", "--bind", "127.0.0.1", &port.to_string()].map(String::from).to_vec()
    }

    fn name(&self) -> String {
        self.link.file_name().unwrap().to_string_lossy().into_owned()
    }

    /// The `start` command a plan would give: the same server again.
    fn start_argv(&self) -> Vec<String> {
        let mut argv = vec![self.link.to_string_lossy().into_owned()];
        argv.extend(Self::args(self.port));
        argv
    }

    fn get(&self, timeout: Duration) -> std::io::Result<()> {
        get(self.port, timeout)
    }

    fn wait_up(&self, limit: Duration) {
        let started = Instant::now();
        while let Err(e) = self.get(Duration::from_millis(500)) {
            assert!(started.elapsed() < limit, "server on port {} not up after {limit:?}: {e}", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Live (non-zombie) processes whose argv[0] is our link.
    fn pids(&self) -> Vec<i32> {
        let me = self.link.to_string_lossy().into_owned();
        let mut pids = vec![];
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
            if cmdline.split(|b| *b == 0).next() == Some(me.as_bytes()) {
                pids.push(pid);
            }
        }
        pids
    }
}

fn kill_hard(pid: i32) {
    if pid > 1 {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        kill_hard(self.pid);
        for pid in self.pids() {
            if pid > 1 {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
        let _ = std::fs::remove_file(&self.link);
    }
}

fn get(port: u16, timeout: Duration) -> std::io::Result<()> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: t\r\n\r\n")?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head)?;
    if head.starts_with(b"HTTP/1.0 200") {
        Ok(())
    } else {
        Err(std::io::Error::other(String::from_utf8_lossy(&head).into_owned()))
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

fn actions(kind: FaultKind, instance: Instance) -> FaultActions {
    let mut f: Fault = serde_json::from_value(serde_json::json!({"name": "p", "kind": "stop", "at": "1s", "duration": "5s"})).unwrap();
    f.kind = kind;
    f.instance = Some(instance);
    let node = Node { route_dev: Box::new(|_| Ok("lo".into())), agent_exe: "/bin/false".into() };
    InstanceDriver.actions(&f, &node).unwrap()
}

fn execute(runner: &Runner, actions: &[stampede_agent::fault::Action]) {
    for a in actions {
        runner.execute(a).unwrap_or_else(|e| panic!("{}: {e}", a.display()));
    }
}

fn by_pid(server: &Server, start: bool) -> Instance {
    let start = if start { server.start_argv() } else { vec![] };
    Instance { driver: Kind::Process, name: None, pid: Some(server.pid as u32), pid_file: None, force: false, start }
}

fn by_name(server: &Server, start: bool) -> Instance {
    Instance { name: Some(server.name()), pid: None, ..by_pid(server, start) }
}

fn pause_then_resume(server: &Server, inst: Instance) {
    let runner = Runner::default();
    let fault = actions(FaultKind::Pause, inst);
    execute(&runner, &fault.apply);
    let err = server.get(Duration::from_millis(400)).expect_err("a paused server answered");
    assert!(is_timeout(&err), "a paused server should accept and then hang, got {err}");
    execute(&runner, &fault.revert);
    server.get(Duration::from_secs(3)).expect("the resumed server answers");
    // Reverting again is harmless.
    execute(&runner, &fault.revert);
    server.get(Duration::from_secs(3)).unwrap();
}

#[test]
fn pause_by_pid_freezes_and_thaws() {
    let server = Server::start('a');
    pause_then_resume(&server, by_pid(&server, false));
    // Once the process is gone, thawing it is still a successful revert.
    let revert = actions(FaultKind::Pause, by_pid(&server, false)).revert;
    kill_hard(server.pid);
    while server.pids().contains(&server.pid) {
        std::thread::sleep(Duration::from_millis(20));
    }
    execute(&Runner::default(), &revert);
}

#[test]
fn pause_by_exact_name_freezes_and_thaws() {
    let server = Server::start('b');
    pause_then_resume(&server, by_name(&server, false));
    // No process of that name left: the revert still succeeds.
    let mut ghost = by_name(&server, false);
    ghost.name = Some("stpdnone0".into());
    execute(&Runner::default(), &actions(FaultKind::Pause, ghost).revert);
}

#[test]
fn stop_by_pid_refuses_connections_until_the_start_command_brings_it_back() {
    let server = Server::start('c');
    let original = server.pid;
    let runner = Runner::default();
    let fault = actions(FaultKind::Stop, by_pid(&server, true));
    execute(&runner, &fault.apply);
    for _ in 0..3 {
        let err = server.get(Duration::from_millis(500)).expect_err("a stopped server answered");
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let t = Instant::now();
    execute(&runner, &fault.revert);
    assert!(t.elapsed() < Duration::from_secs(2), "start must not wait for the server: {:?}", t.elapsed());
    server.wait_up(Duration::from_secs(15));
    let pids = server.pids();
    assert_eq!(pids.len(), 1, "{pids:?}");
    assert_ne!(pids[0], original);
    // The restarted server is detached: its own session, not our group.
    let sid = nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(pids[0]))).unwrap();
    assert_eq!(sid.as_raw(), pids[0]);
}

#[test]
fn restart_by_name_comes_back_and_the_revert_starts_no_second_copy() {
    let server = Server::start('d');
    let original = server.pid;
    let runner = Runner::default();
    let fault = actions(FaultKind::Restart, Instance { force: true, ..by_name(&server, true) });
    execute(&runner, &fault.apply);
    server.wait_up(Duration::from_secs(15));
    let after = server.pids();
    assert_eq!(after.len(), 1, "{after:?}");
    assert_ne!(after[0], original);
    execute(&runner, &fault.revert);
    execute(&runner, &fault.revert);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(server.pids(), after, "the revert must only start a server that is not running");
    server.get(Duration::from_secs(3)).unwrap();
}
