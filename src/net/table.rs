//! The connection table, and everything that may be done to a connection
//! without the service: queue bytes, arm timers, mark for flush or removal,
//! write out, remove. It is the [`Outbox`] the service writes to.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::mem;
use std::rc::Rc;

use log::{debug, trace, warn};
use mio::Registry;
use slab::Slab;

use super::conn::{Conn, Millis, Phase};
use super::settings::NetLimits;
use crate::http::Response;
use crate::metrics::{add, sub, Metrics};
use crate::outbox::{ConnId, Outbox, SharedFrame};
use crate::ws::frame;

/// Every open connection, with the lists the end of a turn works through.
pub struct Table {
    /// The connections by slot; a slot's generation is in its [`ConnId`].
    pub(super) conns: Slab<Conn>,
    /// `(deadline, slot, generation)`, earliest first; stale entries are skipped.
    pub(super) timers: BinaryHeap<Reverse<(Millis, u32, u32)>>,
    dirty: Vec<usize>,
    doomed: Vec<usize>,
    /// HTTP connections answered late with pipelined requests still buffered.
    pub(super) resumable: Vec<usize>,
    /// The loop's clock, set once per turn.
    pub(super) now: Millis,
    pub(super) limits: NetLimits,
    pub(super) metrics: Rc<Metrics>,
    next_gen: u32,
    /// Unfinished input held across all connections (see [`Conn::held`]).
    pub(super) input_held: usize,
    /// Last time a refusal for the input budget was logged at warn.
    pub(super) budget_warned_at: Option<Millis>,
}

impl Table {
    /// An empty table enforcing these limits.
    pub(super) fn new(limits: NetLimits, metrics: Rc<Metrics>) -> Table {
        Table {
            conns: Slab::new(),
            timers: BinaryHeap::new(),
            dirty: Vec::new(),
            doomed: Vec::new(),
            resumable: Vec::new(),
            now: 0,
            limits,
            metrics,
            next_gen: 1,
            input_held: 0,
            budget_warned_at: None,
        }
    }

    /// The connection `id` names, if it is still the one in its slot.
    pub(super) fn get(&mut self, id: ConnId) -> Option<(usize, &mut Conn)> {
        let key = id.key as usize;
        self.conns.get_mut(key).filter(|c| c.id.gen == id.gen).map(|c| (key, c))
    }

    /// A fresh id for the connection about to take slot `key`.
    pub(super) fn next_id(&mut self, key: usize) -> ConnId {
        let id = ConnId { key: key as u32, gen: self.next_gen };
        self.next_gen = self.next_gen.wrapping_add(1).max(1);
        id
    }

    /// Whether anything waits for the end of the turn (a flush or a removal).
    pub(super) fn has_work(&self) -> bool {
        !self.dirty.is_empty() || !self.doomed.is_empty()
    }

    /// Ensures the timer heap holds an entry no later than the connection's deadline.
    pub(super) fn arm(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let due = conn.deadline(&self.limits);
        if due < conn.timer_at {
            conn.timer_at = due;
            self.timers.push(Reverse((due, conn.id.key, conn.id.gen)));
        }
    }

