//! CPU time of this process and of some of its threads (Linux `/proc`), so
//! a benchmark that runs its own broker and producer beside the worker can
//! tell the worker's CPU from theirs.
//!
//! The embedded broker and the bench's producer live in the worker's
//! process and share its cores, and what they cost differs between the runs
//! a benchmark compares (200 topics cost the broker and the producer more
//! than one topic does). Their threads are found by when they appeared
//! (`rdk:` threads that appear while the broker or the producer is made)
//! and the producer's loop measures its own thread.
//!
//! Times are in USER_HZ ticks of 10 ms; elsewhere than Linux every figure
//! is 0.

use std::collections::BTreeSet;

/// CPU time (user and system) of `stat`, a `/proc/.../stat` line, in seconds.
fn stat_seconds(stat: &str) -> Option<f64> {
    // After the command name (which may hold spaces): utime is field 14, stime 15.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some((ticks(14)? + ticks(15)?) as f64 / 100.0)
}

/// CPU time this process has used so far, in seconds.
pub fn process_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| stat_seconds(&s))
        .unwrap_or(0.0)
}

/// CPU time the calling thread has used so far, in seconds.
pub fn this_thread_seconds() -> f64 {
    std::fs::read_to_string("/proc/thread-self/stat")
        .ok()
        .and_then(|s| stat_seconds(&s))
        .unwrap_or(0.0)
}

/// The ids of this process's threads now.
pub fn threads() -> BTreeSet<u32> {
    std::fs::read_dir("/proc/self/task")
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The librdkafka threads (`rdk:` names) among `now` that are not in `before`.
pub fn new_rdkafka_threads(before: &BTreeSet<u32>, now: &BTreeSet<u32>) -> BTreeSet<u32> {
    now.difference(before)
        .copied()
        .filter(|tid| {
            std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
                .is_ok_and(|name| name.starts_with("rdk:"))
        })
        .collect()
}

/// CPU time the threads `tids` have used so far (those still running), in seconds.
pub fn threads_seconds(tids: &BTreeSet<u32>) -> f64 {
    tids.iter()
        .filter_map(|tid| {
            let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
            stat_seconds(&stat)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_user_and_system_time_after_a_name_with_spaces() {
        let stat = "4242 (rdk:broker 1) S 1 2 3 4 5 6 7 8 9 10 150 25 0 0 20 0 9 0";
        assert_eq!(stat_seconds(stat), Some(1.75));
        assert_eq!(stat_seconds("garbage"), None);
    }

    #[test]
    fn a_busy_thread_is_told_apart_from_the_process() {
        let before = threads();
        let spin = std::thread::spawn(|| {
            let start = this_thread_seconds();
            let until = std::time::Instant::now() + std::time::Duration::from_millis(300);
            let mut x = 0u64;
            while std::time::Instant::now() < until {
                x = x.wrapping_mul(31).wrapping_add(1);
            }
            (this_thread_seconds() - start, x)
        });
        let (spent, _) = spin.join().unwrap();
        assert!(spent >= 0.1, "the spinning thread used {spent} s");
        assert!(process_seconds() >= spent);
        // No librdkafka thread appeared meanwhile.
        assert!(new_rdkafka_threads(&before, &threads()).is_empty());
    }
}
