//! Maps field paths (`phases[2].load.rate`) to the line they are written on.
//!
//! The `config` crate gives us one loader for YAML, TOML and JSON but drops
//! source positions, so for YAML (the format plans are written in) we walk
//! the document once more with yaml-rust2's marked events. For TOML and JSON
//! errors carry the field path only.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Field path → 1-based line of its value (or of its key, for the path of a
/// key that is itself wrong).
#[derive(Debug, Default)]
pub struct LineMap {
    lines: HashMap<String, usize>,
    /// Where the YAML stopped parsing, when it is not well formed.
    syntax_error: Option<usize>,
}

impl LineMap {
    pub fn from_yaml(text: &str) -> LineMap {
        let mut walker = Walker::default();
        let mut parser = Parser::new_from_str(text);
        // A syntax error is reported by the config loader itself (we only
        // keep its line); a partial map is still useful for everything before it.
        let syntax_error = parser.load(&mut walker, false).err().map(|e| e.marker().line());
        LineMap { lines: walker.lines, syntax_error }
    }

    /// The line of `path`, or of its closest ancestor that has one (the
    /// document itself, path "", for a missing top-level field).
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(&l) = self.lines.get(p) {
                return Some(l);
            }
            if p.is_empty() {
                return None;
            }
            p = p.rfind(['.', '[']).map_or("", |cut| &p[..cut]);
        }
    }

    /// The deepest field path written on `line` (for an error found by line).
    pub fn path_at(&self, line: usize) -> Option<String> {
        let on_line = self.lines.iter().filter(|&(_, &l)| l == line).map(|(p, _)| p);
        on_line.max_by_key(|p| (p.len(), p.as_str())).cloned()
    }

    /// The line where the YAML syntax error is, when there is one.
    pub fn syntax_error_line(&self) -> Option<usize> {
        self.syntax_error
    }
}

enum Frame {
    /// In a mapping: the path of the mapping, and the pending key if a key was read.
    Map { path: String, key: Option<String> },
    Seq { path: String, index: usize },
}

#[derive(Default)]
struct Walker {
    stack: Vec<Frame>,
    lines: HashMap<String, usize>,
}

impl Walker {
    /// Path of the node that starts now, and whether it is a mapping key.
    fn next_node(&mut self) -> Option<(String, bool)> {
        match self.stack.last_mut() {
            None => Some((String::new(), false)),
            Some(Frame::Seq { path, index }) => {
                let p = format!("{path}[{index}]");
                *index += 1;
                Some((p, false))
            }
            Some(Frame::Map { path, key }) => match key.take() {
                None => Some((path.clone(), true)),
                Some(k) => Some((join(path, &k), false)),
            },
        }
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

impl MarkedEventReceiver for Walker {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line();
        match ev {
            Event::Scalar(value, ..) => {
                if let Some((path, is_key)) = self.next_node() {
                    if is_key {
                        let key_path = join(&path, &value);
                        self.lines.entry(key_path).or_insert(line);
                        if let Some(Frame::Map { key, .. }) = self.stack.last_mut() {
                            *key = Some(value);
                        }
                    } else {
                        self.lines.entry(path).or_insert(line);
                    }
                }
            }
            Event::MappingStart(..) => {
                if let Some((path, _)) = self.next_node() {
                    self.lines.entry(path.clone()).or_insert(line);
                    self.stack.push(Frame::Map { path, key: None });
                }
            }
            Event::SequenceStart(..) => {
                if let Some((path, _)) = self.next_node() {
                    self.lines.entry(path.clone()).or_insert(line);
                    self.stack.push(Frame::Seq { path, index: 0 });
                }
            }
            // `*anchor` is a whole node standing for a value, a list item or
            // (rarely) a key; we do not resolve it, only keep our place.
            Event::Alias(..) => {
                if let Some((path, is_key)) = self.next_node() {
                    if is_key {
                        if let Some(Frame::Map { key, .. }) = self.stack.last_mut() {
                            *key = Some("*".to_string());
                        }
                    } else {
                        self.lines.entry(path).or_insert(line);
                    }
                }
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_lines() {
        let text = "name: x\nphases:\n  - name: a\n    load: { model: open, rate: 10/s }\n  - name: b\n    load:\n      model: closed\n";
        let m = LineMap::from_yaml(text);
        assert_eq!(m.line_of("name"), Some(1));
        assert_eq!(m.line_of("phases[0].load.rate"), Some(4));
        assert_eq!(m.line_of("phases[1].load.model"), Some(7));
        // A missing field points at its closest parent.
        assert_eq!(m.line_of("phases[1].load.concurrency"), Some(6));
        assert_eq!(m.line_of("target"), Some(1));
        assert_eq!(m.syntax_error_line(), None);
    }

    #[test]
    fn aliases_take_one_node() {
        let text = "phases:\n  - load: &l { model: open }\n    name: a\n  - load: *l\n    name: b\n";
        let m = LineMap::from_yaml(text);
        assert_eq!(m.line_of("phases[1].load"), Some(4));
        assert_eq!(m.line_of("phases[1].name"), Some(5));
    }

    #[test]
    fn syntax_errors_keep_their_line() {
        let m = LineMap::from_yaml("name: x\nphases: [a\nsteps: b\n");
        assert_eq!(m.syntax_error_line(), Some(3));
    }
}
