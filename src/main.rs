//! The goosepipe command line: argument parsing only; the work is in `goosepipe::app`.

use std::io::{Stdout, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use goosepipe::app;
use goosepipe::exec::{CancelFlag, Registry, RunOptions};
use goosepipe::store::Store;

/// Planning large manifests is allocation-bound (tens of thousands of small maps);
/// mimalloc roughly halves that time against glibc malloc. For the tensor code it
/// is tuned by `goosepipe::process::alloc` (no purging of freed pages).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "goosepipe",
    version,
    long_version = long_version(),
    about = "Declarative, content-addressed PHATGOOSE pipelines: recycle LoRA experts for zero-shot generalization"
)]
struct Cli {
    /// Artifact store folder [env: GOOSEPIPE_STORE; default: .goosepipe]
    #[arg(long, global = true)]
    store: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// `--version`'s text: the crate's version, then what sets this binary's numerics
/// (`-V` prints the version alone).
fn long_version() -> &'static str {
    let text = format!(
        "{}\n{}",
        env!("CARGO_PKG_VERSION"),
        goosepipe::process::numerics::build_summary()
    );
    Box::leak(text.into_boxed_str())
}

#[derive(Clone, Copy, ValueEnum)]
enum GraphFormat {
    Dot,
    Mermaid,
}

#[derive(Subcommand)]
enum Command {
    /// Parse and validate a manifest; report every error at once.
    Check { file: PathBuf },
    /// Dry run: every step with its key and state, and why stale steps would run.
    #[command(override_usage = "goosepipe plan <FILE> [OPTIONS]")]
    Plan {
        file: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Exit with code 2 if anything would run or the lockfile pins anything else
        /// (CI guard: passes exactly when `run --locked` would build nothing and
        /// refuse nothing).
        #[arg(long)]
        check_cached: bool,
        /// Re-hash every cached artifact against its recorded digests first; corrupt
        /// ones are moved aside and shown as stale.
        #[arg(long)]
        verify: bool,
        /// The device the run will use (cpu, cuda or cuda:N): an eval reuses results
        /// scored on the same kind of device only, and the plan counts those.
        #[arg(long, default_value = "cpu", value_parser = device_name)]
        device: String,
        /// What `run --only` with these steps would run (refused as run refuses it).
        #[arg(long, num_args = 1..)]
        only: Vec<String>,
        /// What `run --until` this step would run.
        #[arg(long, conflicts_with = "only")]
        until: Option<String>,
    },
    /// Run the stale steps in dependency order and update the lockfile.
    #[command(override_usage = "goosepipe run <FILE> [OPTIONS]")]
    Run(RunArgs),
    /// Build one step from its recipe in the store, as a cluster job does (the manifest
    /// is not read). Exits 0 at once if the key is already published.
    Exec(ExecArgs),
    /// The step graph as DOT (default) or Mermaid.
    Graph {
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = GraphFormat::Dot)]
        format: GraphFormat,
        /// Colour steps by their state in the store.
        #[arg(long)]
        status: bool,
    },
    /// A step's key ingredients, its inputs, and why it is stale.
    Explain {
        file: PathBuf,
        step: String,
        /// The device the run will use (cpu, cuda or cuda:N), as for `plan`.
        #[arg(long, default_value = "cpu", value_parser = device_name)]
        device: String,
    },
    /// Delete store entries no given manifest reaches, and leftovers of interrupted runs.
    Gc {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// List what would be deleted, with sizes, and delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Keep only what the given manifests reach: also collect what other manifests
        /// that ran on this store reach (kept by default, and named).
        #[arg(long)]
        only_given: bool,
    },
    /// Re-hash artifacts against the digests recorded when they were published; move
    /// corrupt ones aside (the next run rebuilds them). Exit 1 if any was corrupt.
    #[command(override_usage = "goosepipe verify <FILES>...\n       goosepipe verify --all")]
    Verify {
        /// Manifests whose artifacts to verify.
        #[arg(required_unless_present = "all")]
        files: Vec<PathBuf>,
        /// Verify every artifact in the store.
        #[arg(long)]
        all: bool,
    },
    /// An artifact's metadata and files, by step id, name, key or key prefix.
    Show {
        what: String,
        /// Take the artifact this manifest's step has now (it must be built), not the
        /// one the last run found.
        #[arg(long, value_name = "FILE")]
        manifest: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        /// Print only the folder of the artifact's files (for scripts); refused when a
        /// file does not match its recorded digest.
        #[arg(long, conflicts_with = "json")]
        path: bool,
    },
    /// Write an artifact in another tool's format: an expert (with its gate) or a gate as
    /// a PEFT adapter folder, a base model as a Hugging Face checkpoint folder.
    Export {
        /// A step id (expert:NAME, gate:NAME, multitask:NAME, model:NAME), name, key or
        /// key prefix in the store; or a goosepipe expert file (then --model is needed).
        what: String,
        #[arg(long, value_enum, default_value_t = ExportFormat::Peft)]
        format: ExportFormat,
        /// The folder to write: new or empty, unless --force.
        dir: PathBuf,
        /// Write into a folder that is not empty, replacing the files an export writes.
        #[arg(long)]
        force: bool,
        /// The base model folder of an expert file given by path.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Take the artifact this manifest's step has now (it must be built), not the
        /// one the last run found.
        #[arg(long, value_name = "FILE", conflicts_with = "model")]
        manifest: Option<PathBuf>,
    },
    /// Print the manifest schema (every node and property, documented).
    Schema,
    /// The results tables of a manifest's evaluations, from the store (runs nothing).
    Report {
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = ReportFormat::Md)]
        format: ReportFormat,
        /// Also draw routing heatmaps and score charts (SVG and PNG) into DIR/EVAL/.
        #[arg(long, value_name = "DIR", conflicts_with = "examples")]
        plots: Option<PathBuf>,
        /// Instead of the tables: TASK's examples with each method's answer (the
        /// choice picked, or the text generated), from every eval that scores it.
        #[arg(long, value_name = "TASK")]
        examples: Option<String>,
        /// With --examples: only the eval of this name.
        #[arg(long, value_name = "NAME", requires = "examples")]
        eval: Option<String>,
        /// With --examples: only the examples METHOD did not get right.
        #[arg(long, value_name = "METHOD", requires = "examples")]
        wrong: Option<String>,
        /// With --examples: show at most N examples.
        #[arg(long, value_name = "N", default_value_t = 5, requires = "examples")]
        limit: usize,
    },
    /// Per-token log-probabilities of TARGET given INPUT under a model (and experts).
    Score(ScoreArgs),
}

