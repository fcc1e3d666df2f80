//! The on-disk journal of applied faults: an append-only file of JSON lines,
//! fsynced before a fault is applied, holding the exact revert actions. If
//! the agent dies mid-fault, the next start reads what was applied and never
//! reverted, and reverts it.
//!
//! A journal has one owner at a time: the agent that claimed it holds an
//! exclusive `flock` on `faults.journal.lock` beside it for as long as it
//! runs, and the kernel drops the lock when that process dies, SIGKILL
//! included. So "left behind" means "no process holds it": an agent that
//! starts while another (of a second `stampede run --local-agents` on the
//! same machine, both defaulting to `$TMPDIR/stampede-state/local-0`) is
//! live never reads that one's live faults as a crash to recover. It claims
//! the next free sibling directory (`local-0-2`, `local-0-3`, …) instead,
//! and recovers the siblings nobody holds.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
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

/// `dir` for k = 1, else `dir-k`.
fn sibling(dir: &Path, k: usize) -> PathBuf {
    if k == 1 {
        return dir.to_path_buf();
    }
    let name = dir.file_name().map_or_else(|| "state".into(), |n| n.to_string_lossy().into_owned());
    dir.with_file_name(format!("{name}-{k}"))
}

/// The exclusive lock on `dir`'s journal, or None while another open file
/// (another process, or another journal of this one) holds it.
fn try_lock(dir: &Path) -> std::io::Result<Option<Flock<File>>> {
    std::fs::create_dir_all(dir)?;
    let file = OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(LOCK_FILE))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(e.into()),
    }
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
    /// The directory asked for; `path` may be in a sibling of it (`claim`).
    asked: PathBuf,
    /// The claim's lock, held for the journal's life (None: opened without
    /// claiming, by a watchdog, the sweep or a test).
    _owner: Option<Flock<File>>,
}

/// How many directories `claim` tries: `dir`, then `dir-2` … `dir-16` (one
/// per agent of that name running at once on this machine).
const CLAIM_TRIES: usize = 16;
const JOURNAL_FILE: &str = "faults.journal";
const LOCK_FILE: &str = "faults.journal.lock";

impl Journal {
    /// Claims the journal in `dir` for an agent that will apply faults, or,
    /// while a live process holds that one, in the first free sibling
    /// (`dir-2`, `dir-3`, …). The returned journal's pending faults were
    /// left by a process that is gone.
    pub fn claim(dir: &Path) -> std::io::Result<Journal> {
        for k in 1..=CLAIM_TRIES {
            let candidate = sibling(dir, k);
            if let Some(owner) = try_lock(&candidate)? {
                if k > 1 {
                    tracing::info!(message = "The state directory is in use by another running agent; this agent journals its faults beside it.", busy = %dir.display(), dir = %candidate.display());
                }
                return Ok(Journal { _owner: Some(owner), asked: dir.to_path_buf(), ..Journal::open(&candidate)? });
            }
        }
        Err(std::io::Error::other(format!("{} and its {} siblings ({}-2 …) are all held by running agents", dir.display(), CLAIM_TRIES - 1, dir.display())))
    }

    /// The journals beside this one (in the directory asked for and its
    /// siblings) that no live process holds and that have faults pending:
    /// what agents that died while another held the directory left behind.
    /// Each comes claimed, so no other starting agent recovers it too.
    pub fn claim_orphans(&self) -> Vec<Journal> {
        Journal::dirs_beside(&self.asked)
            .filter(|d| d.as_path() != self.dir() && d.join(JOURNAL_FILE).exists())
            .filter_map(|d| {
                let owner = try_lock(&d).ok().flatten()?;
                let j = Journal { _owner: Some(owner), ..Journal::open(&d).ok()? };
                (!j.pending().ok()?.is_empty()).then_some(j)
            })
            .collect()
    }

    /// `dir` and the sibling directories a claim of it may fall back to.
    pub fn dirs_beside(dir: &Path) -> impl Iterator<Item = PathBuf> + '_ {
        (1..=CLAIM_TRIES).map(move |k| sibling(dir, k))
    }

    /// The directory this journal is in.
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// Opens (creating if needed) the journal in `dir`.
    pub fn open(dir: &Path) -> std::io::Result<Journal> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(JOURNAL_FILE);
        if !path.exists() {
            File::create(&path)?.sync_all()?;
            // The new file's directory entry must be durable too.
            File::open(dir)?.sync_all()?;
        }
        Ok(Journal { path, asked: dir.to_path_buf(), _owner: None })
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

    // Two local runs on one machine both ask for `…/local-0`: the second
    // must neither read the first's live faults as left behind nor write into
    // its journal; once the first is gone, what it left is recovered.
    #[test]
    fn a_live_journal_is_never_claimed_twice_and_a_dead_ones_is_recovered() {
        let root = tempfile::tempdir().unwrap();
        let asked = root.path().join("local-0");
        let first = Journal::claim(&asked).unwrap();
        assert_eq!(first.dir(), asked);
        first.record_apply(&entry("live")).unwrap();

        let second = Journal::claim(&asked).unwrap();
        assert_eq!(second.dir(), root.path().join("local-0-2"));
        assert!(second.pending().unwrap().is_empty(), "the live fault is not the second's to recover");
        assert!(second.claim_orphans().is_empty(), "a held journal is no orphan");
        second.record_apply(&entry("second")).unwrap();

        // The first process dies (its lock goes with it); the second lives on.
        drop(first);
        let third = Journal::claim(&asked).unwrap();
        assert_eq!(third.dir(), asked);
        assert_eq!(third.pending().unwrap().len(), 1, "the dead first's fault is the third's to recover");
        assert!(third.claim_orphans().is_empty(), "the second is alive");

        // Now the second dies too: the third finds what it left beside.
        drop(second);
        let orphans = third.claim_orphans();
        assert_eq!(orphans.len(), 1);
        assert_eq!(orphans[0].dir(), root.path().join("local-0-2"));
        assert_eq!(orphans[0].pending().unwrap()[0].entry, entry("second"));
        // Claimed while being recovered: nobody else starts on it.
        assert_eq!(Journal::claim(&asked).unwrap().dir(), root.path().join("local-0-3"));
    }
}