    /// Lists the connection for a flush at the end of the turn.
    pub(super) fn mark_dirty(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key) {
            if !conn.dirty && !conn.doomed {
                conn.dirty = true;
                self.dirty.push(key);
            }
        }
    }

    /// Brings the connection's share of the input budget up to date and
    /// notes progress. True when its input grew and the process is now over
    /// the budget: the caller refuses this connection.
    pub(super) fn account(&mut self, key: usize) -> bool {
        let now = self.now;
        let Some(conn) = self.conns.get_mut(key) else {
            return false;
        };
        let (cap, len) = conn.input_held();
        let (cap, len) = (cap.min(u32::MAX as usize), len.min(u32::MAX as usize));
        let old = conn.held as usize;
        conn.held = cap as u32;
        // Any change is progress (bytes added, or a message completed); a
        // ping between fragments changes nothing and is not.
        if len != conn.partial_len as usize {
            conn.progress_at = now;
        }
        conn.partial_len = len as u32;
        self.input_held = self.input_held - old + cap;
        cap > old && self.input_held > self.limits.input_budget
    }

    /// Schedules removal after this turn; the reason is logged at debug.
    pub(super) fn doom(&mut self, key: usize, why: &str) {
        if let Some(conn) = self.conns.get_mut(key) {
            if !conn.doomed {
                debug!("conn {key}: closing ({why})");
                conn.doomed = true;
                conn.out.clear();
                self.doomed.push(key);
            }
        }
    }

    /// Queues bytes. Only backlog the peer fails to read counts against the
    /// high-water mark: one frame larger than the mark (a big reply) is
    /// queued as exempt and sent whole. A connection whose backlog would pass
    /// the mark is cut as a slow consumer, logged at warn.
    pub(super) fn queue(&mut self, key: usize, bytes: SharedFrame) -> bool {
        let high_water = self.limits.write_high_water;
        let Some(conn) = self.conns.get_mut(key) else {
            return false;
        };
        if conn.doomed {
            return false;
        }
        if bytes.len() > high_water && conn.out.push_exempt(bytes.clone()) {
            self.mark_dirty(key);
            return true;
        }
        let backlog = conn.out.backlog();
        if backlog + bytes.len() > high_water {
            add(&self.metrics.slow_consumers, 1);
            warn!(
                "conn {key}: slow consumer cut: {backlog} bytes unread plus {} more is above PUSHI_WRITE_HIGH_WATER ({high_water})",
                bytes.len()
            );
            self.doom(key, "slow consumer: out-queue above the high-water mark");
            return false;
        }
        conn.out.push(bytes);
        self.mark_dirty(key);
        true
    }

    /// Sends our close frame and waits (bounded) for the peer's.
    pub(super) fn close_ws(&mut self, key: usize, code: u16, reason: &str) {
        let now = self.now;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let Phase::Ws(ws) = &mut conn.phase else {
            return;
        };
        if ws.closed_by_us.is_some() || conn.doomed {
            return;
        }
        ws.closed_by_us = Some(now);
        debug!("conn {key}: sending close {code} ({reason})");
        self.metrics.close_sent(code);
        self.queue(key, frame::encode_close(code, reason).into());
        self.arm(key);
    }

    /// Ends an HTTP connection after its queued bytes: flush, half-close, wait for FIN.
    fn close_http(&mut self, key: usize) {
        let now = self.now;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if matches!(conn.phase, Phase::Http(_)) {
            conn.phase = Phase::Closing { since: now, shut: false, linger: true };
            conn.inbuf = Vec::new();
            self.account(key);
            self.mark_dirty(key);
            self.arm(key);
        }
    }

    /// Writes what each connection listed this turn has queued, and
    /// half-closes a `Closing` one once everything is out. Returns the HTTP
    /// connections whose pipelined requests, held back while a big reply was
    /// unread, may now be parsed.
    pub(super) fn flush_dirty(&mut self) -> Vec<usize> {
        let high_water = self.limits.write_high_water;
        let mut unpaused = Vec::new();
        for key in mem::take(&mut self.dirty) {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            conn.dirty = false;
            if conn.doomed {
                continue;
            }
            let was_paused = conn.out.pending() > high_water;
            match conn.transport.flush(&mut conn.out) {
                Ok(n) => add(&self.metrics.bytes_out, n as u64),
                Err(e) => {
                    self.doom(key, &format!("write error: {e}"));
                    continue;
                }
            }
            if was_paused
                && conn.out.pending() <= high_water
                && !conn.inbuf.is_empty()
                && matches!(&conn.phase, Phase::Http(h) if h.awaiting.is_none())
            {
                unpaused.push(key);
            }
            let transport_pending = conn.transport.wants_write();
            if let Phase::Closing { shut, linger, .. } = &mut conn.phase {
                if conn.out.is_empty() && !transport_pending && !*shut {
                    *shut = true;
                    let linger = *linger;
                    if conn.transport.shutdown_write().is_err() {
                        self.doom(key, "shutdown failed");
                    } else if !linger {
                        self.doom(key, "close handshake complete");
                    }
                }
            }
        }
        unpaused
    }

    /// Removes the next doomed connection and deregisters its socket;
    /// returns the phase it ended in (None when none is left).
    pub(super) fn reap_one(&mut self, registry: &Registry) -> Option<Phase> {
        while let Some(key) = self.doomed.pop() {
            let Some(mut conn) = self.conns.try_remove(key) else {
                continue;
            };
            let _ = registry.deregister(conn.transport.socket());
            self.input_held -= conn.held as usize;
            sub(&self.metrics.connections_open, 1);
            trace!("conn {key}: removed");
            return Some(conn.phase);
        }
        None
    }
}

impl Outbox for Table {
    fn peer_ip(&mut self, to: ConnId) -> Option<std::net::IpAddr> {
        self.get(to).and_then(|(_, c)| c.transport.peer_ip())
    }

    fn backlog(&mut self, to: ConnId) -> Option<usize> {
        self.get(to).map(|(_, c)| c.out.pending())
    }

    fn respond(&mut self, to: ConnId, response: Response) {
        let Some((key, conn)) = self.get(to) else {
            return debug!("conn {}: late answer dropped (connection gone)", to.key);
        };
        let Phase::Http(h) = &mut conn.phase else {
            return;
        };
        let Some((_, keep_alive)) = h.awaiting.take() else {
            return debug!("conn {key}: late answer dropped (no request waiting)");
        };
        let keep_alive = keep_alive && !response.close;
        h.head_started = None;
        h.continued = false;
        let buffered = !conn.inbuf.is_empty();
        if response.status >= 400 {
            self.metrics.http_error(response.status);
        }
        self.queue(key, response.encode(keep_alive).into());
        if !keep_alive {
            self.close_http(key);
        } else {
            self.arm(key);
            if buffered {
                self.resumable.push(key);
            }
        }
    }

    fn send(&mut self, to: ConnId, frame: &SharedFrame) -> bool {
        match self.get(to) {
            Some((key, conn)) if conn.accepts_frames() => {
                add(&self.metrics.messages_out, 1);
                self.queue(key, frame.clone())
            }
            _ => false,
        }
    }

    fn close(&mut self, to: ConnId, code: u16, reason: &str) {
        if let Some((key, _)) = self.get(to) {
            self.close_ws(key, code, reason);
        }
    }
}