/// `--device`: checked when the command line is read, not when the first model step
/// starts (after the steps before it have run).
fn device_name(s: &str) -> Result<String, String> {
    let cuda_n = s
        .strip_prefix("cuda:")
        .is_some_and(|n| n.parse::<usize>().is_ok());
    if s == "cpu" || s == "cuda" || cuda_n {
        Ok(s.to_string())
    } else {
        Err("expected cpu, cuda or cuda:N".to_string())
    }
}

/// A count that must be at least 1.
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_string()),
        Ok(n) => Ok(n),
        // `-j -1` reaches here (negative numbers are taken as values, not flags).
        Err(_) if s.parse::<i64>().is_ok() => Err("must be at least 1".to_string()),
        Err(e) => Err(e.to_string()),
    }
}

#[derive(clap::Args)]
struct RunArgs {
    /// The manifest (before `--only`, which takes every word after it).
    file: Option<PathBuf>,
    /// Steps run in parallel (default: the manifest's `pipeline jobs=`, else 1).
    #[arg(short = 'j', long, value_parser = at_least_one, allow_negative_numbers = true)]
    jobs: Option<usize>,
    /// Run only these steps (ids like expert:NAME, or unique names).
    #[arg(long, num_args = 1..)]
    only: Vec<String>,
    /// Run this step and everything it needs.
    #[arg(long, conflicts_with = "only")]
    until: Option<String>,
    /// Keep running independent steps after a failure.
    #[arg(long)]
    keep_going: bool,
    /// Fail if the lockfile would pin anything else (external resolutions, keys,
    /// digests); other last bits from other numerics, with the pinned results tables,
    /// are accepted and said, and so are pins that lack the numerics they were built on.
    #[arg(long)]
    locked: bool,
    /// Re-hash every cached artifact of the manifest before running; corrupt ones
    /// are moved aside and rebuilt.
    #[arg(long)]
    verify: bool,
    /// Compute device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", value_parser = device_name)]
    device: String,
    /// No progress output.
    #[arg(short, long)]
    quiet: bool,
    /// Where steps run: threads here (local), or jobs of a Slurm cluster submitted
    /// from here (slurm; the store must be on a file system the nodes share).
    #[arg(long, value_enum, default_value_t = ExecutorArg::Local)]
    executor: ExecutorArg,
    #[command(flatten)]
    slurm: SlurmArgs,
    /// Not a flag of `run` (hidden): answered with where a dry run is, `plan`.
    #[arg(long, hide = true)]
    dry_run: bool,
}

