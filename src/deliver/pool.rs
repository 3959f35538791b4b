//! The delivery queue shared by every outbound request (Pusher web hooks,
//! `/webs`, e-mail, Web Push, APNs, `/messaging/*`), fair between apps:
//!
//! - each app has its own queue, and workers take from the apps in turn
//!   (round robin), so a busy app does not starve a quiet one;
//! - an app holds at most `app_workers` workers at once, so targets that
//!   never answer tie up only that share, never the whole pool;
//! - an app may have at most `app_queue` deliveries queued, running or
//!   waiting for a retry (the whole pool `queue`): one app cannot fill the
//!   queue for everyone;
//! - deliveries with the same *lane* (an app's web hook URL) run one at a
//!   time and in order: while one waits for its retry, later ones of the
//!   lane wait too, so a retried batch is never overtaken.
//!
//! Workers block on a condition variable, never sleep: retries are held by
//! a timer thread and put back at the front of their app's queue.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};

use super::DeliveryJob;
use crate::apps::AppIndex;

/// Why a job was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The whole pool is full.
    Full,
    /// This app's share of the pool is used up.
    AppFull,
}

#[derive(Default)]
struct AppQueue {
    jobs: VecDeque<DeliveryJob>,
    /// Jobs on a worker now.
    running: usize,
    /// Jobs queued, running or waiting for a retry.
    held: usize,
    /// Lanes with a job running or waiting for a retry.
    busy: HashSet<String>,
    /// In the round-robin ring.
    ringed: bool,
}

#[derive(Default)]
struct State {
    apps: HashMap<AppIndex, AppQueue>,
    ring: VecDeque<AppIndex>,
    total: usize,
    closed: bool,
}

/// The fair queue (see the module documentation).
pub struct Pool {
    state: Mutex<State>,
    ready: Condvar,
    queue: usize,
    app_queue: usize,
    app_workers: usize,
}

