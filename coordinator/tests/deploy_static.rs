//! Static checks of `deploy/`: every file is parsed (systemd units with a
//! small INI reader, compose and Kubernetes YAML with yaml-rust2, the
//! Dockerfile line by line, the README's shell blocks), checked for what each
//! deployment needs, and — the main point — every `stampede …` and
//! `stampede-agent …` command line in them is checked against the real
//! binaries' `--help`: the subcommands exist, every `--flag` is one the
//! subcommand takes, required flags and arguments are there, and commands
//! that speak gRPC choose their transport (mutual TLS here, never
//! `--insecure`).
//!
//! Nothing is started: no Docker, systemd or Kubernetes is needed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use yaml_rust2::{Yaml, YamlLoader};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the crate is inside the workspace").to_path_buf()
}

fn read(rel: &str) -> String {
    let path = repo().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ============================================================================
// Command lines and where they come from
// ============================================================================

/// One `stampede …` or `stampede-agent …` invocation found in a deploy file.
#[derive(Debug, Clone, PartialEq)]
struct CommandLine {
    /// `file: where` (the unit key, the service, the container, …).
    source: String,
    /// The words, the program first (as written: `/usr/local/bin/stampede`).
    argv: Vec<String>,
}

impl CommandLine {
    fn program(&self) -> &str {
        basename(&self.argv[0])
    }

    /// The value of `--flag VALUE` or `--flag=VALUE` (the first one).
    fn flag(&self, name: &str) -> Option<&str> {
        let long = format!("--{name}");
        let eq = format!("--{name}=");
        let mut words = self.argv.iter();
        while let Some(w) = words.next() {
            if *w == long {
                return words.next().map(String::as_str);
            }
            if let Some(v) = w.strip_prefix(&eq) {
                return Some(v);
            }
        }
        None
    }

    /// The words before the first flag, program excluded: the subcommand
    /// path (and positional arguments).
    fn head(&self) -> Vec<&str> {
        self.argv[1..].iter().take_while(|w| !w.starts_with('-')).map(String::as_str).collect()
    }

    fn starts_with(&self, program: &str, head: &[&str]) -> bool {
        self.program() == program && self.head().starts_with(head)
    }

    fn text(&self) -> String {
        self.argv.join(" ")
    }
}

fn basename(word: &str) -> &str {
    word.rsplit('/').next().unwrap_or(word)
}

fn is_stampede(word: &str) -> bool {
    matches!(basename(word), "stampede" | "stampede-agent")
}

/// Programs that run another command given further on their line
/// (`docker compose run --rm cli stampede …`, `kubectl exec … -- stampede …`).
fn is_launcher(word: &str) -> bool {
    matches!(basename(word), "docker" | "podman" | "kubectl" | "sudo" | "ip" | "fleet.sh" | "env" | "nsenter" | "systemd-run")
}

const SEPARATORS: &[&str] = &[";", "&&", "||", "|", "&", "then", "do", "else", "{", "}", "(", ")", "!"];

/// Splits a shell line into words: quotes ('…', "…") group and are removed,
/// a backslash escapes the next character, `#` at a word start begins a
/// comment, and `;`, `&&`, `||`, `|`, `&` are words of their own.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    word.push(c);
                }
            }
            '"' => {
                in_word = true;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => {
                            if let Some(n) = chars.next() {
                                word.push(n);
                            }
                        }
                        _ => word.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(n) = chars.next() {
                    word.push(n);
                }
            }
            '#' if !in_word => break,
            ';' | '|' | '&' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
                let mut op = c.to_string();
                if chars.peek() == Some(&c) && c != ';' {
                    op.push(chars.next().unwrap());
                }
                words.push(op);
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// The stampede command lines in a shell script (`sh -c`, a README block, a
/// Dockerfile's shell form): per segment between separators, the command is
/// the segment's first word after variable assignments, or, behind a
/// launcher, the first stampede word that is not a flag's value.
fn commands_in_script(script: &str, source: &str) -> Vec<CommandLine> {
    let joined = script.replace("\\\n", " ");
    let mut found = Vec::new();
    for line in joined.lines() {
        let words = shell_words(line);
        for segment in words.split(|w| SEPARATORS.contains(&w.as_str())) {
            let segment: Vec<&String> = segment.iter().skip_while(|w| is_assignment(w) || *w == "exec").collect();
            let Some(first) = segment.first() else { continue };
            let start = if is_stampede(first) {
                Some(0)
            } else if is_launcher(first) {
                (1..segment.len()).find(|&i| is_stampede(segment[i]) && (segment[i - 1] == "--" || !segment[i - 1].starts_with('-')))
            } else {
                None
            };
            if let Some(start) = start {
                let argv: Vec<String> = segment[start..]
                    .iter()
                    .take_while(|w| !w.starts_with('>') && !w.starts_with('<') && !w.starts_with("2>"))
                    .map(|w| w.to_string())
                    .collect();
                found.push(CommandLine { source: source.to_string(), argv });
            }
        }
    }
    found
}

fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(k, _)| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !k.starts_with(|c: char| c.is_ascii_digit()))
}

/// The stampede command lines in an exec-form command (compose
/// `entrypoint` + `command`, Kubernetes `command` + `args`, a Dockerfile's
/// JSON form): a shell with `-c` runs its script, anything else is one
/// command line.
fn commands_in_argv(argv: &[String], source: &str) -> Vec<CommandLine> {
    let Some(first) = argv.first() else { return Vec::new() };
    if matches!(basename(first), "sh" | "bash" | "dash" | "ash") {
        if let Some(i) = argv.iter().position(|w| w.starts_with('-') && !w.starts_with("--") && w.contains('c')) {
            return argv.get(i + 1).map(|script| commands_in_script(script, source)).unwrap_or_default();
        }
    }
    commands_in_script(&argv.iter().map(|w| shell_quote(w)).collect::<Vec<_>>().join(" "), source)
}

