//! The run log: `runs/slurm.jsonl` in the store, one JSON record per line, appended
//! and fsynced at every submission (and at every job end, for the record). A head that
//! was killed reads it back to adopt the jobs still queued or running instead of
//! submitting their steps again. Only one head at a time writes it (`runs/slurm.head.lock`).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::store::Key;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Record {
    /// A job (or array task) was submitted to build `key`.
    Submit {
        key: Key,
        step: String,
        /// The job ref: `123`, or `123_4` for task 4 of array 123.
        job: String,
        attempt: u32,
        unix: f64,
        /// The job's log file.
        log: String,
        /// The job name given to sbatch.
        #[serde(default)]
        name: String,
    },
    /// The head saw the job end.
    End {
        key: Key,
        job: String,
        state: String,
        unix: f64,
    },
}

/// A key's latest submission, as the run log has it.
#[derive(Debug, Clone, PartialEq)]
pub struct Submitted {
    pub job: String,
    pub attempt: u32,
    pub log: String,
    pub name: String,
}

pub struct RunLog {
    path: PathBuf,
}

impl RunLog {
    pub fn new(store_root: &Path) -> RunLog {
        RunLog {
            path: store_root.join("runs").join("slurm.jsonl"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends records durably (one write per call, then fsync), so that what sbatch
    /// accepted is on disk before the head does anything else.
    pub fn append(&self, records: &[Record]) -> std::io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut buf = String::new();
        for r in records {
            buf.push_str(&serde_json::to_string(r).expect("record serializes"));
            buf.push('\n');
        }
        let mut f = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&self.path)?;
        // A head killed mid-write leaves a torn last line: start on a fresh line so the
        // next record is not glued to it.
        if ends_without_newline(&mut f)? {
            buf.insert(0, '\n');
        }
        f.write_all(buf.as_bytes())?;
        f.sync_data()
    }

    /// Every record, oldest first. A torn last line (a head killed mid-write) is skipped.
    pub fn read(&self) -> Vec<Record> {
        let Ok(text) = std::fs::read_to_string(&self.path) else {
            return vec![];
        };
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Each key's latest submission whose end no head saw (queued, running, or
    /// ended unwatched), newest first.
    pub fn unended_submissions(&self) -> Vec<(Key, Submitted)> {
        let mut open: std::collections::HashMap<Key, (Submitted, f64)> = std::collections::HashMap::new();
        for r in self.read() {
            if let Record::End { key, job, .. } = &r {
                if open.get(key).is_some_and(|(s, _)| s.job == *job) {
                    open.remove(key);
                }
            } else if let Some((key, sub, unix)) = submitted(r) {
                open.insert(key, (sub, unix));
            }
        }
        let mut out: Vec<(Key, Submitted, f64)> = open.into_iter().map(|(k, (s, t))| (k, s, t)).collect();
        out.sort_by(|a, b| b.2.total_cmp(&a.2));
        out.into_iter().map(|(k, s, _)| (k, s)).collect()
    }

    /// The latest submission of each key.
    pub fn latest_submissions(&self) -> std::collections::HashMap<Key, Submitted> {
        self.read()
            .into_iter()
            .filter_map(submitted)
            .map(|(key, sub, _)| (key, sub))
            .collect()
    }
}

/// A submission record's key, what was submitted, and when.
fn submitted(r: Record) -> Option<(Key, Submitted, f64)> {
    match r {
        Record::Submit {
            key,
            job,
            attempt,
            unix,
            log,
            name,
            ..
        } => Some((
            key,
            Submitted {
                job,
                attempt,
                log,
                name,
            },
            unix,
        )),
        Record::End { .. } => None,
    }
}

fn ends_without_newline(f: &mut std::fs::File) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(false);
    }
    f.seek(SeekFrom::Start(len - 1))?;
    let mut last = [0u8; 1];
    f.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_submission_wins_and_a_torn_line_is_ignored() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("runs")).unwrap();
        let log = RunLog::new(t.path());
        let k = Key([1; 32]);
        let sub = |job: &str, attempt| Record::Submit {
            key: k,
            step: "expert:a".into(),
            job: job.into(),
            attempt,
            unix: 0.0,
            log: String::new(),
            name: "gp".into(),
        };
        log.append(&[sub("10", 1)]).unwrap();
        log.append(&[sub("11_2", 2)]).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(log.path())
            .unwrap()
            .write_all(b"{\"event\":\"sub")
            .unwrap();
        assert_eq!(log.read().len(), 2);
        assert_eq!(log.latest_submissions()[&k].job, "11_2");
        assert_eq!(log.latest_submissions()[&k].attempt, 2);
        log.append(&[sub("12", 3)]).unwrap();
        assert_eq!(log.read().len(), 3, "a record after a torn line is kept");
        assert_eq!(log.latest_submissions()[&k].job, "12");
    }

    #[test]
    fn unended_submissions_are_the_latest_whose_end_no_head_saw_newest_first() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("runs")).unwrap();
        let log = RunLog::new(t.path());
        let sub = |k: u8, job: &str, unix: f64| Record::Submit {
            key: Key([k; 32]),
            step: "expert:a".into(),
            job: job.into(),
            attempt: 1,
            unix,
            log: String::new(),
            name: "gp".into(),
        };
        let end = |k: u8, job: &str| Record::End {
            key: Key([k; 32]),
            job: job.into(),
            state: "COMPLETED".into(),
            unix: 9.0,
        };
        log.append(&[
            sub(1, "10", 1.0),
            end(1, "10"),
            sub(2, "11", 2.0),
            sub(3, "12", 3.0),
        ])
        .unwrap();
        // An end of an earlier job of key 2 does not close its later submission.
        log.append(&[sub(2, "13", 4.0), end(2, "11")]).unwrap();
        let jobs: Vec<String> = log
            .unended_submissions()
            .into_iter()
            .map(|(_, s)| s.job)
            .collect();
        assert_eq!(jobs, ["13", "12"]);
    }
}
