//! Job scripts. A job never re-reads the manifest: its script calls this same goosepipe
//! binary as `goosepipe exec --store DIR --key KEY`, which reads the frozen step spec
//! (`recipes/KEY.json`) from the store. An array's script names a key list file
//! instead, indexed by the task id.

use std::path::{Path, PathBuf};

use crate::store::Key;
use crate::store::fsutil::write_atomic;

/// Where the head keeps scripts, key lists and job logs: inside the store, so they are
/// on the shared file system the jobs see.
pub fn slurm_dir(store_root: &Path) -> PathBuf {
    store_root.join("runs").join("slurm")
}

/// Quotes a word for /bin/sh.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// What every job's `goosepipe exec` is given besides its key.
#[derive(Debug, Clone)]
pub struct ExecArgs {
    /// The goosepipe binary (absolute; the head's own executable by default).
    pub program: PathBuf,
    /// The store (absolute).
    pub store: PathBuf,
    pub device: String,
    /// The manifest's lockfile, for pinned hub resolutions (absolute).
    pub lockfile: Option<PathBuf>,
    pub locked: bool,
}

impl ExecArgs {
    fn command(&self) -> String {
        let mut c = format!(
            "exec {} exec --store {} --device {}",
            sh_quote(&self.program.to_string_lossy()),
            sh_quote(&self.store.to_string_lossy()),
            sh_quote(&self.device)
        );
        if let Some(l) = &self.lockfile {
            c.push_str(&format!(" --lockfile {}", sh_quote(&l.to_string_lossy())));
        }
        if self.locked {
            c.push_str(" --locked");
        }
        c
    }
}

/// Writes the script (and for arrays the key list) of job `name`; returns the script
/// path and the `--output` pattern.
pub fn write_job(
    store_root: &Path,
    name: &str,
    keys: &[Key],
    steps: &[String],
    args: &ExecArgs,
) -> std::io::Result<(PathBuf, PathBuf)> {
    let dir = slurm_dir(store_root);
    std::fs::create_dir_all(dir.join("jobs"))?;
    std::fs::create_dir_all(dir.join("logs"))?;
    let script = dir.join("jobs").join(format!("{name}.sh"));
    let mut text = String::from("#!/bin/sh\n# Written by the goosepipe head. Builds:\n");
    for (k, s) in keys.iter().zip(steps) {
        text.push_str(&format!("#   {s} {}\n", k.short()));
    }
    let log = if keys.len() > 1 {
        let list = dir.join("jobs").join(format!("{name}.keys"));
        let lines: String = keys.iter().map(|k| format!("{}\n", k.hex())).collect();
        write_atomic(&list, lines.as_bytes())?;
        text.push_str(&format!(
            "{} --keys-file {} --index \"$SLURM_ARRAY_TASK_ID\"\n",
            args.command(),
            sh_quote(&list.to_string_lossy())
        ));
        dir.join("logs").join(format!("{name}-%A_%a.out"))
    } else {
        text.push_str(&format!("{} --key {}\n", args.command(), keys[0].hex()));
        dir.join("logs").join(format!("{name}-%j.out"))
    };
    write_atomic(&script, text.as_bytes())?;
    Ok((script, log))
}

/// The log file of one job ref, from the `--output` pattern.
pub fn log_of(pattern: &Path, job_ref: &str) -> PathBuf {
    let p = pattern.to_string_lossy();
    let (job, task) = job_ref.split_once('_').unwrap_or((job_ref, ""));
    PathBuf::from(p.replace("%A", job).replace("%a", task).replace("%j", job))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_and_log_names() {
        assert_eq!(sh_quote("a b'c"), r"'a b'\''c'");
        assert_eq!(
            log_of(Path::new("/s/x-%A_%a.out"), "12_3"),
            PathBuf::from("/s/x-12_3.out")
        );
        assert_eq!(
            log_of(Path::new("/s/x-%j.out"), "12"),
            PathBuf::from("/s/x-12.out")
        );
    }

    #[test]
    fn array_script_reads_its_key_by_task_index() {
        let t = tempfile::tempdir().unwrap();
        let args = ExecArgs {
            program: "/bin/goosepipe".into(),
            store: t.path().to_path_buf(),
            device: "cpu".into(),
            lockfile: None,
            locked: false,
        };
        let keys = [Key([1; 32]), Key([2; 32])];
        let steps = ["expert:a".to_string(), "expert:b".to_string()];
        let (script, log) = write_job(t.path(), "gp-expert-x2", &keys, &steps, &args).unwrap();
        let text = std::fs::read_to_string(script).unwrap();
        assert!(
            text.contains("--keys-file") && text.contains("$SLURM_ARRAY_TASK_ID"),
            "{text}"
        );
        assert!(log.to_string_lossy().ends_with("gp-expert-x2-%A_%a.out"));
        let list = std::fs::read_to_string(slurm_dir(t.path()).join("jobs/gp-expert-x2.keys")).unwrap();
        assert_eq!(list.lines().nth(1), Some(keys[1].hex().as_str()));
    }
}