fn shell_quote(word: &str) -> String {
    if !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,%@+$()".contains(c)) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

// ============================================================================
// systemd units
// ============================================================================

/// `[Section]` → `Key` → values (a key may repeat), continuation lines joined.
type Unit = BTreeMap<String, BTreeMap<String, Vec<String>>>;

fn parse_unit(text: &str) -> Unit {
    let mut unit = Unit::new();
    let mut section = String::new();
    let mut pending: Option<String> = None;
    for raw in text.lines() {
        let line = raw.trim();
        if line.starts_with('#') || line.starts_with(';') {
            continue; // comments, also inside a continued value
        }
        let line = match pending.take() {
            Some(mut before) => {
                before.push(' ');
                before.push_str(line);
                before
            }
            None => line.to_string(),
        };
        if let Some(body) = line.strip_suffix('\\') {
            pending = Some(body.trim_end().to_string());
            continue;
        }
        if line.is_empty() {
            continue;
        }
        if line.starts_with('[') && line.ends_with(']') {
            section = line[1..line.len() - 1].to_string();
            continue;
        }
        let (key, value) = line.split_once('=').unwrap_or_else(|| panic!("not `Key=Value`: {line}"));
        assert!(!section.is_empty(), "`{line}` before any [Section]");
        unit.entry(section.clone()).or_default().entry(key.trim().to_string()).or_default().push(value.trim().to_string());
    }
    assert!(pending.is_none(), "the unit ends inside a continued line");
    unit
}

fn unit_value<'a>(unit: &'a Unit, section: &str, key: &str) -> Option<&'a str> {
    unit.get(section)?.get(key)?.last().map(String::as_str)
}

/// Every word of every value of `key` (`CapabilityBoundingSet=A B` twice → A, B, …).
fn unit_words(unit: &Unit, section: &str, key: &str) -> Vec<String> {
    unit.get(section).and_then(|s| s.get(key)).map_or_else(Vec::new, |vs| vs.iter().flat_map(|v| v.split_whitespace().map(str::to_string)).collect())
}

fn unit_commands(unit: &Unit, file: &str) -> Vec<CommandLine> {
    let mut found = Vec::new();
    for (key, values) in unit.get("Service").into_iter().flatten() {
        if key.starts_with("Exec") {
            for v in values {
                let v = v.trim_start_matches(['@', '-', ':', '+', '!']);
                found.extend(commands_in_script(v, &format!("{file}: {key}")));
            }
        }
    }
    found
}

// ============================================================================
// YAML (compose, Kubernetes)
// ============================================================================

fn load_yaml(rel: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}")).iter().map(merge_keys).collect()
}

/// Applies YAML merge keys (`<<: *anchor`), which compose files use and
/// yaml-rust2 (YAML 1.2) leaves as plain keys. Aliases are already copies.
fn merge_keys(y: &Yaml) -> Yaml {
    match y {
        Yaml::Hash(h) => {
            let mut out = yaml_rust2::yaml::Hash::new();
            if let Some(base) = h.get(&Yaml::String("<<".into())) {
                let bases = match base {
                    Yaml::Array(list) => list.clone(),
                    other => vec![other.clone()],
                };
                for b in bases {
                    if let Yaml::Hash(bh) = merge_keys(&b) {
                        for (k, v) in bh {
                            out.insert(k, v);
                        }
                    }
                }
            }
            for (k, v) in h {
                if k.as_str() != Some("<<") {
                    out.insert(k.clone(), merge_keys(v));
                }
            }
            Yaml::Hash(out)
        }
        Yaml::Array(a) => Yaml::Array(a.iter().map(merge_keys).collect()),
        other => other.clone(),
    }
}

fn s(y: &Yaml) -> String {
    match y {
        Yaml::String(s) | Yaml::Real(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Boolean(b) => b.to_string(),
        other => panic!("expected a scalar, found {other:?}"),
    }
}

fn strings(y: &Yaml) -> Vec<String> {
    match y {
        Yaml::Array(a) => a.iter().map(s).collect(),
        Yaml::BadValue | Yaml::Null => Vec::new(),
        other => vec![s(other)],
    }
}

fn hash_keys(y: &Yaml) -> Vec<String> {
    y.as_hash().map_or_else(Vec::new, |h| h.keys().map(s).collect())
}

/// Compose's `command`/`entrypoint`: a list, or a string split like a shell
/// would. `$$` is compose's escape for `$`.
fn compose_argv(y: &Yaml) -> Vec<String> {
    let words = match y {
        Yaml::String(line) => shell_words(line),
        other => strings(other),
    };
    words.into_iter().map(|w| w.replace("$$", "$")).collect()
}

// ============================================================================
// Dockerfile
// ============================================================================

/// Instructions with continuation lines joined: (INSTRUCTION, arguments).
fn dockerfile_instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for raw in text.lines() {
        let line = raw.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(body) = line.strip_suffix('\\') {
            current.push_str(body);
            current.push(' ');
            continue;
        }
        current.push_str(line);
        let full = std::mem::take(&mut current);
        let (instr, args) = full.trim().split_once(char::is_whitespace).unwrap_or((full.trim(), ""));
        out.push((instr.to_ascii_uppercase(), args.trim().to_string()));
    }
    out
}

fn dockerfile_commands(text: &str) -> Vec<CommandLine> {
    let mut found = Vec::new();
    for (instr, args) in dockerfile_instructions(text) {
        if !matches!(instr.as_str(), "RUN" | "CMD" | "ENTRYPOINT") {
            continue;
        }
        let source = format!("deploy/Dockerfile: {instr}");
        // `RUN --mount=… cmd`: options before the command.
        let args = args.split_whitespace().skip_while(|w| w.starts_with("--")).collect::<Vec<_>>().join(" ");
        if args.starts_with('[') {
            let argv: Vec<String> = serde_json::from_str(&args).unwrap_or_else(|e| panic!("{source}: bad exec form {args}: {e}"));
            found.extend(commands_in_argv(&argv, &source));
        } else {
            found.extend(commands_in_script(&args, &source));
        }
    }
    found
}

// ============================================================================
// Every command line of deploy/
// ============================================================================

fn compose_commands() -> Vec<CommandLine> {
    let doc = &load_yaml("deploy/compose/compose.yaml")[0];
    let mut found = Vec::new();
    for name in hash_keys(&doc["services"]) {
        let svc = &doc["services"][name.as_str()];
        let mut argv = compose_argv(&svc["entrypoint"]);
        argv.extend(compose_argv(&svc["command"]));
        found.extend(commands_in_argv(&argv, &format!("deploy/compose/compose.yaml: services.{name}")));
    }
    found
}

fn k8s_files() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(repo().join("deploy/k8s"))
        .expect("deploy/k8s exists")
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
        .map(|n| format!("deploy/k8s/{n}"))
        .collect();
    files.sort();
    files
}

/// Every Kubernetes object of deploy/k8s (not the kustomization), with its file.
fn k8s_objects() -> Vec<(String, Yaml)> {
    let mut out = Vec::new();
    for file in k8s_files() {
        for doc in load_yaml(&file) {
            if doc["kind"].as_str() == Some("Kustomization") || doc.is_null() {
                continue;
            }
            out.push((file.clone(), doc));
        }
    }
    out
}

fn pod_spec(obj: &Yaml) -> &Yaml {
    &obj["spec"]["template"]["spec"]
}

