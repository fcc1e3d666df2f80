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


use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use yaml_rust2::{Yaml, YamlLoader};

// Split for length: reading command lines out of deploy/, and the CLI
// they are checked against.
#[path = "deploy_static/commands.rs"]
mod commands;
#[path = "deploy_static/cli.rs"]
mod cli;

use cli::*;
use commands::*;

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
        "stampede certs issue --dir d --role agent --name n --san a --san b",
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
