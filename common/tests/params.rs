//! `${NAME}`, `--set` and `--target` on the loader: values substituted in
//! every format, errors on the line the user wrote, flags named in errors.

use std::path::Path;

use stampede_common::plan::{load_str_with, Format, Params, Plan, PlanError, SecretSource};

fn vars(name: &str) -> Option<String> {
    match name {
        "HOST" => Some("10.1.2.3".into()),
        "RATE" => Some("300/s".into()),
        "HOLD" => Some("45s".into()),
        "C" => Some("8".into()),
        "SHAPE" => Some("x\ny: 1".into()),
        _ => None,
    }
}

const YAML: &str = "name: p
target: http://${HOST}:8080
builtin_target: { latency: 1ms }
phases:
  - name: ramp
    duration: ${HOLD:-10s}
    load: { model: open, rate: \"${RATE}\" }
  - name: hold
    duration: 5s
    load:
      model: closed
      concurrency: ${C}
steps:
  - name: s
    request: { path: \"/items?q=$${literal}\" }
slos:
  - { metric: p99, pass: \"< 400ms\" }
  - { metric: error_rate, pass: \"< 1%\" }
";

fn load(text: &str, format: Format, sets: &[&str], target: Option<&str>) -> Result<Plan, PlanError> {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    let file = match format {
        Format::Yaml => "p.yaml",
        Format::Toml => "p.toml",
        Format::Json => "p.json",
    };
    load_str_with(text, format, Path::new(file), &Params { vars: Some(&vars), sets: &sets, target, secrets: SecretSource::Unresolved, ..Params::default() })
}

#[test]
fn variables_fill_values_of_every_kind() {
    let p = load(YAML, Format::Yaml, &[], None).unwrap();
    assert_eq!(p.target, "http://10.1.2.3:8080");
    assert_eq!(p.phases[0].length().as_secs(), 45);
    assert_eq!(p.phases[0].load.rate.unwrap().as_per_second(), 300.0);
    assert_eq!(p.phases[1].load.concurrency, Some(8), "a number from a variable");
    assert_eq!(p.steps[0].request.path, "/items?q=${literal}", "`$${{` is a literal `${{`");
}

#[test]
fn toml_and_json_take_variables_too() {
    let toml = "name = \"p\"\ntarget = \"http://${HOST}:1\"\n[[phases]]\nname = \"a\"\nduration = \"${HOLD}\"\nload = { model = \"closed\", concurrency = \"${C}\" }\n[[steps]]\nname = \"s\"\n";
    let p = load(toml, Format::Toml, &[], None).unwrap();
    assert_eq!((p.target.as_str(), p.phases[0].load.concurrency), ("http://10.1.2.3:1", Some(8)));
    let json = r#"{"name":"p","target":"http://${HOST}:1","phases":[{"name":"a","duration":"${HOLD}","load":{"model":"open","rate":"${RATE}"}}],"steps":[{"name":"s"}]}"#;
    let p = load(json, Format::Json, &[], None).unwrap();
    assert_eq!(p.phases[0].length().as_secs(), 45);
}

#[test]
fn an_unset_variable_is_an_error_on_its_line() {
    let text = YAML.replace("${HOLD:-10s}", "${NOT_SET}");
    let e = load(&text, Format::Yaml, &[], None).unwrap_err();
    assert_eq!(e.to_string(), "p.yaml:6: phases[0].duration: environment variable NOT_SET is not set (write `${NOT_SET:-default}` to give a default)");
    // A value with a line break stays one value: it cannot add a field.
    let text = YAML.replace("name: p\n", "name: \"${SHAPE}\"\n");
    assert_eq!(load(&text, Format::Yaml, &[], None).unwrap().name, "x\ny: 1");
    // Later errors keep their lines: nothing moved.
    let text = YAML.replace("duration: 5s", "duration: 0s");
    assert_eq!(load(&text, Format::Yaml, &[], None).unwrap_err().line, Some(9));
}

#[test]
fn set_overrides_fields_and_creates_missing_ones() {
    let p = load(YAML, Format::Yaml, &["phases[0].duration=30s", "slos[1].pass=< 0.5%", "agents.count=3", "phases[1].load.concurrency=2", "timeout=2s"], None).unwrap();
    assert_eq!(p.phases[0].length().as_secs(), 30);
    assert_eq!(p.agents.count, Some(3));
    assert_eq!(p.phases[1].load.concurrency, Some(2));
    assert_eq!(p.timeout.as_duration().as_secs(), 2);
    assert_eq!(serde_json::to_value(&p.slos[1]).unwrap()["pass"], "< 0.5%");
    // A later --set wins; `null` removes a field (its default applies).
    let p = load(YAML, Format::Yaml, &["phases[0].duration=1s", "phases[0].duration=2s", "builtin_target=null"], None).unwrap();
    assert_eq!(p.phases[0].length().as_secs(), 2);
    assert!(p.builtin_target.is_none());
    // An overridden field needs no variable.
    let text = YAML.replace("${HOLD:-10s}", "${NOT_SET}");
    assert!(load(&text, Format::Yaml, &["phases[0].duration=3s"], None).is_ok());
}

#[test]
fn target_replaces_the_target_and_drops_the_builtin_one() {
    let p = load(YAML, Format::Yaml, &[], Some("http://staging:8080")).unwrap();
    assert_eq!(p.target, "http://staging:8080");
    assert!(p.builtin_target.is_none());
    let e = load(YAML, Format::Yaml, &[], Some("ftp://x")).unwrap_err();
    assert_eq!((e.line, e.path.as_str()), (None, "target"));
    assert!(e.message.ends_with("(set by `--target ftp://x`)"), "{e}");
}

#[test]
fn bad_set_flags_name_the_flag() {
    let err = |set: &str| load(YAML, Format::Yaml, &[set], None).unwrap_err().to_string();
    assert_eq!(err("phases[5].duration=1s"), "p.yaml: --set phases[5].duration=1s: `phases` has 2 item(s), so `phases[5]` does not exist");
    assert_eq!(err("name.first=x"), "p.yaml: --set name.first=x: `name` is a value, not an object with fields");
    assert!(err("phases").contains("--set phases: write KEY.PATH=VALUE"), "{}", err("phases"));
    let e = err("phases[0].duration=soon");
    assert!(e.starts_with("p.yaml: phases[0].duration: `soon` is not a duration") && e.ends_with("(set by `--set phases[0].duration=soon`)"), "{e}");
    let e = err("phases[0].durashun=1s");
    assert!(e.contains("phases[0]") && e.contains("durashun") && e.contains("(set by `--set phases[0].durashun=1s`)"), "{e}");
}

#[test]
fn flow_style_needs_quotes_and_says_so() {
    let text = YAML.replace("rate: \"${RATE}\"", "rate: ${RATE}");
    let e = load(&text, Format::Yaml, &[], None).unwrap_err();
    assert_eq!(e.line, Some(7));
    assert!(e.message.ends_with("quote a value with `${NAME}`: `rate: \"${RATE}\"`"), "{e}");
}
