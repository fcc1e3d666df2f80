//! nftables for the tests that apply a real partition (`crash_drills.rs`,
//! `trust_signals.rs`): whether they can run here, the stampede tables
//! that exist, and a guard that deletes a test's table whatever happens.

use std::process::Command;

use stampede_agent::fault::nft::stampede_tables;

/// Why a test that needs nftables cannot run here, if it cannot.
pub fn skip_reason() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().next().map(str::to_string));
    if uid.as_deref() != Some("0") {
        return Some("not root: a partition needs nftables".into());
    }
    nft_tables().err().map(|e| format!("nftables is not usable: {e}"))
}

/// The stampede tables that exist now.
pub fn nft_tables() -> Result<Vec<String>, String> {
    let out = Command::new("nft").args(["list", "tables"]).output().map_err(|e| format!("nft: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    Ok(stampede_tables(&String::from_utf8_lossy(&out.stdout)))
}

/// Deletes this test's table (`inet NAME`) on drop, whatever happened.
pub struct TableGuard(pub String);

impl TableGuard {
    pub fn exists(&self) -> bool {
        nft_tables().expect("nft list tables").contains(&self.0)
    }
}

impl Drop for TableGuard {
    fn drop(&mut self) {
        let _ = Command::new("nft").args(["delete", "table", "inet", &self.0]).output();
    }
}