impl Pool {
    /// A pool holding at most `queue` jobs, `app_queue` of one app, running at
    /// most `app_workers` jobs of one app at once.
    pub fn new(queue: usize, app_queue: usize, app_workers: usize) -> Pool {
        Pool {
            state: Mutex::new(State::default()),
            ready: Condvar::new(),
            queue: queue.max(1),
            app_queue: app_queue.max(1),
            app_workers: app_workers.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a job at the back of its app's queue.
    pub fn submit(&self, job: DeliveryJob) -> Result<(), Refused> {
        let mut s = self.lock();
        if s.total >= self.queue {
            return Err(Refused::Full);
        }
        let app = job.app;
        let q = s.apps.entry(app).or_default();
        if q.held >= self.app_queue {
            return Err(Refused::AppFull);
        }
        q.held += 1;
        q.jobs.push_back(job);
        let ring = !q.ringed;
        q.ringed = true;
        s.total += 1;
        if ring {
            s.ring.push_back(app);
        }
        drop(s);
        self.ready.notify_one();
        Ok(())
    }

    /// The next job a worker may run, waiting for one; None once closed.
    pub fn take(&self) -> Option<DeliveryJob> {
        let mut s = self.lock();
        loop {
            if s.closed {
                return None;
            }
            if let Some(job) = Self::pick(&mut s, self.app_workers) {
                return Some(job);
            }
            s = self.ready.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn pick(s: &mut State, app_workers: usize) -> Option<DeliveryJob> {
        for _ in 0..s.ring.len() {
            let app = s.ring.pop_front()?;
            let q = s.apps.get_mut(&app).expect("ringed apps have a queue");
            let eligible = if q.running < app_workers {
                q.jobs.iter().position(|j| j.lane.as_ref().is_none_or(|l| !q.busy.contains(l)))
            } else {
                None
            };
            let job = eligible.and_then(|i| q.jobs.remove(i));
            if let Some(job) = &job {
                q.running += 1;
                if let Some(lane) = &job.lane {
                    q.busy.insert(lane.clone());
                }
            }
            let empty = q.jobs.is_empty();
            q.ringed = !empty;
            if !empty {
                s.ring.push_back(app);
            }
            if job.is_some() {
                return job;
            }
        }
        None
    }

    /// A worker is done with a job of `app`: `finished` when it left the
    /// pool (delivered or given up), false when it waits for a retry (its
    /// lane stays busy until [`Pool::retry`] puts it back).
    pub fn done(&self, app: AppIndex, lane: Option<&str>, finished: bool) {
        let mut s = self.lock();
        if let Some(q) = s.apps.get_mut(&app) {
            q.running = q.running.saturating_sub(1);
            if finished {
                q.held = q.held.saturating_sub(1);
                if let Some(l) = lane {
                    q.busy.remove(l);
                }
            }
        }
        if finished {
            s.total = s.total.saturating_sub(1);
        }
        drop(s);
        self.ready.notify_all();
    }

    /// Puts a job whose retry is due back at the front of its app's queue.
    pub fn retry(&self, job: DeliveryJob) {
        let mut s = self.lock();
        let app = job.app;
        let q = s.apps.entry(app).or_default();
        if let Some(l) = &job.lane {
            q.busy.remove(l);
        }
        q.jobs.push_front(job);
        let ring = !q.ringed;
        q.ringed = true;
        if ring {
            s.ring.push_back(app);
        }
        drop(s);
        self.ready.notify_all();
    }

    /// A job waiting for its retry will never come back (the timer stopped).
    pub fn forget(&self, app: AppIndex, lane: Option<&str>) {
        let mut s = self.lock();
        if let Some(q) = s.apps.get_mut(&app) {
            q.held = q.held.saturating_sub(1);
            if let Some(l) = lane {
                q.busy.remove(l);
            }
        }
        s.total = s.total.saturating_sub(1);
    }

    /// Stops the workers (they return from [`Pool::take`]).
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Creds, Delivery, DeliveryJob, Origin};
    use super::*;
    use std::sync::Arc;

    fn job(app: AppIndex, lane: Option<&str>, n: u32) -> DeliveryJob {
        let creds = Arc::new(Creds::none("a"));
        let delivery =
            Delivery::Web { url: format!("http://h/{n}"), method: "POST".into(), headers: Vec::new(), body: None };
        let mut j = DeliveryJob::new(app, creds, delivery, Origin::Subscription);
        j.lane = lane.map(str::to_string);
        j
    }

    fn url(j: &DeliveryJob) -> String {
        j.delivery.target().to_string()
    }

    #[test]
    fn apps_take_turns_and_share_workers() {
        let pool = Pool::new(100, 100, 2);
        for n in 0..5 {
            pool.submit(job(AppIndex(1), None, n)).unwrap();
        }
        pool.submit(job(AppIndex(2), None, 100)).unwrap();
        let a = pool.take().unwrap();
        let b = pool.take().unwrap();
        assert_eq!((a.app, b.app), (AppIndex(1), AppIndex(2)), "round robin between apps");
        let c = pool.take().unwrap();
        assert_eq!(c.app, AppIndex(1));
        // App 1 holds its 2 workers: nothing else of it runs until one is done.
        assert!(Pool::pick(&mut pool.lock(), 2).is_none());
        pool.done(AppIndex(1), None, true);
        assert_eq!(pool.take().unwrap().app, AppIndex(1));
    }

    #[test]
    fn queue_shares_are_bounded() {
        let pool = Pool::new(3, 2, 4);
        pool.submit(job(AppIndex(1), None, 0)).unwrap();
        pool.submit(job(AppIndex(1), None, 1)).unwrap();
        assert_eq!(pool.submit(job(AppIndex(1), None, 2)).unwrap_err(), Refused::AppFull);
        pool.submit(job(AppIndex(2), None, 3)).unwrap();
        assert_eq!(pool.submit(job(AppIndex(3), None, 4)).unwrap_err(), Refused::Full);
    }

    #[test]
    fn a_lane_runs_in_order_and_waits_for_its_retry() {
        let pool = Pool::new(100, 100, 4);
        for n in 0..3 {
            pool.submit(job(AppIndex(1), Some("hook"), n)).unwrap();
        }
        pool.submit(job(AppIndex(1), Some("other"), 9)).unwrap();
        let first = pool.take().unwrap();
        assert_eq!(url(&first), "http://h/0");
        // The lane is busy: the other lane's job runs, not batch 1.
        assert_eq!(url(&pool.take().unwrap()), "http://h/9");
        assert!(Pool::pick(&mut pool.lock(), 4).is_none());
        // Batch 0 fails and waits for a retry: batch 1 still may not run.
        pool.done(AppIndex(1), Some("hook"), false);
        assert!(Pool::pick(&mut pool.lock(), 4).is_none());
        pool.retry(first);
        assert_eq!(url(&pool.take().unwrap()), "http://h/0", "the retried batch goes first");
        pool.done(AppIndex(1), Some("hook"), true);
        assert_eq!(url(&pool.take().unwrap()), "http://h/1");
    }
}