#[derive(clap::Args)]
struct ExecArgs {
    /// The step's key (64 hex digits).
    #[arg(long, required_unless_present = "keys_file", conflicts_with = "keys_file")]
    key: Option<String>,
    /// A file of keys, one per line (job arrays); builds line --index.
    #[arg(long)]
    keys_file: Option<PathBuf>,
    /// Line of --keys-file, from 0 [default: $SLURM_ARRAY_TASK_ID].
    #[arg(long, env = "SLURM_ARRAY_TASK_ID")]
    index: Option<usize>,
    /// The manifest's lockfile (pinned hub resolutions).
    #[arg(long)]
    lockfile: Option<PathBuf>,
    /// Fail if an external resolves differently from the lockfile, or the artifact is
    /// not the one it pins (another digest on the pinned numerics, other results tables
    /// on other numerics).
    #[arg(long)]
    locked: bool,
    /// Compute device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", value_parser = device_name)]
    device: String,
}

#[derive(clap::Args)]
struct ScoreArgs {
    /// A local checkpoint folder, a hub repo id, a model step's store folder
    /// (`goosepipe show model:NAME --path`), or `model:NAME` (that folder, from the
    /// store's last run).
    #[arg(long)]
    model: String,
    #[arg(long, default_value = "main")]
    revision: String,
    /// LoRA experts: goosepipe expert files (gates found beside them as
    /// NAME.gates.safetensors), PEFT adapter folders (adapter_config.json + weights),
    /// or `expert:NAME` from the store's last run (with its `gate:NAME` when built and
    /// no --gates are given).
    #[arg(long, num_args = 1..)]
    experts: Vec<PathBuf>,
    /// Gate files (or `gate:NAME`), when not beside the experts: matched to the
    /// experts by name (file or store step name), else one per expert in the order
    /// of --experts.
    #[arg(long, num_args = 1..)]
    gates: Vec<PathBuf>,
    /// How the experts combine: single (one expert's LoRA alone, as evaluations and
    /// PEFT run it; its gate is not applied), gated (one expert with its gate applied,
    /// as in gate training), or an evaluation method that runs with adapters alone
    /// (phatgoose, merged, arrow, base).
    #[arg(long, default_value = "single")]
    router: String,
    /// Experts kept per token and module by a routed method.
    #[arg(long, default_value_t = goosepipe::app::score::ScoreRequest::DEFAULT_TOP_K, value_parser = at_least_one)]
    top_k: usize,
    #[arg(long)]
    input: String,
    #[arg(long)]
    target: String,
    /// Compute device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", value_parser = device_name)]
    device: String,
    /// Longest input or target scored, in tokens (memory grows with its square).
    #[arg(long, default_value_t = 512, value_parser = at_least_one)]
    max_len: usize,
    /// Also show where each token is routed: per input token and decoder position,
    /// the weight each expert gets, averaged over the modules (phatgoose, arrow).
    #[arg(long)]
    routing: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ExecutorArg {
    Local,
    Slurm,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum InterruptArg {
    Ask,
    Cancel,
    Leave,
}

/// Options of `--executor slurm` (ignored by the local executor).
#[derive(clap::Args)]
#[command(next_help_heading = "Slurm executor")]
struct SlurmArgs {
    /// Submit the whole stale graph at once, chained with --dependency=afterok.
    #[arg(long)]
    submit_all: bool,
    /// Submit every step as its own job (no job arrays).
    #[arg(long)]
    no_arrays: bool,
    /// At most N tasks of one job array run at once (--array=...%N).
    #[arg(long, value_name = "N", value_parser = at_least_one, allow_negative_numbers = true)]
    array_throttle: Option<usize>,
    /// Largest array to submit [default: the cluster's MaxArraySize]; bigger batches are split.
    #[arg(long, value_name = "N", value_parser = at_least_one, allow_negative_numbers = true)]
    max_array_size: Option<usize>,
    /// At most N jobs (array tasks count one each) queued or running at once.
    #[arg(long, value_name = "N", value_parser = at_least_one, allow_negative_numbers = true)]
    max_jobs: Option<usize>,
    /// Resubmissions of a job that ended TIMEOUT, OUT_OF_MEMORY, NODE_FAIL or PREEMPTED.
    #[arg(long, default_value_t = 1, value_name = "N")]
    retries: u32,
    /// Longest wait between two polls of the scheduler, in seconds (the wait starts at
    /// half a second and grows while nothing changes).
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS", value_parser = seconds_flag, allow_negative_numbers = true)]
    poll_max: f64,
    /// How long a finished job's artifact may take to show up on the shared file system.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS", value_parser = seconds_flag, allow_negative_numbers = true)]
    latency_wait: f64,
    /// An extra sbatch flag for every job (repeatable), e.g. --sbatch-arg=--qos=high.
    #[arg(long = "sbatch-arg", value_name = "FLAG", allow_hyphen_values = true)]
    sbatch_args: Vec<String>,
    /// How long a job may pend for a reason that never clears by itself
    /// (PartitionConfig, PartitionTimeLimit, InvalidAccount, ...) before its step fails
    /// and the job is cancelled.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS", value_parser = seconds_flag, allow_negative_numbers = true)]
    pending_grace: f64,
    /// On Ctrl-C: ask whether to scancel the submitted jobs (on a terminal; otherwise
    /// they are left running), cancel them, or leave them running for the next run to adopt.
    #[arg(long, value_enum, default_value_t = InterruptArg::Ask)]
    on_interrupt: InterruptArg,
}

/// A seconds flag: a number from 0 to a year (NaN and negatives became 0 silently;
/// infinity would panic Duration::from_secs_f64).
fn seconds_flag(s: &str) -> Result<f64, String> {
    let x: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if !(0.0..=365.0 * 86400.0).contains(&x) {
        return Err("must be a number of seconds from 0 to a year".into());
    }
    Ok(x)
}

impl SlurmArgs {
    /// The Slurm flags given other than their defaults (the local executor says it
    /// ignores them, rather than ignoring them silently).
    fn given(&self) -> Vec<&'static str> {
        [
            ("--submit-all", self.submit_all),
            ("--no-arrays", self.no_arrays),
            ("--array-throttle", self.array_throttle.is_some()),
            ("--max-array-size", self.max_array_size.is_some()),
            ("--max-jobs", self.max_jobs.is_some()),
            ("--retries", self.retries != 1),
            ("--poll-max", self.poll_max != 30.0),
            ("--latency-wait", self.latency_wait != 10.0),
            ("--sbatch-arg", !self.sbatch_args.is_empty()),
            ("--pending-grace", self.pending_grace != 10.0),
            ("--on-interrupt", self.on_interrupt != InterruptArg::Ask),
        ]
        .into_iter()
        .filter_map(|(flag, given)| given.then_some(flag))
        .collect()
    }

    fn options(&self) -> goosepipe::exec::slurm::SlurmOptions {
        use goosepipe::exec::slurm::{OnInterrupt, RetryPolicy, SlurmOptions};
        let d = SlurmOptions::default();
        SlurmOptions {
            submit_all: self.submit_all,
            arrays: !self.no_arrays,
            throttle: self.array_throttle,
            max_array: self.max_array_size,
            max_jobs: self.max_jobs,
            retry: RetryPolicy {
                max_retries: self.retries,
                ..Default::default()
            },
            poll_max: Duration::from_secs_f64(self.poll_max).max(Duration::from_millis(100)),
            latency_wait: Duration::from_secs_f64(self.latency_wait),
            extra_sbatch: self.sbatch_args.clone(),
            pending_grace: Duration::from_secs_f64(self.pending_grace),
            on_interrupt: match self.on_interrupt {
                InterruptArg::Ask => OnInterrupt::Ask,
                InterruptArg::Cancel => OnInterrupt::Cancel,
                InterruptArg::Leave => OnInterrupt::Leave,
            },
            ..d
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum ExportFormat {
    /// Hugging Face PEFT (adapter_config.json + adapter_model.safetensors).
    Peft,
}

#[derive(Clone, Copy, ValueEnum)]
enum ReportFormat {
    Md,
    Csv,
    Json,
}

fn main() -> ExitCode {
    // SAFETY: first thing in main, before any thread exists.
    unsafe { goosepipe::process::threads::pin_thread_count() };
    // A usage error exits EXIT_USAGE, never 2: a CI guard reads 2 from `plan
    // --check-cached` as "something would run".
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { app::EXIT_USAGE as u8 } else { 0 });
        }
    };
    // Commands that do no tensor work: no huge pages (see the function).
    if !matches!(
        cli.command,
        Command::Run(_) | Command::Exec(_) | Command::Score(_) | Command::Export { .. }
    ) {
        goosepipe::process::alloc::without_huge_pages();
    }
    let store = Store::resolve_root(cli.store.as_deref());
    let registry = goosepipe::steps::registry();
    let mut out = std::io::stdout();
    let result = match cli.command {
        Command::Check { file } => app::check(&file, &registry, &mut out),
        Command::Plan {
            file,
            json,
            check_cached,
            verify,
            device,
            only,
            until,
        } => {
            let opts = app::PlanOptions {
                json,
                check_cached,
                verify,
                device,
                only,
                until,
            };
            app::plan_cmd(&file, &store, &registry, &opts, &mut out)
        }
        Command::Verify { files, all } => app::verify(&files, all, &store, &registry, &mut out),
        Command::Run(args) => run_command(args, &store, &registry, &mut out),
        Command::Exec(args) => exec_command(args, &store, &registry),
        Command::Graph { file, format, status } => app::graph(
            &file,
            &store,
            status,
            &registry,
            matches!(format, GraphFormat::Mermaid),
            &mut out,
        ),
        Command::Explain { file, step, device } => {
            app::explain(&file, &step, &store, &registry, &device, &mut out)
        }
        Command::Gc {
            files,
            dry_run,
            only_given,
        } => app::gc(&files, &store, &registry, dry_run, only_given, &mut out),
        Command::Show {
            what,
            manifest,
            json,
            path,
        } => app::lookup(&what, manifest.as_deref(), &store, &registry, false)
            .and_then(|what| app::show(&what, &store, json, path, &mut out)),
        Command::Export {
            what,
            format: ExportFormat::Peft,
            dir,
            force,
            model,
            manifest,
        } => app::lookup(&what, manifest.as_deref(), &store, &registry, true)
            .and_then(|what| app::export(&what, model.as_deref(), &dir, &store, force, &mut out)),
        Command::Report {
            file,
            format,
            plots,
            examples,
            eval,
            wrong,
            limit,
        } => {
            let f = match format {
                ReportFormat::Md => "md",
                ReportFormat::Csv => "csv",
                ReportFormat::Json => "json",
            };
            match examples {
                Some(task) if f == "csv" => Err(app::usage(
                    format!("report --examples {task} has no CSV form"),
                    Some("use --format md or json".into()),
                )),
                Some(task) => {
                    let req = app::examples::ExamplesRequest {
                        task: &task,
                        eval: eval.as_deref(),
                        select: goosepipe::eval::predictions::Selection {
                            limit,
                            wrong: wrong.as_deref(),
                        },
                        format: f,
                    };
                    app::examples::examples(&file, &store, &registry, &req, &mut out)
                }
                None => app::report(&file, &store, &registry, f, plots.as_deref(), &mut out),
            }
        }
        Command::Score(args) => score_command(args, &store, &mut out),
        Command::Schema => {
            // A closed pipe (`goosepipe schema | head`) is not an error of ours.
            let _ = out.write_all(goosepipe::manifest::schema::SCHEMA_TEXT.as_bytes());
            Ok(app::EXIT_OK)
        }
    };
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(report) => {
            // writeln!, not eprintln!: a closed stderr (`2>&1 | head`) must not turn
            // an error into a panic's exit code.
            let _ = writeln!(std::io::stderr(), "{report:?}");
            let code = if report.downcast_ref::<app::UsageError>().is_some() {
                app::EXIT_USAGE
            } else {
                app::EXIT_ERROR
            };
            ExitCode::from(code as u8)
        }
    }
}