fn k8s_commands() -> Vec<CommandLine> {
    let mut found = Vec::new();
    for (file, obj) in k8s_objects() {
        let spec = pod_spec(&obj);
        for list in ["initContainers", "containers"] {
            for c in spec[list].as_vec().into_iter().flatten() {
                let mut argv = strings(&c["command"]);
                argv.extend(strings(&c["args"]));
                let source = format!("{file}: {}/{} container {}", s(&obj["kind"]), s(&obj["metadata"]["name"]), s(&c["name"]));
                found.extend(commands_in_argv(&argv, &source));
            }
        }
    }
    found
}

/// The shell blocks of deploy/README.md.
fn readme_commands() -> Vec<CommandLine> {
    let text = read("deploy/README.md");
    let mut found = Vec::new();
    let mut block: Option<String> = None;
    for line in text.lines() {
        let fence = line.trim_start().starts_with("```");
        match (&mut block, fence) {
            (None, true) => {
                let lang = line.trim_start().trim_start_matches('`').trim();
                block = matches!(lang, "sh" | "bash" | "shell" | "console" | "").then(String::new).or(Some("\0skip".into()));
            }
            (Some(b), true) => {
                if !b.starts_with('\0') {
                    found.extend(commands_in_script(b, "deploy/README.md"));
                }
                block = None;
            }
            (Some(b), false) => {
                b.push_str(line.trim_start().trim_start_matches("$ "));
                b.push('\n');
            }
            (None, false) => {}
        }
    }
    assert!(block.is_none(), "deploy/README.md: a code block is not closed");
    found
}

fn all_commands() -> Vec<CommandLine> {
    let mut all = Vec::new();
    for file in ["deploy/systemd/stampede-coordinator.service", "deploy/systemd/stampede-agent.service"] {
        all.extend(unit_commands(&parse_unit(&read(file)), file));
    }
    all.extend(compose_commands());
    all.extend(k8s_commands());
    all.extend(dockerfile_commands(&read("deploy/Dockerfile")));
    all.extend(readme_commands());
    all
}

// ============================================================================
// The real CLI: `--help` of every subcommand
// ============================================================================

#[derive(Debug, Default)]
struct Help {
    /// Long flag → whether it takes a value.
    flags: BTreeMap<String, bool>,
    shorts: BTreeSet<char>,
    subcommands: BTreeSet<String>,
    /// Every usage line needs a subcommand.
    needs_subcommand: bool,
    /// It has an `Arguments:` section.
    takes_arguments: bool,
    /// Flags outside `[…]` in the (first) usage line.
    required_flags: Vec<String>,
    /// `<ARG>`s outside `[…]` that are not a flag's value nor `<COMMAND>`.
    required_arguments: usize,
}

