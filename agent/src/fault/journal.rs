//! The on-disk journal of applied faults: an append-only file of JSON lines,
//! fsynced before a fault is applied, holding the exact revert actions. If
//! the agent dies mid-fault, the next start reads what was applied and never
//! reverted, and reverts it.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::action::Action;
use super::procs::ProcRef;

/// A fault about to be applied, with everything needed to undo it without
/// the plan or the coordinator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// `run_id/fault_name`: unique per fault application.
    pub id: String,
    pub run_id: String,
    pub fault: String,
    pub kind: String,
    pub revert: Vec<Action>,
    /// When the fault must be gone at the latest (unix ms): window end + grace.
    pub deadline_unix_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Record {
    Apply(Entry),
    /// A helper process started for the fault (pressure), to kill after a crash.
    Spawned { id: String, tag: String, pgid: i32 },
    /// The exact processes a process fault signals, written before the signal.
    Signalled { id: String, tag: String, procs: Vec<ProcRef> },
    Reverted { id: String },
}

/// What recovery needs of a fault left applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    pub entry: Entry,
    pub spawned: Vec<(String, i32)>,
    /// Processes a process fault signalled, by tag, to resume exactly those.
    pub signalled: Vec<(String, Vec<ProcRef>)>,
}

pub struct Journal {
    path: PathBuf,
}

impl Journal {
    /// Opens (creating if needed) the journal in `dir`.
    pub fn open(dir: &Path) -> std::io::Result<Journal> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("faults.journal");
        if !path.exists() {
            File::create(&path)?.sync_all()?;
            // The new file's directory entry must be durable too.
            File::open(dir)?.sync_all()?;
        }
        Ok(Journal { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn append(&self, record: &Record) -> std::io::Result<()> {
        let mut line = serde_json::to_string(record).expect("records serialize");
        line.push('\n');
        let mut f = OpenOptions::new().append(true).open(&self.path)?;
        f.write_all(line.as_bytes())?;
        f.sync_data()
    }

    /// Written and fsynced BEFORE the fault is applied.
    pub fn record_apply(&self, entry: &Entry) -> std::io::Result<()> {
        self.append(&Record::Apply(entry.clone()))
    }

    pub fn record_spawned(&self, id: &str, tag: &str, pgid: i32) -> std::io::Result<()> {
        self.append(&Record::Spawned { id: id.to_string(), tag: tag.to_string(), pgid })
    }

    pub fn record_signalled(&self, id: &str, tag: &str, procs: &[ProcRef]) -> std::io::Result<()> {
        self.append(&Record::Signalled { id: id.to_string(), tag: tag.to_string(), procs: procs.to_vec() })
    }

    pub fn record_reverted(&self, id: &str) -> std::io::Result<()> {
        self.append(&Record::Reverted { id: id.to_string() })
    }

    /// Faults applied and not (yet) known to be reverted, oldest first. A
    /// torn last line (crash mid-write) is ignored: its fault was never applied.
    pub fn pending(&self) -> std::io::Result<Vec<Pending>> {
        let mut pending: Vec<Pending> = Vec::new();
        for line in BufReader::new(File::open(&self.path)?).lines() {
            let Ok(record) = serde_json::from_str::<Record>(&line?) else { continue };
            match record {
                Record::Apply(entry) => {
                    pending.retain(|p| p.entry.id != entry.id);
                    pending.push(Pending { entry, spawned: Vec::new(), signalled: Vec::new() });
                }
                Record::Spawned { id, tag, pgid } => {
                    if let Some(p) = pending.iter_mut().find(|p| p.entry.id == id) {
                        p.spawned.push((tag, pgid));
                    }
                }
                Record::Signalled { id, tag, procs } => {
                    if let Some(p) = pending.iter_mut().find(|p| p.entry.id == id) {
                        p.signalled.push((tag, procs));
                    }
                }
                Record::Reverted { id } => pending.retain(|p| p.entry.id != id),
            }
        }
        Ok(pending)
    }

    /// Rewrites the journal with only the pending faults, atomically.
    pub fn compact(&self) -> std::io::Result<()> {
        let pending = self.pending()?;
        let tmp = self.path.with_extension("journal.tmp");
        let mut f = File::create(&tmp)?;
        for p in &pending {
            writeln!(f, "{}", serde_json::to_string(&Record::Apply(p.entry.clone())).expect("records serialize"))?;
            for (tag, pgid) in &p.spawned {
                let r = Record::Spawned { id: p.entry.id.clone(), tag: tag.clone(), pgid: *pgid };
                writeln!(f, "{}", serde_json::to_string(&r).expect("records serialize"))?;
            }
            for (tag, procs) in &p.signalled {
                let r = Record::Signalled { id: p.entry.id.clone(), tag: tag.clone(), procs: procs.clone() };
                writeln!(f, "{}", serde_json::to_string(&r).expect("records serialize"))?;
            }
        }
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str) -> Entry {
        Entry {
            id: id.into(),
            run_id: "r".into(),
            fault: id.into(),
            kind: "partition".into(),
            revert: vec![Action::run(&["nft", "delete", "table", "inet", "stampede_x"])],
            deadline_unix_ms: 1,
        }
    }

    #[test]
    fn pending_is_applied_minus_reverted_and_survives_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        j.record_apply(&entry("a")).unwrap();
        j.record_apply(&entry("b")).unwrap();
        j.record_spawned("b", "tag", 4242).unwrap();
        j.record_reverted("a").unwrap();
        let p = j.pending().unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].entry, entry("b"));
        assert_eq!(p[0].spawned, vec![("tag".to_string(), 4242)]);
        j.compact().unwrap();
        let again = Journal::open(dir.path()).unwrap();
        assert_eq!(again.pending().unwrap(), p);
        again.record_reverted("b").unwrap();
        assert!(again.pending().unwrap().is_empty());
    }

    #[test]
    fn a_torn_last_line_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        j.record_apply(&entry("a")).unwrap();
        OpenOptions::new().append(true).open(j.path()).unwrap().write_all(b"{\"op\":\"apply\",\"id\":\"b\"").unwrap();
        assert_eq!(j.pending().unwrap().len(), 1);
    }
}
