//! Hub requests watched for silence instead of bounded in total.
//!
//! A request runs on its own thread; the caller waits as long as the hub
//! keeps talking and gives up after `silence` without a sign of life: before
//! the hub answers at all, or between two pieces of a download. A total
//! deadline cannot tell the two apart: one long enough for an 11 GB checkpoint
//! hangs for minutes on an unreachable hub, and one short enough to fail fast
//! cuts off every large download.
//!
//! On giving up the thread is left to finish or fail on its own (hf-hub's
//! blocking calls cannot be cancelled). Files that completed stay in the
//! cache; the stalled one stays an `.incomplete` file, and while the
//! abandoned thread lives it holds hf-hub's lock on that file, so a retry in
//! the same process waits for the lock and fails (hf-hub gives up after
//! 10 s); the next run starts that file again.
//!
//! Xet-backed files (most large files on the hub now) report the bytes
//! written to the file in order, which can stand still while later parts
//! are fetched in parallel; once a download reports the xet way, it may stay
//! silent [`XET_PATIENCE`] times longer (xet has read timeouts of its own).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use hf_hub::progress::{DownloadEvent, Progress, ProgressEvent, ProgressHandler};

/// How many times the silence limit a xet download may stay silent.
pub(crate) const XET_PATIENCE: u32 = 5;

/// Told about a running download about once a second: the file, the bytes
/// received and the total (0 when the hub did not say).
pub type DownloadReport<'a> = dyn Fn(&str, u64, u64) + 'a;

/// How often a running download is reported.
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// Why a watched request was given up.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Silence {
    /// Nothing came back within `after`.
    NoAnswer { after: Duration },
    /// The download started and then stopped for `after`: `bytes` of
    /// `total` (0 when the hub did not say) had arrived.
    Stalled { after: Duration, bytes: u64, total: u64 },
    /// The request's thread ended without an answer (a panic inside hf-hub).
    Crashed,
}

impl Silence {
    /// What happened, as a clause for the caller's sentence.
    pub(crate) fn explain(&self) -> String {
        match self {
            Silence::NoAnswer { after } => {
                format!("the hub did not answer within {} s", after.as_secs_f64())
            }
            Silence::Stalled { after, bytes, total } => {
                let of = if *total > 0 {
                    format!(" of {total}")
                } else {
                    String::new()
                };
                format!(
                    "the download stalled: no data for {} s after {bytes}{of} bytes",
                    after.as_secs_f64()
                )
            }
            Silence::Crashed => "the download stopped without an answer (hf-hub panicked)".into(),
        }
    }
}

/// Signs of life from a download, written by hf-hub's progress events.
struct Heartbeat {
    last: Mutex<Instant>,
    started: AtomicBool,
    xet: AtomicBool,
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

    fn quiet(&self) -> Duration {
        self.last
            .lock()
            .map(|l| l.elapsed())
            .unwrap_or_else(|p| p.into_inner().elapsed())
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
                self.started.store(true, Ordering::Relaxed);
                self.touch();
            }
            DownloadEvent::Progress { files } => self.arrived(files.iter().map(|f| f.bytes_completed).sum()),
            DownloadEvent::AggregateProgress { bytes_completed, .. } => {
                self.xet.store(true, Ordering::Relaxed);
                self.arrived(*bytes_completed)
            }
            _ => self.touch(),
        }
    }
}

