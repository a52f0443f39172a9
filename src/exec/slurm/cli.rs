//! The real scheduler: Slurm's command-line clients (sbatch, sacct, squeue, scontrol,
//! scancel), found on PATH and pointed at a cluster by the usual environment
//! (SLURM_CONF and friends), which the jobs inherit too.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::fit::{memory_mb, minutes};
use super::scheduler::{
    JobInfo, JobState, NodeShape, Partition, SchedError, Scheduler, Submission, expand_job_ids, parse_state,
    reason_of,
};

#[derive(Default)]
pub struct SlurmCli {
    /// Set once sacct has said accounting is off (sites without slurmdbd): from then on
    /// squeue + scontrol answer.
    no_sacct: AtomicBool,
    max_array: OnceLock<usize>,
}

fn run(program: &str, args: &[String]) -> Result<Output, SchedError> {
    Command::new(program).args(args).output().map_err(|e| {
        SchedError::Command(format!(
            "cannot run {program}: {e} (is Slurm installed and on PATH?)"
        ))
    })
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_string()
}

/// Errors worth another try: slurmctld busy or restarting.
fn transient(stderr: &str) -> bool {
    mentions_any(
        stderr,
        &[
            "socket timed out",
            "temporarily unavailable",
            "unable to contact slurm controller",
            "slurm_persist_conn",
            "connection refused",
        ],
    )
}

/// Errors that mean no sbatch here can reach a controller: none configured, or none
/// answering (still so after the retries of [`transient`]).
fn unreachable(stderr: &str) -> bool {
    mentions_any(
        stderr,
        &[
            "could not establish a configuration source",
            "unable to contact slurm controller",
            "unable to establish a connection",
            "slurm_load_ctl_conf",
        ],
    )
}

/// Whether a Slurm command's message holds any of `words` (lower case), in any case.
fn mentions_any(stderr: &str, words: &[&str]) -> bool {
    let s = stderr.to_ascii_lowercase();
    words.iter().any(|w| s.contains(w))
}

/// Refusals that mean "too many jobs of yours are queued": wait for some to end.
fn submit_limit(stderr: &str) -> bool {
    ["MaxSubmitJob", "SubmitJobLimit", "job submit limit"]
        .iter()
        .any(|w| stderr.contains(w))
}

/// The base job ids of refs (`123_4` -> `123`), without repeats.
fn base_ids(refs: &[String]) -> Vec<String> {
    let set: BTreeSet<&str> = refs.iter().map(|r| r.split('_').next().unwrap_or(r)).collect();
    set.into_iter().map(String::from).collect()
}

/// Parses `scontrol -o show job` lines into refs and states. Array tasks that have not
/// started yet share one line (`ArrayTaskId=1-3%2`).
pub fn parse_scontrol(out: &str) -> BTreeMap<String, JobInfo> {
    let mut m = BTreeMap::new();
    for line in out.lines() {
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
        };
        let Some(state) = field("JobState") else { continue };
        let info = JobInfo {
            state: parse_state(state),
            node: field("NodeList")
                .filter(|n| *n != "(null)" && !n.is_empty())
                .map(String::from),
            name: field("JobName").map(String::from),
            reason: field("Reason").and_then(reason_of),
        };
        let refs = match (field("ArrayJobId"), field("ArrayTaskId")) {
            // An array cancelled or ended before its tasks were split off is one record
            // with ArrayTaskId=4294967294 (NO_VAL): it stands for every task of it.
            (Some(a), Some(t)) if t.parse::<u32>().is_ok_and(|n| n >= 0xFFFF_FFF0) => {
                vec![format!("{a}_*")]
            }
            (Some(a), Some(t)) => expand_job_ids(&format!("{a}_[{t}]")),
            _ => field("JobId").map(|j| vec![j.to_string()]).unwrap_or_default(),
        };
        for r in refs {
            m.insert(r, info.clone());
        }
    }
    m
}

/// Parses `ID|STATE|NODES|NAME|REASON` lines (squeue -o '%i|%T|%N|%j|%r', sacct -P
/// JobID,State,NodeList,JobName,Reason).
pub fn parse_table(out: &str) -> BTreeMap<String, JobInfo> {
    let mut m = BTreeMap::new();
    for line in out.lines() {
        let mut cols = line.split('|');
        let (Some(id), Some(state)) = (cols.next(), cols.next()) else {
            continue;
        };
        let node = cols
            .next()
            .map(str::trim)
            .filter(|n| !n.is_empty() && *n != "None assigned" && *n != "(null)")
            .map(String::from);
        let name = cols
            .next()
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty());
        let reason = cols.next().and_then(reason_of);
        for r in expand_job_ids(id.trim()) {
            m.insert(
                r,
                JobInfo {
                    state: parse_state(state),
                    node: node.clone(),
                    name: name.clone(),
                    reason: reason.clone(),
                },
            );
        }
    }
    m
}

