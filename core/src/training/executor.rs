//! The bounded training executor: at most `capacity` jobs train at once across all projects,
//! and waiting jobs start in the order they asked. Each training job holds a model, its
//! gradients and optimiser state, and the examples' embeddings; without a bound, a burst of
//! triggers on many projects would hold that many times the memory and split the device's
//! cores between them.
//!
//! A slot is also the job's share of the CPU: while it holds the slot, the job's thread runs
//! libtorch's intra-op work on at most `threads_per_job` threads (`--training-threads`), so
//! that an operator can keep training from fanning out over every core the inference worker
//! uses. Its memory share is held in [`crate::memory::MemoryBudget`] by the trainer.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Condvar, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
};

use crate::{engine::device, metrics::Metrics};

#[derive(Debug, Default)]
struct Queue {
    running: usize,
    waiting: VecDeque<u64>,
    next_ticket: u64,
}

/// Training slots, handed out first come, first served. Their use is the
/// `alps_training_jobs{state="running"|"waiting"}` gauge.
#[derive(Debug)]
pub struct Slots {
    capacity: usize,
    threads_per_job: usize,
    queue: Mutex<Queue>,
    changed: Condvar,
    metrics: Arc<Metrics>,
}

/// A held slot, bound to the thread that acquired it: that thread runs libtorch's intra-op
/// work on the job's share of threads until the slot is dropped, which gives the thread its
/// former count back and frees the slot for the next waiting job. Not `Send`, since the share
/// belongs to the thread.
#[derive(Debug)]
pub struct Slot<'a> {
    slots: &'a Slots,
    threads_before: usize,
    _this_thread: std::marker::PhantomData<*const ()>,
}

