//! Progress reporting: indicatif bars on a terminal (an overall bar over steps and a
//! bar per running step with ETA), plain one-line-per-event logs otherwise.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// What a running step reports; cheap to call often.
pub trait StepProgress: Send + Sync {
    /// Total units of work (training steps, examples) and their name.
    fn set_total(&self, total: u64, unit: &str);
    fn set_position(&self, pos: u64);
    /// Short status shown beside the bar (loss, steps/s).
    fn set_message(&self, msg: &str);
    /// A line worth keeping in the log (validation results, resumption).
    fn log(&self, line: &str);
}

/// Progress that shows nothing (a preview's, a test's).
pub struct Silent;

impl StepProgress for Silent {
    fn set_total(&self, _: u64, _: &str) {}
    fn set_position(&self, _: u64) {}
    fn set_message(&self, _: &str) {}
    fn log(&self, _: &str) {}
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Built,
    /// Another run published the same key while we waited for its lock.
    Reused,
    /// A twin: an earlier step of this run has the same key and built the artifact.
    Shared,
    Failed,
    Cancelled,
    Skipped,
}

/// How a finished step is announced: the outcome word and the ": detail" suffix.
fn finish_words(outcome: Outcome, detail: &str) -> (&'static str, String) {
    let word = match outcome {
        Outcome::Built => "done",
        Outcome::Reused => "reused (built by another run)",
        Outcome::Shared => "shared",
        Outcome::Failed => "FAILED",
        Outcome::Cancelled => "cancelled",
        Outcome::Skipped => "skipped",
    };
    let detail = if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    };
    (word, detail)
}

pub trait Reporter: Send + Sync {
    fn begin(&self, to_run: usize, cached: usize);
    fn started(&self, id: &str, short_key: &str) -> Box<dyn StepProgress + '_>;
    fn finished(&self, id: &str, outcome: Outcome, seconds: f64, detail: &str);
    fn note(&self, line: &str);
    /// A step that waits outside this process (a queued Slurm job) and why: a line of
    /// the log; on a terminal, its own line that the step's bar replaces when it starts.
    fn waiting(&self, id: &str, why: &str) {
        self.note(&format!("{id}: {why}"));
    }
    fn end(&self);
}

/// Picks bars for a terminal, plain lines otherwise.
pub fn reporter_for_stderr(quiet: bool) -> Box<dyn Reporter> {
    if !quiet && std::io::stderr().is_terminal() {
        Box::new(BarReporter::new())
    } else {
        Box::new(PlainReporter::new(quiet))
    }
}

pub struct PlainReporter {
    start: Instant,
    quiet: bool,
    out: Mutex<()>,
}

impl PlainReporter {
    pub fn new(quiet: bool) -> PlainReporter {
        PlainReporter {
            start: Instant::now(),
            quiet,
            out: Mutex::new(()),
        }
    }
    fn line(&self, s: &str) {
        if self.quiet {
            return;
        }
        let _g = self.out.lock();
        let t = self.start.elapsed().as_secs_f64();
        let _ = writeln!(std::io::stderr(), "[{t:7.1}s] {s}");
    }
}

struct PlainStep<'a> {
    r: &'a PlainReporter,
    id: String,
    state: Mutex<PlainState>,
}

struct PlainState {
    total: u64,
    unit: String,
    pos: u64,
    msg: String,
    last: Instant,
    last_pct: u64,
    started: Instant,
}

impl StepProgress for PlainStep<'_> {
    fn set_total(&self, total: u64, unit: &str) {
        if let Ok(mut s) = self.state.lock() {
            s.total = total;
            s.unit = unit.to_string();
        }
    }
    fn set_position(&self, pos: u64) {
        let Ok(mut s) = self.state.lock() else { return };
        s.pos = pos;
        // One line per 10% or per 10 s, whichever comes first: readable in CI logs.
        let pct = (pos * 100).checked_div(s.total).unwrap_or(0);
        if pct / 10 > s.last_pct / 10 || s.last.elapsed() > Duration::from_secs(10) || pos == s.total {
            s.last = Instant::now();
            s.last_pct = pct;
            let el = s.started.elapsed().as_secs_f64();
            let eta = if pos > 0 && s.total > pos {
                format!(", eta {:.0}s", el / pos as f64 * (s.total - pos) as f64)
            } else {
                String::new()
            };
            let line = format!("  {} {}/{} {}{} {}", self.id, pos, s.total, s.unit, eta, s.msg);
            drop(s);
            self.r.line(&line);
        }
    }
    fn set_message(&self, msg: &str) {
        if let Ok(mut s) = self.state.lock() {
            s.msg = msg.to_string();
        }
    }
    fn log(&self, line: &str) {
        self.r.line(&format!("  {}: {line}", self.id));
    }
}

