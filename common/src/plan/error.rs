use std::fmt;
use std::path::PathBuf;

/// A plan that cannot run. Names the file, the line when known, and the
/// field path (`phases[2].load.rate`), so the user can go straight to it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct PlanError {
    pub file: PathBuf,
    pub line: Option<usize>,
    /// Dotted field path with `[i]` for list items; empty for the whole file.
    pub path: String,
    pub message: String,
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The file name may come from a client (SubmitRun's plan_name).
        write!(f, "{}", printable(&self.file.display().to_string()))?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if self.path.is_empty() {
            write!(f, ": {}", printable(&self.message))
        } else {
            write!(f, ": {}: {}", printable(&self.path), printable(&self.message))
        }
    }
}

/// `text` with every control character escaped (`\r`, `\n`, `\u{1b}`):
/// errors quote what the user wrote, and a raw CR/LF or escape sequence
/// would forge lines in a terminal or a log (issue 8, item 13). Applying it
/// twice changes nothing.
pub fn printable(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_string();
    }
    text.chars().fold(String::with_capacity(text.len() + 8), |mut out, c| {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
        out
    })
}