/// GPUs per node in sinfo's %G (`gpu:2`, `gpu:a100:4(S:0-1),nvme:1`, `(null)`).
fn gpus_of(gres: &str) -> u64 {
    // Socket bindings in parentheses may hold commas of their own.
    let mut plain = String::new();
    let mut depth = 0;
    for c in gres.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ if depth == 0 => plain.push(c),
            _ => {}
        }
    }
    plain
        .split(',')
        .filter(|g| g.trim().starts_with("gpu:"))
        .filter_map(|g| g.trim().rsplit(':').next()?.parse::<u64>().ok())
        .sum()
}

/// Parses `sinfo -h -e -o '%P|%a|%l|%c|%m|%G|%D'`: one line per partition and node
/// configuration; the default partition's name ends in `*`.
pub fn parse_sinfo(out: &str) -> Vec<Partition> {
    let mut parts: Vec<Partition> = vec![];
    for line in out.lines() {
        let c: Vec<&str> = line.split('|').map(str::trim).collect();
        let [name, avail, limit, cpus, mem, gres, count] = c[..] else {
            continue;
        };
        let number = |s: &str| s.trim_end_matches('+').parse::<u64>().ok();
        let node = NodeShape {
            cpus: number(cpus).unwrap_or(0),
            memory_mb: memory_mb(mem.trim_end_matches('+')).unwrap_or(0),
            gpus: gpus_of(gres),
            count: number(count).unwrap_or(1),
        };
        let (name, default) = match name.strip_suffix('*') {
            Some(n) => (n, true),
            None => (name, false),
        };
        match parts.iter_mut().find(|p| p.name == name) {
            Some(p) => p.nodes.push(node),
            None => parts.push(Partition {
                name: name.to_string(),
                default,
                state: avail.to_string(),
                max_minutes: minutes(limit).flatten(),
                nodes: vec![node],
            }),
        }
    }
    parts
}

impl SlurmCli {
    /// Asks sacct first (the record of ended jobs on sites with accounting), unless
    /// `GOOSEPIPE_NO_SACCT=1` says to follow jobs with squeue + scontrol only.
    pub fn new() -> SlurmCli {
        let cli = SlurmCli::default();
        if std::env::var("GOOSEPIPE_NO_SACCT").is_ok_and(|v| v == "1") {
            cli.no_sacct.store(true, Ordering::Relaxed);
        }
        cli
    }

    /// Whether job states come from accounting (false once sacct said it is off).
    pub fn has_accounting(&self) -> bool {
        !self.no_sacct.load(Ordering::Relaxed)
    }

    fn sacct(&self, refs: &[String]) -> Option<BTreeMap<String, JobInfo>> {
        if self.no_sacct.load(Ordering::Relaxed) {
            return None;
        }
        let args = vec![
            "-n".into(),
            "-P".into(),
            "-X".into(),
            "--format=JobID,State,NodeList,JobName,Reason".into(),
            "-j".into(),
            base_ids(refs).join(","),
        ];
        let out = run("sacct", &args).ok()?;
        let all = format!("{} {}", text(&out.stdout), text(&out.stderr));
        if !out.status.success() || all.contains("accounting storage is disabled") {
            // No slurmdbd here (or sacct missing): squeue + scontrol from now on.
            self.no_sacct.store(true, Ordering::Relaxed);
            return None;
        }
        Some(parse_table(&text(&out.stdout)))
    }
}

