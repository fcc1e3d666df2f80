//! The standing coordinator's run store (`stampede coordinator --data DIR`).
//!
//! Every run submitted to a standing coordinator is kept when it ends, in
//! `DIR/runs/<UTC start, 20240131T120000Z>-<run id>/` with `report.json`,
//! `report.md`, `report.html`, `junit.xml`, the plan as submitted and
//! `meta.json` (the run id, its start, the plan's name and who submitted it:
//! certificate role and name, or "insecure", and address) — so a nightly CI job
//! whose runner died, or an operator who hung up, still finds the result, and
//! `ls DIR/runs` lists the runs in time order.
//!
//! A run is written into `DIR/runs/.tmp-<name>/`, every file and the folder
//! fsynced, then renamed into place and the parent fsynced: a crash leaves
//! either the whole run or a `.tmp-*` folder, which the next start removes.
//!
//! Retention (`--keep-runs N`): after each save, the oldest run folders
//! beyond the newest N are removed, so a standing coordinator fed by a
//! nightly job does not fill its disk. Only folders named the way the store
//! names them are counted or removed: whatever else an operator put in
//! `DIR/runs` is left alone.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;

/// Where a run's files go inside the store.
pub const RUNS: &str = "runs";
const TMP_PREFIX: &str = ".tmp-";
/// The files the store writes beside the plan, which a plan name must not replace.
const STORE_FILES: [&str; 5] = ["report.json", "report.md", "report.html", "junit.xml", "meta.json"];

/// One run's files, ready to be stored.
pub struct StoredRun<'a> {
    pub run_id: &'a str,
    /// RFC 3339, as in `report.json`'s `started_at`.
    pub started_at: &'a str,
    pub report_json: &'a str,
    pub report_md: &'a str,
    pub report_html: &'a str,
    pub junit_xml: &'a str,
    /// The plan's file name as the client sent it, and its text.
    pub plan_name: &'a str,
    pub plan_text: &'a str,
    /// Who submitted it (`caller::Caller::to_json`).
    pub submitted_by: &'a serde_json::Value,
}

#[derive(Debug, Clone)]
pub struct RunStore {
    runs: PathBuf,
    /// How many runs to keep; `None` keeps them all.
    keep: Option<usize>,
}

impl RunStore {
    /// Opens the store at `dir`, creating `dir/runs`; fails unless a file can
    /// be written there, so a wrong `--data` stops the coordinator at start-up
    /// rather than after an hour-long run. Removes the `.tmp-*` folders a
    /// crash left half-written.
    pub fn open(dir: &Path, keep: Option<usize>) -> anyhow::Result<RunStore> {
        let runs = dir.join(RUNS);
        fs::create_dir_all(&runs).with_context(|| format!("creating the run store {}", runs.display()))?;
        let probe = runs.join(format!("{TMP_PREFIX}probe-{}", std::process::id()));
        File::create(&probe).and_then(|mut f| f.write_all(b"ok")).with_context(|| format!("the run store {} is not writable", runs.display()))?;
        fs::remove_file(&probe).with_context(|| format!("removing {}", probe.display()))?;
        for entry in fs::read_dir(&runs)?.flatten() {
            let name = entry.file_name();
            if name.to_string_lossy().starts_with(TMP_PREFIX) {
                match fs::remove_dir_all(entry.path()).or_else(|_| fs::remove_file(entry.path())) {
                    Ok(()) => tracing::warn!(message = "Removed a run left half-written by a crash.", path = %entry.path().display()),
                    Err(e) => tracing::warn!(message = "Cannot remove a half-written run.", path = %entry.path().display(), error = %e),
                }
            }
        }
        Ok(RunStore { runs, keep })
    }

    pub fn runs_dir(&self) -> &Path {
        &self.runs
    }