/// `goosepipe run`: Ctrl-C handling and the executor around the app's run.
fn run_command(args: RunArgs, store: &Path, registry: &Registry, out: &mut Stdout) -> miette::Result<i32> {
    let Some(file) = args.file else {
        // `--only` takes every word after it, the manifest's name too.
        let hint = match args.only.last() {
            Some(last) if last.ends_with(".kdl") || Path::new(last).is_file() => format!(
                "--only took `{last}` as a step: put the manifest first, `goosepipe run {last} --only {}`",
                args.only[..args.only.len() - 1].join(" ")
            ),
            _ => "goosepipe run FILE (the manifest, e.g. pipelines/quickstart.kdl)".into(),
        };
        return Err(app::usage("run needs the manifest FILE", Some(hint)));
    };
    if args.dry_run {
        return Err(app::usage(
            "`run` has no --dry-run",
            Some(format!(
                "`goosepipe plan {}` says what would run and why, and runs nothing",
                file.display()
            )),
        ));
    }
    let cancel = CancelFlag::new();
    let c = cancel.clone();
    // First Ctrl-C: stop cleanly (running steps checkpoint and stop). Second: now.
    let _ = ctrlc::set_handler(move || {
        if c.is_cancelled() {
            std::process::exit(app::EXIT_INTERRUPTED);
        }
        let _ = writeln!(
            std::io::stderr(),
            "\ninterrupt: stopping after the running steps save their progress (interrupt again, e.g. Ctrl-C, to quit now)"
        );
        c.cancel();
    });
    let opts = RunOptions {
        jobs: args.jobs,
        only: args.only,
        until: args.until,
        keep_going: args.keep_going,
        locked: args.locked,
        verify: args.verify,
        device: args.device,
    };
    let cli = goosepipe::exec::slurm::SlurmCli::new();
    let slurm_executor;
    let executor: &dyn goosepipe::exec::Executor = match args.executor {
        ExecutorArg::Local => {
            let ignored = args.slurm.given();
            if !ignored.is_empty() {
                let _ = writeln!(
                    std::io::stderr(),
                    "note: {} {} to --executor slurm only; this run uses the local executor and ignores {}",
                    ignored.join(", "),
                    if ignored.len() == 1 { "applies" } else { "apply" },
                    if ignored.len() == 1 { "it" } else { "them" }
                );
            }
            &goosepipe::exec::Local
        }
        ExecutorArg::Slurm => {
            slurm_executor = goosepipe::exec::slurm::Slurm {
                opts: args.slurm.options(),
                scheduler: &cli,
            };
            &slurm_executor
        }
    };
    let req = app::RunRequest {
        manifest: &file,
        store,
        registry,
        opts: &opts,
        executor,
        quiet: args.quiet,
        cancel: &cancel,
    };
    app::run_with(&req, out)
}

