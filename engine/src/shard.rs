//! A shard: the sessions of one slice of the key space, owned by one thread.
//!
//! Everything a shard does happens on the calling thread, driven by calls that carry `now_ms`.
//! It never blocks on the disk: writes are copies into mapped slab files, and flushes are
//! submitted to the storage backend and reaped later by `poll_events`.
//!
//! The rules that keep a crash from losing or corrupting a session:
//! - a new version goes into a free slot; the old slot becomes *pending* and is reused only
//!   after the flush that made the new version durable has completed;
//! - a deleted session is shadowed by a tombstone record that lives until every older copy of
//!   it (which may still sit in freed slots) has expired; a session that expires while older
//!   copies with a later expiry exist stays in the index as a shadow for the same reason;
//! - versions come from a per-shard Lamport clock, so the newest copy of a session always has
//!   the highest version, across deletes and recreations.

use std::cell::Cell;
use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hashbrown::HashMap;

use crate::constants::{
    FLUSH_INTERVAL_MS_DEFAULT, FLUSH_INTERVAL_MS_MAX, PENDING_FREE_MAX, RECOVERY_DAMAGE_LOG_MAX,
    SESSION_SIZE_LIMIT, SESSION_SIZE_MAX_DEFAULT, SHARDS_MAX, SLAB_HEADER_REGION, TOKEN_EPOCH_MAX,
    VERSION_MAX,
};
use crate::error::EngineError;
use crate::locks::{LockOutcome, Locks};
use crate::manifest::Manifest;
use crate::record::{
    RecordKind, SlabHeader, SlotContent, class_for, decode, decode_unverified, encode_header,
    record_crc, record_len, slot_size,
};
use crate::slabs::{Loc, SlabFile, Slabs, SlotState, parse_file_name};
use crate::storage::{FileId, FlushDone, Storage};
use crate::sys::{FlushMode, SysStorage};
use crate::types::{LockToken, OwnerId, SessionKey, Ticket, WaitId, shard_for};

/// When a write is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushPolicy {
    /// Only once it is durable on disk: `WriteAck::Pending`, then `Event::Durable`. Writes
    /// that arrive together share one flush (group commit).
    WriteThrough,
    /// At once; dirty data is flushed at most `interval_ms` later, which is the most a power
    /// loss can take.
    DelayedWrite { interval_ms: u64 },
}

/// How a shard is run. `ShardConfig::default()` is write-through, 1 MiB sessions, one shard
/// per core.
#[derive(Clone, Debug)]
pub struct ShardConfig {
    pub flush: FlushPolicy,
    /// Largest session blob accepted, bytes (at most `SESSION_SIZE_LIMIT`).
    pub session_size_max: usize,
    /// Number of shards of the store (recorded in each shard's manifest; opening with another
    /// count is refused).
    pub shards: u32,
    /// Check the CRC of a record on every read from the mapping (on by default: a page the
    /// kernel evicted and read back from a bad disk is caught before it is served).
    pub verify_reads: bool,
    /// How the real backend drives flushes (ignored by other backends).
    pub flush_mode: FlushMode,
}

impl Default for ShardConfig {
    fn default() -> Self {
        ShardConfig {
            flush: FlushPolicy::WriteThrough,
            session_size_max: SESSION_SIZE_MAX_DEFAULT,
            shards: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            verify_reads: true,
            flush_mode: FlushMode::Auto,
        }
    }
}

impl ShardConfig {
    /// Delayed-write with the default interval.
    pub fn delayed_default() -> FlushPolicy {
        FlushPolicy::DelayedWrite {
            interval_ms: FLUSH_INTERVAL_MS_DEFAULT,
        }
    }

    fn validate(&self, shard_index: u32) -> Result<(), EngineError> {
        let bad = |reason: String| Err(EngineError::Config { reason });
        if self.shards == 0 || self.shards > SHARDS_MAX {
            return bad(format!(
                "shards must be 1..={SHARDS_MAX}, not {}",
                self.shards
            ));
        }
        if shard_index >= self.shards {
            return bad(format!(
                "shard index {shard_index} out of range for {} shards",
                self.shards
            ));
        }
        if self.session_size_max == 0 || self.session_size_max > SESSION_SIZE_LIMIT {
            return bad(format!(
                "session_size_max must be 1..={SESSION_SIZE_LIMIT}, not {}",
                self.session_size_max
            ));
        }
        if let FlushPolicy::DelayedWrite { interval_ms } = self.flush {
            if interval_ms == 0 || interval_ms > FLUSH_INTERVAL_MS_MAX {
                return bad(format!(
                    "flush interval must be 1..={FLUSH_INTERVAL_MS_MAX} ms, not {interval_ms}"
                ));
            }
        }
        Ok(())
    }
}

/// How a write was acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteAck {
    /// Done as far as the policy promises (delayed-write: in memory; or nothing to write).
    Done,
    /// Write-through: acknowledge the client when `Event::Durable { ticket }` arrives (or fail
    /// it on `Event::WriteFailed`).
    Pending(Ticket),
}

/// What `apply_replica` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicaOutcome {
    Applied(WriteAck),
    /// The shard already has this version or a newer one (or a newer delete).
    Stale,
}

/// Something that happened since the last `poll_events`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    LockGranted {
        wait: WaitId,
        token: LockToken,
    },
    LockTimedOut {
        wait: WaitId,
    },
    Durable {
        ticket: Ticket,
    },
    /// The flush this write waited for failed; the write is not durable and the shard is now
    /// read-only.
    WriteFailed {
        ticket: Ticket,
        error: EngineError,
    },
}

/// A session as stored, borrowed from the mapped slab file (no copy).
#[derive(Clone, Copy, Debug)]
pub struct SessionRef<'a> {
    data: &'a [u8],
    version: u64,
    expires_at_ms: u64,
}

impl<'a> SessionRef<'a> {
    pub fn data(&self) -> &'a [u8] {
        self.data
    }
    pub fn version(&self) -> u64 {
        self.version
    }
    pub fn expires_at_ms(&self) -> u64 {
        self.expires_at_ms
    }
}

/// Where a `Shard::scan` resumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanCursor(Loc);

impl ScanCursor {
    /// The beginning of the shard.
    pub const START: ScanCursor = ScanCursor(Loc {
        class: 0,
        file: 0,
        slot: 0,
    });
}

/// One damaged thing found by recovery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    pub file: String,
    /// The slot, or `None` for damage to the file as a whole.
    pub slot: Option<u32>,
    pub reason: &'static str,
}

