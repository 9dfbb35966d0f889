//! Session locks of one shard: holders with leases, waiters in arrival order, deadlines.
//!
//! Locks are keyed apart from sessions, so an ID with no session yet can be locked (PHP locks
//! a brand-new session on read, then writes it with the token). Time only moves when the
//! shard passes `now_ms` in: `advance` fires every lease end and wait deadline up to then, in
//! time order, and queues the resulting events.
//!
//! A holder can be **pinned** (`pin`): the lock then outlasts every release but the one that
//! ends the last pin (`unpin`, with the holder's token, which releases it). While pinned, an
//! `unlock` (and a write's unlock) is deferred to the unpin, the lease does not end, a
//! closed connection (`release_owner`) leaves it, and the holder's own new lock request waits
//! in the queue like anyone's. The daemon pins a lock while a write's copy is on its way to
//! the session's backup, so that no other holder reads the write before the backup holds it;
//! it always unpins when the copy resolves (acknowledged, failed, or repaired), so a pin never
//! outlives its copy.

use std::collections::{BTreeSet, VecDeque};

use hashbrown::HashMap;

use crate::constants::{LOCK_LEASE_MS_MAX, TOKEN_COUNTER_BITS};
use crate::error::EngineError;
use crate::shard::Event;
use crate::types::{LockToken, OwnerId, SessionKey, WaitId};

/// What a lock request got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockOutcome {
    /// The lock is yours until the lease ends or you unlock it.
    Granted(LockToken),
    /// Someone holds it; you are queued in arrival order. `Event::LockGranted` or
    /// `Event::LockTimedOut` with this id follows.
    Queued(WaitId),
    /// Someone holds it and the wait deadline has already passed.
    TimedOut,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Lease(SessionKey),
    Wait(WaitId),
}

#[derive(Clone, Copy, Debug)]
struct Holder {
    token: LockToken,
    owner: OwnerId,
    lease_until_ms: u64,
    /// Pins not ended yet (`pin`/`unpin`): while above 0, no lease timer runs and nothing but
    /// the last `unpin` releases the lock.
    pins: u32,
}

#[derive(Default)]
struct LockEntry {
    holder: Option<Holder>,
    queue: VecDeque<WaitId>,
}

#[derive(Clone, Copy, Debug)]
struct Waiter {
    key: SessionKey,
    owner: OwnerId,
    deadline_ms: u64,
    lease_ms: u64,
}

/// Counts kept by the lock table.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LockCounters {
    pub grants: u64,
    pub waits: u64,
    pub timeouts: u64,
    pub lease_expiries: u64,
}

const COUNTER_MASK: u64 = (1 << TOKEN_COUNTER_BITS) - 1;

/// Hands out `epoch << TOKEN_COUNTER_BITS | counter`; the shard persists the epoch.
pub(crate) struct TokenSource {
    epoch: u64,
    counter: u64,
}

impl TokenSource {
    pub fn new(epoch: u64) -> TokenSource {
        TokenSource { epoch, counter: 0 }
    }

    fn issue(&mut self) -> Option<LockToken> {
        if self.counter >= COUNTER_MASK {
            return None;
        }
        self.counter += 1;
        LockToken::from_u64(self.epoch << TOKEN_COUNTER_BITS | self.counter)
    }

    /// Tokens left in this epoch.
    pub fn left(&self) -> u64 {
        COUNTER_MASK - self.counter
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }
}

pub(crate) struct Locks {
    table: HashMap<SessionKey, LockEntry>,
    waiters: HashMap<WaitId, Waiter>,
    timers: BTreeSet<(u64, Timer)>,
    next_wait: u64,
    /// Holders with at least one pin (so that "is anything pinned" costs nothing when nothing is).
    pinned: usize,
    pub tokens: TokenSource,
    pub counters: LockCounters,
}

fn clamp_lease(lease_ms: u64) -> u64 {
    lease_ms.clamp(1, LOCK_LEASE_MS_MAX)
}

impl Locks {
    pub fn new(epoch: u64) -> Locks {
        Locks {
            table: HashMap::new(),
            waiters: HashMap::new(),
            timers: BTreeSet::new(),
            next_wait: 1,
            pinned: 0,
            tokens: TokenSource::new(epoch),
            counters: LockCounters::default(),
        }
    }

