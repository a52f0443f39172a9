//! Head-side policies: how often to ask the scheduler, when to resubmit, and how to cut
//! a batch of jobs into arrays the site accepts.

use std::time::Duration;

use super::scheduler::End;

/// Poll interval that grows while nothing changes and snaps back when something does:
/// quick feedback when jobs are short, little load on slurmctld when they are long
/// (sites throttle or ban users whose scripts hammer squeue).
#[derive(Debug, Clone)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
    pub factor: f64,
    current: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        let max = max.max(min);
        Backoff {
            min,
            max,
            factor: 1.5,
            current: min,
        }
    }

    /// The wait before the next poll; each call without a reset waits longer.
    pub fn next_wait(&mut self) -> Duration {
        let w = self.current;
        self.current = self.current.mul_f64(self.factor).min(self.max);
        w
    }

    /// Something changed: poll soon again.
    pub fn reset(&mut self) {
        self.current = self.min;
    }
}

/// Which ended jobs are resubmitted, and how often.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Resubmissions per step after a retryable end (TIMEOUT, OUT_OF_MEMORY, NODE_FAIL,
    /// PREEMPTED). A step's own failure (FAILED) is deterministic and never retried.
    pub max_retries: u32,
    /// Double the memory request after OUT_OF_MEMORY.
    pub grow_memory: bool,
    /// Keep a job off the node where its previous attempt hit NODE_FAIL.
    pub exclude_failed_node: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 1,
            grow_memory: true,
            exclude_failed_node: true,
        }
    }
}

impl RetryPolicy {
    /// Whether attempt number `attempt` (1 = the first submission) that ended `end`
    /// is submitted again.
    pub fn should_retry(&self, end: &End, attempt: u32) -> bool {
        end.retryable() && attempt <= self.max_retries
    }
}

/// Cuts `n` tasks into array chunks of at most `max_tasks` (the site's MaxArraySize
/// bounds the task index, so each chunk is its own array starting at index 0).
pub fn array_chunks(n: usize, max_tasks: usize) -> Vec<std::ops::Range<usize>> {
    let size = max_tasks.max(1);
    (0..n).step_by(size).map(|s| s..(s + size).min(n)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let waits: Vec<u128> = (0..6).map(|_| b.next_wait().as_millis()).collect();
        assert_eq!(waits, [100, 150, 225, 337, 400, 400]);
        b.reset();
        assert_eq!(b.next_wait().as_millis(), 100);
    }

    #[test]
    fn only_infrastructure_ends_are_retried_and_only_so_often() {
        let p = RetryPolicy::default();
        assert!(p.should_retry(&End::Timeout, 1));
        assert!(!p.should_retry(&End::Timeout, 2));
        assert!(p.should_retry(&End::NodeFail, 1));
        assert!(p.should_retry(&End::Preempted, 1));
        assert!(p.should_retry(&End::OutOfMemory, 1));
        assert!(!p.should_retry(&End::Failed, 1));
        assert!(!p.should_retry(&End::Cancelled, 1));
        let none = RetryPolicy {
            max_retries: 0,
            ..Default::default()
        };
        assert!(!none.should_retry(&End::Timeout, 1));
    }

    #[test]
    fn arrays_split_at_the_site_limit() {
        assert_eq!(array_chunks(5, 1000).len(), 1);
        assert_eq!(array_chunks(5, 1000)[0], 0..5);
        assert_eq!(array_chunks(5, 2), [0..2, 2..4, 4..5]);
        assert_eq!(array_chunks(4, 2), [0..2, 2..4]);
        assert!(array_chunks(0, 3).is_empty());
    }
}