/// What opening a shard found.
#[derive(Clone, Debug, Default)]
pub struct RecoveryReport {
    pub files: u32,
    pub bytes_scanned: u64,
    pub slots_scanned: u64,
    /// Records whose CRC and fields checked out.
    pub records_valid: u64,
    /// Sessions now held.
    pub sessions: u64,
    /// Tombstones (and expired shadows) kept to hide older copies.
    pub tombstones: u64,
    /// Older versions superseded by a newer copy.
    pub stale: u64,
    /// Sessions dropped because they had expired.
    pub expired: u64,
    /// Torn or corrupt records, skipped.
    pub damaged: u64,
    /// Valid records whose key belongs to another shard (skipped).
    pub misplaced: u64,
    /// Files with a damaged header, a length that is not whole slots, or an unusable name.
    pub damaged_files: u32,
    /// The first `RECOVERY_DAMAGE_LOG_MAX` damage findings, for the log.
    pub damage: Vec<Damage>,
    /// Wall time the scan took (measured for the report only; it decides nothing).
    pub elapsed: Duration,
    /// The flush mechanism in use.
    pub flush_mechanism: &'static str,
}

impl RecoveryReport {
    fn note(&mut self, file: &str, slot: Option<u32>, reason: &'static str) {
        if self.damage.len() < RECOVERY_DAMAGE_LOG_MAX {
            self.damage.push(Damage {
                file: file.to_string(),
                slot,
                reason,
            });
        }
    }