impl Scheduler for SlurmCli {
    fn submit(&self, sub: &Submission) -> Result<String, SchedError> {
        let mut args: Vec<String> = vec![
            "--parsable".into(),
            format!("--job-name={}", sub.name),
            format!("--output={}", sub.log.display()),
            format!("--chdir={}", sub.chdir.display()),
            // Jobs inherit the head's environment (SLURM_CONF, GOOSEPIPE_*, HF_HOME...).
            "--export=ALL".into(),
        ];
        if sub.is_array() {
            let mut a = format!("--array=0-{}", sub.keys.len() - 1);
            if let Some(t) = sub.throttle {
                a.push_str(&format!("%{t}"));
            }
            args.push(a);
        }
        if !sub.after_ok.is_empty() {
            args.push(format!("--dependency=afterok:{}", sub.after_ok.join(":")));
            // Sites rarely set kill_invalid_depend: without this, the dependents of a
            // failed job stay PENDING (DependencyNeverSatisfied) forever.
            args.push("--kill-on-invalid-dep=yes".into());
        }
        args.extend(sub.resources.sbatch_args());
        args.extend(sub.extra.iter().cloned());
        args.push(sub.script.display().to_string());
        let mut last = String::new();
        for attempt in 0..4 {
            if attempt > 0 {
                std::thread::sleep(Duration::from_secs(2 * attempt));
            }
            let out = run("sbatch", &args)?;
            if out.status.success() {
                // --parsable prints `ID` or `ID;cluster`.
                let id = text(&out.stdout);
                let id = id.split(';').next().unwrap_or("").trim().to_string();
                if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(SchedError::Command(format!("sbatch printed no job id: {id:?}")));
                }
                return Ok(id);
            }
            last = text(&out.stderr);
            if submit_limit(&last) {
                return Err(SchedError::Busy(last));
            }
            if !transient(&last) {
                break;
            }
        }
        if unreachable(&last) {
            return Err(SchedError::Unreachable(format!(
                "sbatch cannot reach a Slurm controller: {last}"
            )));
        }
        Err(SchedError::Command(format!("sbatch {}: {last}", args.join(" "))))
    }

    fn query(&self, refs: &[String]) -> Result<BTreeMap<String, JobInfo>, SchedError> {
        let mut found = BTreeMap::new();
        if refs.is_empty() {
            return Ok(found);
        }
        // sacct is the record of ended jobs (slurmctld forgets them after MinJobAge);
        // live ones are squeue's (sacct lags behind, and has no current pending reason).
        if let Some(m) = self.sacct(refs) {
            found.extend(
                m.into_iter()
                    .filter(|(r, i)| refs.contains(r) && matches!(i.state, JobState::Ended(_))),
            );
        }
        let missing: Vec<String> = refs.iter().filter(|r| !found.contains_key(*r)).cloned().collect();
        if !missing.is_empty() {
            let args = vec![
                "-h".into(),
                "-r".into(),
                "-o".into(),
                "%i|%T|%N|%j|%r".into(),
                "-j".into(),
                base_ids(&missing).join(","),
            ];
            let out = run("squeue", &args)?;
            let err = text(&out.stderr);
            if out.status.success() {
                found.extend(
                    parse_table(&text(&out.stdout))
                        .into_iter()
                        .filter(|(r, _)| missing.contains(r)),
                );
            } else if !err.contains("Invalid job id") {
                // "Invalid job id" means none of them is queued any more; anything
                // else (controller down) is a failed poll, tried again later.
                return Err(SchedError::Command(format!("squeue: {err}")));
            }
        }
        // Jobs that left the queue: their final state, while slurmctld remembers them.
        let gone: Vec<String> = refs.iter().filter(|r| !found.contains_key(*r)).cloned().collect();
        for id in base_ids(&gone) {
            let out = run(
                "scontrol",
                &["-o".into(), "show".into(), "job".into(), id.clone()],
            )?;
            if out.status.success() {
                let m = parse_scontrol(&text(&out.stdout));
                let whole = m.get(&format!("{id}_*")).cloned();
                for r in gone.iter().filter(|r| r.split('_').next() == Some(id.as_str())) {
                    if let Some(info) = m.get(r).or(whole.as_ref()) {
                        found.insert(r.clone(), info.clone());
                    }
                }
            } else if !text(&out.stderr).contains("Invalid job id") {
                return Err(SchedError::Command(format!("scontrol: {}", text(&out.stderr))));
            }
        }
        for r in refs {
            found.entry(r.clone()).or_insert(JobInfo::new(JobState::Unknown));
        }
        Ok(found)
    }

    fn cancel(&self, refs: &[String]) -> Result<(), SchedError> {
        if refs.is_empty() {
            return Ok(());
        }
        let out = run("scancel", refs)?;
        if out.status.success() {
            Ok(())
        } else {
            Err(SchedError::Command(format!("scancel: {}", text(&out.stderr))))
        }
    }

    fn partitions(&self) -> Result<Option<Vec<Partition>>, SchedError> {
        let args: Vec<String> = ["-h", "-e", "-o", "%P|%a|%l|%c|%m|%G|%D"]
            .map(String::from)
            .to_vec();
        let out = run("sinfo", &args)?;
        if !out.status.success() {
            return Err(SchedError::Command(format!("sinfo: {}", text(&out.stderr))));
        }
        let parts = parse_sinfo(&text(&out.stdout));
        Ok((!parts.is_empty()).then_some(parts))
    }

    fn max_array_tasks(&self) -> usize {
        *self.max_array.get_or_init(|| {
            let out = run("scontrol", &["show".into(), "config".into()]);
            out.ok()
                .and_then(|o| {
                    text(&o.stdout).lines().find_map(|l| {
                        let (k, v) = l.split_once('=')?;
                        (k.trim() == "MaxArraySize").then(|| v.trim().parse::<usize>().ok())?
                    })
                })
                // Task indices run 0..MaxArraySize-1; 1001 is Slurm's default.
                .unwrap_or(1001)
                .max(1)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::slurm::scheduler::End;

    #[test]
    fn scontrol_lines_become_task_states() {
        let out = "JobId=2 ArrayJobId=2 ArrayTaskId=1-3%2 JobName=w JobState=PENDING Reason=Resources NodeList=(null)\n\
                   JobId=3 ArrayJobId=2 ArrayTaskId=0 JobName=w JobState=TIMEOUT Reason=TimeLimit NodeList=n7\n\
                   JobId=9 JobName=x JobState=COMPLETED Reason=None NodeList=n1";
        let m = parse_scontrol(out);
        assert_eq!(m["2_1"].state, JobState::Queued);
        assert_eq!(m["2_3"].state, JobState::Queued);
        assert_eq!(m["2_0"].state, JobState::Ended(End::Timeout));
        assert_eq!(m["2_0"].node.as_deref(), Some("n7"));
        assert_eq!(m["9"].state, JobState::Ended(End::Completed));
        let whole = parse_scontrol("JobId=121 ArrayJobId=121 ArrayTaskId=4294967294 JobState=CANCELLED");
        assert_eq!(whole["121_*"].state, JobState::Ended(End::Cancelled));
    }

    #[test]
    fn squeue_and_sacct_tables() {
        let m = parse_table("5_[2-3]|PENDING||gp-a\n5_0|RUNNING|n1|gp-a\n6|CANCELLED by 0|None assigned|x");
        assert_eq!(m["5_2"].name.as_deref(), Some("gp-a"));
        assert_eq!(m.len(), 4);
        assert_eq!(m["5_3"].state, JobState::Queued);
        assert_eq!(m["5_0"].node.as_deref(), Some("n1"));
        assert_eq!(m["6"].state, JobState::Ended(End::Cancelled));
        assert_eq!(m["6"].node, None);
    }

    #[test]
    fn sinfo_partitions_and_reasons() {
        let p = parse_sinfo(
            "debug*|up|infinite|2|19284|gpu:2|1\nshort|up|10:00|2|19284|(null)|1\n\
             gpu|up|2-00:00:00|64|512000+|gpu:a100:4(S:0,1),nvme:1|8\ngpu|up|2-00:00:00|32|256000|(null)|4",
        );
        assert_eq!(p.len(), 3);
        assert!(p[0].default && !p[1].default);
        assert_eq!(
            (p[0].max_minutes, p[1].max_minutes, p[2].max_minutes),
            (None, Some(10), Some(2880))
        );
        assert_eq!(p[0].nodes[0].gpus, 2);
        assert_eq!(p[2].nodes.len(), 2);
        assert_eq!(
            p[2].nodes[0],
            NodeShape {
                cpus: 64,
                memory_mb: 512000,
                gpus: 4,
                count: 8
            }
        );
        assert_eq!(p[2].nodes[1].gpus, 0);
        let m = parse_table("7|PENDING||gp-x|PartitionConfig\n8|RUNNING|n1|gp-y|None");
        assert_eq!(m["7"].reason.as_deref(), Some("PartitionConfig"));
        assert_eq!(m["8"].reason, None);
        let s =
            parse_scontrol("JobId=9 JobName=x JobState=PENDING Reason=PartitionTimeLimit NodeList=(null)");
        assert_eq!(s["9"].reason.as_deref(), Some("PartitionTimeLimit"));
    }

    #[test]
    fn transient_errors_are_recognised() {
        assert!(transient(
            "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation"
        ));
        assert!(!transient("sbatch: error: invalid partition specified: gpu"));
        assert!(submit_limit("sbatch: error: QOSMaxSubmitJobPerUserLimit"));
        assert!(submit_limit("sbatch: error: AssocMaxSubmitJobLimit"));
        assert_eq!(base_ids(&["4_1".into(), "4_2".into(), "7".into()]), ["4", "7"]);
    }
}
