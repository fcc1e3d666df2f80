//! Where `deploy/` files keep their command lines, and how to read them out:
//! shell words, systemd units, compose, Kubernetes, the Dockerfile, the README.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use yaml_rust2::{Yaml, YamlLoader};

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the crate is inside the workspace").to_path_buf()
}

pub fn read(rel: &str) -> String {
    let path = repo().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ============================================================================
// Command lines and where they come from
// ============================================================================

/// One `stampede …` or `stampede-agent …` invocation found in a deploy file.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandLine {
    /// `file: where` (the unit key, the service, the container, …).
    pub source: String,
    /// The words, the program first (as written: `/usr/local/bin/stampede`).
    pub argv: Vec<String>,
}

impl CommandLine {
    pub fn program(&self) -> &str {
        basename(&self.argv[0])
    }

    /// The value of `--flag VALUE` or `--flag=VALUE` (the first one).
    pub fn flag(&self, name: &str) -> Option<&str> {
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
    pub fn head(&self) -> Vec<&str> {
        self.argv[1..].iter().take_while(|w| !w.starts_with('-')).map(String::as_str).collect()
    }

    pub fn starts_with(&self, program: &str, head: &[&str]) -> bool {
        self.program() == program && self.head().starts_with(head)
    }

    pub fn text(&self) -> String {
        self.argv.join(" ")
    }
}

pub fn basename(word: &str) -> &str {
    word.rsplit('/').next().unwrap_or(word)
}

pub fn is_stampede(word: &str) -> bool {
    matches!(basename(word), "stampede" | "stampede-agent")
}

/// Programs that run another command given further on their line
/// (`docker compose run --rm cli stampede …`, `kubectl exec … -- stampede …`).
pub fn is_launcher(word: &str) -> bool {
    matches!(basename(word), "docker" | "podman" | "kubectl" | "sudo" | "ip" | "fleet.sh" | "env" | "nsenter" | "systemd-run")
}

pub const SEPARATORS: &[&str] = &[";", "&&", "||", "|", "&", "then", "do", "else", "{", "}", "(", ")", "!"];

/// Splits a shell line into words: quotes ('…', "…") group and are removed,
/// a backslash escapes the next character, `#` at a word start begins a
/// comment, and `;`, `&&`, `||`, `|`, `&` are words of their own.
pub fn shell_words(line: &str) -> Vec<String> {
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
pub fn commands_in_script(script: &str, source: &str) -> Vec<CommandLine> {
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

pub fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(k, _)| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !k.starts_with(|c: char| c.is_ascii_digit()))
}

/// The stampede command lines in an exec-form command (compose
/// `entrypoint` + `command`, Kubernetes `command` + `args`, a Dockerfile's
/// JSON form): a shell with `-c` runs its script, anything else is one
/// command line.
pub fn commands_in_argv(argv: &[String], source: &str) -> Vec<CommandLine> {
    let Some(first) = argv.first() else { return Vec::new() };
    if matches!(basename(first), "sh" | "bash" | "dash" | "ash") {
        if let Some(i) = argv.iter().position(|w| w.starts_with('-') && !w.starts_with("--") && w.contains('c')) {
            return argv.get(i + 1).map(|script| commands_in_script(script, source)).unwrap_or_default();
        }
    }
    commands_in_script(&argv.iter().map(|w| shell_quote(w)).collect::<Vec<_>>().join(" "), source)
}

pub fn shell_quote(word: &str) -> String {
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
pub type Unit = BTreeMap<String, BTreeMap<String, Vec<String>>>;

pub fn parse_unit(text: &str) -> Unit {
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

pub fn unit_value<'a>(unit: &'a Unit, section: &str, key: &str) -> Option<&'a str> {
    unit.get(section)?.get(key)?.last().map(String::as_str)
}

/// Every word of every value of `key` (`CapabilityBoundingSet=A B` twice → A, B, …).
pub fn unit_words(unit: &Unit, section: &str, key: &str) -> Vec<String> {
    unit.get(section).and_then(|s| s.get(key)).map_or_else(Vec::new, |vs| vs.iter().flat_map(|v| v.split_whitespace().map(str::to_string)).collect())
}

pub fn unit_commands(unit: &Unit, file: &str) -> Vec<CommandLine> {
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

pub fn load_yaml(rel: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}")).iter().map(merge_keys).collect()
}

/// Applies YAML merge keys (`<<: *anchor`), which compose files use and
/// yaml-rust2 (YAML 1.2) leaves as plain keys. Aliases are already copies.
pub fn merge_keys(y: &Yaml) -> Yaml {
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

pub fn s(y: &Yaml) -> String {
    match y {
        Yaml::String(s) | Yaml::Real(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Boolean(b) => b.to_string(),
        other => panic!("expected a scalar, found {other:?}"),
    }
}

pub fn strings(y: &Yaml) -> Vec<String> {
    match y {
        Yaml::Array(a) => a.iter().map(s).collect(),
        Yaml::BadValue | Yaml::Null => Vec::new(),
        other => vec![s(other)],
    }
}

pub fn hash_keys(y: &Yaml) -> Vec<String> {
    y.as_hash().map_or_else(Vec::new, |h| h.keys().map(s).collect())
}

/// Compose's `command`/`entrypoint`: a list, or a string split like a shell
/// would. `$$` is compose's escape for `$`.
pub fn compose_argv(y: &Yaml) -> Vec<String> {
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
pub fn dockerfile_instructions(text: &str) -> Vec<(String, String)> {
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

pub fn dockerfile_commands(text: &str) -> Vec<CommandLine> {
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

pub fn compose_commands() -> Vec<CommandLine> {
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

pub fn k8s_files() -> Vec<String> {
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
pub fn k8s_objects() -> Vec<(String, Yaml)> {
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

pub fn pod_spec(obj: &Yaml) -> &Yaml {
    &obj["spec"]["template"]["spec"]
}

pub fn k8s_commands() -> Vec<CommandLine> {
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
pub fn readme_commands() -> Vec<CommandLine> {
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

pub fn all_commands() -> Vec<CommandLine> {
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
