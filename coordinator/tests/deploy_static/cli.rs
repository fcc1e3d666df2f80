//! The real CLI, from the binaries' `--help`, and the check of one command
//! line against it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use super::commands::*;

// ============================================================================
// The real CLI: `--help` of every subcommand
// ============================================================================

#[derive(Debug, Default)]
pub struct Help {
    /// Long flag → whether it takes a value.
    pub flags: BTreeMap<String, bool>,
    pub shorts: BTreeSet<char>,
    pub subcommands: BTreeSet<String>,
    /// Every usage line needs a subcommand.
    pub needs_subcommand: bool,
    /// It has an `Arguments:` section.
    pub takes_arguments: bool,
    /// Flags outside `[…]` in the (first) usage line.
    pub required_flags: Vec<String>,
    /// `<ARG>`s outside `[…]` that are not a flag's value nor `<COMMAND>`.
    pub required_arguments: usize,
}

pub fn parse_help(text: &str) -> Help {
    let mut help = Help::default();
    let mut section = "";
    let mut usage_lines = Vec::new();
    for line in text.lines() {
        if let Some(u) = line.strip_prefix("Usage:") {
            section = "usage";
            usage_lines.push(u.trim().to_string());
            continue;
        }
        if !line.starts_with(' ') && line.ends_with(':') {
            section = match line {
                "Commands:" => "commands",
                "Options:" => "options",
                "Arguments:" => {
                    help.takes_arguments = true;
                    "arguments"
                }
                _ => "other",
            };
            continue;
        }
        if line.trim().is_empty() {
            if section == "usage" {
                section = "";
            }
            continue;
        }
        match section {
            "usage" => usage_lines.push(line.trim().to_string()),
            "commands" => {
                if let Some(name) = line.split_whitespace().next() {
                    help.subcommands.insert(name.trim_end_matches(',').to_string());
                }
            }
            "options" => {
                let trimmed = line.trim();
                if !trimmed.starts_with('-') {
                    continue; // a wrapped description line
                }
                let head = trimmed.split("  ").next().unwrap_or(trimmed);
                let words: Vec<&str> = head.split_whitespace().collect();
                for (i, w) in words.iter().enumerate() {
                    let w = w.trim_end_matches(',');
                    if let Some(long) = w.strip_prefix("--") {
                        let (long, inline) = long.split_once('=').map_or((long, false), |(l, _)| (l, true));
                        let takes = inline || words.get(i + 1).is_some_and(|n| n.starts_with('<') || n.starts_with("[<"));
                        help.flags.insert(long.to_string(), takes);
                    } else if let Some(short) = w.strip_prefix('-') {
                        if let Some(c) = short.chars().next() {
                            help.shorts.insert(c);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    assert!(!usage_lines.is_empty(), "no `Usage:` line in:\n{text}");
    help.needs_subcommand = usage_lines.iter().all(|u| u.contains("<COMMAND>"));
    // Required flags and arguments of the first usage line: what is not
    // inside brackets.
    let mut depth = 0;
    let mut outside = String::new();
    for c in usage_lines[0].chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            c if depth == 0 => outside.push(c),
            _ => {}
        }
    }
    let words: Vec<&str> = outside.split_whitespace().collect();
    for (i, w) in words.iter().enumerate() {
        if let Some(flag) = w.strip_prefix("--") {
            help.required_flags.push(flag.to_string());
        } else if w.starts_with('<') && *w != "<COMMAND>" && !(i > 0 && words[i - 1].starts_with('-')) {
            help.required_arguments += 1;
        }
    }
    help
}

/// Path of the `stampede-agent` binary next to `stampede`, built (with the
/// same profile and target folder) when this test runs without it.
pub fn agent_binary() -> PathBuf {
    static AGENT: OnceLock<PathBuf> = OnceLock::new();
    AGENT
        .get_or_init(|| {
            let stampede = Path::new(env!("CARGO_BIN_EXE_stampede"));
            let agent = stampede.with_file_name(format!("stampede-agent{}", std::env::consts::EXE_SUFFIX));
            if agent.exists() {
                return agent;
            }
            let profile_dir = stampede.parent().expect("the binary is in a profile folder");
            let profile = profile_dir.file_name().unwrap().to_string_lossy().to_string();
            let target_dir = profile_dir.parent().expect("the profile folder is in a target folder");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(cargo);
            // --workspace: features unified as in a workspace build, so the
            // dependencies already built for the tests are reused.
            cmd.args(["build", "--workspace", "--bin", "stampede-agent", "--target-dir"]).arg(target_dir);
            match profile.as_str() {
                "debug" => {}
                "release" => {
                    cmd.arg("--release");
                }
                other => {
                    cmd.args(["--profile", other]);
                }
            }
            // The variables cargo sets for this test (CARGO_PKG_*, CARGO_MANIFEST_DIR,
            // …) would look like a changed environment to build scripts and
            // rebuild half the dependencies: hand cargo the user's environment.
            let keep = ["CARGO_HOME", "CARGO_BUILD_", "CARGO_PROFILE_", "CARGO_REGISTR", "CARGO_NET_", "CARGO_HTTP_", "CARGO_TERM_"];
            for (key, _) in std::env::vars_os() {
                let key = key.to_string_lossy();
                if (key.starts_with("CARGO_") && !keep.iter().any(|k| key.starts_with(k))) || key == "OUT_DIR" {
                    cmd.env_remove(key.as_ref());
                }
            }
            let status = cmd.current_dir(repo()).status().expect("cargo runs");
            assert!(status.success(), "building stampede-agent failed");
            assert!(agent.exists(), "{} is still missing after the build", agent.display());
            agent
        })
        .clone()
}

pub fn binary(program: &str) -> PathBuf {
    match program {
        "stampede" => PathBuf::from(env!("CARGO_BIN_EXE_stampede")),
        "stampede-agent" => agent_binary(),
        other => panic!("not a stampede program: {other}"),
    }
}

/// `PROGRAM SUB… --help`, parsed; cached per subcommand path.
pub fn help_of(program: &str, path: &[String]) -> std::sync::Arc<Help> {
    #[allow(clippy::type_complexity)]
    static CACHE: OnceLock<Mutex<HashMap<(String, Vec<String>), std::sync::Arc<Help>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let key = (program.to_string(), path.to_vec());
    if let Some(h) = cache.lock().unwrap().get(&key) {
        return h.clone();
    }
    let out = Command::new(binary(program)).args(path).arg("--help").output().expect("the binary runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "`{program} {} --help` failed: {}{}", path.join(" "), text, String::from_utf8_lossy(&out.stderr));
    let help = std::sync::Arc::new(parse_help(&text));
    cache.lock().unwrap().insert(key, help.clone());
    help
}

/// Checks one command line against the CLI; returns what is wrong.
pub fn check_against_cli(cmd: &CommandLine) -> Vec<String> {
    let mut problems = Vec::new();
    let program = cmd.program().to_string();
    let mut path: Vec<String> = Vec::new();
    let mut help = help_of(&program, &path);
    let mut given_flags: BTreeSet<String> = BTreeSet::new();
    let mut arguments = 0;
    let mut words = cmd.argv[1..].iter();
    let mut only_arguments = false;
    while let Some(w) = words.next() {
        let name = || format!("`{program}{}{}`", if path.is_empty() { "" } else { " " }, path.join(" "));
        if !only_arguments && w == "--" {
            only_arguments = true;
        } else if !only_arguments && w.starts_with("--") {
            let (flag, inline) = w[2..].split_once('=').map_or((&w[2..], false), |(f, _)| (f, true));
            match help.flags.get(flag) {
                Some(&takes_value) => {
                    if takes_value && !inline && words.next().is_none() {
                        problems.push(format!("{} --{flag} needs a value", name()));
                    }
                    given_flags.insert(flag.to_string());
                }
                None => problems.push(format!("{} has no flag --{flag} (it has: {})", name(), help.flags.keys().map(|f| format!("--{f}")).collect::<Vec<_>>().join(" "))),
            }
        } else if !only_arguments && w.starts_with('-') && w.len() > 1 {
            for c in w[1..].chars() {
                if !help.shorts.contains(&c) {
                    problems.push(format!("{} has no flag -{c}", name()));
                }
            }
        } else if arguments == 0 && !help.subcommands.is_empty() && help.subcommands.contains(w.as_str()) {
            path.push(w.clone());
            help = help_of(&program, &path);
            given_flags.clear();
        } else if !help.subcommands.is_empty() && arguments == 0 && !help.takes_arguments {
            problems.push(format!("{} has no subcommand `{w}` (it has: {})", name(), help.subcommands.iter().cloned().collect::<Vec<_>>().join(", ")));
        } else if !help.takes_arguments {
            problems.push(format!("{} takes no argument, but `{w}` is one", name()));
        } else {
            arguments += 1;
        }
    }
    let name = format!("`{program}{}{}`", if path.is_empty() { "" } else { " " }, path.join(" "));
    if help.needs_subcommand {
        problems.push(format!("{name} needs a subcommand: {}", help.subcommands.iter().cloned().collect::<Vec<_>>().join(", ")));
    }
    for flag in &help.required_flags {
        if !given_flags.contains(flag) {
            problems.push(format!("{name} requires --{flag}"));
        }
    }
    if arguments < help.required_arguments {
        problems.push(format!("{name} requires {} argument(s), got {arguments}", help.required_arguments));
    }
    problems
}

/// Commands that serve or dial gRPC choose mutual TLS, with every file.
pub fn check_transport(cmd: &CommandLine) -> Vec<String> {
    let head = cmd.head();
    let grpc = match cmd.program() {
        "stampede-agent" => head.is_empty(),
        _ => matches!(head.first(), Some(&"coordinator") | Some(&"agents")) || (head.first() == Some(&"run") && cmd.flag("coordinator").is_some()),
    };
    if !grpc {
        return Vec::new();
    }
    let mut problems = Vec::new();
    if cmd.argv.iter().any(|w| w == "--insecure") {
        problems.push("uses --insecure: deploy files use mutual TLS".to_string());
    }
    let mut needed = vec!["ca", "cert", "key"];
    if cmd.program() == "stampede-agent" || head.first() == Some(&"coordinator") {
        needed.push("token-file");
    }
    for flag in needed {
        if cmd.flag(flag).is_none() {
            problems.push(format!("lacks --{flag} (mutual TLS)"));
        }
    }
    if let Some(url) = cmd.flag("coordinator") {
        if !url.starts_with("https://") {
            problems.push(format!("dials {url}: with TLS the URL is https://"));
        }
    }
    problems
}
