//! Hub requests watched for silence instead of bounded in total.
//!
//! A request runs on its own thread; the caller waits as long as the hub
//! keeps talking and gives up after `silence` without a sign of life: before
//! the hub answers at all, or between two pieces of a download. A total
//! deadline cannot tell the two apart: one long enough for an 11 GB checkpoint
//! hangs for minutes on an unreachable hub, and one short enough to fail fast
//! cuts off every large download. On giving up the thread is left to finish
//! or fail on its own (hf-hub's blocking calls cannot be cancelled); its
//! partial download stays an `.incomplete` file that the next try replaces,
//! and files that completed stay in the cache.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use hf_hub::progress::{DownloadEvent, Progress, ProgressEvent, ProgressHandler};

/// Why a watched request was given up.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Silence {
    /// Nothing came back within the limit.
    NoAnswer,
    /// The download started and then stopped for the limit: `bytes` of
    /// `total` (0 when the hub did not say) had arrived.
    Stalled { bytes: u64, total: u64 },
}

impl Silence {
    /// What happened, as a clause for the caller's sentence.
    pub(crate) fn explain(&self, limit: Duration) -> String {
        let s = limit.as_secs_f64();
        match self {
            Silence::NoAnswer => format!("the hub did not answer within {s} s"),
            Silence::Stalled { bytes, total } => {
                let of = if *total > 0 {
                    format!(" of {total}")
                } else {
                    String::new()
                };
                format!("the download stalled: no data for {s} s after {bytes}{of} bytes")
            }
        }
    }
}

/// Signs of life from a download, written by hf-hub's progress events.
struct Heartbeat {
    last: Mutex<Instant>,
    started: AtomicU64,
    bytes: AtomicU64,
    total: AtomicU64,
}

impl Heartbeat {
    fn touch(&self) {
        if let Ok(mut last) = self.last.lock() {
            *last = Instant::now();
        }
    }

    /// A sign of life only when more bytes arrived: xet reports its totals
    /// on a timer, also while nothing moves.
    fn arrived(&self, bytes: u64) {
        if self.bytes.fetch_max(bytes, Ordering::Relaxed) < bytes {
            self.touch();
        }
    }
}

impl ProgressHandler for Heartbeat {
    fn on_progress(&self, event: &ProgressEvent) {
        let ProgressEvent::Download(event) = event else {
            return;
        };
        match event {
            DownloadEvent::Start { total_bytes, .. } => {
                self.total.store(*total_bytes, Ordering::Relaxed);
                self.started.store(1, Ordering::Relaxed);
                self.touch();
            }
            DownloadEvent::Progress { files } => self.arrived(files.iter().map(|f| f.bytes_completed).sum()),
            DownloadEvent::AggregateProgress { bytes_completed, .. } => self.arrived(*bytes_completed),
            _ => self.touch(),
        }
    }
}

/// How often a running download is reported.
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// Runs `request` on its own thread and returns its result, or why it was
/// given up after `silence` without a sign of life. `request` gets a
/// progress handler to pass to hf-hub; requests that report no progress
/// (listings, metadata) are bounded by `silence` in total. Once a download
/// has started, `report` gets (bytes received, total or 0) about once a
/// second, on the calling thread.
pub(crate) fn watched<T, F>(
    silence: Duration,
    report: Option<&dyn Fn(u64, u64)>,
    request: F,
) -> Result<T, Silence>
where
    T: Send + 'static,
    F: FnOnce(Progress) -> T + Send + 'static,
{
    let beat = Arc::new(Heartbeat {
        last: Mutex::new(Instant::now()),
        started: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        total: AtomicU64::new(0),
    });
    let (tx, rx) = mpsc::channel();
    let progress = Progress::from(Arc::clone(&beat));
    std::thread::spawn(move || {
        let _ = tx.send(request(progress));
    });
    let mut next_report = Instant::now() + REPORT_EVERY;
    loop {
        let last = beat.last.lock().map(|l| *l).unwrap_or_else(|p| *p.into_inner());
        let mut wait = silence.saturating_sub(last.elapsed());
        if report.is_some() {
            wait = wait.min(next_report.saturating_duration_since(Instant::now()));
        }
        match rx.recv_timeout(wait) {
            Ok(result) => return Ok(result),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // The request thread died without sending (a panic inside
                // hf-hub): no answer will come.
                return Err(Silence::NoAnswer);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let quiet = beat.last.lock().map(|l| l.elapsed()).unwrap_or(silence);
                if quiet < silence {
                    // Still talking (or a report is due before the limit).
                    if let Some(report) = report
                        && Instant::now() >= next_report
                    {
                        next_report += REPORT_EVERY;
                        if beat.started.load(Ordering::Relaxed) == 1 {
                            report(
                                beat.bytes.load(Ordering::Relaxed),
                                beat.total.load(Ordering::Relaxed),
                            );
                        }
                    }
                    continue;
                }
                return Err(if beat.started.load(Ordering::Relaxed) == 0 {
                    Silence::NoAnswer
                } else {
                    Silence::Stalled {
                        bytes: beat.bytes.load(Ordering::Relaxed),
                        total: beat.total.load(Ordering::Relaxed),
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hf_hub::progress::{FileProgress, FileStatus};

    fn tick(p: &Progress, bytes: u64) {
        p.on_progress(&ProgressEvent::Download(DownloadEvent::Progress {
            files: vec![FileProgress {
                filename: "f".into(),
                bytes_completed: bytes,
                total_bytes: 100,
                status: FileStatus::InProgress,
            }],
        }));
    }

    #[test]
    fn a_request_that_keeps_reporting_may_take_longer_than_the_limit() {
        let limit = Duration::from_millis(150);
        let t0 = Instant::now();
        let seen = std::cell::RefCell::new(Vec::new());
        let report = |b: u64, t: u64| seen.borrow_mut().push((b, t));
        let got = watched(limit, Some(&report), |p| {
            p.on_progress(&ProgressEvent::Download(DownloadEvent::Start {
                total_files: 1,
                total_bytes: 100,
            }));
            for b in 1..=10 {
                std::thread::sleep(Duration::from_millis(120));
                tick(&p, b * 10);
            }
            "done"
        });
        assert_eq!(got, Ok("done"));
        assert!(t0.elapsed() > limit * 8);
        // 1.2 s of download, reported once a second: one report or two, of
        // bytes that had arrived by then.
        let seen = seen.into_inner();
        assert!(!seen.is_empty() && seen.len() <= 2, "{seen:?}");
        assert!(
            seen.iter().all(|&(b, t)| (10..100).contains(&b) && t == 100),
            "{seen:?}"
        );
    }

    #[test]
    fn silence_before_any_answer_and_after_a_start_are_told_apart() {
        let limit = Duration::from_millis(100);
        let t0 = Instant::now();
        let none = watched(limit, None, |_| std::thread::sleep(Duration::from_secs(2)));
        assert_eq!(none, Err(Silence::NoAnswer));
        assert!(t0.elapsed() < Duration::from_secs(1));
        let stalled = watched(limit, None, |p| {
            p.on_progress(&ProgressEvent::Download(DownloadEvent::Start {
                total_files: 1,
                total_bytes: 100,
            }));
            tick(&p, 40);
            std::thread::sleep(Duration::from_secs(2));
        });
        assert_eq!(
            stalled,
            Err(Silence::Stalled {
                bytes: 40,
                total: 100
            })
        );
        assert_eq!(
            Silence::Stalled {
                bytes: 40,
                total: 100
            }
            .explain(Duration::from_secs(60)),
            "the download stalled: no data for 60 s after 40 of 100 bytes"
        );
    }
}