    /// The earliest lease end or wait deadline.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.timers.first().map(|&(t, _)| t)
    }

    pub fn held(&self) -> usize {
        self.table.values().filter(|e| e.holder.is_some()).count()
    }

    pub fn waiting(&self) -> usize {
        self.waiters.len()
    }

    /// Fires every timer due at or before `now_ms`, in time order.
    pub fn advance(&mut self, now_ms: u64, events: &mut Vec<Event>) {
        while let Some(&(t, timer)) = self.timers.first() {
            if t > now_ms {
                break;
            }
            self.timers.pop_first();
            match timer {
                Timer::Lease(key) => {
                    let ended = matches!(
                        self.table.get(&key).and_then(|e| e.holder),
                        Some(h) if h.lease_until_ms == t && h.pins == 0
                    );
                    if ended {
                        self.counters.lease_expiries += 1;
                        self.release(key, now_ms, events);
                    }
                }
                Timer::Wait(id) => {
                    if let Some(w) = self.waiters.remove(&id) {
                        self.unqueue(w.key, id);
                        self.counters.timeouts += 1;
                        events.push(Event::LockTimedOut { wait: id });
                    }
                }
            }
        }
    }

    fn unqueue(&mut self, key: SessionKey, id: WaitId) {
        if let Some(e) = self.table.get_mut(&key) {
            e.queue.retain(|&w| w != id);
            if e.holder.is_none() && e.queue.is_empty() {
                self.table.remove(&key);
            }
        }
    }

    fn grant(
        &mut self,
        key: SessionKey,
        owner: OwnerId,
        now_ms: u64,
        lease_ms: u64,
    ) -> Option<LockToken> {
        let token = self.tokens.issue()?;
        let lease_until_ms = now_ms.saturating_add(clamp_lease(lease_ms));
        let e = self.table.entry(key).or_default();
        if let Some(old) = e.holder.take() {
            // Never pinned here: `lock` queues a pinned holder's own request.
            debug_assert_eq!(old.pins, 0);
            if old.pins > 0 {
                self.pinned -= 1;
            }
            self.timers.remove(&(old.lease_until_ms, Timer::Lease(key)));
        }
        e.holder = Some(Holder {
            token,
            owner,
            lease_until_ms,
            pins: 0,
        });
        self.timers.insert((lease_until_ms, Timer::Lease(key)));
        self.counters.grants += 1;
        Some(token)
    }

    /// Drops the holder of `key` and hands the lock to the first waiter.
    fn release(&mut self, key: SessionKey, now_ms: u64, events: &mut Vec<Event>) {
        let Some(e) = self.table.get_mut(&key) else {
            return;
        };
        if let Some(h) = e.holder.take() {
            if h.pins > 0 {
                self.pinned -= 1;
            }
            self.timers.remove(&(h.lease_until_ms, Timer::Lease(key)));
        }
        loop {
            let Some(e) = self.table.get_mut(&key) else {
                return;
            };
            let Some(id) = e.queue.pop_front() else {
                self.table.remove(&key);
                return;
            };
            let Some(w) = self.waiters.remove(&id) else {
                continue;
            };
            self.timers.remove(&(w.deadline_ms, Timer::Wait(id)));
            match self.grant(key, w.owner, now_ms, w.lease_ms) {
                Some(token) => events.push(Event::LockGranted { wait: id, token }),
                None => {
                    // No token can be issued (epoch exhausted): the waiter cannot get the
                    // lock; say so rather than leave it hanging.
                    self.counters.timeouts += 1;
                    events.push(Event::LockTimedOut { wait: id });
                    continue;
                }
            }
            return;
        }
    }

    /// A lock request (timers must have been advanced to `now_ms`).
    pub fn lock(
        &mut self,
        key: SessionKey,
        owner: OwnerId,
        now_ms: u64,
        wait_deadline_ms: u64,
        lease_ms: u64,
    ) -> Result<LockOutcome, EngineError> {
        let holder = self.table.get(&key).and_then(|e| e.holder);
        match holder {
            // Free (a free lock never has waiters: a release hands it straight on).
            None => {}
            // The holder asks again (a second session_start on one connection): a fresh
            // token and lease; the old token is now stale. Not while pinned: the pinned lock
            // is the write's, not the connection's, and the request waits like any other.
            Some(h) if h.owner == owner && h.pins == 0 => {}
            Some(_) => {
                if wait_deadline_ms <= now_ms {
                    self.counters.timeouts += 1;
                    return Ok(LockOutcome::TimedOut);
                }
                let id = WaitId(self.next_wait);
                self.next_wait += 1;
                self.waiters.insert(
                    id,
                    Waiter {
                        key,
                        owner,
                        deadline_ms: wait_deadline_ms,
                        lease_ms,
                    },
                );
                self.table.entry(key).or_default().queue.push_back(id);
                self.timers.insert((wait_deadline_ms, Timer::Wait(id)));
                self.counters.waits += 1;
                return Ok(LockOutcome::Queued(id));
            }
        }
        match self.grant(key, owner, now_ms, lease_ms) {
            Some(t) => Ok(LockOutcome::Granted(t)),
            None => Err(EngineError::TokensExhausted),
        }
    }

    /// Is `token` the current holder's token for `key`?
    pub fn check(&self, key: &SessionKey, token: LockToken) -> Result<(), EngineError> {
        match self.table.get(key).and_then(|e| e.holder) {
            Some(h) if h.token == token => Ok(()),
            Some(_) => Err(EngineError::WrongToken),
            None => Err(EngineError::NotLocked),
        }
    }

    /// Is `key` locked by anyone?
    pub fn is_locked(&self, key: &SessionKey) -> bool {
        self.table.get(key).is_some_and(|e| e.holder.is_some())
    }

    pub fn unlock(
        &mut self,
        key: SessionKey,
        token: LockToken,
        now_ms: u64,
        events: &mut Vec<Event>,
    ) -> Result<(), EngineError> {
        self.check(&key, token)?;
        if self.is_pinned(&key) {
            // Deferred: the last unpin releases it.
            return Ok(());
        }
        self.release(key, now_ms, events);
        Ok(())
    }

    /// Pins the lock held with `token` (see the module's notes): its lease stops, and only the
    /// last `unpin` releases it. Pins add up.
    pub fn pin(&mut self, key: SessionKey, token: LockToken) -> Result<(), EngineError> {
        self.check(&key, token)?;
        let Some(h) = self.table.get_mut(&key).and_then(|e| e.holder.as_mut()) else {
            return Err(EngineError::NotLocked);
        };
        if h.pins == 0 {
            self.timers.remove(&(h.lease_until_ms, Timer::Lease(key)));
            self.pinned += 1;
        }
        h.pins = h.pins.saturating_add(1);
        Ok(())
    }

    /// Ends one pin of the lock held with `token`; the last one releases the lock (handing it
    /// to the next waiter), whatever was asked meanwhile. A lock that is not pinned is left
    /// alone (`NotPinned`): an unpin never releases a lock it did not pin.
    pub fn unpin(
        &mut self,
        key: SessionKey,
        token: LockToken,
        now_ms: u64,
        events: &mut Vec<Event>,
    ) -> Result<(), EngineError> {
        self.check(&key, token)?;
        let Some(h) = self.table.get_mut(&key).and_then(|e| e.holder.as_mut()) else {
            return Err(EngineError::NotLocked);
        };
        if h.pins == 0 {
            return Err(EngineError::NotPinned);
        }
        h.pins -= 1;
        if h.pins == 0 {
            self.pinned -= 1;
            self.release(key, now_ms, events);
        }
        Ok(())
    }

    /// Is the lock of `key` pinned? Free when no lock is (the usual case).
    pub fn is_pinned(&self, key: &SessionKey) -> bool {
        self.pinned > 0
            && self
                .table
                .get(key)
                .and_then(|e| e.holder)
                .is_some_and(|h| h.pins > 0)
    }

    /// Holders pinned now.
    pub fn pinned(&self) -> usize {
        self.pinned
    }

    /// Drops every lock `owner` holds and every wait it queued. A pinned lock stays (its unpin
    /// releases it).
    pub fn release_owner(&mut self, owner: OwnerId, now_ms: u64, events: &mut Vec<Event>) -> usize {
        let mut dropped = 0;
        let waits: Vec<(WaitId, Waiter)> = self
            .waiters
            .iter()
            .filter(|(_, w)| w.owner == owner)
            .map(|(&i, &w)| (i, w))
            .collect();
        for (id, w) in waits {
            self.waiters.remove(&id);
            self.timers.remove(&(w.deadline_ms, Timer::Wait(id)));
            self.unqueue(w.key, id);
            dropped += 1;
        }
        let held: Vec<SessionKey> = self
            .table
            .iter()
            .filter(|(_, e)| e.holder.is_some_and(|h| h.owner == owner && h.pins == 0))
            .map(|(&k, _)| k)
            .collect();
        for key in held {
            self.release(key, now_ms, events);
            dropped += 1;
        }
        dropped
    }
}