/// Runs `request` on its own thread and returns its result, or why it was
/// given up after `silence` without a sign of life. `request` gets a
/// progress handler to pass to hf-hub; requests that report no progress
/// (listings, metadata) are bounded by `silence` in total. Once a download
/// has started, `report` (a file name and where to tell) gets the file,
/// bytes received and total (or 0) about once a second, on the calling
/// thread.
pub(crate) fn watched<T, F>(
    silence: Duration,
    report: Option<(&str, &DownloadReport<'_>)>,
    request: F,
) -> Result<T, Silence>
where
    T: Send + 'static,
    F: FnOnce(Progress) -> T + Send + 'static,
{
    let beat = Arc::new(Heartbeat {
        last: Mutex::new(Instant::now()),
        started: AtomicBool::new(false),
        xet: AtomicBool::new(false),
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
        let limit = if beat.xet.load(Ordering::Relaxed) {
            silence * XET_PATIENCE
        } else {
            silence
        };
        let quiet = beat.quiet();
        if quiet >= limit {
            let after = limit;
            return Err(if beat.started.load(Ordering::Relaxed) {
                Silence::Stalled {
                    after,
                    bytes: beat.bytes.load(Ordering::Relaxed),
                    total: beat.total.load(Ordering::Relaxed),
                }
            } else {
                Silence::NoAnswer { after }
            });
        }
        let now = Instant::now();
        if let Some((file, report)) = report
            && now >= next_report
        {
            // From now, not from the missed time: no burst of catch-up reports
            // after the caller was descheduled.
            next_report = now + REPORT_EVERY;
            if beat.started.load(Ordering::Relaxed) {
                report(
                    file,
                    beat.bytes.load(Ordering::Relaxed),
                    beat.total.load(Ordering::Relaxed),
                );
            }
        }
        let mut wait = limit - quiet;
        if report.is_some() {
            wait = wait.min(next_report.saturating_duration_since(now));
        }
        match rx.recv_timeout(wait) {
            Ok(result) => return Ok(result),
            Err(mpsc::RecvTimeoutError::Disconnected) => return Err(Silence::Crashed),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
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

    fn start(p: &Progress, total: u64) {
        p.on_progress(&ProgressEvent::Download(DownloadEvent::Start {
            total_files: 1,
            total_bytes: total,
        }));
    }

    fn xet_tick(p: &Progress, bytes: u64) {
        p.on_progress(&ProgressEvent::Download(DownloadEvent::AggregateProgress {
            bytes_completed: bytes,
            total_bytes: 100,
            bytes_per_sec: None,
        }));
    }

    #[test]
    fn a_request_that_keeps_reporting_may_take_longer_than_the_limit() {
        let limit = Duration::from_millis(400);
        let t0 = Instant::now();
        let seen = std::cell::RefCell::new(Vec::new());
        let report = |f: &str, b: u64, t: u64| seen.borrow_mut().push((f.to_string(), b, t));
        let got = watched(limit, Some(("f", &report)), |p| {
            start(&p, 200);
            for b in 1..=12 {
                std::thread::sleep(Duration::from_millis(100));
                tick(&p, b * 10);
            }
            "done"
        });
        assert_eq!(got, Ok("done"));
        assert!(t0.elapsed() > limit * 5 / 2);
        // 1.2 s of download, reported once a second: one report or two, of
        // bytes that had arrived by then.
        let seen = seen.into_inner();
        assert!(!seen.is_empty() && seen.len() <= 2, "{seen:?}");
        assert!(
            seen.iter()
                .all(|(f, b, t)| f == "f" && (10..=120).contains(b) && *t == 200),
            "{seen:?}"
        );
    }

    #[test]
    fn silence_before_any_answer_and_after_a_start_are_told_apart() {
        let limit = Duration::from_millis(100);
        let t0 = Instant::now();
        let none = watched(limit, None, |_| std::thread::sleep(Duration::from_secs(2)));
        assert_eq!(none, Err(Silence::NoAnswer { after: limit }));
        assert!(t0.elapsed() < Duration::from_secs(1));
        let stalled = watched(limit, None, |p| {
            start(&p, 100);
            tick(&p, 40);
            std::thread::sleep(Duration::from_secs(2));
        });
        let want = Silence::Stalled {
            after: limit,
            bytes: 40,
            total: 100,
        };
        assert_eq!(stalled, Err(want));
        let minute = Silence::Stalled {
            after: Duration::from_secs(60),
            bytes: 40,
            total: 100,
        };
        assert_eq!(
            minute.explain(),
            "the download stalled: no data for 60 s after 40 of 100 bytes"
        );
        assert_eq!(
            Silence::NoAnswer {
                after: Duration::from_millis(800)
            }
            .explain(),
            "the hub did not answer within 0.8 s"
        );
    }

    #[test]
    fn a_xet_download_may_stand_still_longer_but_not_forever() {
        let limit = Duration::from_millis(100);
        // Written bytes flat for 3.5 limits (ticking on xet's timer), then on.
        let got = watched(limit, None, |p| {
            start(&p, 100);
            for _ in 0..7 {
                std::thread::sleep(Duration::from_millis(50));
                xet_tick(&p, 0);
            }
            xet_tick(&p, 60);
            "done"
        });
        assert_eq!(got, Ok("done"));
        let t0 = Instant::now();
        let stuck = watched(limit, None, |p| {
            start(&p, 100);
            xet_tick(&p, 10);
            for _ in 0..40 {
                std::thread::sleep(Duration::from_millis(50));
                xet_tick(&p, 10);
            }
        });
        let after = limit * XET_PATIENCE;
        assert_eq!(
            stuck,
            Err(Silence::Stalled {
                after,
                bytes: 10,
                total: 100
            })
        );
        assert!(
            t0.elapsed() >= after && t0.elapsed() < after * 3,
            "{:?}",
            t0.elapsed()
        );
    }

    #[test]
    fn a_request_that_panics_is_reported_as_such() {
        let got: Result<(), _> = watched(Duration::from_secs(5), None, |_| panic!("inside hf-hub"));
        assert_eq!(got, Err(Silence::Crashed));
    }
}
