//! The job queue: jobs wait here until a worker is free. Workers take the
//! job of highest priority first, and among equal priorities the one queued
//! first. Jobs selected together enter the queue at once, so that their
//! priorities, not the moment a worker woke, decide the order.

use std::sync::Mutex;

use arca_schemas::JobId;
use tokio::sync::Semaphore;

/// A priority queue of job ids shared by the request handlers and workers.
#[derive(Debug)]
pub struct Queue {
    items: Mutex<Vec<Entry>>,
    seq: Mutex<u64>,
    ready: Semaphore,
}

#[derive(Debug)]
struct Entry {
    priority: i32,
    seq: u64,
    job: JobId,
}

impl Queue {
    /// An empty queue.
    pub fn new() -> Self {
        Queue {
            items: Mutex::new(Vec::new()),
            seq: Mutex::new(0),
            ready: Semaphore::new(0),
        }
    }

    /// Adds jobs (with their priority) all at once.
    pub fn push_all(&self, jobs: impl IntoIterator<Item = (i32, JobId)>) {
        let mut items = self.items.lock().expect("queue lock");
        let mut seq = self.seq.lock().expect("queue seq lock");
        let mut n = 0;
        for (priority, job) in jobs {
            *seq += 1;
            items.push(Entry {
                priority,
                seq: *seq,
                job,
            });
            n += 1;
        }
        drop(items);
        self.ready.add_permits(n);
    }

    /// Waits for a job and takes the best one.
    pub async fn pop(&self) -> JobId {
        let permit = self
            .ready
            .acquire()
            .await
            .expect("queue semaphore stays open");
        permit.forget();
        let mut items = self.items.lock().expect("queue lock");
        let best = items
            .iter()
            .enumerate()
            .max_by_key(|(_, e)| (e.priority, std::cmp::Reverse(e.seq)))
            .map(|(i, _)| i)
            .expect("a permit means an item");
        items.swap_remove(best).job
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn highest_priority_first_then_first_come() {
        let q = Queue::new();
        let ids: Vec<JobId> = (0..4).map(|_| JobId::new()).collect();
        q.push_all([(0, ids[0]), (5, ids[1])]);
        q.push_all([(5, ids[2]), (-1, ids[3])]);
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(q.pop().await);
        }
        assert_eq!(got, [ids[1], ids[2], ids[0], ids[3]]);
    }
}