    /// Writes `run` atomically, then applies the retention; returns the
    /// run's folder.
    pub fn save(&self, run: &StoredRun<'_>) -> io::Result<PathBuf> {
        let name = format!("{}-{}", compact_utc(run.started_at), sanitize(run.run_id));
        let tmp = self.runs.join(format!("{TMP_PREFIX}{name}"));
        let done = self.runs.join(&name);
        if tmp.exists() {
            fs::remove_dir_all(&tmp)?;
        }
        fs::create_dir(&tmp)?;
        let written = (|| {
            write_synced(&tmp.join("report.json"), format!("{}\n", run.report_json).as_bytes())?;
            write_synced(&tmp.join("report.md"), run.report_md.as_bytes())?;
            write_synced(&tmp.join("report.html"), run.report_html.as_bytes())?;
            write_synced(&tmp.join("junit.xml"), run.junit_xml.as_bytes())?;
            write_synced(&tmp.join(plan_file_name(run.plan_name)), run.plan_text.as_bytes())?;
            let meta = serde_json::json!({ "run_id": run.run_id, "started_at": run.started_at, "plan": run.plan_name, "submitted_by": run.submitted_by });
            write_synced(&tmp.join("meta.json"), format!("{meta:#}\n").as_bytes())?;
            File::open(&tmp)?.sync_all()?;
            fs::rename(&tmp, &done)?;
            File::open(&self.runs)?.sync_all()
        })();
        if written.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        written?;
        self.prune(&name);
        Ok(done)
    }

    /// Removes the oldest stored runs beyond `keep`, never `just_saved` (a
    /// clock stepped back would sort it first): the client is told where it
    /// is. A folder that cannot be removed is logged and skipped: retention
    /// must never fail a run whose reports were just saved.
    fn prune(&self, just_saved: &str) {
        let Some(keep) = self.keep else { return };
        let mut stored: Vec<String> = match fs::read_dir(&self.runs) {
            Ok(entries) => entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|name| is_run_folder(name) && name != just_saved)
                .collect(),
            Err(e) => {
                tracing::warn!(message = "Cannot list the run store for retention.", path = %self.runs.display(), error = %e);
                return;
            }
        };
        // Names start with the UTC start time: name order is time order.
        stored.sort();
        // `keep` counts the run just saved, which is not in `stored`.
        let excess = (stored.len() + 1).saturating_sub(keep);
        for name in &stored[..excess] {
            let path = self.runs.join(name);
            match fs::remove_dir_all(&path) {
                Ok(()) => tracing::info!(message = "Removed an old run (--keep-runs).", path = %path.display(), keep),
                Err(e) => tracing::warn!(message = "Cannot remove an old run.", path = %path.display(), error = %e),
            }
        }
    }
}

