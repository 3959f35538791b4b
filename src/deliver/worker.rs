//! The worker threads of the delivery pool and its one retry timer: a
//! worker takes a [`DeliveryJob`] from the fair queue, sends it, counts the
//! outcome and reports what the reactor must know (gone targets, direct-send
//! results); a transient failure goes to the timer, which puts the job back
//! when its back-off is over, so no worker ever sleeps.

use std::collections::BinaryHeap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::Instant;

use log::{debug, warn};

use super::web::send_web;
use super::{
    apns, pool, smtp, web_push, Delivery, DeliveryConfig, DeliveryJob, DeliveryReport, DeliveryStats, Origin, Outcome,
    RETRY_FIRST,
};
use crate::outbound::Policy;
use crate::store::pool::Wake;

/// Starts `config.workers` workers on `pool` and the retry timer.
pub(super) fn start(
    config: Arc<DeliveryConfig>,
    pool: Arc<pool::Pool>,
    stats: Arc<DeliveryStats>,
    reports: Sender<DeliveryReport>,
    waker: Arc<dyn Wake>,
) {
    let (retry_tx, retry_rx) = channel::<(Instant, DeliveryJob)>();
    let policy = Arc::new(Policy::new(config.outbound.clone()));
    for i in 0..config.workers.max(1) {
        let w = DeliveryWorker {
            pool: pool.clone(),
            retry: retry_tx.clone(),
            reports: reports.clone(),
            waker: waker.clone(),
            stats: stats.clone(),
            config: config.clone(),
            policy: policy.clone(),
        };
        std::thread::Builder::new().name(format!("handler-{i}")).spawn(move || w.run()).expect("spawn handler worker");
    }
    std::thread::Builder::new()
        .name("handler-retry".into())
        .spawn(move || retry_timer(retry_rx, pool))
        .expect("spawn handler retry timer");
}

/// One worker thread.
struct DeliveryWorker {
    pool: Arc<pool::Pool>,
    retry: Sender<(Instant, DeliveryJob)>,
    reports: Sender<DeliveryReport>,
    waker: Arc<dyn Wake>,
    stats: Arc<DeliveryStats>,
    config: Arc<DeliveryConfig>,
    /// Where tenants' requests may go (`PUSHI_OUTBOUND_ALLOW`).
    policy: Arc<Policy>,
}

impl DeliveryWorker {
    fn run(self) {
        // Every HTTP target here is a tenant's: the policy agent (no redirects, checked addresses).
        let agent = crate::outbound::agent(self.policy.clone(), self.config.timeout);
        while let Some(job) = self.pool.take() {
            let outcome = match &job.delivery {
                Delivery::Email { to, subject, body, html } => match &job.creds.smtp {
                    Ok(settings) => smtp::send(settings, to, subject, body, *html, self.config.timeout, &self.policy),
                    Err(e) => Outcome::Failed(e.clone()),
                },
                Delivery::WebPush { endpoint, p256dh, auth, payload } => {
                    web_push::send(&agent, &job.creds, endpoint, p256dh, auth, payload, self.config.web_push_ttl)
                }
                Delivery::Apn { token, payload } => match &job.creds.apn {
                    Ok(creds) => apns::send(creds, token, payload, self.config.timeout),
                    Err(e) => Outcome::Failed(e.clone()),
                },
                Delivery::Web { url, method, headers, body } => {
                    send_web(&agent, url, method, headers, body.as_deref().map(String::as_str))
                }
            };
            self.finish(job, outcome);
        }
    }

    fn finish(&self, mut job: DeliveryJob, outcome: Outcome) {
        let kind = job.delivery.kind();
        let stats = self.stats.clone();
        let s = stats.of_job(&job);
        let target = job.delivery.target().to_string();
        let (app, lane) = (job.app, job.lane.clone());
        let result = match outcome {
            Outcome::Sent => Ok(()),
            Outcome::Retry(why) if job.attempt + 1 < job.attempts() => {
                s.retried.fetch_add(1, Relaxed);
                debug!("{} to {target} attempt {} failed, retrying: {why}", kind.name(), job.attempt + 1);
                let pause = RETRY_FIRST * (1 << job.attempt);
                job.attempt += 1;
                self.pool.done(app, lane.as_deref(), false);
                if self.retry.send((Instant::now() + pause, job)).is_err() {
                    s.queued.fetch_sub(1, Relaxed);
                    self.pool.forget(app, lane.as_deref());
                }
                return;
            }
            Outcome::Retry(why) | Outcome::Failed(why) => Err(why),
            Outcome::Gone(why) => {
                s.gone.fetch_add(1, Relaxed);
                if let Origin::Subscription = job.origin {
                    let _ = self.reports.send(DeliveryReport::Gone { app: job.app, kind, target: target.clone() });
                    self.waker.wake();
                }
                Err(why)
            }
        };
        s.queued.fetch_sub(1, Relaxed);
        self.pool.done(app, lane.as_deref(), true);
        match &result {
            Ok(()) => {
                s.sent.fetch_add(1, Relaxed);
            }
            Err(why) => {
                s.failed.fetch_add(1, Relaxed);
                warn!("{} delivery to {target} (app {}) failed: {why}", kind.name(), job.creds.app_id);
            }
        }
        if let Origin::Direct { ticket, slot } = job.origin {
            let _ = self.reports.send(DeliveryReport::Direct { ticket, slot, target, result });
            self.waker.wake();
        }
    }
}

/// Holds failed jobs until their retry is due, then queues them again.
fn retry_timer(rx: Receiver<(Instant, DeliveryJob)>, pool: Arc<pool::Pool>) {
    struct Due(Instant, u64, DeliveryJob);
    impl PartialEq for Due {
        fn eq(&self, o: &Self) -> bool {
            (self.0, self.1) == (o.0, o.1)
        }
    }
    impl Eq for Due {}
    impl PartialOrd for Due {
        fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(o))
        }
    }
    impl Ord for Due {
        fn cmp(&self, o: &Self) -> std::cmp::Ordering {
            (o.0, o.1).cmp(&(self.0, self.1)) // earliest first in the max-heap
        }
    }
    let mut heap: BinaryHeap<Due> = BinaryHeap::new();
    let mut n = 0u64;
    loop {
        let wait = heap.peek().map(|d| d.0.saturating_duration_since(Instant::now()));
        let got = match wait {
            Some(w) => rx.recv_timeout(w).map_err(|e| matches!(e, std::sync::mpsc::RecvTimeoutError::Disconnected)),
            None => rx.recv().map_err(|_| true),
        };
        match got {
            Ok((at, job)) => {
                n += 1;
                heap.push(Due(at, n, job));
            }
            Err(true) => return,
            Err(false) => {}
        }
        while heap.peek().is_some_and(|d| d.0 <= Instant::now()) {
            let Due(_, _, job) = heap.pop().expect("peeked");
            pool.retry(job);
        }
    }
}