/// `goosepipe exec`: one step from the store (what a Slurm job runs).
fn exec_command(args: ExecArgs, store: &Path, registry: &Registry) -> miette::Result<i32> {
    let ExecArgs {
        key,
        keys_file,
        index,
        lockfile,
        locked,
        device,
    } = args;
    // Slurm sends SIGTERM before killing a job at its time limit or on
    // preemption: stop at the next checkpoint so a retry resumes from it.
    let cancel = CancelFlag::new();
    let c = cancel.clone();
    let _ = ctrlc::set_handler(move || c.cancel());
    let target = match (key, keys_file) {
        (Some(k), _) => app::ExecTarget::Key(k),
        (None, Some(file)) => app::ExecTarget::List {
            index: index.ok_or_else(|| {
                app::usage(
                    format!(
                        "exec --keys-file {} needs --index N, or SLURM_ARRAY_TASK_ID set (as in a job array task)",
                        file.display()
                    ),
                    None,
                )
            })?,
            file,
        },
        (None, None) => return Err(app::usage("exec needs --key KEY or --keys-file FILE", None)),
    };
    let opts = RunOptions {
        locked,
        device,
        ..Default::default()
    };
    app::exec_cmd(store, &target, lockfile.as_deref(), &opts, registry, &cancel)
}

/// `goosepipe score`: one input scored by a model, optionally with routed experts.
fn score_command(args: ScoreArgs, store: &Path, out: &mut Stdout) -> miette::Result<i32> {
    let ScoreArgs {
        model,
        revision,
        experts,
        gates,
        router,
        top_k,
        input,
        target,
        device,
        max_len,
        routing,
        json,
    } = args;
    match goosepipe::app::score::RouterChoice::parse(&router) {
        Err(e) => Err(app::usage(format!("--router: {e}"), None)),
        Ok(router) => {
            router
                .takes(experts.len(), gates.len())
                .map_err(|e| app::usage(e, None))?;
            if routing {
                router.traces().map_err(|e| app::usage(e, None))?;
            }
            let mut req = goosepipe::app::score::ScoreRequest::new(model, input, target);
            req.revision = revision;
            req.experts = experts;
            req.gates = gates;
            req.router = router;
            req.top_k = top_k;
            req.device = device;
            req.max_len = max_len;
            req.routing = routing;
            let notes = goosepipe::app::score::resolve_step_ids(&mut req, store)
                .map_err(|e| miette::miette!("{e}"))?;
            for note in notes {
                eprintln!("note: {note}");
            }
            app::score(&req, json, out)
        }
    }
}