impl Reporter for PlainReporter {
    fn begin(&self, to_run: usize, cached: usize) {
        self.line(&format!("running {to_run} step(s), {cached} cached"));
    }
    fn started(&self, id: &str, short_key: &str) -> Box<dyn StepProgress + '_> {
        self.line(&format!("start {id} [{short_key}]"));
        Box::new(PlainStep {
            r: self,
            id: id.to_string(),
            state: Mutex::new(PlainState {
                total: 0,
                unit: String::new(),
                pos: 0,
                msg: String::new(),
                last: Instant::now(),
                last_pct: 0,
                started: Instant::now(),
            }),
        })
    }
    fn finished(&self, id: &str, outcome: Outcome, seconds: f64, detail: &str) {
        let (what, detail) = finish_words(outcome, detail);
        self.line(&format!("{what} {id} ({seconds:.1}s){detail}"));
    }
    fn note(&self, line: &str) {
        self.line(line);
    }
    fn end(&self) {}
}

pub struct BarReporter {
    multi: MultiProgress,
    overall: ProgressBar,
    /// Steps waiting (queued jobs), each on a line of its own until it starts or ends.
    waiting: Mutex<std::collections::HashMap<String, ProgressBar>>,
}

impl BarReporter {
    pub fn new() -> BarReporter {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(8));
        let overall = multi.add(ProgressBar::new(0));
        overall.set_style(
            ProgressStyle::with_template(
                "{prefix:>8.bold} [{bar:30.green/white}] {pos}/{len} steps  {elapsed_precise} (eta {eta})",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        overall.set_prefix("pipeline");
        BarReporter {
            multi,
            overall,
            waiting: Mutex::new(std::collections::HashMap::new()),
        }
    }
}

impl BarReporter {
    fn stop_waiting(&self, id: &str) {
        if let Some(bar) = self.waiting.lock().unwrap_or_else(|e| e.into_inner()).remove(id) {
            bar.finish_and_clear();
        }
    }
}

impl Default for BarReporter {
    fn default() -> Self {
        Self::new()
    }
}

struct BarStep {
    bar: ProgressBar,
}

impl StepProgress for BarStep {
    fn set_total(&self, total: u64, unit: &str) {
        self.bar.set_length(total);
        self.bar.set_style(
            ProgressStyle::with_template(&format!(
                "  {{prefix:30}} [{{bar:25.cyan/blue}}] {{pos}}/{{len}} {unit} {{per_sec}} eta {{eta}} {{msg}}"
            ))
            .expect("valid template")
            .progress_chars("=> "),
        );
    }
    fn set_position(&self, pos: u64) {
        self.bar.set_position(pos);
    }
    fn set_message(&self, msg: &str) {
        self.bar.set_message(msg.to_string());
    }
    fn log(&self, line: &str) {
        self.bar.println(format!("  {}: {line}", self.bar.prefix()));
    }
}

impl Reporter for BarReporter {
    fn begin(&self, to_run: usize, cached: usize) {
        self.overall.set_length(to_run as u64);
        self.overall
            .println(format!("running {to_run} step(s), {cached} cached"));
    }
    fn started(&self, id: &str, _short_key: &str) -> Box<dyn StepProgress + '_> {
        self.stop_waiting(id);
        let bar = self.multi.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("  {prefix:30} {spinner} {elapsed} {msg}").expect("valid template"),
        );
        bar.set_prefix(id.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        Box::new(BarStep { bar })
    }
    fn finished(&self, id: &str, outcome: Outcome, seconds: f64, detail: &str) {
        self.stop_waiting(id);
        let (mark, detail) = finish_words(outcome, detail);
        self.overall
            .println(format!("{mark:>9} {id} ({seconds:.1}s){detail}"));
        if matches!(outcome, Outcome::Built | Outcome::Reused | Outcome::Shared) {
            self.overall.inc(1);
        }
    }
    fn note(&self, line: &str) {
        self.overall.println(line);
    }
    fn waiting(&self, id: &str, why: &str) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let bar = waiting.entry(id.to_string()).or_insert_with(|| {
            let bar = self.multi.add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template("  {prefix:30} {elapsed} {msg}").expect("valid template"),
            );
            bar.set_prefix(id.to_string());
            bar.enable_steady_tick(Duration::from_millis(500));
            bar
        });
        bar.set_message(why.to_string());
    }
    fn end(&self) {
        for (_, bar) in self.waiting.lock().unwrap_or_else(|e| e.into_inner()).drain() {
            bar.finish_and_clear();
        }
        self.overall.finish_and_clear();
        let _ = self.multi.clear();
    }
}

impl Drop for BarStep {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}