    /// Scan speed in MB/s (10^6 bytes per second).
    pub fn mb_per_s(&self) -> f64 {
        self.bytes_scanned as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Sessions recovered per second.
    pub fn sessions_per_s(&self) -> f64 {
        self.sessions as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Counters of one shard.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShardStats {
    pub sessions: u64,
    pub data_bytes: u64,
    pub size_smallest: u64,
    pub size_largest: u64,
    pub size_average: u64,
    pub tombstones: u64,
    pub reads: u64,
    pub read_misses: u64,
    pub corrupt_reads: u64,
    pub writes: u64,
    pub touches: u64,
    pub deletes: u64,
    pub expired: u64,
    pub lock_grants: u64,
    pub lock_waits: u64,
    pub lock_timeouts: u64,
    pub lease_expiries: u64,
    pub locks_held: u64,
    pub lock_waiters: u64,
    pub flushes: u64,
    pub recovered: u64,
    pub discarded: u64,
    pub slab_files: u64,
    pub slab_bytes: u64,
    pub slots: u64,
    pub pending_free: u64,
    pub moved: u64,
    /// The shard refuses writes after a failed flush.
    pub failed: bool,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    loc: Loc,
    version: u64,
    expires_at_ms: u64,
    /// Latest expiry of any version of this session ever written (older copies may still lie
    /// in freed slots until then).
    expires_max_ms: u64,
    data_len: u32,
    /// A tombstone or an expired shadow: not a session, only keeps older copies hidden.
    shadow: bool,
}

impl Entry {
    fn reclaim_at_ms(&self) -> u64 {
        if self.shadow {
            self.expires_max_ms
        } else {
            self.expires_at_ms
        }
    }
    fn live_at(&self, now_ms: u64) -> bool {
        !self.shadow && self.expires_at_ms > now_ms
    }
}

#[derive(Default)]
struct Counters {
    writes: u64,
    touches: u64,
    deletes: u64,
    expired: u64,
    flushes: u64,
    recovered: u64,
    discarded: u64,
    moved: u64,
}

/// A shard of the session store. See the module documentation.
pub struct Shard<S: Storage = SysStorage> {
    storage: S,
    flush_policy: FlushPolicy,
    session_size_max: usize,
    verify_reads: bool,
    shard_index: u32,
    shard_count: u32,
    slabs: Slabs,
    index: HashMap<SessionKey, Entry>,
    locks: Locks,
    /// Next version to hand out (above every version seen).
    version_clock: u64,
    // Flushing.
    flush_submitted: u64,
    flush_in_flight: bool,
    dirty_files: Vec<FileId>,
    dirty_flags: Vec<bool>,
    dir_dirty: bool,
    dirty_since_ms: Option<u64>,
    tickets: VecDeque<(u64, Ticket)>,
    next_ticket: u64,
    pending_free: VecDeque<(u64, Loc)>,
    /// Write-through `put_unlock`s whose lock is handed on only once their write is durable:
    /// (flush number needed, session, holder's token).
    deferred_unlocks: VecDeque<(u64, SessionKey, LockToken)>,
    /// The latest `now_ms` seen (for locks handed on from a flush completion).
    clock_ms: u64,
    /// The highest flush number completed.
    flushed_no: u64,
    failed: Option<String>,
    events: Vec<Event>,
    done_scratch: Vec<FlushDone>,
    data_scratch: Vec<u8>,
    // Expiry sweep cursor.
    sweep: Loc,
    // Statistics.
    sizes: BTreeMap<u32, u64>,
    data_bytes: u64,
    sessions: u64,
    reads: Cell<u64>,
    read_misses: Cell<u64>,
    corrupt_reads: Cell<u64>,
    counters: Counters,
}

fn now_from_clock() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Shard<SysStorage> {
    /// Opens shard `shard_index` of the store under `dir` (`dir/shard-NNNN/`), recovering it
    /// from its slab files. Expiry at recovery is judged against the system clock; this is the
    /// only place the engine reads it (use `open_at` to pass the time in).
    pub fn open(
        cfg: &ShardConfig,
        dir: &Path,
        shard_index: u32,
    ) -> Result<(Shard<SysStorage>, RecoveryReport), EngineError> {
        Self::open_at(cfg, dir, shard_index, now_from_clock())
    }

    /// `open` with the current time given.
    pub fn open_at(
        cfg: &ShardConfig,
        dir: &Path,
        shard_index: u32,
        now_ms: u64,
    ) -> Result<(Shard<SysStorage>, RecoveryReport), EngineError> {
        cfg.validate(shard_index)?;
        let shown = dir.display().to_string();
        let storage = SysStorage::open(dir, shard_index, cfg.flush_mode)
            .map_err(|e| EngineError::io("open shard directory", &shown, &e))?;
        Shard::open_with(storage, cfg, shard_index, now_ms)
    }
}

impl<S: Storage> Shard<S> {
    /// Opens a shard on any storage backend (the simulated disk in tests).
    pub fn open_with(
        mut storage: S,
        cfg: &ShardConfig,
        shard_index: u32,
        now_ms: u64,
    ) -> Result<(Shard<S>, RecoveryReport), EngineError> {
        cfg.validate(shard_index)?;
        let started = Instant::now();
        let listing = storage
            .list()
            .map_err(|e| EngineError::io("list", "shard directory", &e))?;
        let epoch = match storage
            .read_manifest()
            .map_err(|e| EngineError::io("read", "manifest", &e))?
        {
            None if !listing.is_empty() => {
                return Err(EngineError::Manifest {
                    reason: "missing while slab files exist (restore it, or move the slab \
                             files away to start empty)"
                        .into(),
                });
            }
            None => 1,
            Some(bytes) => {
                let m = Manifest::decode(&bytes).map_err(|r| EngineError::Manifest {
                    reason: r.to_string(),
                })?;
                if m.shard_index != shard_index {
                    return Err(EngineError::Manifest {
                        reason: format!(
                            "directory holds shard {} but shard {shard_index} was asked for",
                            m.shard_index
                        ),
                    });
                }
                if m.shard_count != cfg.shards {
                    return Err(EngineError::ShardCountMismatch {
                        stored: m.shard_count,
                        configured: cfg.shards,
                    });
                }
                m.token_epoch + 1
            }
        };
        if epoch > TOKEN_EPOCH_MAX {
            return Err(EngineError::TokensExhausted);
        }
        // Durable before any token of this epoch can be handed out.
        let m = Manifest {
            shard_index,
            shard_count: cfg.shards,
            token_epoch: epoch,
        };
        storage
            .write_manifest(&m.encode())
            .map_err(|e| EngineError::io("write", "manifest", &e))?;

        let mut shard = Shard {
            storage,
            flush_policy: cfg.flush,
            session_size_max: cfg.session_size_max,
            verify_reads: cfg.verify_reads,
            shard_index,
            shard_count: cfg.shards,
            slabs: Slabs::new(shard_index),
            index: HashMap::new(),
            locks: Locks::new(epoch),
            version_clock: 1,
            flush_submitted: 0,
            flush_in_flight: false,
            dirty_files: Vec::new(),
            dirty_flags: Vec::new(),
            dir_dirty: false,
            dirty_since_ms: None,
            tickets: VecDeque::new(),
            next_ticket: 1,
            pending_free: VecDeque::new(),
            deferred_unlocks: VecDeque::new(),
            clock_ms: 0,
            flushed_no: 0,
            failed: None,
            events: Vec::new(),
            done_scratch: Vec::new(),
            data_scratch: Vec::new(),
            sweep: Loc {
                class: 0,
                file: 0,
                slot: 0,
            },
            sizes: BTreeMap::new(),
            data_bytes: 0,
            sessions: 0,
            reads: Cell::new(0),
            read_misses: Cell::new(0),
            corrupt_reads: Cell::new(0),
            counters: Counters::default(),
        };
        let mut report = shard.recover(listing, now_ms)?;
        report.elapsed = started.elapsed();
        report.flush_mechanism = shard.storage.describe();
        shard.counters.recovered = report.sessions;
        shard.counters.discarded = report.damaged + report.misplaced;
        Ok((shard, report))
    }

    /// Scans every slab file and rebuilds the index and free lists.
    fn recover(
        &mut self,
        listing: Vec<(String, u64)>,
        now_ms: u64,
    ) -> Result<RecoveryReport, EngineError> {
        let mut report = RecoveryReport::default();
        let mut by_class: Vec<Vec<(u32, String)>> = vec![Vec::new(); self.slabs.classes.len()];
        for (name, _) in listing {
            match parse_file_name(&name) {
                Some((class, number)) => by_class[class].push((number, name)),
                None => {
                    report.damaged_files += 1;
                    report.note(&name, None, "not a slab file name; ignored");
                }
            }
        }
        let mut max_version = 0u64;
        for (class, mut files) in by_class.into_iter().enumerate() {
            files.sort();
            let size = slot_size(class);
            for (number, name) in files {
                let c = &mut self.slabs.classes[class];
                c.next_number = c.next_number.max(number + 1);
                let id = match self.storage.open(&name) {
                    Ok(id) => id,
                    Err(_) => {
                        report.damaged_files += 1;
                        report.note(&name, None, "cannot be opened or is empty; ignored");
                        continue;
                    }
                };
                let bytes = self.storage.bytes(id);
                report.files += 1;
                report.bytes_scanned += bytes.len() as u64;
                let mut file_damaged = false;
                match SlabHeader::decode(bytes) {
                    Ok(h)
                        if h.class as usize == class
                            && h.slot_size as usize == size
                            && h.shard_index == self.shard_index
                            && h.file_number == number => {}
                    Ok(_) => {
                        file_damaged = true;
                        report.note(&name, None, "header does not match the file name");
                    }
                    Err(reason) => {
                        file_damaged = true;
                        report.note(&name, None, reason);
                    }
                }
                let body = bytes.len().saturating_sub(SLAB_HEADER_REGION);
                if bytes.len() < SLAB_HEADER_REGION || body % size != 0 {
                    file_damaged = true;
                    report.note(&name, None, "truncated: partial slot at the end ignored");
                }
                report.damaged_files += u32::from(file_damaged);
                let slot_count = body / size;
                let pos = self.slabs.classes[class].files.len();
                let mut file = SlabFile::new(id, slot_count);
                for slot in 0..slot_count {
                    report.slots_scanned += 1;
                    let at = SLAB_HEADER_REGION + slot * size;
                    let loc = Loc {
                        class: class as u8,
                        file: pos as u16,
                        slot: slot as u32,
                    };
                    match decode(&bytes[at..at + size]) {
                        SlotContent::Empty => {}
                        SlotContent::Damaged(d) => {
                            report.damaged += 1;
                            report.note(&name, Some(slot as u32), d.describe());
                        }
                        SlotContent::Record(r) => {
                            report.records_valid += 1;
                            if shard_for(&r.key, self.shard_count as usize)
                                != self.shard_index as usize
                            {
                                report.misplaced += 1;
                                report.note(
                                    &name,
                                    Some(slot as u32),
                                    "key belongs to another shard",
                                );
                                continue;
                            }
                            max_version = max_version.max(r.version);
                            let cand = Entry {
                                loc,
                                version: r.version,
                                expires_at_ms: r.expires_at_ms,
                                expires_max_ms: r.expires_at_ms,
                                data_len: r.data.len() as u32,
                                shadow: r.kind == RecordKind::Tombstone,
                            };
                            match self.index.get_mut(&r.key) {
                                None => {
                                    self.index.insert(r.key, cand);
                                    file.slots[slot].state = SlotState::Live;
                                }
                                Some(cur) => {
                                    report.stale += 1;
                                    let em = cur.expires_max_ms.max(cand.expires_max_ms);
                                    if cand.version > cur.version {
                                        let old = cur.loc;
                                        *cur = Entry {
                                            expires_max_ms: em,
                                            ..cand
                                        };
                                        file.slots[slot].state = SlotState::Live;
                                        if old.class as usize == class && old.file as usize == pos {
                                            file.slots[old.slot as usize].state = SlotState::Free;
                                        } else {
                                            self.slabs.meta_mut(old).state = SlotState::Free;
                                        }
                                    } else {
                                        cur.expires_max_ms = em;
                                    }
                                }
                            }
                        }
                    }
                }
                self.slabs.classes[class].files.push(file);
            }
        }
        self.version_clock = max_version + 1;
        // Settle each surviving record: expired ones go, shadows stay while older copies may
        // still come back, tombstones whose older copies have all expired go.
        let mut drop_keys = Vec::new();
        for (key, e) in self.index.iter_mut() {
            if !e.shadow && e.expires_at_ms <= now_ms {
                report.expired += 1;
                e.shadow = true;
            }
            if e.shadow && e.expires_max_ms <= now_ms {
                drop_keys.push(*key);
            }
        }
        for key in drop_keys {
            if let Some(e) = self.index.remove(&key) {
                self.slabs.meta_mut(e.loc).state = SlotState::Free;
            }
        }
        for (_, e) in self.index.iter() {
            self.slabs.meta_mut(e.loc).reclaim_at_ms = e.reclaim_at_ms();
            if e.shadow {
                report.tombstones += 1;
            } else {
                report.sessions += 1;
                *self.sizes.entry(e.data_len).or_default() += 1;
                self.data_bytes += u64::from(e.data_len);
            }
        }
        self.sessions = report.sessions;
        for c in &mut self.slabs.classes {
            for f in &mut c.files {
                f.rebuild_free();
            }
        }
        Ok(report)
    }

    // ----- reads -------------------------------------------------------------------------

    fn read_entry(&self, e: &Entry) -> Option<SessionRef<'_>> {
        let slot = self.slabs.slot_bytes(&self.storage, e.loc);
        let content = if self.verify_reads {
            decode(slot)
        } else {
            decode_unverified(slot)
        };
        match content {
            SlotContent::Record(r) if r.version == e.version && r.kind == RecordKind::Session => {
                Some(SessionRef {
                    data: r.data,
                    version: r.version,
                    expires_at_ms: r.expires_at_ms,
                })
            }
            _ => {
                // The record changed under us (a bad page read back from disk): never serve it.
                self.corrupt_reads.set(self.corrupt_reads.get() + 1);
                None
            }
        }
    }

    /// The session, if it exists and has not expired. Served from the mapping, no copy.
    pub fn get(&self, key: &SessionKey, now_ms: u64) -> Option<SessionRef<'_>> {
        self.reads.set(self.reads.get() + 1);
        let found = match self.index.get(key) {
            Some(e) if e.live_at(now_ms) => self.read_entry(e),
            _ => None,
        };
        if found.is_none() {
            self.read_misses.set(self.read_misses.get() + 1);
        }
        found
    }

    /// Does the session exist (and has not expired)?
    pub fn exists(&self, key: &SessionKey, now_ms: u64) -> bool {
        self.index.get(key).is_some_and(|e| e.live_at(now_ms))
    }

    /// Every live session, in no particular order (for replication and sync).
    pub fn iter(&self, now_ms: u64) -> impl Iterator<Item = (SessionKey, SessionRef<'_>)> + '_ {
        self.index
            .iter()
            .filter(move |(_, e)| e.live_at(now_ms))
            .filter_map(|(k, e)| self.read_entry(e).map(|r| (*k, r)))
    }

    /// Visits up to `limit` live sessions from `cursor` on (start with `ScanCursor::START`),
    /// in slot order, and returns where to resume, or `None` when the whole shard has been
    /// visited. Unlike `iter`, a scan can be spread over many event-loop passes with writes in
    /// between (replication catch-up, sync): a session written or moved meanwhile may be
    /// visited twice or, if it moved behind the cursor, not at all in this pass, so a sync that
    /// needs every session must compare versions afterwards or scan again.
    pub fn scan(
        &self,
        cursor: ScanCursor,
        now_ms: u64,
        limit: usize,
        mut visit: impl FnMut(SessionKey, SessionRef<'_>),
    ) -> Option<ScanCursor> {
        let mut at = cursor.0;
        let mut visited = 0;
        loop {
            let c = self.slabs.classes.get(at.class as usize)?;
            let Some(f) = c.files.get(at.file as usize) else {
                at = Loc {
                    class: at.class + 1,
                    file: 0,
                    slot: 0,
                };
                continue;
            };
            let Some(meta) = f.slots.get(at.slot as usize) else {
                at = Loc {
                    class: at.class,
                    file: at.file + 1,
                    slot: 0,
                };
                continue;
            };
            if visited >= limit {
                return Some(ScanCursor(at));
            }
            let loc = at;
            at.slot += 1;
            if meta.state != SlotState::Live {
                continue;
            }
            let key = match decode_unverified(self.slabs.slot_bytes(&self.storage, loc)) {
                SlotContent::Record(r) => r.key,
                _ => continue,
            };
            match self.index.get(&key) {
                Some(e) if e.loc == loc && e.live_at(now_ms) => {
                    if let Some(r) = self.read_entry(e) {
                        visit(key, r);
                        visited += 1;
                    }
                }
                _ => {}
            }
        }
    }

    // ----- locks -------------------------------------------------------------------------

    fn advance(&mut self, now_ms: u64) {
        self.clock_ms = self.clock_ms.max(now_ms);
        self.locks.advance(now_ms, &mut self.events);
    }

    /// Asks for the session lock. `Queued` requests are resolved by `poll_events`.
    /// Fails only if no lock token can be issued (the token epoch could not be persisted).
    pub fn lock(
        &mut self,
        key: SessionKey,
        owner: OwnerId,
        now_ms: u64,
        wait_deadline_ms: u64,
        lease_ms: u64,
    ) -> Result<LockOutcome, EngineError> {
        self.advance(now_ms);
        self.refill_tokens();
        self.locks
            .lock(key, owner, now_ms, wait_deadline_ms, lease_ms)
    }

    /// Releases the lock held with `token` and hands it to the next waiter (while the lock is
    /// pinned, the release is left to its last `unpin`).
    pub fn unlock(
        &mut self,
        key: SessionKey,
        token: LockToken,
        now_ms: u64,
    ) -> Result<(), EngineError> {
        self.advance(now_ms);
        self.locks.unlock(key, token, now_ms, &mut self.events)
    }

    /// Pins the lock held with `token`: it outlasts its lease, its owner's `release_owner` and
    /// any `unlock` (deferred), until the last `unpin` releases it (see `locks.rs`). The holder's
    /// own new lock request then waits in the queue.
    pub fn pin(
        &mut self,
        key: SessionKey,
        token: LockToken,
        now_ms: u64,
    ) -> Result<(), EngineError> {
        self.advance(now_ms);
        self.locks.pin(key, token)
    }

    /// Ends one pin of the lock held with `token`; the last releases the lock and hands it to
    /// the next waiter. `NotPinned` (nothing changed) when it is not pinned.
    pub fn unpin(
        &mut self,
        key: SessionKey,
        token: LockToken,
        now_ms: u64,
    ) -> Result<(), EngineError> {
        self.advance(now_ms);
        self.locks.unpin(key, token, now_ms, &mut self.events)
    }

    /// Whether the lock of `key` is pinned (costs nothing while no lock is).
    pub fn is_pinned(&self, key: &SessionKey) -> bool {
        self.locks.is_pinned(key)
    }

    /// How many locks are pinned now.
    pub fn pinned_locks(&self) -> usize {
        self.locks.pinned()
    }

    /// The client connection `owner` is gone: drops every lock it holds and every wait it
    /// queued, at once. Returns how many.
    pub fn release_owner(&mut self, owner: OwnerId, now_ms: u64) -> usize {
        self.advance(now_ms);
        self.locks.release_owner(owner, now_ms, &mut self.events)
    }

    /// Starts a new token epoch well before the current one runs out, so that no grant ever
    /// finds it empty. If the manifest cannot be written now, the old epoch goes on and the
    /// next call tries again.
    fn refill_tokens(&mut self) {
        if self.locks.tokens.left() > 1 << 32 {
            return;
        }
        let epoch = self.locks.tokens.epoch() + 1;
        if epoch > TOKEN_EPOCH_MAX {
            return;
        }
        let m = Manifest {
            shard_index: self.shard_index,
            shard_count: self.shard_count,
            token_epoch: epoch,
        };
        if self.storage.write_manifest(&m.encode()).is_ok() {
            self.locks.tokens = crate::locks::TokenSource::new(epoch);
        }
    }

    // ----- writes ------------------------------------------------------------------------

    fn check_writable(&self) -> Result<(), EngineError> {
        match &self.failed {
            Some(reason) => Err(EngineError::StorageFailed {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    fn mark_dirty(&mut self, id: FileId, now_ms: u64) {
        let i = id as usize;
        if self.dirty_flags.len() <= i {
            self.dirty_flags.resize(i + 1, false);
        }
        if !self.dirty_flags[i] {
            self.dirty_flags[i] = true;
            self.dirty_files.push(id);
        }
        self.dirty_since_ms.get_or_insert(now_ms);
    }

    /// Writes a record into a fresh slot and checks it back (CRC included) before anything
    /// refers to it. The slot is allocated but not yet marked live.
    fn write_record(
        &mut self,
        kind: RecordKind,
        key: &SessionKey,
        version: u64,
        expires_at_ms: u64,
        data: &[u8],
        now_ms: u64,
    ) -> Result<Loc, EngineError> {
        let len = record_len(data.len());
        let class = class_for(len).ok_or(EngineError::TooLarge {
            size: data.len(),
            max: self.session_size_max,
        })?;
        let (loc, created) = self
            .slabs
            .alloc(&mut self.storage, class)
            .map_err(|e| EngineError::io("grow", &format!("class {class}"), &e))?;
        let id = self.slabs.file(loc).id;
        if created {
            self.dir_dirty = true;
            self.mark_dirty(id, now_ms);
        }
        let header = encode_header(kind, key, version, expires_at_ms, data.len() as u32);
        let crc = record_crc(&header, data).to_le_bytes();
        if let Err(e) = self
            .storage
            .write(id, Slabs::offset(loc), &[&header, data, &crc])
        {
            // The slot may hold half a record; it is never referenced, and the shard stops
            // taking writes, as after a failed flush.
            self.slabs.unalloc(loc);
            let reason = format!("write to slab file failed: {e}");
            self.fail(reason.clone());
            return Err(EngineError::StorageFailed { reason });
        }
        // Pair check: what the mapping now holds must decode to exactly what we meant.
        let ok = matches!(
            decode(self.slabs.slot_bytes(&self.storage, loc)),
            SlotContent::Record(r) if r.version == version && r.key == *key
                && r.data.len() == data.len() && r.kind == kind
        );
        if !ok {
            self.slabs.unalloc(loc);
            return Err(EngineError::Corrupt {
                reason: format!("record in {loc:?} did not read back as written"),
            });
        }
        self.mark_dirty(id, now_ms);
        Ok(loc)
    }

    /// The acknowledgement for a write just made.
    fn ack(&mut self) -> WriteAck {
        match self.flush_policy {
            FlushPolicy::DelayedWrite { .. } => WriteAck::Done,
            FlushPolicy::WriteThrough => {
                let t = Ticket(self.next_ticket);
                self.next_ticket += 1;
                self.tickets.push_back((self.flush_submitted + 1, t));
                WriteAck::Pending(t)
            }
        }
    }

    /// The slot an entry used to occupy: reusable once the next flush has completed.
    fn retire(&mut self, loc: Loc) {
        self.slabs.set_pending(loc);
        self.pending_free.push_back((self.flush_submitted + 1, loc));
    }

    fn forget_size(&mut self, e: &Entry) {
        if e.shadow {
            return;
        }
        self.sessions -= 1;
        self.data_bytes -= u64::from(e.data_len);
        if let Some(n) = self.sizes.get_mut(&e.data_len) {
            *n -= 1;
            if *n == 0 {
                self.sizes.remove(&e.data_len);
            }
        }
    }

    fn count_size(&mut self, len: u32) {
        self.sessions += 1;
        self.data_bytes += u64::from(len);
        *self.sizes.entry(len).or_default() += 1;
    }

    /// Stores a new version of `key` (lock already checked).
    fn store(
        &mut self,
        key: SessionKey,
        version: u64,
        expires_at_ms: u64,
        data: &[u8],
        now_ms: u64,
    ) -> Result<WriteAck, EngineError> {
        let loc = self.write_record(
            RecordKind::Session,
            &key,
            version,
            expires_at_ms,
            data,
            now_ms,
        )?;
        let old = self.index.get(&key).copied();
        let expires_max_ms = old.map_or(expires_at_ms, |o| o.expires_max_ms.max(expires_at_ms));
        let entry = Entry {
            loc,
            version,
            expires_at_ms,
            expires_max_ms,
            data_len: data.len() as u32,
            shadow: false,
        };
        self.slabs.set_live(loc, entry.reclaim_at_ms());
        self.index.insert(key, entry);
        if let Some(o) = old {
            self.forget_size(&o);
            self.retire(o.loc);
        }
        self.count_size(data.len() as u32);
        self.version_clock = self.version_clock.max(version + 1);
        self.counters.writes += 1;
        Ok(self.ack())
    }

    fn check_size(&self, len: usize) -> Result<(), EngineError> {
        if len > self.session_size_max {
            return Err(EngineError::TooLarge {
                size: len,
                max: self.session_size_max,
            });
        }
        Ok(())
    }

    fn expiry(now_ms: u64, lifetime_s: u32) -> u64 {
        now_ms.saturating_add(u64::from(lifetime_s) * 1000)
    }

    /// Writes the session; `token` must be the current lock holder's. The session expires
    /// `lifetime_s` seconds from `now_ms` (PHP's gc_maxlifetime).
    pub fn put(
        &mut self,
        key: SessionKey,
        token: LockToken,
        data: &[u8],
        lifetime_s: u32,
        now_ms: u64,
    ) -> Result<WriteAck, EngineError> {
        self.advance(now_ms);
        self.check_writable()?;
        self.locks.check(&key, token)?;
        self.check_size(data.len())?;
        let v = self.version_clock;
        self.store(key, v, Self::expiry(now_ms, lifetime_s), data, now_ms)
    }

    /// `put`, then releases the lock (handing it to the next waiter). The lock is released
    /// only if the write succeeded. Under write-through the lock is handed on only once the
    /// write is durable (with its `Event::Durable`), so the next holder never reads data a
    /// crash could still take back; until then the session stays locked by the writer (whose
    /// token keeps working, e.g. for a late `unlock`).
    pub fn put_unlock(
        &mut self,
        key: SessionKey,
        token: LockToken,
        data: &[u8],
        lifetime_s: u32,
        now_ms: u64,
    ) -> Result<WriteAck, EngineError> {
        let ack = self.put(key, token, data, lifetime_s, now_ms)?;
        match ack {
            WriteAck::Pending(_) => {
                let needed = self.flush_submitted + 1;
                self.deferred_unlocks.push_back((needed, key, token));
            }
            WriteAck::Done => self.locks.unlock(key, token, now_ms, &mut self.events)?,
        }
        Ok(ack)
    }

    /// Extends the session's life to `lifetime_s` from now (PHP's update_timestamp). Rewrites
    /// the record in a new slot: the old copy is never modified in place.
    pub fn touch(
        &mut self,
        key: SessionKey,
        token: LockToken,
        lifetime_s: u32,
        now_ms: u64,
    ) -> Result<WriteAck, EngineError> {
        self.advance(now_ms);
        self.check_writable()?;
        self.locks.check(&key, token)?;
        let e = match self.index.get(&key) {
            Some(e) if e.live_at(now_ms) => *e,
            _ => return Err(EngineError::NotFound),
        };
        let mut data = std::mem::take(&mut self.data_scratch);
        data.clear();
        match self.read_entry(&e) {
            Some(r) => data.extend_from_slice(r.data()),
            None => {
                self.data_scratch = data;
                return Err(EngineError::Corrupt {
                    reason: "session failed its CRC check".into(),
                });
            }
        }
        let v = self.version_clock;
        let r = self.store(key, v, Self::expiry(now_ms, lifetime_s), &data, now_ms);
        self.data_scratch = data;
        if r.is_ok() {
            self.counters.writes -= 1;
            self.counters.touches += 1;
        }
        r
    }

    /// Deletes the session. If it is locked, `token` must be the holder's; the lock itself
    /// stays (release it with `unlock`).
    pub fn destroy(
        &mut self,
        key: SessionKey,
        token: Option<LockToken>,
        now_ms: u64,
    ) -> Result<WriteAck, EngineError> {
        self.advance(now_ms);
        self.check_writable()?;
        match token {
            Some(t) => self.locks.check(&key, t)?,
            None if self.locks.is_locked(&key) => return Err(EngineError::WrongToken),
            None => {}
        }
        self.delete(key, now_ms)
    }

    /// Deletes the session without any lock check (replication: the master decided).
    pub fn remove(&mut self, key: SessionKey, now_ms: u64) -> Result<WriteAck, EngineError> {
        self.advance(now_ms);
        self.check_writable()?;
        self.delete(key, now_ms)
    }

    fn delete(&mut self, key: SessionKey, now_ms: u64) -> Result<WriteAck, EngineError> {
        let e = match self.index.get(&key) {
            Some(e) if e.live_at(now_ms) => *e,
            _ => return Ok(WriteAck::Done),
        };
        let v = self.version_clock;
        self.version_clock += 1;
        // The tombstone must outlive every older copy that may still be on disk.
        let loc = self.write_record(
            RecordKind::Tombstone,
            &key,
            v,
            e.expires_max_ms,
            &[],
            now_ms,
        )?;
        let tomb = Entry {
            loc,
            version: v,
            expires_at_ms: e.expires_max_ms,
            expires_max_ms: e.expires_max_ms,
            data_len: 0,
            shadow: true,
        };
        self.slabs.set_live(loc, tomb.reclaim_at_ms());
        self.index.insert(key, tomb);
        self.forget_size(&e);
        self.retire(e.loc);
        self.counters.deletes += 1;
        Ok(self.ack())
    }

    /// Applies a copy from the session's master: only if `version` is newer than what this
    /// shard has (a newer delete counts). No lock needed.
    pub fn apply_replica(
        &mut self,
        key: SessionKey,
        version: u64,
        expires_at_ms: u64,
        data: &[u8],
        now_ms: u64,
    ) -> Result<ReplicaOutcome, EngineError> {
        self.advance(now_ms);
        self.check_writable()?;
        self.check_size(data.len())?;
        if self.index.get(&key).is_some_and(|e| e.version >= version) {
            return Ok(ReplicaOutcome::Stale);
        }
        if version == 0 || version > VERSION_MAX {
            return Err(EngineError::Corrupt {
                reason: format!("replica version {version} out of range"),
            });
        }
        if expires_at_ms <= now_ms {
            // An expired copy would be dropped at once anyway.
            return Ok(ReplicaOutcome::Stale);
        }
        self.store(key, version, expires_at_ms, data, now_ms)
            .map(ReplicaOutcome::Applied)
    }

    // ----- flushing and events ---------------------------------------------------------------

    fn has_dirty(&self) -> bool {
        !self.dirty_files.is_empty() || self.dir_dirty
    }

    fn submit(&mut self) {
        let no = self.flush_submitted + 1;
        let files = std::mem::take(&mut self.dirty_files);
        for &id in &files {
            self.dirty_flags[id as usize] = false;
        }
        match self.storage.submit_flush(no, &files, self.dir_dirty) {
            Ok(()) => {
                self.flush_submitted = no;
                self.flush_in_flight = true;
                self.dir_dirty = false;
                self.dirty_since_ms = None;
            }
            Err(e) => self.fail(format!("submitting flush {no}: {e}")),
        }
    }

    /// End of an event-loop pass: under write-through, submits every write made since the
    /// last flush as one flush (group commit); under delayed-write, flushes when the interval
    /// since the oldest unflushed write is up (or many freed slots wait for reuse). At most one
    /// flush is in flight; writes made meanwhile go with the next.
    pub fn flush(&mut self, now_ms: u64) {
        if self.failed.is_some() || self.flush_in_flight || !self.has_dirty() {
            return;
        }
        let due = match self.flush_policy {
            FlushPolicy::WriteThrough => true,
            FlushPolicy::DelayedWrite { interval_ms } => {
                self.dirty_since_ms
                    .is_some_and(|t| now_ms >= t.saturating_add(interval_ms))
                    || self.pending_free.len() >= PENDING_FREE_MAX
            }
        };
        if due {
            self.submit();
        }
    }

    fn fail(&mut self, reason: String) {
        self.flush_in_flight = false;
        if self.failed.is_none() {
            self.failed = Some(reason.clone());
        }
        let error = EngineError::StorageFailed { reason };
        for (_, ticket) in self.tickets.drain(..) {
            self.events.push(Event::WriteFailed {
                ticket,
                error: error.clone(),
            });
        }
    }

    fn reap(&mut self) {
        let mut done = std::mem::take(&mut self.done_scratch);
        self.storage.reap(&mut done);
        for (no, result) in done.drain(..) {
            match result {
                Ok(()) => self.completed(no),
                Err(e) => self.fail(format!("flush {no} failed: {e}")),
            }
        }
        self.done_scratch = done;
    }

    fn completed(&mut self, no: u64) {
        if self.failed.is_some() {
            return;
        }
        self.flush_in_flight = false;
        self.counters.flushes += 1;
        while let Some(&(needed, loc)) = self.pending_free.front() {
            if needed > no {
                break;
            }
            self.pending_free.pop_front();
            self.slabs.release_pending(loc);
        }
        while let Some(&(needed, ticket)) = self.tickets.front() {
            if needed > no {
                break;
            }
            self.tickets.pop_front();
            self.events.push(Event::Durable { ticket });
        }
        self.flushed_no = self.flushed_no.max(no);
    }

    /// Hands on the locks of write-through `put_unlock`s whose flush is done (`Some(no)`), or
    /// all of them (`None`: a flush failed, and every later write will be refused anyway).
    /// Called from `poll_events` only, so locks change hands at the same point as the
    /// `Durable` events are handed over, whichever call reaped the completion.
    /// A lock that changed hands meanwhile (lease ended, connection closed) is left alone.
    fn release_deferred(&mut self, done: Option<u64>) {
        let now_ms = self.clock_ms;
        while let Some(&(needed, key, token)) = self.deferred_unlocks.front() {
            if done.is_some_and(|no| needed > no) {
                break;
            }
            self.deferred_unlocks.pop_front();
            let _ = self.locks.unlock(key, token, now_ms, &mut self.events);
        }
    }

    /// Reaps finished flushes, fires lock leases and wait deadlines due by `now_ms`, starts
    /// the next flush if one is due, and hands over everything that happened.
    pub fn poll_events(&mut self, now_ms: u64, out: &mut Vec<Event>) {
        // Leases and deadlines first: a lock whose lease ended is not handed on by a flush
        // completion reaped in the same poll.
        self.advance(now_ms);
        self.reap();
        let done = if self.failed.is_some() {
            None
        } else {
            Some(self.flushed_no)
        };
        self.release_deferred(done);
        self.flush(now_ms);
        out.append(&mut self.events);
    }

    /// When `poll_events` next has something to do by the clock (a lease end, a wait
    /// deadline, a delayed flush), if anything. Flush completions come on `completion_fd`.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        let flush_due = match (
            self.failed.is_some() || self.flush_in_flight,
            self.dirty_since_ms,
        ) {
            (false, Some(t)) => Some(match self.flush_policy {
                FlushPolicy::WriteThrough => t,
                FlushPolicy::DelayedWrite { interval_ms } => t.saturating_add(interval_ms),
            }),
            _ => None,
        };
        match (self.locks.next_deadline_ms(), flush_due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// An eventfd that becomes readable when a flush completes (then call `poll_events`).
    pub fn completion_fd(&self) -> Option<std::os::fd::RawFd> {
        self.storage.completion_fd()
    }

    /// Blocks until the write with `ticket` is durable (or its flush failed). For tests and
    /// tools: a daemon waits for `Event::Durable` instead.
    pub fn wait_durable(&mut self, ticket: Ticket) -> Result<(), EngineError> {
        loop {
            self.reap();
            if self.tickets.front().is_none_or(|&(_, t)| t > ticket) {
                return self.check_writable();
            }
            self.check_writable()?;
            if !self.flush_in_flight && self.has_dirty() {
                self.submit();
                continue;
            }
            self.storage
                .wait()
                .map_err(|e| EngineError::io("wait for flush", "", &e))?;
        }
    }

    /// Makes everything written so far durable, whatever the policy, and waits for it
    /// (shutdown, tests).
    pub fn sync(&mut self) -> Result<(), EngineError> {
        loop {
            self.reap();
            self.check_writable()?;
            if !self.flush_in_flight && !self.has_dirty() {
                return Ok(());
            }
            if !self.flush_in_flight {
                self.submit();
                continue;
            }
            self.storage
                .wait()
                .map_err(|e| EngineError::io("wait for flush", "", &e))?;
        }
    }

    /// The storage failure that made this shard read-only, if any.
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    // ----- expiry and compaction ----------------------------------------------------------

    /// Reclaims expired sessions and spent tombstones, examining at most `budget` slots (the
    /// sweep resumes where it stopped). Returns how many records it reclaimed.
    pub fn expire_step(&mut self, now_ms: u64, budget: usize) -> usize {
        let mut reclaimed = 0;
        let classes = self.slabs.classes.len();
        let mut examined = 0;
        // Bounded twice: by the budget, and by one pass over the classes when the shard holds
        // fewer slots than the budget.
        let mut class_steps = 0;
        while examined < budget && class_steps <= classes {
            let Loc { class, file, slot } = self.sweep;
            let c = &self.slabs.classes[class as usize];
            let Some(f) = c.files.get(file as usize) else {
                self.sweep = Loc {
                    class: ((class as usize + 1) % classes) as u8,
                    file: 0,
                    slot: 0,
                };
                class_steps += 1;
                continue;
            };
            let Some(meta) = f.slots.get(slot as usize).copied() else {
                self.sweep = Loc {
                    class,
                    file: file + 1,
                    slot: 0,
                };
                continue;
            };
            examined += 1;
            self.sweep.slot += 1;
            if meta.state != SlotState::Live || meta.reclaim_at_ms > now_ms {
                continue;
            }
            let loc = Loc { class, file, slot };
            let key = match decode_unverified(self.slabs.slot_bytes(&self.storage, loc)) {
                SlotContent::Record(r) => r.key,
                _ => continue,
            };
            let Some(e) = self.index.get(&key).copied().filter(|e| e.loc == loc) else {
                continue;
            };
            if !e.shadow && e.expires_max_ms > e.expires_at_ms {
                // Older copies with a later expiry may lie in freed slots: keep this record as
                // their shadow until then.
                self.forget_size(&e);
                let shadow = Entry { shadow: true, ..e };
                self.index.insert(key, shadow);
                self.slabs.meta_mut(loc).reclaim_at_ms = shadow.reclaim_at_ms();
                self.counters.expired += 1;
                continue;
            }
            if !e.shadow {
                self.counters.expired += 1;
            }
            self.forget_size(&e);
            self.index.remove(&key);
            // Nothing depends on an expired record or a spent tombstone: reusable at once.
            self.slabs.free_now(loc);
            reclaimed += 1;
        }
        reclaimed
    }

    /// Shrinks the store: moves up to `budget` records out of the last file of a class that is
    /// mostly empty into free slots of earlier files, and removes a last file once nothing in
    /// it is needed. Returns how many records it moved.
    pub fn compact_step(&mut self, now_ms: u64, budget: usize) -> usize {
        if self.failed.is_some() {
            return 0;
        }
        let mut moved = 0;
        for class in 0..self.slabs.classes.len() {
            if moved >= budget {
                break;
            }
            let c = &self.slabs.classes[class];
            if c.files.len() < 2 {
                continue;
            }
            let last_pos = c.files.len() - 1;
            let last = &c.files[last_pos];
            let free_elsewhere: usize = c.files[..last_pos].iter().map(|f| f.free.len()).sum();
            if last.live == 0 && last.pending == 0 {
                let id = last.id;
                let dirty = self.dirty_flags.get(id as usize).copied().unwrap_or(false);
                if !dirty && !self.flush_in_flight {
                    self.slabs.classes[class].files.pop();
                    if self.storage.remove(id).is_ok() {
                        self.dir_dirty = true;
                        self.dirty_since_ms.get_or_insert(now_ms);
                    }
                }
                continue;
            }
            let worth = (last.live as usize) * 4 <= last.slots.len()
                && last.live as usize <= free_elsewhere;
            if !worth {
                continue;
            }
            let live: Vec<u32> = last
                .slots
                .iter()
                .enumerate()
                .filter(|(_, m)| m.state == SlotState::Live)
                .map(|(i, _)| i as u32)
                .take(budget - moved)
                .collect();
            for slot in live {
                let loc = Loc {
                    class: class as u8,
                    file: last_pos as u16,
                    slot,
                };
                if self.move_record(loc, now_ms).is_err() {
                    return moved;
                }
                moved += 1;
            }
        }
        moved
    }

    fn move_record(&mut self, loc: Loc, now_ms: u64) -> Result<(), EngineError> {
        let (key, kind) = match decode(self.slabs.slot_bytes(&self.storage, loc)) {
            SlotContent::Record(r) => (r.key, r.kind),
            _ => {
                return Err(EngineError::Corrupt {
                    reason: format!("record in {loc:?}"),
                });
            }
        };
        let Some(e) = self.index.get(&key).copied().filter(|e| e.loc == loc) else {
            return Err(EngineError::Corrupt {
                reason: format!("index does not point at {loc:?}"),
            });
        };
        let mut data = std::mem::take(&mut self.data_scratch);
        data.clear();
        if let SlotContent::Record(r) = decode(self.slabs.slot_bytes(&self.storage, loc)) {
            data.extend_from_slice(r.data);
        }
        // Same version: both copies are identical, recovery may keep either.
        let r = self.write_record(kind, &key, e.version, e.expires_at_ms, &data, now_ms);
        self.data_scratch = data;
        let new = r?;
        // A write into the same (last) file would defeat the purpose; alloc prefers earlier
        // files, and `compact_step` checked there is room.
        self.slabs.set_live(new, e.reclaim_at_ms());
        self.index.insert(key, Entry { loc: new, ..e });
        self.retire(loc);
        self.counters.moved += 1;
        Ok(())
    }

    // ----- statistics ------------------------------------------------------------------------

    pub fn stats(&self) -> ShardStats {
        let (slab_bytes, slots, files) = self.slabs.totals();
        let lc = self.locks.counters;
        ShardStats {
            sessions: self.sessions,
            data_bytes: self.data_bytes,
            size_smallest: self.sizes.keys().next().map_or(0, |&s| u64::from(s)),
            size_largest: self.sizes.keys().next_back().map_or(0, |&s| u64::from(s)),
            size_average: self.data_bytes.checked_div(self.sessions).unwrap_or(0),
            tombstones: self.index.len() as u64 - self.sessions,
            reads: self.reads.get(),
            read_misses: self.read_misses.get(),
            corrupt_reads: self.corrupt_reads.get(),
            writes: self.counters.writes,
            touches: self.counters.touches,
            deletes: self.counters.deletes,
            expired: self.counters.expired,
            lock_grants: lc.grants,
            lock_waits: lc.waits,
            lock_timeouts: lc.timeouts,
            lease_expiries: lc.lease_expiries,
            locks_held: self.locks.held() as u64,
            lock_waiters: self.locks.waiting() as u64,
            flushes: self.counters.flushes,
            recovered: self.counters.recovered,
            discarded: self.counters.discarded,
            slab_files: files,
            slab_bytes,
            slots,
            pending_free: self.pending_free.len() as u64,
            moved: self.counters.moved,
            failed: self.failed.is_some(),
        }
    }

    /// The storage backend (tests use it to crash the simulated disk).
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// The storage backend, mutable (tests inject faults through it).
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.storage
    }

    /// This shard's index.
    pub fn shard_index(&self) -> u32 {
        self.shard_index
    }
}

impl<S: Storage> Drop for Shard<S> {
    fn drop(&mut self) {
        // A clean shutdown loses nothing, whatever the policy.
        if self.failed.is_none() {
            let _ = self.sync();
        }
    }
}
