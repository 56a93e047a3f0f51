//! Where the stream's time goes: busy time per stage, the consumer's stall,
//! and the process's peak memory.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Busy nanoseconds per stage, shared by the stage tasks.
#[derive(Default, Debug)]
pub struct StageTimes {
    pub read_ns: AtomicU64,
    pub shuffle_ns: AtomicU64,
    /// Summed over augmentation threads.
    pub augment_ns: AtomicU64,
    /// Time the consumer waited for a batch.
    pub stall_ns: AtomicU64,
}

impl StageTimes {
    pub fn add(counter: &AtomicU64, since: Instant) {
        counter.fetch_add(since.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> Duration {
        Duration::from_nanos(counter.load(Ordering::Relaxed))
    }
}

/// A snapshot for reports.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct TimingReport {
    pub read_busy_s: f64,
    pub shuffle_busy_s: f64,
    pub augment_busy_s: f64,
    pub consumer_stall_s: f64,
}

impl From<&StageTimes> for TimingReport {
    fn from(t: &StageTimes) -> Self {
        Self {
            read_busy_s: StageTimes::get(&t.read_ns).as_secs_f64(),
            shuffle_busy_s: StageTimes::get(&t.shuffle_ns).as_secs_f64(),
            augment_busy_s: StageTimes::get(&t.augment_ns).as_secs_f64(),
            consumer_stall_s: StageTimes::get(&t.stall_ns).as_secs_f64(),
        }
    }
}

impl std::ops::AddAssign for TimingReport {
    fn add_assign(&mut self, other: Self) {
        self.read_busy_s += other.read_busy_s;
        self.shuffle_busy_s += other.shuffle_busy_s;
        self.augment_busy_s += other.augment_busy_s;
        self.consumer_stall_s += other.consumer_stall_s;
    }
}

/// Peak resident memory of this process in bytes (Linux `VmHWM`), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
