//! The Slurm executor against a real Slurm (scripts/slurm-local.sh up): a micro pipeline
//! built by jobs, a head killed mid-run and adopted by the next one with no step
//! submitted twice, and a failing step whose dependents are never submitted while
//! independent steps finish.
//!
//! Without a cluster these tests fail with instructions; GOOSEPIPE_NO_SLURM=1 skips
//! them (loudly). CI runs `scripts/slurm-local.sh up` first and never sets it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use goosepipe::exec::slurm::{End, JobState, Record, Resources, RunLog, Scheduler, SlurmCli, Submission};
use goosepipe::store::{Key, Store};

/// False (after saying so loudly) when the developer opted out; panics when Slurm is
/// not there, so CI can never pass these tests by skipping them.
fn slurm_available(test: &str) -> bool {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    if std::env::var("GOOSEPIPE_NO_SLURM").is_ok_and(|v| v == "1") && !ci {
        // Straight to stderr, past the test harness's capture: a skip must be seen.
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            format!(
                "\n!!!!! SKIPPED {test}: GOOSEPIPE_NO_SLURM=1 is set, so the Slurm executor was NOT tested.\n\
                 !!!!! Run `scripts/slurm-local.sh up && eval \"$(scripts/slurm-local.sh env)\"` and unset it.\n"
            )
            .as_bytes(),
        );
        return false;
    }
    let sinfo = Command::new("sinfo").arg("--version").output();
    let conf = std::env::var_os("SLURM_CONF");
    if sinfo.is_err() || conf.is_none() {
        panic!(
            "the Slurm integration tests need a Slurm cluster: `sinfo` {} and SLURM_CONF is {}.\n\
             Start the local one with `scripts/slurm-local.sh up && eval \"$(scripts/slurm-local.sh env)\"`\n\
             (or set GOOSEPIPE_NO_SLURM=1 to skip these tests; with CI=true they never skip).",
            if sinfo.is_ok() {
                "is installed"
            } else {
                "is not on PATH"
            },
            if conf.is_some() { "set" } else { "unset" }
        );
    }
    true
}

/// The micro pipeline of tests/train_steps.rs, sized for Slurm jobs on 2 cores.
/// `{STEPS}` is the expert training length; `{EXTRA}` adds nodes.
const MICRO: &str = r#"
pipeline "slurm-micro"
dataset "corpus" { synthetic task="corpus" examples=200 seed=1; }
model "t" {
    init corpus="corpus" d-model=16 d-ff=32 d-kv=8 heads=2 layers=1 seed=3 pretrain-steps=12 batch=8
}
defaults {
    lora rank=4
    train steps={STEPS} batch=8 micro-batch=4 eval-every=6 eval-examples=16 checkpoint-every=4
    gate steps=4 batch=8 micro-batch=8
    resources cpus=1 memory="1G" time="0:30:00"
}
dataset "sort" { synthetic task="sort" format="choice" examples=64; }
dataset "shift" { synthetic task="shift" format="choice" examples=64; }
dataset "arrange" split="test" { synthetic task="arrange" format="choice" examples=16 seed=5; }
expert "sort" model="t" dataset="sort"
expert "shift" model="t" dataset="shift"
{EXTRA}
pool "p" { experts "sort" "shift"; }
eval "e" pool="p" {
    methods "phatgoose" "base" "merged" "expert:sort"
    task "arrange" dataset="arrange"
}
"#;

struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    fn new(steps: u32, extra: &str) -> Project {
        let dir = tempfile::tempdir().unwrap();
        let text = MICRO
            .replace("{STEPS}", &steps.to_string())
            .replace("{EXTRA}", extra);
        std::fs::write(dir.path().join("micro.kdl"), text).unwrap();
        Project { dir }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn store(&self) -> PathBuf {
        self.path().join("store")
    }
    fn command(&self, extra: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_goosepipe"));
        c.current_dir(self.path())
            .args(["--store", "store", "run", "micro.kdl", "--executor", "slurm"])
            .args(["--poll-max", "1", "--latency-wait", "5"])
            .args(extra)
            .env("NO_COLOR", "1");
        c
    }
    fn run(&self, extra: &[&str]) -> (Option<i32>, String) {
        self.run_env(extra, &[])
    }
    fn run_env(&self, extra: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
        let out: Output = self.command(extra).envs(env.iter().copied()).output().unwrap();
        let text = format!(
            "{}\n--- stderr ---\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    }
    fn plan(&self) -> goosepipe::plan::Plan {
        let store = Store::open(self.store()).unwrap();
        let manifest = self.path().join("micro.kdl");
        let lock =
            goosepipe::store::lockfile::Lockfile::read(&goosepipe::store::lockfile::lock_path(&manifest))
                .unwrap();
        goosepipe::app::load_plan_in(
            &manifest,
            &goosepipe::steps::registry(),
            &store.hash_cache(),
            &store,
            &lock,
        )
        .unwrap()
    }
    /// Every step id of the plan (the plan decides, not this test: step kinds come and go).
    fn ids(&self) -> Vec<String> {
        self.plan().steps.iter().map(|s| s.id().to_string()).collect()
    }
    fn published(&self, id: &str) -> bool {
        let store = Store::open(self.store()).unwrap();
        store.meta(&self.plan().get(id).unwrap().spec.key).is_some()
    }
    /// Submissions in the run log: step id -> job refs, in order.
    fn submissions(&self) -> BTreeMap<String, Vec<String>> {
        let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in RunLog::new(&self.store()).read() {
            if let Record::Submit { step, job, .. } = r {
                m.entry(step).or_default().push(job);
            }
        }
        m
    }
}

#[test]
fn pipeline_runs_as_slurm_jobs_and_a_rerun_is_a_no_op() {
    if !slurm_available("pipeline_runs_as_slurm_jobs_and_a_rerun_is_a_no_op") {
        return;
    }
    let p = Project::new(12, "");
    let t0 = Instant::now();
    let (code, out) = p.run(&[]);
    assert_eq!(code, Some(0), "{out}");
    eprintln!(
        "slurm run of the micro pipeline: {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    assert!(
        out.contains("| task | phatgoose | base | merged | expert:sort |"),
        "{out}"
    );
    for id in &p.ids() {
        assert!(p.published(id), "{id} is not in the store\n{out}");
    }
    let subs = p.submissions();
    assert_eq!(subs.len(), p.ids().len(), "{subs:?}");
    assert!(subs.values().all(|jobs| jobs.len() == 1), "{subs:?}");
    // Independent steps ready together (the datasets) went out as one job array.
    let (a, b) = (&subs["dataset:sort"][0], &subs["dataset:shift"][0]);
    assert!(
        a.contains('_') && a.split('_').next() == b.split('_').next(),
        "{subs:?}"
    );

    let (code, out) = p.run(&[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("nothing to do"), "{out}");
    assert_eq!(p.submissions(), subs, "a re-run submits nothing");
}

#[test]
fn under_early_cutoff_the_datasets_go_out_first_then_the_rest_keyed_on_their_output() {
    if !slurm_available("under_early_cutoff_the_datasets_go_out_first_then_the_rest_keyed_on_their_output") {
        return;
    }
    let p = Project::new(6, "");
    let manifest = p.path().join("micro.kdl");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        text.replace(
            "pipeline \"slurm-micro\"",
            "pipeline \"slurm-micro\" early-cutoff=#true",
        ),
    )
    .unwrap();
    let (code, out) = p.run(&[]);
    assert_eq!(code, Some(0), "{out}");
    let plan = p.plan();
    assert!(!plan.waits(), "every dataset is built: every key is known");
    for id in &p.ids() {
        assert!(p.published(id), "{id} is not in the store\n{out}");
    }
    // Every step went out once; no job was submitted under a provisional key.
    let subs = p.submissions();
    assert_eq!(subs.len(), p.ids().len(), "{subs:?}");
    assert!(subs.values().all(|jobs| jobs.len() == 1), "{subs:?}");
    let (code, out) = p.run(&[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("nothing to do"), "{out}");
}

#[test]
fn a_killed_head_is_adopted_and_no_step_is_submitted_twice() {
    if !slurm_available("a_killed_head_is_adopted_and_no_step_is_submitted_twice") {
        return;
    }
    // Experts that train long enough to still be running when the head dies.
    let p = Project::new(400, "");
    let mut head = spawn_until_experts_submitted(&p, &[]);
    head.kill().unwrap(); // SIGKILL: no chance to clean up
    head.wait().unwrap();
    assert!(!p.published("expert:sort") && !p.published("expert:shift"));

    let (code, out) = p.run(&[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("adopted job"),
        "the second head adopts the live experts:\n{out}"
    );
    let subs = p.submissions();
    for id in &p.ids() {
        assert!(p.published(id), "{id} is not in the store\n{out}");
        assert_eq!(subs[id].len(), 1, "{id} was submitted {:?}\n{out}", subs[id]);
    }
    let (code, out) = p.run(&[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("nothing to do"), "{out}");
}

/// Starts a head and returns once the run log shows both experts submitted.
fn spawn_until_experts_submitted(p: &Project, extra: &[&str]) -> std::process::Child {
    let log = std::fs::File::create(p.path().join("head1.log")).unwrap();
    let mut head = p
        .command(extra)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    loop {
        let subs = p.submissions();
        if subs.contains_key("expert:sort") && subs.contains_key("expert:shift") {
            return head;
        }
        if let Some(status) = head.try_wait().unwrap() {
            panic!(
                "the head ended ({status}) before submitting the experts:\n{}",
                std::fs::read_to_string(p.path().join("head1.log")).unwrap()
            );
        }
        assert!(t0.elapsed() < Duration::from_secs(240), "experts never submitted");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A job's state as the executor's own Slurm client reads it.
fn job_state(job: &str) -> JobState {
    let refs = [job.to_string()];
    SlurmCli::new().query(&refs).unwrap()[job].state.clone()
}

#[test]
fn ctrl_c_on_the_head_can_scancel_what_it_submitted() {
    if !slurm_available("ctrl_c_on_the_head_can_scancel_what_it_submitted") {
        return;
    }
    let p = Project::new(800, "");
    let mut head = spawn_until_experts_submitted(&p, &["--on-interrupt", "cancel"]);
    // SAFETY: plain kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(head.id() as i32, libc::SIGINT) }, 0);
    let status = head.wait().unwrap();
    let err = std::fs::read_to_string(p.path().join("head1.log")).unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("cancelled job(s)"), "{err}");
    let subs = p.submissions();
    for id in ["expert:sort", "expert:shift"] {
        let job = &subs[id][0];
        let t0 = Instant::now();
        let cancelled = JobState::Ended(End::Cancelled);
        while job_state(job) != cancelled && t0.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(200));
        }
        assert_eq!(job_state(job), cancelled, "{id} job {job}");
        assert!(!p.published(id));
    }
    // The same command again finishes the pipeline.
    let (code, out) = p.run(&[]);
    assert_eq!(code, Some(0), "{out}");
    for id in &p.ids() {
        assert!(p.published(id), "{id}\n{out}");
    }
}

/// A dataset whose file is not JSON: its step fails inside its job.
const BROKEN: &str = r#"
dataset "broken" path="broken.jsonl"
expert "broken" model="t" dataset="broken"
"#;

#[test]
fn an_eval_refuses_its_task_data_when_the_dataset_job_ends_and_is_never_submitted() {
    if !slurm_available("an_eval_refuses_its_task_data_when_the_dataset_job_ends_and_is_never_submitted") {
        return;
    }
    let p = Project::new(6, "dataset \"plain\" path=\"plain.jsonl\" split=\"test\"");
    std::fs::write(
        p.path().join("plain.jsonl"),
        "{\"input\": \"a b\", \"target\": \"b a\"}\n".repeat(4),
    )
    .unwrap();
    let manifest = p.path().join("micro.kdl");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        text.replace(
            "task \"arrange\" dataset=\"arrange\"",
            "task \"arrange\" dataset=\"arrange\"\n    task \"plain\" dataset=\"plain\"",
        ),
    )
    .unwrap();
    let (code, out) = p.run(&["--keep-going"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("examples of dataset:plain have no answer choices")
            && out.contains("(found when dataset:plain was built, before eval:e could start)"),
        "{out}"
    );
    let subs = p.submissions();
    assert!(subs.contains_key("dataset:plain"), "{subs:?}");
    assert!(
        !subs.contains_key("eval:e"),
        "eval:e must never be submitted: {subs:?}"
    );
    // --keep-going: what does not need the eval is built.
    assert!(p.published("gate:sort") && p.published("gate:shift"), "{out}");
}

fn failing_project() -> Project {
    let p = Project::new(12, BROKEN);
    std::fs::write(
        p.path().join("broken.jsonl"),
        "{\"input\": \"a\", \"target\": \"b\"}\nthis is not json\n",
    )
    .unwrap();
    p
}

/// What a failing dataset must leave: its dependents not built, independent steps built.
fn assert_failure_contained(p: &Project, out: &str) {
    assert!(out.contains("dataset:broken"), "{out}");
    for id in ["expert:broken", "gate:broken"] {
        assert!(!p.published(id), "{id} must not be built\n{out}");
    }
    for id in [
        "expert:sort",
        "expert:shift",
        "gate:sort",
        "gate:shift",
        "model:t",
    ] {
        assert!(
            p.published(id),
            "{id} is independent of the failure and must be built\n{out}"
        );
    }
}

#[test]
fn a_failing_step_leaves_its_dependents_unsubmitted_while_independent_steps_finish() {
    if !slurm_available("a_failing_step_leaves_its_dependents_unsubmitted_while_independent_steps_finish") {
        return;
    }
    let p = failing_project();
    // The path of sites without accounting: squeue for live jobs, scontrol for ended ones.
    let (code, out) = p.run_env(&["--keep-going"], &[("GOOSEPIPE_NO_SACCT", "1")]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("1 step(s) failed"), "{out}");
    assert_failure_contained(&p, &out);
    let subs = p.submissions();
    assert!(subs.contains_key("dataset:broken"), "{subs:?}");
    for id in ["expert:broken", "gate:broken"] {
        assert!(!subs.contains_key(id), "{id} must never be submitted: {subs:?}");
    }
    // The job's own log says why.
    let store = Store::open(p.store()).unwrap();
    let logs = std::fs::read_dir(store.root.join("runs/slurm/logs")).unwrap();
    let all: String = logs
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    assert!(all.contains("not JSON") || all.contains("not a JSON"), "{all}");
}

#[test]
fn submit_all_chains_jobs_and_slurm_cancels_the_dependents_of_a_failure() {
    if !slurm_available("submit_all_chains_jobs_and_slurm_cancels_the_dependents_of_a_failure") {
        return;
    }
    let p = failing_project();
    let (code, out) = p.run(&["--submit-all", "--keep-going"]);
    assert_eq!(code, Some(1), "{out}");
    assert_failure_contained(&p, &out);
    let subs = p.submissions();
    // Everything was submitted up front, dependents of the failure included ...
    assert!(
        subs.contains_key("expert:broken") && subs.contains_key("eval:e"),
        "{subs:?}"
    );
    assert!(out.contains(" after "), "jobs were chained with afterok:\n{out}");
    // ... and those jobs never started (Slurm creates a job's log when it starts), the
    // steps independent of the failure finished, and nothing was submitted twice.
    for r in RunLog::new(&p.store()).read() {
        if let Record::Submit { step, log, .. } = r
            && (step == "expert:broken" || step == "gate:broken")
        {
            assert!(!Path::new(&log).exists(), "{step} ran: {log}\n{out}");
        }
    }
    assert!(subs.values().all(|j| j.len() == 1), "{subs:?}");
    assert!(p.published("pool:p") && p.published("eval:e"), "{out}");
}

/// The micro project with its `defaults` resources line replaced.
fn sized(resources: &str, extra: &str) -> Project {
    let p = Project::new(12, extra);
    let path = p.path().join("micro.kdl");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(r#"resources cpus=1 memory="1G" time="0:30:00""#, resources);
    std::fs::write(path, text).unwrap();
    p
}

#[test]
fn requests_no_node_can_satisfy_are_refused_in_seconds_before_anything_is_submitted() {
    if !slurm_available("requests_no_node_can_satisfy_are_refused_in_seconds_before_anything_is_submitted") {
        return;
    }
    // scripts/slurm-local.sh: one node (nproc CPUs, 80% of the memory, 2 GPUs), partitions
    // `debug` (default, unlimited) and `short` (10 minutes).
    for (resources, needles) in [
        (
            r#"resources cpus=64 memory="1G" time="0:30:00""#,
            &[
                "asks for cpus=64",
                "which no node of partition `debug` has",
                "change `resources`",
            ][..],
        ),
        (
            r#"resources cpus=1 memory="1T" time="0:30:00""#,
            &["memory=1T", "partition `debug`"][..],
        ),
        (
            r#"resources cpus=1 memory="1G" time="1:00:00" partition="short""#,
            &["over the time limit of partition `short` (0:10:00)"][..],
        ),
        (
            r#"resources cpus=1 memory="1G" time="0:30:00" gpus=3"#,
            &["gpus=3", "2 GPUs"][..],
        ),
        (
            r#"resources cpus=1 memory="1G" time="0:30:00" partition="gpu-a100""#,
            &["partition `gpu-a100`, which this cluster does not have (it has: debug, short)"][..],
        ),
    ] {
        let p = sized(resources, "");
        let t0 = Instant::now();
        let (code, out) = p.run(&[]);
        // The error report wraps long lines in a frame: read it as one line.
        let out = out
            .replace('│', " ")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        assert!(t0.elapsed() < Duration::from_secs(30), "took {:?}", t0.elapsed());
        assert_eq!(code, Some(1), "{resources}: {out}");
        assert!(out.contains("nothing was submitted"), "{resources}: {out}");
        for n in needles {
            assert!(out.contains(n), "{resources}: `{n}` not in\n{out}");
        }
        assert!(p.submissions().is_empty(), "{resources}: {:?}", p.submissions());
    }
}

#[test]
fn a_job_held_for_a_reason_that_never_clears_fails_its_step_and_is_cancelled() {
    if !slurm_available("a_job_held_for_a_reason_that_never_clears_fails_its_step_and_is_cancelled") {
        return;
    }
    // A raw sbatch flag is passed as given (not checked before submission): over the
    // `short` partition's limit, Slurm holds the job with PartitionTimeLimit forever.
    let p = Project::new(12, "");
    let path = p.path().join("micro.kdl");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        r#"expert "sort" model="t" dataset="sort""#,
        r#"expert "sort" model="t" dataset="sort" { resources partition="short" { sbatch "--time=1:00:00"; }; }"#,
    );
    std::fs::write(path, text).unwrap();
    let (code, out) = p.run(&["--keep-going", "--pending-grace", "2"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("pending (PartitionTimeLimit)"),
        "the reason is on screen:\n{out}"
    );
    assert!(
        out.contains("can never start: Slurm holds it with reason PartitionTimeLimit")
            && out.contains("To fix:"),
        "{out}"
    );
    let job = p.submissions()["expert:sort"][0].clone();
    assert_eq!(
        job_state(&job),
        JobState::Ended(End::Cancelled),
        "the held job is cancelled"
    );
    // The other branch went on (--keep-going).
    assert!(p.published("gate:shift"), "{out}");
    assert!(!p.published("eval:e"));
}

#[test]
fn gpu_requests_are_granted_and_cpu_steps_never_ask_for_gpus() {
    if !slurm_available("gpu_requests_are_granted_and_cpu_steps_never_ask_for_gpus") {
        return;
    }
    let p = Project::new(12, "");
    // --device cuda: the pretraining model step asks for a GPU, datasets do not. (This
    // build has no CUDA, so the model job itself fails: what is checked is the request.)
    let (_, out) = p.run(&["--device", "cuda", "--until", "model:t"]);
    let subs = p.submissions();
    let tres = |job: &str| {
        let out = Command::new("scontrol")
            .args(["-o", "show", "job", job])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let model = tres(&subs["model:t"][0]);
    assert!(
        model.contains("gres/gpu=1") || model.contains("gres:gpu:1"),
        "{model}\n{out}"
    );
    let corpus = tres(&subs["dataset:corpus"][0]);
    assert!(!corpus.contains("gpu"), "a CPU step asked for a GPU: {corpus}");
    // And a GPU job gets one: the cluster's GPUs are placeholders, but Slurm grants them.
    let sub = one_job(
        &p,
        "gp-gpu-check",
        Key([0; 32]),
        "gpu-check",
        "echo \"granted=$CUDA_VISIBLE_DEVICES\"",
        1,
    );
    let log = sub.log.clone();
    let cli = SlurmCli::new();
    let job = cli.submit(&sub).unwrap();
    let t0 = Instant::now();
    while job_state(&job).alive() && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(job_state(&job), JobState::Ended(End::Completed));
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(
        said.trim().starts_with("granted=") && said.trim() != "granted=",
        "{said}"
    );
}

/// A one-task submission of a shell `body` (1 CPU, 100M, 5 minutes, `gpus` GPUs), made
/// here rather than by a head.
fn one_job(p: &Project, name: &str, key: Key, step: &str, body: &str, gpus: u64) -> Submission {
    let script = p.path().join(format!("{name}.sh"));
    std::fs::write(&script, format!("#!/bin/sh\n{body}\n")).unwrap();
    Submission {
        name: name.into(),
        keys: vec![key],
        steps: vec![step.into()],
        script,
        log: p.path().join(format!("{name}.out")),
        chdir: p.path().to_path_buf(),
        resources: Resources {
            gpus: Some(gpus),
            cpus: Some(1),
            memory: Some("100M".into()),
            time: Some("0:05:00".into()),
            ..Default::default()
        },
        after_ok: vec![],
        throttle: None,
        extra: vec![],
    }
}

#[test]
fn jobs_that_ended_while_no_head_watched_are_settled_from_accounting() {
    if !slurm_available("jobs_that_ended_while_no_head_watched_are_settled_from_accounting") {
        return;
    }
    let cli = SlurmCli::new();
    let p = failing_project();
    // A head submitted the broken dataset's job and died; the job then failed, and
    // slurmctld forgot it (MinJobAge): only accounting remembers.
    let key = p.plan().get("dataset:broken").unwrap().spec.key;
    let sub = one_job(&p, "gp-dataset-earlier", key, "dataset:broken", "exit 3", 0);
    let log = sub.log.clone();
    let job = cli.submit(&sub).unwrap();
    std::fs::create_dir_all(p.store().join("runs")).unwrap();
    RunLog::new(&p.store())
        .append(&[Record::Submit {
            key,
            step: "dataset:broken".into(),
            job: job.clone(),
            attempt: 1,
            unix: goosepipe::store::artifact::now_unix(),
            log: log.display().to_string(),
            name: sub.name.clone(),
        }])
        .unwrap();
    let t0 = Instant::now();
    let forgotten = || {
        !Command::new("scontrol")
            .args(["-o", "show", "job", &job])
            .output()
            .unwrap()
            .status
            .success()
    };
    while !(matches!(job_state(&job), JobState::Ended(_)) && forgotten()) {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "job {job}: {:?}",
            job_state(&job)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        cli.has_accounting(),
        "sacct must answer: start the cluster with accounting (scripts/slurm-local.sh up, GOOSEPIPE_SLURM_ACCOUNTING unset or 1)"
    );
    assert_eq!(job_state(&job), JobState::Ended(End::Failed), "from sacct alone");

    let (code, out) = p.run(&["--keep-going"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "job {job} for dataset:broken ended FAILED while no head was watching"
        )),
        "{out}"
    );
    assert_failure_contained(&p, &out);
}
