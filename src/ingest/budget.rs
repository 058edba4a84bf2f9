//! The worker-wide memory budget for buffered records (invariant 5).
//!
//! A source reserves a record's [`charge`](crate::source::Record::charge)
//! before handing it on and waits while the budget is spent: Kafka stops
//! polling for records, the file reader stops reading. The pipeline releases
//! the charge when the record's batch commits or is dropped. A reservation
//! that has to wait wakes every pipeline ([`MemoryBudget::pressured`]) so the
//! one holding the memory flushes early instead of waiting for its latency.
//! One record is always admitted into an empty budget so a record larger
//! than the budget cannot stall a worker forever.
//!
//! Under pressure only a pipeline holding at least its share of what the
//! pipelines' batches hold (split evenly over the pipelines holding
//! records, [`MemoryBudget::holds_its_share`]) flushes early: a worker of
//! 200 tables then commits the tables that hold the memory rather than
//! every table at once, small ones included. A batch must also hold a
//! quarter of an even share of the whole budget, so a quiet table does not
//! flush while a busy table's records are still on their way to it. Once
//! the records in flight reach their tables, the largest batch meets both,
//! so some pipeline always flushes.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

/// Shared accounting of buffered bytes.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: usize,
    used: Mutex<usize>,
    freed: Condvar,
    freed_async: Notify,
    pressure: Notify,
    high_water: AtomicUsize,
    /// Pipelines holding buffered records now.
    holders: AtomicUsize,
    /// Bytes charged to those pipelines' batches.
    held: AtomicUsize,
}

impl MemoryBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            used: Mutex::new(0),
            freed: Condvar::new(),
            freed_async: Notify::new(),
            pressure: Notify::new(),
            high_water: AtomicUsize::new(0),
            holders: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
        }
    }

    /// The configured limit in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes reserved now.
    pub fn used(&self) -> usize {
        *self.used.lock().expect("budget lock")
    }

    /// The most bytes ever reserved at once.
    pub fn high_water(&self) -> usize {
        self.high_water.load(Ordering::Relaxed)
    }

    /// True when at least 80% of the budget is reserved.
    pub fn under_pressure(&self) -> bool {
        self.used() * 10 >= self.limit * 8
    }

    /// Reserves `bytes` if they fit (or the budget is empty).
    pub fn try_reserve(&self, bytes: usize) -> bool {
        let mut used = self.used.lock().expect("budget lock");
        if *used == 0 || *used + bytes <= self.limit {
            *used += bytes;
            self.high_water.fetch_max(*used, Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    /// Blocks the calling thread until `bytes` fit, or `stop` is set (returns false).
    pub fn reserve_blocking(&self, bytes: usize, stop: &AtomicBool) -> bool {
        let mut used = self.used.lock().expect("budget lock");
        loop {
            if *used == 0 || *used + bytes <= self.limit {
                *used += bytes;
                self.high_water.fetch_max(*used, Ordering::Relaxed);
                return true;
            }
            if stop.load(Ordering::Relaxed) {
                return false;
            }
            self.pressure.notify_waiters();
            used = self
                .freed
                .wait_timeout(used, Duration::from_millis(100))
                .expect("budget lock")
                .0;
        }
    }

    /// Waits until `bytes` fit, then reserves them.
    pub async fn reserve(&self, bytes: usize) {
        loop {
            let freed = self.freed_async.notified();
            if self.try_reserve(bytes) {
                return;
            }
            self.pressure.notify_waiters();
            // A release between the failed try and this await is not lost:
            // `notified()` was created before the try.
            let _ = tokio::time::timeout(Duration::from_millis(100), freed).await;
        }
    }

    /// Returns `bytes` to the budget.
    pub fn release(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let mut used = self.used.lock().expect("budget lock");
        *used = used.saturating_sub(bytes);
        drop(used);
        self.freed.notify_all();
        self.freed_async.notify_waiters();
    }

    /// Resolves when a source had to wait for memory.
    pub async fn pressured(&self) {
        self.pressure.notified().await
    }

    /// A pipeline's batch went from `before` to `after` charged bytes.
    pub fn report_held(&self, before: usize, after: usize) {
        match (before, after) {
            (0, 1..) => self.holders.fetch_add(1, Ordering::Relaxed),
            (1.., 0) => self.holders.fetch_sub(1, Ordering::Relaxed),
            _ => 0,
        };
        self.held.fetch_add(after, Ordering::Relaxed);
        self.held.fetch_sub(before, Ordering::Relaxed);
    }

    /// Whether a pipeline whose batch is charged `charged` bytes holds at
    /// least an even share of what the pipelines' batches hold (records a
    /// source has reserved but not handed over yet are in no batch), and
    /// at least a quarter of an even share of the whole budget. The second
    /// keeps a small batch from flushing when it is the largest only
    /// because another table's records are still on their way to it.
    pub fn holds_its_share(&self, charged: usize) -> bool {
        let holders = self.holders.load(Ordering::Relaxed).max(1);
        let share = charged.saturating_mul(holders);
        share >= self.held.load(Ordering::Relaxed) && share.saturating_mul(4) >= self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn admits_until_full_then_after_release() {
        let budget = MemoryBudget::new(100);
        assert!(budget.try_reserve(60));
        assert!(!budget.try_reserve(60));
        assert!(!budget.under_pressure() && budget.used() == 60);
        budget.release(60);
        assert!(budget.try_reserve(60));
        assert_eq!(budget.high_water(), 60);
    }

    #[test]
    fn under_pressure_the_holders_of_the_memory_flush_not_everyone() {
        let budget = MemoryBudget::new(1000);
        // Three pipelines hold 700, 150 and 50 bytes; a source has
        // reserved 100 more it has not handed over.
        for charge in [700, 150, 50] {
            assert!(budget.try_reserve(charge));
            budget.report_held(0, charge);
        }
        assert!(budget.try_reserve(100));
        assert!(budget.under_pressure());
        assert!(budget.holds_its_share(700));
        assert!(!budget.holds_its_share(150));
        assert!(!budget.holds_its_share(50));
        // The largest flushes; the other two now hold 150 and 250.
        budget.report_held(700, 0);
        budget.report_held(50, 250);
        assert!(budget.holds_its_share(250));
        assert!(!budget.holds_its_share(150));
        // Even shares: each holds its share.
        budget.report_held(150, 250);
        assert!(budget.holds_its_share(250));
        // A lone pipeline holds its share whatever the sources have
        // reserved besides, unless its batch is too small to matter (the
        // records of a busy table still on their way to it).
        budget.report_held(250, 0);
        budget.report_held(250, 0);
        budget.report_held(0, 300);
        assert!(budget.holds_its_share(300));
        budget.report_held(300, 10);
        assert!(!budget.holds_its_share(10));
    }

    #[test]
    fn an_oversized_record_fits_an_empty_budget() {
        let budget = MemoryBudget::new(10);
        assert!(budget.try_reserve(1000));
        assert!(!budget.try_reserve(1));
    }

    #[test]
    fn blocking_reserve_waits_for_a_release_and_honours_stop() {
        let budget = Arc::new(MemoryBudget::new(100));
        assert!(budget.try_reserve(100));
        let stop = Arc::new(AtomicBool::new(false));
        let waiter = {
            let (budget, stop) = (budget.clone(), stop.clone());
            std::thread::spawn(move || budget.reserve_blocking(50, &stop))
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished(), "must wait while the budget is spent");
        budget.release(100);
        assert!(waiter.join().unwrap());

        stop.store(true, Ordering::Relaxed);
        assert!(budget.try_reserve(50));
        assert!(!budget.reserve_blocking(50, &stop));
    }
}
