//! What a plan text may cost before anything is built from it (issue 8,
//! item 3). The `config` crate materializes the whole value tree, and
//! yaml-rust2 copies an anchored node at every `*alias`: a 516-byte "billion
//! laughs" document asked for gigabytes, and nesting deeper than the stack
//! overflowed the recursive conversions and drops. So the text is bounded,
//! YAML is pre-scanned as an event stream (which never expands an alias) for
//! the size and depth its tree *would* have, and a TOML or JSON tree (whose
//! parsers stop at depth 80 and 128) is measured before serde reads it.
//!
//! Every limit is far beyond any real plan; docs/plan.md lists them.

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Longest plan text: real plans are a few kilobytes.
pub const MAX_PLAN_BYTES: usize = 1024 * 1024;
/// Most values (scalars, lists and maps) the plan's tree may have once every
/// YAML alias is expanded.
pub const MAX_NODES: u64 = 100_000;
/// Most characters of scalars the tree may have once aliases are expanded:
/// the plan travels to every agent as JSON.
pub const MAX_EXPANDED_BYTES: u64 = 4 * 1024 * 1024;
/// Deepest nesting of lists and maps; a plan needs about 6.
pub const MAX_DEPTH: usize = 32;

/// A limit the text breaks: where (YAML line, when known) and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Breach {
    pub line: Option<usize>,
    pub message: String,
    /// Past the depth limit: then even mapping lines to paths would cost
    /// the square of the depth, so the error names the line only.
    pub too_deep: bool,
}

pub fn check_text_size(len: usize) -> Result<(), Breach> {
    if len > MAX_PLAN_BYTES {
        return Err(Breach {
            line: None,
            message: format!("the plan is {len} bytes; plans may be at most {MAX_PLAN_BYTES} bytes (1 MiB)"),
            too_deep: false,
        });
    }
    Ok(())
}

/// Walks every document of `text` without building it. A syntax error is
/// left to the loader, which reports it with its own message.
pub fn check_yaml(text: &str) -> Result<(), Breach> {
    let mut meter = YamlMeter::default();
    let _ = Parser::new_from_str(text).load(&mut meter, true);
    meter.breach.map_or(Ok(()), Err)
}

/// Size of a node as it would be built: values, scalar bytes, and height
/// (1 for a scalar).
#[derive(Debug, Clone, Copy, Default)]
struct Size {
    nodes: u64,
    bytes: u64,
    height: usize,
}

impl Size {
    fn add_child(&mut self, child: Size) {
        self.nodes = self.nodes.saturating_add(child.nodes);
        self.bytes = self.bytes.saturating_add(child.bytes);
        self.height = self.height.max(child.height.saturating_add(1));
    }
}

#[derive(Default)]
struct YamlMeter {
    /// Open lists and maps: their anchor id (0 for none) and size so far.
    open: Vec<(usize, Size)>,
    /// Anchor id → the size of the node it names (what an alias copies).
    anchors: std::collections::HashMap<usize, Size>,
    total: Size,
    breach: Option<Breach>,
}

impl YamlMeter {
    /// A node is complete: count it where it sits, remember it if anchored.
    fn close(&mut self, anchor: usize, size: Size, line: usize) {
        if anchor != 0 {
            self.anchors.insert(anchor, size);
        }
        if let Some((_, parent)) = self.open.last_mut() {
            parent.add_child(size);
        }
        self.check(line, self.open.len().saturating_add(size.height));
    }

    fn check(&mut self, line: usize, depth: usize) {
        if self.breach.is_some() {
            return;
        }
        let too_deep = depth > MAX_DEPTH;
        let message = if self.total.nodes > MAX_NODES {
            format!("the plan would have more than {MAX_NODES} values once its aliases (`*name`) are expanded; plans may have at most {MAX_NODES}")
        } else if self.total.bytes > MAX_EXPANDED_BYTES {
            format!("the plan's text would be more than {MAX_EXPANDED_BYTES} bytes (4 MiB) once its aliases (`*name`) are expanded")
        } else if too_deep {
            format!("lists and maps are nested more than {MAX_DEPTH} deep; plans may nest at most {MAX_DEPTH}")
        } else {
            return;
        };
        self.breach = Some(Breach { line: Some(line), message, too_deep });
    }

    fn count(&mut self, size: Size) {
        self.total.nodes = self.total.nodes.saturating_add(size.nodes);
        self.total.bytes = self.total.bytes.saturating_add(size.bytes);
    }
}

impl MarkedEventReceiver for YamlMeter {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line();
        match ev {
            Event::Scalar(value, _, anchor, _) => {
                let size = Size { nodes: 1, bytes: value.len() as u64, height: 0 };
                self.count(size);
                self.close(anchor, size, line);
            }
            Event::Alias(anchor) => {
                // An alias to an unknown or still open node is not copied.
                let size = self.anchors.get(&anchor).copied().unwrap_or(Size { nodes: 1, bytes: 0, height: 0 });
                self.count(size);
                self.close(0, size, line);
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                let size = Size { nodes: 1, bytes: 0, height: 0 };
                self.count(size);
                self.open.push((anchor, size));
                self.check(line, self.open.len());
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((anchor, size)) = self.open.pop() {
                    self.close(anchor, size, line);
                }
            }
            _ => {}
        }
    }
}

/// Depth and size of a tree read from TOML or JSON (no aliases there; their
/// parsers already stop far below the stack's limit). `Err((field path,
/// message))` at the first place past a limit.
pub fn check_tree(table: &config::Map<String, config::Value>) -> Result<(), (String, String)> {
    let mut stack: Vec<(&config::Value, usize, String)> = table.iter().map(|(k, v)| (v, 1, k.clone())).collect();
    let mut nodes = stack.len() as u64;
    while let Some((value, depth, path)) = stack.pop() {
        if depth > MAX_DEPTH {
            return Err((path, format!("lists and maps are nested more than {MAX_DEPTH} deep; plans may nest at most {MAX_DEPTH}")));
        }
        let before = stack.len();
        match &value.kind {
            config::ValueKind::Table(map) => stack.extend(map.iter().map(|(k, v)| (v, depth + 1, format!("{path}.{k}")))),
            config::ValueKind::Array(items) => stack.extend(items.iter().enumerate().map(|(i, v)| (v, depth + 1, format!("{path}[{i}]")))),
            _ => {}
        }
        nodes += (stack.len() - before) as u64;
        if nodes > MAX_NODES {
            return Err((path, format!("the plan has more than {MAX_NODES} values; plans may have at most {MAX_NODES}")));
        }
    }
    Ok(())
}

/// Most phases, steps, SLOs and faults a plan may list.
pub const MAX_PHASES: usize = 1_000;
pub const MAX_STEPS: usize = 1_000;
pub const MAX_SLOS: usize = 1_000;
pub const MAX_FAULTS: usize = 256;
/// Most headers of one step, and the longest header line (name and value).
pub const MAX_HEADERS: usize = 100;
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
/// Longest request body (each request's bytes are serialized once per step
/// and kept by every worker).
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// Highest fleet-wide arrival rate a plan may ask for: 10 million a second
/// is a hundred agents at their busiest; beyond it a plan is a typo (`1e12/s`).
pub const MAX_RATE: f64 = 10_000_000.0;
/// Most connections a closed phase may keep busy, fleet-wide.
pub const MAX_CONCURRENCY: u32 = 1_000_000;
