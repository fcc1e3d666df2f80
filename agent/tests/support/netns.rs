//! Two hosts made of network namespaces joined by a veth pair, for tests that
//! apply faults for real without touching the host's own network:
//!
//! ```text
//!   stp-<tag>c-<pid>-<n>  v0 198.18.0.1/24  <—veth—>  v1 198.18.0.2/24  stp-<tag>s-<pid>-<n>
//! ```
//!
//! The veth pair is created inside the client namespace with its peer moved
//! straight into the server's, so no interface ever appears on the host.
//! Everything (namespaces, the veth, qdiscs, nft tables, servers) is removed
//! when the [`Pair`] is dropped, also when a test fails.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use stampede_agent::fault::{Action, ActionError, Runner};

pub const CLIENT_ADDR: &str = "198.18.0.1";
pub const SERVER_ADDR: &str = "198.18.0.2";
pub const CLIENT_DEV: &str = "v0";
pub const SERVER_DEV: &str = "v1";

/// The traffic tools (TCP bulk server and client, UDP echo and blast).
pub const NETIO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/netio.py");

/// Why these tests cannot run here (printed, then the test returns), if so.
pub fn skip_reason(tools: &[&str]) -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if stampede_agent::fault::probe::has_net_admin(&status) != Some(true) {
        return Some("needs root (CAP_NET_ADMIN) for network namespaces".into());
    }
    if !Command::new("ip").args(["netns", "list"]).output().is_ok_and(|o| o.status.success()) {
        return Some("`ip netns` is not available".into());
    }
    for tool in tools {
        if !Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success()) {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    if python().is_none() {
        return Some("python3 is not installed".into());
    }
    None
}

/// The real interpreter (not a pyenv shim), so each tool starts quickly.
pub fn python() -> Option<&'static str> {
    static PY: OnceLock<Option<String>> = OnceLock::new();
    PY.get_or_init(|| {
        let out = Command::new("python3").args(["-c", "import sys; print(sys.executable)"]).output().ok()?;
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !path.is_empty()).then_some(path)
    })
    .as_deref()
}

/// A client and a server namespace joined by a veth pair.
pub struct Pair {
    pub client: String,
    pub server: String,
}

/// A process inside a namespace, killed (and reaped) when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// Waits for the first line of output (`ready`), or its exit.
    pub fn wait_ready(&mut self) -> String {
        let out = self.0.stdout.as_mut().expect("stdout is piped");
        let mut line = String::new();
        // One byte at a time: no buffered reader keeps what comes after.
        let mut byte = [0u8; 1];
        while out.read(&mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
            line.push(byte[0] as char);
        }
        line
    }

    /// Waits for the end and returns the rest of its output.
    pub fn finish(mut self) -> String {
        let mut rest = String::new();
        if let Some(out) = self.0.stdout.take() {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                rest.push_str(&line);
                rest.push('\n');
            }
        }
        let _ = self.0.wait();
        rest
    }
}

fn ip(args: &[&str]) -> Output {
    Command::new("ip").args(args).output().expect("ip runs")
}

fn must(args: &[&str]) {
    let out = ip(args);
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

impl Pair {
    /// Builds the pair; `None` (after printing why) when this host cannot.
    pub fn new(tag: &str, tools: &[&str]) -> Option<Pair> {
        if let Some(why) = skip_reason(tools) {
            println!("skipped: {why}");
            return None;
        }
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let (pid, n) = (std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let pair = Pair { client: format!("stp-{tag}c-{pid}-{n}"), server: format!("stp-{tag}s-{pid}-{n}") };
        for ns in [&pair.client, &pair.server] {
            let _ = ip(&["netns", "del", ns]); // a leftover of an earlier run with this pid
        }
        // From here on, Drop removes whatever was made, even if a step fails.
        must(&["netns", "add", &pair.client]);
        must(&["netns", "add", &pair.server]);
        let (c, s) = (pair.client.as_str(), pair.server.as_str());
        must(&["-n", c, "link", "add", CLIENT_DEV, "type", "veth", "peer", "name", SERVER_DEV, "netns", s]);
        must(&["-n", c, "addr", "add", &format!("{CLIENT_ADDR}/24"), "dev", CLIENT_DEV]);
        must(&["-n", s, "addr", "add", &format!("{SERVER_ADDR}/24"), "dev", SERVER_DEV]);
        for (ns, dev) in [(c, CLIENT_DEV), (s, SERVER_DEV)] {
            must(&["-n", ns, "link", "set", dev, "up"]);
            must(&["-n", ns, "link", "set", "lo", "up"]);
        }
        Some(pair)
    }

    /// Runs a command inside `ns` to completion.
    pub fn exec(&self, ns: &str, argv: &[&str]) -> Output {
        Command::new("ip").args(["netns", "exec", ns]).args(argv).output().expect("ip netns exec runs")
    }

    /// Runs a command inside `ns`; its stdout, or a panic with its stderr.
    pub fn check(&self, ns: &str, argv: &[&str]) -> String {
        let out = self.exec(ns, argv);
        assert!(out.status.success(), "{}: {}", argv.join(" "), String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts a netio tool inside `ns` (stdout piped for its report).
    pub fn spawn_netio(&self, ns: &str, args: &[&str]) -> Proc {
        let child = Command::new("ip")
            .args(["netns", "exec", ns, python().expect("python3"), NETIO])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("netio starts");
        Proc(child)
    }

    /// Runs a netio tool inside `ns` to completion: (success, stdout).
    pub fn netio(&self, ns: &str, args: &[&str]) -> (bool, String) {
        let mut argv = vec![python().expect("python3"), NETIO];
        argv.extend(args);
        let out = self.exec(ns, &argv);
        (out.status.success(), String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Runs a driver's actions inside `ns` with the agent's own [`Runner`]
    /// (its `ok_if` handling included): each argv is prefixed with
    /// `ip netns exec NS`. Stops at the first failure, as the injector does.
    pub fn run_actions(&self, ns: &str, actions: &[Action]) -> Result<(), ActionError> {
        let runner = Runner::default();
        for action in actions {
            let Action::Run { argv, stdin, ok_if } = action else { panic!("not a command: {action:?}") };
            let mut prefixed: Vec<String> = ["ip", "netns", "exec", ns].map(String::from).to_vec();
            prefixed.extend(argv.iter().cloned());
            runner.execute(&Action::Run { argv: prefixed, stdin: stdin.clone(), ok_if: ok_if.clone() })?;
        }
        Ok(())
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veth end, whose peer goes with it,
        // and with them every qdisc and nft table inside.
        for ns in [&self.client, &self.server] {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}
