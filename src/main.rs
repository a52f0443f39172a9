//! The goosepipe command line: argument parsing only; the work is in `goosepipe::app`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use goosepipe::app;
use goosepipe::exec::{CancelFlag, RunOptions};
use goosepipe::store::Store;

#[derive(Parser)]
#[command(
    name = "goosepipe",
    version,
    about = "Declarative, content-addressed PHATGOOSE pipelines: recycle LoRA experts for zero-shot generalization"
)]
struct Cli {
    /// Artifact store folder [env: GOOSEPIPE_STORE; default: .goosepipe]
    #[arg(long, global = true)]
    store: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
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
    Plan {
        file: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Exit with code 2 if anything would run (CI guard).
        #[arg(long)]
        check_cached: bool,
    },
    /// Run the stale steps in dependency order and update the lockfile.
    Run {
        file: PathBuf,
        /// Steps run in parallel.
        #[arg(short = 'j', long, default_value_t = 1)]
        jobs: usize,
        /// Run only these steps (ids like expert:NAME, or unique names).
        #[arg(long, num_args = 1..)]
        only: Vec<String>,
        /// Run this step and everything it needs.
        #[arg(long, conflicts_with = "only")]
        until: Option<String>,
        /// Keep running independent steps after a failure.
        #[arg(long)]
        keep_going: bool,
        /// Fail if the lockfile would change (external resolutions, keys, digests).
        #[arg(long)]
        locked: bool,
        /// Compute device: cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// No progress output.
        #[arg(short, long)]
        quiet: bool,
    },
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
    Explain { file: PathBuf, step: String },
    /// Delete store entries no given manifest reaches, and leftovers of interrupted runs.
    Gc {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// List what would be deleted, with sizes, and delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// An artifact's metadata and files, by step id, name, key or key prefix.
    Show {
        what: String,
        #[arg(long)]
        json: bool,
    },
    /// Print the manifest schema (every node and property, documented).
    Schema,
    /// The results tables of a manifest's evaluations, from the store (runs nothing).
    Report {
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = ReportFormat::Md)]
        format: ReportFormat,
    },
    /// Per-token log-probabilities of TARGET given INPUT under a model (and experts).
    Score {
        /// A local checkpoint folder or a hub repo id.
        #[arg(long)]
        model: String,
        #[arg(long, default_value = "main")]
        revision: String,
        /// LoRA expert files (gates are found beside them as NAME.gates.safetensors).
        #[arg(long, num_args = 1..)]
        experts: Vec<PathBuf>,
        /// Gate files, when not beside the experts.
        #[arg(long, num_args = 1..)]
        gates: Vec<PathBuf>,
        /// How several experts combine: phatgoose, merged, or single.
        #[arg(long, default_value = "single")]
        router: String,
        #[arg(long, default_value_t = 2)]
        top_k: usize,
        #[arg(long)]
        input: String,
        #[arg(long)]
        target: String,
        #[arg(long, default_value = "cpu")]
        device: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ReportFormat {
    Md,
    Csv,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let store = Store::resolve_root(cli.store.as_deref());
    let registry = goosepipe::steps::registry();
    let mut out = std::io::stdout();
    let result = match cli.command {
        Command::Check { file } => app::check(&file, &registry, &mut out),
        Command::Plan {
            file,
            json,
            check_cached,
        } => app::plan_cmd(&file, &store, &registry, json, check_cached, &mut out),
        Command::Run {
            file,
            jobs,
            only,
            until,
            keep_going,
            locked,
            device,
            quiet,
        } => {
            let cancel = CancelFlag::new();
            let c = cancel.clone();
            // First Ctrl-C: stop cleanly (running steps checkpoint and stop). Second: now.
            let _ = ctrlc::set_handler(move || {
                if c.is_cancelled() {
                    std::process::exit(app::EXIT_INTERRUPTED);
                }
                eprintln!(
                    "\ninterrupt: stopping after the running steps save their progress (Ctrl-C again to quit now)"
                );
                c.cancel();
            });
            let opts = RunOptions {
                jobs,
                only,
                until,
                keep_going,
                locked,
                device,
            };
            app::run(&file, &store, &registry, &opts, quiet, &cancel, &mut out)
        }
        Command::Graph { file, format, status } => app::graph(
            &file,
            status.then_some(store.as_path()),
            &registry,
            matches!(format, GraphFormat::Mermaid),
            &mut out,
        ),
        Command::Explain { file, step } => app::explain(&file, &step, &store, &registry, &mut out),
        Command::Gc { files, dry_run } => app::gc(&files, &store, &registry, dry_run, &mut out),
        Command::Show { what, json } => app::show(&what, &store, json, &mut out),
        Command::Report { file, format } => {
            let f = match format {
                ReportFormat::Md => "md",
                ReportFormat::Csv => "csv",
                ReportFormat::Json => "json",
            };
            app::report(&file, &store, &registry, f, &mut out)
        }
        Command::Score {
            model,
            revision,
            experts,
            gates,
            router,
            top_k,
            input,
            target,
            device,
            json,
        } => match goosepipe::model::score::RouterChoice::parse(&router) {
            Err(e) => Err(miette::miette!("--router: {e}")),
            Ok(router) => {
                let mut req = goosepipe::model::ScoreRequest::new(model, input, target);
                req.revision = revision;
                req.experts = experts;
                req.gates = gates;
                req.router = router;
                req.top_k = top_k;
                req.device = device;
                app::score(&req, json, &mut out)
            }
        },
        Command::Schema => {
            print!("{}", goosepipe::manifest::schema::SCHEMA_TEXT);
            Ok(app::EXIT_OK)
        }
    };
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(report) => {
            eprintln!("{report:?}");
            ExitCode::from(app::EXIT_ERROR as u8)
        }
    }
}