impl Slots {
    /// `capacity` concurrent jobs (at least 1), each running on at most `threads_per_job`
    /// intra-op threads (at least 1), reported to `metrics` (from 0, so the gauge exists
    /// before the first job).
    pub fn new(capacity: usize, threads_per_job: usize, metrics: Arc<Metrics>) -> Self {
        metrics.set_training_jobs(0, 0);
        Self {
            capacity: capacity.max(1),
            threads_per_job: threads_per_job.max(1),
            queue: Mutex::default(),
            changed: Condvar::new(),
            metrics,
        }
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Wakes every waiter to recheck its turn and updates the gauge; called with the queue
    /// locked after each change.
    fn changed(&self, queue: &Queue) {
        self.metrics.set_training_jobs(queue.running, queue.waiting.len());
        self.changed.notify_all();
    }

    /// Blocks until this caller's turn comes and a slot is free, or until `cancel` is set
    /// (then `None`, and the caller's place in the queue is given up). Call
    /// [`wake`](Self::wake) after setting a waiter's `cancel`.
    pub fn acquire(&self, cancel: &AtomicBool) -> Option<Slot<'_>> {
        let mut queue = self.queue();
        let ticket = queue.next_ticket;
        queue.next_ticket += 1;
        queue.waiting.push_back(ticket);
        self.changed(&queue);
        loop {
            if cancel.load(Ordering::Relaxed) {
                queue.waiting.retain(|&t| t != ticket);
                // The next ticket may have been waiting behind this one.
                self.changed(&queue);
                return None;
            }
            if queue.waiting.front() == Some(&ticket) && queue.running < self.capacity {
                queue.waiting.pop_front();
                queue.running += 1;
                // The next in line may fit too.
                self.changed(&queue);
                drop(queue);
                let threads_before = device::set_intra_op_threads_of_this_thread(self.threads_per_job);
                return Some(Slot { slots: self, threads_before, _this_thread: std::marker::PhantomData });
            }
            queue = self.changed.wait(queue).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    /// Wakes waiters so they see a cancellation.
    pub fn wake(&self) {
        let _queue = self.queue();
        self.changed.notify_all();
    }

    /// Jobs training now and jobs waiting for a slot.
    #[cfg(test)]
    fn load(&self) -> (usize, usize) {
        let queue = self.queue();
        (queue.running, queue.waiting.len())
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        device::set_intra_op_threads_of_this_thread(self.threads_before);
        let mut queue = self.slots.queue();
        queue.running -= 1;
        self.slots.changed(&queue);
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{Arc, mpsc},
        thread,
        time::Duration,
    };

    use super::*;

    /// Waits until `slots` has `waiting` jobs queued (the threads under test got in line).
    fn until_waiting(slots: &Slots, waiting: usize) {
        while slots.load().1 != waiting {
            thread::yield_now();
        }
    }

    #[test]
    fn at_most_capacity_jobs_hold_a_slot_and_waiters_start_in_arrival_order() {
        let metrics = Arc::new(Metrics::default());
        let slots = Arc::new(Slots::new(2, 1, metrics.clone()));
        let never = AtomicBool::new(false);
        let first = slots.acquire(&never).unwrap();
        let second = slots.acquire(&never).unwrap();
        assert_eq!(slots.load(), (2, 0));
        let gauge = |state: &str| {
            let text = metrics.encode().unwrap();
            let line = format!("alps_training_jobs{{state=\"{state}\"}} ");
            text.lines().find_map(|l| l.strip_prefix(&line)).map(str::to_owned)
        };
        let (started, order) = mpsc::channel();
        let mut waiters = Vec::new();
        for name in ["third", "fourth", "fifth"] {
            let (in_line, started) = (slots.clone(), started.clone());
            waiters.push(thread::spawn(move || {
                let never = AtomicBool::new(false);
                let _slot = in_line.acquire(&never).unwrap();
                started.send(name).unwrap();
                // Hold the slot until the test has read the start.
                thread::sleep(Duration::from_millis(20));
            }));
            until_waiting(&slots, waiters.len());
        }
        assert!(order.try_recv().is_err(), "a waiter started while both slots were held");
        assert_eq!((gauge("running").as_deref(), gauge("waiting").as_deref()), (Some("2"), Some("3")));
        drop(first);
        assert_eq!(order.recv().unwrap(), "third");
        drop(second);
        assert_eq!(order.recv().unwrap(), "fourth");
        assert_eq!(order.recv().unwrap(), "fifth");
        for waiter in waiters {
            waiter.join().unwrap();
        }
        assert_eq!(slots.load(), (0, 0));
    }

    #[test]
    fn a_cancelled_waiter_leaves_the_queue_and_the_next_one_moves_up() {
        let slots = Arc::new(Slots::new(1, 1, Arc::new(Metrics::default())));
        let never = AtomicBool::new(false);
        let held = slots.acquire(&never).unwrap();
        let cancel = Arc::new(AtomicBool::new(false));
        let cancelled = {
            let (slots, cancel) = (slots.clone(), cancel.clone());
            thread::spawn(move || slots.acquire(&cancel).is_none())
        };
        until_waiting(&slots, 1);
        let next = {
            let slots = slots.clone();
            thread::spawn(move || slots.acquire(&AtomicBool::new(false)).is_some())
        };
        until_waiting(&slots, 2);
        cancel.store(true, Ordering::Relaxed);
        slots.wake();
        assert!(cancelled.join().unwrap(), "the cancelled waiter got a slot");
        assert_eq!(slots.load(), (1, 1));
        drop(held);
        assert!(next.join().unwrap());
        assert_eq!(slots.load(), (0, 0));
    }

    /// The intra-op thread count a thread starting now gets.
    fn count_of_a_new_thread() -> usize {
        thread::spawn(device::intra_op_threads).join().unwrap()
    }

    #[test]
    fn a_slot_bounds_the_intra_op_threads_of_its_own_thread_only() {
        let process = count_of_a_new_thread();
        // Unlike every count in the process, whatever the machine's cores.
        let share = process + 1;
        let slots = Slots::new(1, share, Arc::new(Metrics::default()));
        let (go, wait) = mpsc::channel::<()>();
        let (ran, first) = mpsc::channel();
        let inference = thread::spawn(move || {
            ran.send(device::intra_op_threads()).unwrap();
            wait.recv().unwrap();
            device::intra_op_threads()
        });
        let first = first.recv().unwrap();
        let never = AtomicBool::new(false);
        let job = thread::scope(|scope| {
            scope
                .spawn(|| {
                    let slot = slots.acquire(&never).unwrap();
                    let during = device::intra_op_threads();
                    let started_meanwhile = count_of_a_new_thread();
                    go.send(()).unwrap();
                    drop(slot);
                    (during, started_meanwhile, device::intra_op_threads())
                })
                .join()
                .unwrap()
        });
        assert_eq!(job, (share, process, process), "(in the job, a new thread, after the job)");
        assert_eq!((first, inference.join().unwrap()), (process, process), "a thread that ran before the job");
        assert_eq!(count_of_a_new_thread(), process);
    }
}