fn parse_help(text: &str) -> Help {
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
fn agent_binary() -> PathBuf {
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

fn binary(program: &str) -> PathBuf {
    match program {
        "stampede" => PathBuf::from(env!("CARGO_BIN_EXE_stampede")),
        "stampede-agent" => agent_binary(),
        other => panic!("not a stampede program: {other}"),
    }
}

/// `PROGRAM SUB… --help`, parsed; cached per subcommand path.
fn help_of(program: &str, path: &[String]) -> std::sync::Arc<Help> {
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
fn check_against_cli(cmd: &CommandLine) -> Vec<String> {
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
fn check_transport(cmd: &CommandLine) -> Vec<String> {
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

// ============================================================================
// The tests
// ============================================================================

#[test]
fn every_command_line_uses_subcommands_and_flags_the_cli_has() {
    let all = all_commands();
    // Extraction must not come back empty-handed: what each file must contain.
    let expect: &[(&str, &str, &[&str])] = &[
        ("deploy/systemd/stampede-coordinator.service: ExecStart", "stampede", &["coordinator"]),
        ("deploy/systemd/stampede-agent.service: ExecStart", "stampede-agent", &[]),
        ("deploy/systemd/stampede-agent.service: ExecStopPost", "stampede-agent", &["sweep"]),
        ("deploy/compose/compose.yaml: services.certs", "stampede", &["certs", "init"]),
        ("deploy/compose/compose.yaml: services.certs", "stampede", &["certs", "issue"]),
        ("deploy/compose/compose.yaml: services.certs", "stampede", &["certs", "token"]),
        ("deploy/compose/compose.yaml: services.coordinator", "stampede", &["coordinator"]),
        ("deploy/compose/compose.yaml: services.target", "stampede", &["target"]),
        ("deploy/compose/compose.yaml: services.agent-a", "stampede-agent", &[]),
        ("deploy/compose/compose.yaml: services.agent-b", "stampede-agent", &[]),
        ("deploy/compose/compose.yaml: services.agent-c", "stampede-agent", &[]),
        ("deploy/compose/compose.yaml: services.cli", "stampede", &["run"]),
        ("deploy/k8s/coordinator.yaml: Deployment/coordinator", "stampede", &["coordinator"]),
        ("deploy/k8s/agent.yaml: DaemonSet/agent", "stampede-agent", &[]),
        ("deploy/Dockerfile: CMD", "stampede", &["coordinator"]),
        ("deploy/README.md", "stampede", &["certs", "init"]),
        ("deploy/README.md", "stampede", &["run"]),
        ("deploy/README.md", "stampede", &["agents"]),
    ];
    for (source, program, head) in expect {
        assert!(
            all.iter().any(|c| c.source.starts_with(source) && c.starts_with(program, head)),
            "no `{program} {}` found in {source}; found:\n{}",
            head.join(" "),
            all.iter().map(|c| format!("  {}: {}", c.source, c.text())).collect::<Vec<_>>().join("\n")
        );
    }

    let mut problems = Vec::new();
    for cmd in &all {
        for p in check_against_cli(cmd).into_iter().chain(check_transport(cmd)) {
            problems.push(format!("{}:\n    {}\n    → {p}", cmd.source, cmd.text()));
        }
    }
    assert!(problems.is_empty(), "{} problem(s) in {} command lines:\n{}", problems.len(), all.len(), problems.join("\n"));
    eprintln!("{} command lines checked against the CLI:", all.len());
    for c in &all {
        eprintln!("  {}: {}", c.source, c.text());
    }
}

#[test]
fn the_cli_check_catches_what_does_not_exist() {
    let cmd = |line: &str| CommandLine { source: "test".into(), argv: shell_words(line) };
    let bad = [
        ("stampede coordinator --listen 0.0.0.0:7000 --no-such-flag", "has no flag --no-such-flag"),
        ("stampede frobnicate --x", "has no subcommand `frobnicate`"),
        ("stampede certs issue --dir d", "requires --name"),
        ("stampede certs", "needs a subcommand"),
        ("stampede run --out o", "requires 1 argument"),
        ("stampede-agent --labels", "--labels needs a value"),
        ("stampede-agent --coordinator https://c:7000 stray", "has no subcommand `stray`"),
        ("stampede target --listen 0.0.0.0:8080 -q", "has no flag -q"),
    ];
    for (line, expected) in bad {
        let problems = check_against_cli(&cmd(line));
        assert!(problems.iter().any(|p| p.contains(expected)), "`{line}`: expected a problem with `{expected}`, got {problems:?}");
    }
    let good = [
        "stampede run plan.yaml --coordinator https://c:7000 --out=o",
        "stampede certs issue --dir d --name n --san a --san b",
        "stampede-agent sweep --state-dir /var/lib/stampede --dry-run",
        "stampede --otlp-endpoint http://otel:4317 target --listen 0.0.0.0:8080",
        "stampede-agent -h",
    ];
    for line in good {
        assert_eq!(check_against_cli(&cmd(line)), Vec::<String>::new(), "`{line}`");
    }
    let insecure = cmd("stampede-agent --coordinator http://c:7000 --insecure");
    let problems = check_transport(&insecure);
    assert!(problems.iter().any(|p| p.contains("--insecure")) && problems.iter().any(|p| p.contains("https://")), "{problems:?}");
}

#[test]
fn command_lines_are_found_in_every_syntax() {
    let script = "set -e\n[ -f ca.pem ] || stampede certs init --dir \"$d\"; echo ok && /usr/local/bin/stampede-agent sweep \\\n  --state-dir /x > /dev/null\n\
                  cp target/release/stampede /out/   # not a command of stampede's\n\
                  docker compose run --rm cli stampede run /plans/p.yaml --out '/out/a b'\n\
                  kubectl -n stampede exec deploy/coordinator -- stampede agents --coordinator https://c:7000\n";
    let found: Vec<String> = commands_in_script(script, "t").iter().map(CommandLine::text).collect();
    assert_eq!(
        found,
        [
            "stampede certs init --dir $d",
            "/usr/local/bin/stampede-agent sweep --state-dir /x",
            "stampede run /plans/p.yaml --out /out/a b",
            "stampede agents --coordinator https://c:7000",
        ]
    );
    let argv: Vec<String> = ["/bin/sh", "-ec", "stampede certs token --out /t"].iter().map(|s| s.to_string()).collect();
    assert_eq!(commands_in_argv(&argv, "t")[0].argv, ["stampede", "certs", "token", "--out", "/t"]);
    let docker = "FROM x\nCMD [\"stampede\", \"target\", \"--listen\", \"0.0.0.0:8080\"]\nRUN --mount=type=cache,target=/c cargo build \\\n && stampede --version\n";
    let found: Vec<String> = dockerfile_commands(docker).iter().map(CommandLine::text).collect();
    assert_eq!(found, ["stampede target --listen 0.0.0.0:8080", "stampede --version"]);
    let unit = parse_unit("[Service]\n# c\nExecStart=/bin/stampede coordinator \\\n    # inside\n    --listen 0.0.0.0:7000\nExecStopPost=-/bin/stampede-agent sweep\n");
    let found: Vec<String> = unit_commands(&unit, "u").iter().map(CommandLine::text).collect();
    assert_eq!(found, ["/bin/stampede coordinator --listen 0.0.0.0:7000", "/bin/stampede-agent sweep"]);
    let y = &YamlLoader::load_from_str("a: &a { x: 1, y: 2 }\nb: { <<: *a, y: 3 }\n").unwrap()[0];
    let m = merge_keys(y);
    assert_eq!((m["b"]["x"].as_i64(), m["b"]["y"].as_i64()), (Some(1), Some(3)));
}

// ---- systemd ----------------------------------------------------------------

fn seconds(value: &str) -> u64 {
    humantime::parse_duration(value).unwrap_or_else(|e| panic!("`{value}` is not a systemd time span: {e}")).as_secs()
}

fn check_common_hardening(unit: &Unit, file: &str) {
    let want = |key: &str, value: &str| {
        assert_eq!(unit_value(unit, "Service", key), Some(value), "{file}: {key}={value}");
    };
    want("NoNewPrivileges", "yes");
    want("ProtectSystem", "strict");
    want("ProtectHome", "yes");
    want("PrivateTmp", "yes");
    want("Restart", "on-failure");
    for key in ["ProtectKernelTunables", "ProtectKernelModules", "ProtectControlGroups", "RestrictRealtime", "RestrictSUIDSGID", "LockPersonality"] {
        want(key, "yes");
    }
    let families: BTreeSet<String> = unit_words(unit, "Service", "RestrictAddressFamilies").into_iter().collect();
    let expected: BTreeSet<String> = ["AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK"].iter().map(|s| s.to_string()).collect();
    assert_eq!(families, expected, "{file}: RestrictAddressFamilies");
    assert!(unit_value(unit, "Service", "StateDirectory").is_some(), "{file}: StateDirectory");
    assert!(!unit_words(unit, "Service", "ReadWritePaths").is_empty(), "{file}: ReadWritePaths");
    assert!(unit_words(unit, "Unit", "After").iter().any(|a| a == "network-online.target"), "{file}: After=network-online.target");
    assert_eq!(unit_value(unit, "Install", "WantedBy"), Some("multi-user.target"), "{file}: WantedBy");
    // Every writable path is one the service owns or is told about.
    let state = format!("/var/lib/{}", unit_value(unit, "Service", "StateDirectory").unwrap());
    for path in unit_words(unit, "Service", "ReadWritePaths") {
        let path = path.trim_start_matches('-');
        assert!(path == state || path.starts_with("/run/") || path.starts_with("/var/"), "{file}: ReadWritePaths {path}");
    }
}

/// A path the sandbox lets the service write: its state folder, a
/// ReadWritePaths entry, or below one.
fn writable(unit: &Unit, path: &str) -> bool {
    let state = unit_value(unit, "Service", "StateDirectory").map(|d| format!("/var/lib/{d}"));
    state.into_iter().chain(unit_words(unit, "Service", "ReadWritePaths").into_iter().map(|p| p.trim_start_matches('-').to_string())).any(|w| Path::new(path).starts_with(&w))
}

#[test]
fn systemd_units_are_hardened_and_consistent() {
    let coord_file = "deploy/systemd/stampede-coordinator.service";
    let agent_file = "deploy/systemd/stampede-agent.service";
    let coord = parse_unit(&read(coord_file));
    let agent = parse_unit(&read(agent_file));
    check_common_hardening(&coord, coord_file);
    check_common_hardening(&agent, agent_file);

    // The coordinator: an unprivileged user with no capabilities at all.
    let user = unit_value(&coord, "Service", "User").expect("the coordinator has a User=");
    assert!(user != "root" && user != "0", "{coord_file}: runs as {user}");
    assert_eq!(unit_value(&coord, "Service", "CapabilityBoundingSet"), Some(""), "{coord_file}: CapabilityBoundingSet= (empty)");
    assert_eq!(unit_value(&coord, "Service", "AmbientCapabilities"), Some(""), "{coord_file}: AmbientCapabilities= (empty)");
    // …and its user comes from the sysusers file next to it.
    let sysusers = read("deploy/systemd/stampede.sysusers");
    assert!(sysusers.lines().any(|l| l.split_whitespace().take(2).eq(["u", user])), "stampede.sysusers does not create `{user}`");

    // The agent: CAP_NET_ADMIN for tc/nft, kept and handed to tc/nft.
    for key in ["AmbientCapabilities", "CapabilityBoundingSet"] {
        let caps = unit_words(&agent, "Service", key);
        assert!(caps.iter().any(|c| c == "CAP_NET_ADMIN"), "{agent_file}: {key} lacks CAP_NET_ADMIN: {caps:?}");
        let ambient: BTreeSet<String> = unit_words(&agent, "Service", "AmbientCapabilities").into_iter().collect();
        let bounding: BTreeSet<String> = unit_words(&agent, "Service", "CapabilityBoundingSet").into_iter().collect();
        assert!(ambient.is_subset(&bounding), "{agent_file}: ambient capabilities outside the bounding set");
    }
    // SIGTERM reverts the faults; the stop timeout leaves time for it, and
    // the revert commands are not killed with the agent.
    assert_eq!(unit_value(&agent, "Service", "KillSignal"), Some("SIGTERM"), "{agent_file}: KillSignal");
    assert_eq!(unit_value(&agent, "Service", "KillMode"), Some("mixed"), "{agent_file}: KillMode");
    let stop = seconds(unit_value(&agent, "Service", "TimeoutStopSec").expect("TimeoutStopSec"));
    assert!(stop >= 60, "{agent_file}: TimeoutStopSec={stop}s is too short for fault reverts");
    assert_eq!(unit_value(&agent, "Service", "StateDirectory"), Some("stampede"), "{agent_file}: StateDirectory");

    // The flags point where the sandbox allows.
    let agent_cmds = unit_commands(&agent, agent_file);
    let main = agent_cmds.iter().find(|c| c.source.ends_with("ExecStart")).expect("an ExecStart");
    for cmd in &agent_cmds {
        let dir = cmd.flag("state-dir").unwrap_or_else(|| panic!("{}: no --state-dir in {}", cmd.source, cmd.text()));
        assert!(writable(&agent, dir), "{agent_file}: --state-dir {dir} is not writable under ProtectSystem=strict");
    }
    let coord_cmd = unit_commands(&coord, coord_file).into_iter().find(|c| c.source.ends_with("ExecStart")).expect("an ExecStart");
    for (cmd, file) in [(&coord_cmd, coord_file), (main, agent_file)] {
        for flag in ["ca", "cert", "key", "token-file"] {
            let path = cmd.flag(flag).unwrap_or_else(|| panic!("{file}: no --{flag}"));
            assert!(path.starts_with("/etc/stampede/"), "{file}: --{flag} {path} is outside /etc/stampede");
        }
    }
    assert_eq!(coord_cmd.flag("listen"), Some("0.0.0.0:7000"), "{coord_file}: --listen");
    // The run store is where the sandbox lets the coordinator write.
    let data = coord_cmd.flag("data").unwrap_or_else(|| panic!("{coord_file}: no --data"));
    assert!(writable(&coord, data), "{coord_file}: --data {data} is not writable under ProtectSystem=strict");
    let url = main.flag("coordinator").expect("--coordinator");
    assert!(url.starts_with("https://") && url.ends_with(":7000"), "{agent_file}: --coordinator {url}");
    // ${VAR}s in ExecStart have an Environment= default.
    let env: BTreeSet<String> = unit_words(&agent, "Service", "Environment").iter().filter_map(|e| e.split_once('=').map(|(k, _)| k.to_string())).collect();
    for word in &main.argv {
        let mut rest = word.as_str();
        while let Some(start) = rest.find("${") {
            let end = rest[start..].find('}').expect("closed ${…}") + start;
            let var = &rest[start + 2..end];
            assert!(env.contains(var), "{agent_file}: ${{{var}}} has no Environment= default");
            rest = &rest[end..];
        }
    }
}

// ---- compose ----------------------------------------------------------------

/// (volume or host path, mount point, read-only) of a compose service.
fn compose_mounts(svc: &Yaml) -> Vec<(String, String, bool)> {
    strings(&svc["volumes"])
        .iter()
        .map(|v| {
            let parts: Vec<&str> = v.split(':').collect();
            assert!(parts.len() >= 2, "volume `{v}` has no mount point");
            (parts[0].to_string(), parts[1].to_string(), parts.get(2).is_some_and(|o| o.split(',').any(|o| o == "ro")))
        })
        .collect()
}

#[test]
fn compose_runs_a_fleet_from_one_image_with_certificates_first() {
    let file = "deploy/compose/compose.yaml";
    let doc = &load_yaml(file)[0];
    let services = &doc["services"];
    let names = hash_keys(services);
    for want in ["certs", "coordinator", "target", "agent-a", "agent-b", "agent-c", "cli"] {
        assert!(names.iter().any(|n| n == want), "{file}: no service `{want}` (has {names:?})");
    }
    let compose_dir = repo().join("deploy/compose");

    // One image, built from deploy/Dockerfile with the repository as context.
    let image = s(&services["coordinator"]["image"]);
    for name in &names {
        let svc = &services[name.as_str()];
        assert_eq!(s(&svc["image"]), image, "{file}: {name} uses another image");
        let context = compose_dir.join(s(&svc["build"]["context"]));
        assert_eq!(context.canonicalize().unwrap(), repo().canonicalize().unwrap(), "{file}: {name}: build context is not the repository");
        assert_eq!(s(&svc["build"]["dockerfile"]), "deploy/Dockerfile", "{file}: {name}: dockerfile");
        assert!(context.join("deploy/Dockerfile").is_file());
    }

    // Every service but certs waits for it to succeed; certs itself runs once.
    assert_eq!(s(&services["certs"]["restart"]), "no", "{file}: certs is a one-shot");
    for name in names.iter().filter(|n| !matches!(n.as_str(), "certs" | "target")) {
        assert_eq!(
            services[name.as_str()]["depends_on"]["certs"]["condition"].as_str(),
            Some("service_completed_successfully"),
            "{file}: {name} must depend on certs with condition service_completed_successfully"
        );
    }

    let cmds = compose_commands();
    let of = |svc: &str| -> Vec<&CommandLine> { cmds.iter().filter(|c| c.source.ends_with(&format!("services.{svc}"))).collect() };

    // What certs makes, by file name under its volume.
    let certs_mount = compose_mounts(&services["certs"]);
    let mut made: BTreeSet<String> = BTreeSet::new();
    for c in of("certs") {
        match c.head().get(1).copied() {
            Some("init") => {
                let dir = c.flag("dir").unwrap();
                made.insert(format!("{dir}/ca.pem"));
            }
            Some("issue") => {
                let dir = c.flag("out").or(c.flag("dir")).unwrap();
                let name = c.flag("name").unwrap();
                // `for name in a b c; do … --name "$name"`: one per loop word.
                let names: Vec<String> = if name == "$name" {
                    let script = compose_argv(&services["certs"]["command"]).join("\n");
                    let line = script.lines().find(|l| l.trim_start().starts_with("for name in")).expect("the for loop");
                    line.trim_start()["for name in".len()..].split(';').next().unwrap().split_whitespace().map(str::to_string).collect()
                } else {
                    vec![name.to_string()]
                };
                for n in names {
                    made.insert(format!("{dir}/{n}.pem"));
                    made.insert(format!("{dir}/{n}-key.pem"));
                }
            }
            Some("token") => {
                made.insert(c.flag("out").unwrap().to_string());
            }
            other => panic!("{file}: certs runs `certs {other:?}`"),
        }
    }
    assert!(made.len() >= 2 + 2 * 5, "{file}: certs makes too little: {made:?}");
    let (certs_volume, certs_point, certs_ro) = certs_mount.first().cloned().expect("certs mounts a volume");
    assert!(!certs_ro, "{file}: certs must write its volume");
    assert!(hash_keys(&doc["volumes"]).contains(&certs_volume), "{file}: `{certs_volume}` is not a named volume");
    assert!(made.iter().all(|m| m.starts_with(&certs_point)), "{file}: certs writes outside its volume: {made:?}");

    // Every TLS file a command names was made by certs and is mounted,
    // read-only, at the same place in that service.
    for name in names.iter().filter(|n| *n != "certs") {
        let mounts = compose_mounts(&services[name.as_str()]);
        for c in of(name) {
            for flag in ["ca", "cert", "key", "token-file"] {
                let Some(path) = c.flag(flag) else { continue };
                assert!(made.contains(path), "{file}: {name} --{flag} {path} is not made by certs ({made:?})");
                let mount = mounts.iter().find(|(v, point, _)| *v == certs_volume && path.starts_with(point.as_str()));
                let (_, point, ro) = mount.unwrap_or_else(|| panic!("{file}: {name} does not mount `{certs_volume}` where --{flag} {path} is"));
                assert_eq!(point, &certs_point, "{file}: {name} mounts the certificates elsewhere");
                assert!(ro, "{file}: {name} must mount the certificates read-only");
            }
        }
    }

    // The coordinator listens on 7000; agents dial it by service name.
    let coord = of("coordinator");
    assert!(coord[0].starts_with("stampede", &["coordinator"]));
    let port = coord[0].flag("listen").and_then(|l| l.rsplit_once(':')).map(|(_, p)| p.to_string()).expect("--listen");
    assert_eq!(port, "7000");
    // Its run store survives the container: a writable named volume.
    let data = coord[0].flag("data").expect("the coordinator's --data");
    let mounts = compose_mounts(&services["coordinator"]);
    assert!(mounts.iter().any(|(v, p, ro)| p == data && !ro && hash_keys(&doc["volumes"]).contains(v)), "{file}: coordinator: --data {data} is not a writable named volume");
    let mut zones = BTreeSet::new();
    for agent in ["agent-a", "agent-b", "agent-c"] {
        let svc = &services[agent];
        let caps = strings(&svc["cap_add"]);
        assert!(caps.iter().any(|c| c == "NET_ADMIN"), "{file}: {agent} lacks cap_add NET_ADMIN: {caps:?}");
        let c = of(agent);
        assert_eq!(c.len(), 1, "{file}: {agent} runs one command");
        assert!(c[0].starts_with("stampede-agent", &[]), "{file}: {agent} runs {}", c[0].text());
        assert_eq!(c[0].flag("coordinator"), Some(format!("https://coordinator:{port}").as_str()), "{file}: {agent} --coordinator");
        let labels = c[0].flag("labels").expect("--labels");
        let zone = labels.split(',').find_map(|kv| kv.strip_prefix("zone=")).unwrap_or_else(|| panic!("{file}: {agent}: no zone label in {labels}"));
        zones.insert(zone.to_string());
        // Its own journal, which survives a restart of the container.
        let state = c[0].flag("state-dir").expect("--state-dir");
        let mounts = compose_mounts(svc);
        assert!(mounts.iter().any(|(v, p, ro)| p == state && !ro && hash_keys(&doc["volumes"]).contains(v)), "{file}: {agent}: --state-dir {state} is not a writable named volume");
        assert!(svc["stop_grace_period"].as_str().is_some_and(|g| seconds(g) >= 30), "{file}: {agent}: stop_grace_period too short for fault reverts");
    }
    assert_eq!(zones, ["a", "b", "c"].iter().map(|z| z.to_string()).collect(), "{file}: agent zones");

    // The built-in target on 8080, and plans that aim at it and load.
    let target = of("target");
    assert!(target[0].starts_with("stampede", &["target"]));
    assert_eq!(target[0].flag("listen"), Some("0.0.0.0:8080"));
    let cli = of("cli");
    let plan_in_container = cli[0].head()[1];
    let (plans_host, plans_point, _) = compose_mounts(&services["cli"]).into_iter().find(|(_, p, _)| plan_in_container.starts_with(p.as_str())).expect("the cli mounts its plan");
    let plan_host = compose_dir.join(&plans_host).join(plan_in_container.strip_prefix(&plans_point).unwrap().trim_start_matches('/'));
    assert!(plan_host.is_file(), "{file}: cli runs {plan_in_container}, which is not {}", plan_host.display());
    let target_ip = services["target"]["networks"]["fleet"]["ipv4_address"].as_str().expect("the target's fixed address");
    for plan_file in ["plan.yaml", "plan-faults.yaml"] {
        let path = compose_dir.join(plan_file);
        let plan = stampede_common::plan::load_file(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(plan.target, "http://target:8080", "{}: target", path.display());
        assert_eq!(plan.agents.count, Some(3), "{}: waits for the three agents", path.display());
        for fault in &plan.faults {
            let json = serde_json::to_value(fault).unwrap();
            if let Some(dst) = json["scope"]["dst"].as_str() {
                assert!(dst.starts_with(target_ip), "{}: fault {} aims at {dst}, not the target {target_ip}", path.display(), fault.name);
            }
        }
    }
}

// ---- Kubernetes ---------------------------------------------------------------

fn objects_of<'a>(objects: &'a [(String, Yaml)], kind: &str) -> Vec<&'a Yaml> {
    objects.iter().filter(|(_, o)| o["kind"].as_str() == Some(kind)).map(|(_, o)| o).collect()
}

/// Path in the container → (secret, key) for every secret volume mounted.
fn secret_files(spec: &Yaml, container: &Yaml) -> BTreeMap<String, (String, String)> {
    let mut files = BTreeMap::new();
    for m in container["volumeMounts"].as_vec().into_iter().flatten() {
        let vol = spec["volumes"].as_vec().into_iter().flatten().find(|v| v["name"] == m["name"]).expect("a mount's volume exists");
        let Some(secret) = vol["secret"]["secretName"].as_str() else { continue };
        assert_eq!(m["readOnly"].as_bool(), Some(true), "the secret {secret} is mounted read-only");
        let items = vol["secret"]["items"].as_vec().expect("secret volumes list their items");
        for item in items {
            files.insert(format!("{}/{}", s(&m["mountPath"]), s(&item["path"])), (secret.to_string(), s(&item["key"])));
        }
    }
    files
}

#[test]
fn kubernetes_manifests_have_what_the_fleet_needs() {
    let objects = k8s_objects();
    for (file, o) in &objects {
        let kind = s(&o["kind"]);
        if kind != "Namespace" {
            assert_eq!(o["metadata"]["namespace"].as_str(), Some("stampede"), "{file}: {kind} is not in namespace stampede");
        }
    }
    let ns = objects_of(&objects, "Namespace");
    assert!(ns.iter().any(|n| n["metadata"]["name"].as_str() == Some("stampede")), "no Namespace stampede");

    // The coordinator: a Deployment behind a Service on 7000.
    let deploy = objects_of(&objects, "Deployment");
    assert_eq!(deploy.len(), 1, "one Deployment (the coordinator)");
    let coord = deploy[0];
    let coord_spec = pod_spec(coord);
    let coord_container = &coord_spec["containers"][0];
    assert_eq!(coord["spec"]["replicas"].as_i64(), Some(1), "the coordinator is one replica (runs live in its memory)");
    assert_eq!(coord_spec["securityContext"]["runAsNonRoot"].as_bool(), Some(true), "the coordinator runs as non-root");
    let pod_labels = &coord["spec"]["template"]["metadata"]["labels"];
    let services = objects_of(&objects, "Service");
    let svc = services.iter().find(|s| s["spec"]["ports"].as_vec().into_iter().flatten().any(|p| p["port"].as_i64() == Some(7000))).expect("a Service on port 7000");
    for (k, v) in svc["spec"]["selector"].as_hash().expect("the Service selects pods") {
        assert_eq!(&pod_labels[s(k).as_str()], v, "the Service's selector {} does not match the coordinator", s(k));
    }
    let svc_host = format!("{}.stampede.svc", s(&svc["metadata"]["name"]));

    // The agents: a DaemonSet on the host network with NET_ADMIN.
    let ds = objects_of(&objects, "DaemonSet");
    assert_eq!(ds.len(), 1, "one DaemonSet (the agents)");
    let agent_spec = pod_spec(ds[0]);
    assert_eq!(agent_spec["hostNetwork"].as_bool(), Some(true), "the agents use hostNetwork");
    assert_eq!(agent_spec["dnsPolicy"].as_str(), Some("ClusterFirstWithHostNet"), "host-network agents resolve Service names");
    let agent_container = &agent_spec["containers"][0];
    let added = strings(&agent_container["securityContext"]["capabilities"]["add"]);
    assert!(added.iter().any(|c| c == "NET_ADMIN"), "the agent lacks NET_ADMIN: {added:?}");
    assert!(agent_spec["terminationGracePeriodSeconds"].as_i64().is_some_and(|s| s >= 60), "the agents need time to revert faults on SIGTERM");
    let env = agent_container["env"].as_vec().expect("the agent has env");
    let node = env.iter().find(|e| e["name"].as_str() == Some("NODE_NAME")).expect("NODE_NAME in the agent's env");
    assert_eq!(node["valueFrom"]["fieldRef"]["fieldPath"].as_str(), Some("spec.nodeName"), "NODE_NAME from the downward API");

    let cmds = k8s_commands();
    let coord_cmd = cmds.iter().find(|c| c.source.contains("Deployment/coordinator")).expect("the coordinator's command");
    let agent_cmd = cmds.iter().find(|c| c.source.contains("DaemonSet/agent")).expect("the agent's command");
    assert_eq!(agent_cmd.flag("labels"), Some("node=$(NODE_NAME)"), "agents are labelled with their node");
    let listen_port = coord_cmd.flag("listen").and_then(|l| l.rsplit_once(':')).map(|(_, p)| p.to_string()).unwrap();
    let target_port = svc["spec"]["ports"][0]["targetPort"].clone();
    let container_port = coord_container["ports"].as_vec().into_iter().flatten().find(|p| p["name"] == target_port || p["containerPort"] == target_port).expect("the Service's targetPort is a container port");
    assert_eq!(container_port["containerPort"].as_i64().map(|p| p.to_string()), Some(listen_port.clone()), "the Service reaches --listen");
    assert_eq!(agent_cmd.flag("coordinator"), Some(format!("https://{svc_host}:7000").as_str()), "agents dial the Service");
    // The coordinator's run store is a persistent volume claim of this kustomization.
    let data = coord_cmd.flag("data").expect("the coordinator's --data");
    let mount = coord_container["volumeMounts"].as_vec().into_iter().flatten().find(|m| m["mountPath"].as_str() == Some(data)).unwrap_or_else(|| panic!("--data {data} is not a mounted volume"));
    let volume = coord_spec["volumes"].as_vec().into_iter().flatten().find(|v| v["name"] == mount["name"]).expect("the mount's volume");
    let claim = s(&volume["persistentVolumeClaim"]["claimName"]);
    assert!(objects_of(&objects, "PersistentVolumeClaim").iter().any(|c| s(&c["metadata"]["name"]) == claim), "no PersistentVolumeClaim {claim}");

    // The Secret: made by the kustomization's secretGenerator, mounted
    // read-only, holding every file the flags name.
    let kustomization = &load_yaml("deploy/k8s/kustomization.yaml")[0];
    let resources = strings(&kustomization["resources"]);
    for file in k8s_files().iter().filter(|f| !f.ends_with("kustomization.yaml")) {
        let name = file.trim_start_matches("deploy/k8s/");
        assert!(resources.iter().any(|r| r == name), "kustomization.yaml does not list {name}");
    }
    assert_eq!(kustomization["namespace"].as_str(), Some("stampede"));
    let mut secret_keys: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for g in kustomization["secretGenerator"].as_vec().into_iter().flatten() {
        let keys = strings(&g["files"]).iter().map(|f| f.split_once('=').map_or(basename(f), |(k, _)| k).to_string()).collect();
        secret_keys.insert(s(&g["name"]), keys);
    }
    for (c, spec, container) in [(coord_cmd, coord_spec, coord_container), (agent_cmd, agent_spec, agent_container)] {
        let files = secret_files(spec, container);
        for flag in ["ca", "cert", "key", "token-file"] {
            let path = c.flag(flag).unwrap_or_else(|| panic!("{}: no --{flag}", c.source));
            let (secret, key) = files.get(path).unwrap_or_else(|| panic!("{}: --{flag} {path} is not a mounted secret file ({files:?})", c.source));
            let keys = secret_keys.get(secret).unwrap_or_else(|| panic!("no secretGenerator makes the Secret {secret}"));
            assert!(keys.contains(key), "the Secret {secret} has no key {key} (has {keys:?})");
        }
    }
}

// ---- Dockerfile -----------------------------------------------------------------

#[test]
fn dockerfile_builds_both_binaries_and_runs_unprivileged() {
    let text = read("deploy/Dockerfile");
    let instructions = dockerfile_instructions(&text);
    let froms: Vec<&String> = instructions.iter().filter(|(i, _)| i == "FROM").map(|(_, a)| a).collect();
    assert_eq!(froms.len(), 2, "a builder and a runtime stage: {froms:?}");
    let (builder_image, builder_name) = froms[0].split_once(" AS ").or_else(|| froms[0].split_once(" as ")).expect("the builder stage is named");
    assert_eq!(builder_image.trim(), "rust:1-bookworm");
    assert_eq!(froms[1].trim(), "debian:bookworm-slim");
    let runtime_start = instructions.iter().rposition(|(i, _)| i == "FROM").unwrap();
    let (builder, runtime) = instructions.split_at(runtime_start);

    let build = builder.iter().filter(|(i, _)| i == "RUN").map(|(_, a)| a.as_str()).collect::<Vec<_>>().join(" ");
    let build_words = shell_words(&build);
    let cargo = build_words.windows(2).position(|w| w == ["cargo", "build"]).expect("cargo build in the builder");
    let cargo_args: Vec<&str> = build_words[cargo..].iter().take_while(|w| *w != "&&").map(String::as_str).collect();
    for want in ["--release", "--locked"] {
        assert!(cargo_args.contains(&want), "cargo build lacks {want}: {cargo_args:?}");
    }
    let packages: BTreeSet<&str> = cargo_args.windows(2).filter(|w| w[0] == "-p").map(|w| w[1]).collect();
    assert_eq!(packages, ["stampede-agent", "stampede-coordinator"].into_iter().collect(), "cargo build packages");
    // The packages exist in the workspace.
    for p in &packages {
        let dir = if *p == "stampede-coordinator" { "coordinator" } else { "agent" };
        assert!(read(&format!("{dir}/Cargo.toml")).contains(&format!("name = \"{p}\"")), "{p} is not {dir}/");
    }

    let run = runtime.iter().filter(|(i, _)| i == "RUN").map(|(_, a)| a.as_str()).collect::<Vec<_>>().join(" ");
    let apt = shell_words(&run);
    let install = apt.windows(2).position(|w| w == ["apt-get", "install"]).expect("apt-get install in the runtime");
    let pkgs: Vec<&str> = apt[install..].iter().take_while(|w| *w != "&&").map(String::as_str).collect();
    for want in ["iproute2", "nftables", "ca-certificates"] {
        assert!(pkgs.contains(&want), "the runtime lacks {want}: {pkgs:?}");
    }
    let copies: Vec<&String> = runtime.iter().filter(|(i, _)| i == "COPY").map(|(_, a)| a).collect();
    let from_builder = format!("--from={}", builder_name.trim());
    assert!(
        copies.iter().any(|c| c.starts_with(&from_builder) && c.contains("stampede") && c.contains("stampede-agent")),
        "the runtime copies both binaries from the builder: {copies:?}"
    );
    let user = runtime.iter().filter(|(i, _)| i == "USER").map(|(_, a)| a.as_str()).next_back().expect("a USER in the runtime");
    assert!(!matches!(user, "root" | "0" | "0:0"), "the image's default user is root");
    assert!(run.contains("useradd") && run.contains(user), "USER {user} is created in the runtime stage");
    assert!(runtime.iter().any(|(i, _)| i == "CMD" || i == "ENTRYPOINT"), "a default command");
}

// ---- README ---------------------------------------------------------------------

#[test]
fn readme_covers_every_deployment_and_links_what_exists() {
    let text = read("deploy/README.md");
    for heading in ["systemd", "compose", "Kubernetes", "netns"] {
        let heading = heading.to_lowercase();
        assert!(text.lines().any(|l| l.starts_with('#') && l.to_lowercase().contains(&heading)), "deploy/README.md has no section on {heading}");
    }
    // Relative links point at files that exist (deploy/netns/ is added by
    // other work: its link is checked once the folder is there).
    let dir = repo().join("deploy");
    let mut rest = text.as_str();
    while let Some(start) = rest.find("](") {
        let end = rest[start..].find(')').unwrap() + start;
        let target = &rest[start + 2..end];
        rest = &rest[end..];
        if target.contains("://") || target.starts_with('#') || target.starts_with("mailto:") {
            continue;
        }
        let path = dir.join(target.split('#').next().unwrap());
        if target.starts_with("netns") && !dir.join("netns").exists() {
            continue;
        }
        assert!(path.exists(), "deploy/README.md links to {target}, which does not exist");
    }
}

#[test]
fn time_spans_parse_like_systemd() {
    assert_eq!(seconds("90s"), 90);
    assert_eq!(seconds("1min 30s"), 90);
    assert_eq!(Duration::from_secs(seconds("2min")), Duration::from_secs(120));
}