/// A folder [`RunStore::save`] made: `20240131T120000Z-<id>` or
/// `unknown-time-<id>`.
fn is_run_folder(name: &str) -> bool {
    let b = name.as_bytes();
    let timed = b.len() > 17
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && &b[15..17] == b"Z-";
    timed || name.starts_with("unknown-time-")
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// `2024-01-31T12:00:00.123Z` → `20240131T120000Z` (no `:` in folder names).
fn compact_utc(rfc3339: &str) -> String {
    let seconds: String = rfc3339.chars().take(19).filter(|c| c.is_ascii_alphanumeric()).collect();
    if seconds.len() == 15 {
        format!("{seconds}Z")
    } else {
        "unknown-time".into()
    }
}

/// Run ids are UUIDs; anything else is reduced to a safe folder name.
fn sanitize(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect()
}

/// The plan keeps its name (as `--out` does) unless that name is a path, is
/// empty or would overwrite a report: the client chooses it, the store must
/// not let it escape the run's folder.
fn plan_file_name(sent: &str) -> String {
    let base = Path::new(sent).file_name().and_then(|n| n.to_str()).unwrap_or("");
    let safe = !base.is_empty() && base == sent && !base.starts_with('.') && !STORE_FILES.contains(&base);
    if safe {
        base.to_string()
    } else {
        "plan".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static NOBODY: serde_json::Value = serde_json::Value::Null;

    fn run<'a>(plan_name: &'a str) -> StoredRun<'a> {
        StoredRun {
            run_id: "0f1e2d3c-aaaa-bbbb-cccc-000000000001",
            started_at: "2024-01-31T12:34:56.789Z",
            report_json: "{}",
            report_md: "# r\n",
            report_html: "<html></html>",
            junit_xml: "<testsuite/>",
            plan_name,
            plan_text: "name: x\n",
            submitted_by: &NOBODY,
        }
    }

    #[test]
    fn a_run_is_stored_whole_under_its_start_and_id() {
        let dir = tempfile::tempdir().unwrap();
        let store = RunStore::open(dir.path(), None).unwrap();
        let at = store.save(&run("nightly.yaml")).unwrap();
        assert_eq!(at, dir.path().join("runs/20240131T123456Z-0f1e2d3c-aaaa-bbbb-cccc-000000000001"));
        for f in ["report.json", "report.md", "report.html", "junit.xml", "meta.json", "nightly.yaml"] {
            assert!(at.join(f).is_file(), "{f}");
        }
        assert_eq!(fs::read_to_string(at.join("report.json")).unwrap(), "{}\n");
        let names: Vec<_> = fs::read_dir(dir.path().join(RUNS)).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "no temp folder left: {names:?}");
    }

    #[test]
    fn a_plan_name_cannot_escape_or_overwrite() {
        assert_eq!(plan_file_name("../../etc/passwd"), "plan");
        assert_eq!(plan_file_name("/abs.yaml"), "plan");
        assert_eq!(plan_file_name("report.json"), "plan");
        assert_eq!(plan_file_name(".."), "plan");
        assert_eq!(plan_file_name(""), "plan");
        assert_eq!(plan_file_name("soak.toml"), "soak.toml");
    }

    #[test]
    fn opening_removes_half_written_runs() {
        let dir = tempfile::tempdir().unwrap();
        let half = dir.path().join(RUNS).join(".tmp-20240131T123456Z-x");
        fs::create_dir_all(&half).unwrap();
        fs::write(half.join("report.json"), "{").unwrap();
        RunStore::open(dir.path(), None).unwrap();
        assert!(!half.exists());
    }

    #[test]
    fn an_unwritable_store_is_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        fs::write(&file, "").unwrap();
        let err = RunStore::open(&file, None).unwrap_err();
        assert!(format!("{err:#}").contains("run store"), "{err:#}");
    }

    #[test]
    fn retention_keeps_the_newest_runs_and_nothing_else_is_touched() {
        let dir = tempfile::tempdir().unwrap();
        let store = RunStore::open(dir.path(), Some(2)).unwrap();
        let runs = dir.path().join(RUNS);
        // An operator's notes and folder, which retention must not count or remove.
        fs::write(runs.join("README"), "mine").unwrap();
        fs::create_dir(runs.join("keep-me")).unwrap();
        let starts = ["2024-01-31T12:00:03Z", "2024-01-31T12:00:01Z", "2024-01-31T12:00:04Z", "2024-01-31T12:00:02Z"];
        for (i, started_at) in starts.iter().enumerate() {
            let id = format!("run-{i}");
            store.save(&StoredRun { run_id: &id, started_at, ..run("p.yaml") }).unwrap();
        }
        let mut left: Vec<String> = fs::read_dir(&runs).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        // The latest by start time and the run just saved (its clock may have
        // stepped back), whatever order the others were saved in.
        assert_eq!(left, ["20240131T120002Z-run-3", "20240131T120004Z-run-2", "README", "keep-me"]);
    }

    #[test]
    fn run_folders_are_told_from_other_folders() {
        assert!(is_run_folder("20240131T123456Z-0f1e2d3c"));
        assert!(is_run_folder("unknown-time-abc"));
        assert!(!is_run_folder("20240131T123456Z"));
        assert!(!is_run_folder("2024013xT123456Z-a"));
        assert!(!is_run_folder(".tmp-20240131T123456Z-a"));
        assert!(!is_run_folder("backups"));
    }
}
