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
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if self.path.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.path, self.message)
        }
    }
}
