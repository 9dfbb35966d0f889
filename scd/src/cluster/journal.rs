//! The placement journal: the placements a restart must not forget, and the read-lease denial
//! marks, kept in `<data_dir>/cluster-placements.journal` (layout, recovery rule and crash
//! windows: docs/storage.md, "Placement journal").
//!
//! - Append-only records, each `len u32 | crc32 u32 | body`, written by [`Log`].
//! - The writes and fdatasyncs run on a dedicated writer thread (`write_loop`), never on the
//!   cluster thread: the cluster thread stages records ([`Journal::add`]), hands them over as a
//!   numbered batch ([`Journal::submit`]) and awaits the batch's commit ([`committed`]) while its
//!   other tasks run; [`pump`] takes the writer's answers. Group commit: every batch submitted
//!   while a sync runs is written and fdatasync'ed by the next one. Batches reach the file in
//!   the order they were submitted (one FIFO channel, one writer).
//! - At start ([`Log::open`]) the file is read up to the first torn or bad record (a crash
//!   mid-append), the live entries are rebuilt, and the file is rewritten with only those
//!   (temp file, fsync, rename, fsync of the directory). The same compaction runs while serving
//!   when the file grew to several times its live size.
//! - Only placements not derivable from a session ID are written (the caller decides: see
//!   `route/mod.rs`, `State::set_placement`); the journal keeps a mirror of its live entries so the
//!   caller can tell whether a session has one.
//!
//! Every byte read is checked before use; garbage never panics, it ends the readable part.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::future::poll_fn;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;

use super::route::Placement;

/// The journal's file name in the data directory.
pub const FILE_NAME: &str = "cluster-placements.journal";
/// First 8 bytes of the file: name and format version.
pub const MAGIC: &[u8; 8] = b"SCDPJ\x00\x00\x01";
/// Largest record body accepted (a denial reason is cut to `WHY_MAX` bytes).
pub const BODY_MAX: usize = 1024;
/// Longest denial reason kept.
pub const WHY_MAX: usize = 512;
/// Largest journal file read at start (a larger one is refused, never read into memory).
pub const FILE_MAX: u64 = 1 << 30;
/// While serving, the file is compacted when it is larger than this and than 4 × its live size.
const COMPACT_MIN: u64 = 1 << 20;

const KIND_PLACE: u8 = 1;
const KIND_REMOVE: u8 = 2;
const KIND_DENY: u8 = 3;
const KIND_CLEAR: u8 = 4;

/// One record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// The placement of a session (replaces an earlier one).
    Place([u8; 16], Placement),
    /// The session's placement was forgotten (swept, dropped, or plain again).
    Remove([u8; 16]),
    /// This node took a session over from (or replaced) `peer`: its leases are denied.
    Deny(SocketAddr, String),
    /// `peer` synced with this node: its leases are granted again.
    Clear(SocketAddr),
}

/// What the journal holds (its live entries).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Live {
    pub placements: HashMap<[u8; 16], Placement>,
    pub denied: HashMap<SocketAddr, String>,
}

impl Live {
    fn apply(&mut self, e: &Entry) {
        match e {
            Entry::Place(h, p) => {
                self.placements.insert(*h, *p);
            }
            Entry::Remove(h) => {
                self.placements.remove(h);
            }
            Entry::Deny(peer, why) => {
                self.denied.entry(*peer).or_insert_with(|| why.clone());
            }
            Entry::Clear(peer) => {
                self.denied.remove(peer);
            }
        }
    }

    /// The records that rebuild exactly these entries.
    fn entries(&self) -> Vec<Entry> {
        let mut out: Vec<Entry> = self
            .placements
            .iter()
            .map(|(h, p)| Entry::Place(*h, *p))
            .collect();
        out.extend(self.denied.iter().map(|(a, w)| Entry::Deny(*a, w.clone())));
        out
    }
}

/// What reading a journal found.
#[derive(Debug, PartialEq, Eq)]
pub struct Parsed {
    pub entries: Vec<Entry>,
    /// Bytes of the file that hold whole, valid records (with the header).
    pub valid_len: usize,
    /// Why reading stopped before the end (a torn or bad record), if it did.
    pub stopped: Option<String>,
}

// ----- encoding ------------------------------------------------------------------------------

fn put_addr(out: &mut Vec<u8>, a: Option<SocketAddr>) {
    match a {
        None => out.push(0),
        Some(SocketAddr::V4(v4)) => {
            out.push(4);
            out.extend_from_slice(&v4.ip().octets());
            out.extend_from_slice(&v4.port().to_le_bytes());
        }
        Some(SocketAddr::V6(v6)) => {
            out.push(6);
            out.extend_from_slice(&v6.ip().octets());
            out.extend_from_slice(&v6.port().to_le_bytes());
        }
    }
}

/// The body of one record.
pub fn encode_body(e: &Entry) -> Vec<u8> {
    let mut b = Vec::with_capacity(64);
    match e {
        Entry::Place(h, p) => {
            b.push(KIND_PLACE);
            b.extend_from_slice(h);
            b.extend_from_slice(&p.epoch.to_le_bytes());
            put_addr(&mut b, p.master);
            put_addr(&mut b, p.backup);
            put_addr(&mut b, p.prev);
        }
        Entry::Remove(h) => {
            b.push(KIND_REMOVE);
            b.extend_from_slice(h);
        }
        Entry::Deny(peer, why) => {
            b.push(KIND_DENY);
            put_addr(&mut b, Some(*peer));
            let mut end = why.len().min(WHY_MAX);
            while !why.is_char_boundary(end) {
                end -= 1;
            }
            b.extend_from_slice(&(end as u16).to_le_bytes());
            b.extend_from_slice(&why.as_bytes()[..end]);
        }
        Entry::Clear(peer) => {
            b.push(KIND_CLEAR);
            put_addr(&mut b, Some(*peer));
        }
    }
    b
}

/// One whole record: `len u32 | crc32(body) u32 | body`.
pub fn encode_record(out: &mut Vec<u8>, e: &Entry) {
    let body = encode_body(e);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
}

// ----- decoding ------------------------------------------------------------------------------

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.b.len() < n {
            return Err(format!("{n} bytes wanted, {} left", self.b.len()));
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        let s = self.take(2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }

    fn u32(&mut self) -> Result<u32, String> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }

    fn hash(&mut self) -> Result<[u8; 16], String> {
        let mut h = [0u8; 16];
        h.copy_from_slice(self.take(16)?);
        Ok(h)
    }

    fn addr(&mut self) -> Result<Option<SocketAddr>, String> {
        match self.u8()? {
            0 => Ok(None),
            4 => {
                let mut o = [0u8; 4];
                o.copy_from_slice(self.take(4)?);
                let port = self.u16()?;
                Ok(Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(o)), port)))
            }
            6 => {
                let mut o = [0u8; 16];
                o.copy_from_slice(self.take(16)?);
                let port = self.u16()?;
                Ok(Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(o)), port)))
            }
            f => Err(format!("unknown address family {f}")),
        }
    }
}

/// Decodes one record body (its CRC already checked).
pub fn decode_body(body: &[u8]) -> Result<Entry, String> {
    let mut r = Reader { b: body };
    let e = match r.u8()? {
        KIND_PLACE => {
            let hash = r.hash()?;
            let epoch = r.u32()?;
            let master = r.addr()?;
            let backup = r.addr()?;
            let prev = r.addr()?;
            if epoch == 0 {
                return Err("placement at epoch 0".into());
            }
            Entry::Place(
                hash,
                Placement {
                    epoch,
                    master,
                    backup,
                    prev,
                },
            )
        }
        KIND_REMOVE => Entry::Remove(r.hash()?),
        KIND_DENY => {
            let peer = r.addr()?.ok_or("a denial mark without a peer")?;
            let n = r.u16()? as usize;
            if n > WHY_MAX {
                return Err(format!("denial reason of {n} bytes"));
            }
            let why = std::str::from_utf8(r.take(n)?)
                .map_err(|_| "denial reason not UTF-8".to_string())?
                .to_string();
            Entry::Deny(peer, why)
        }
        KIND_CLEAR => Entry::Clear(r.addr()?.ok_or("a clear mark without a peer")?),
        k => return Err(format!("unknown record kind {k}")),
    };
    if !r.b.is_empty() {
        return Err(format!("{} bytes after the record", r.b.len()));
    }
    Ok(e)
}

/// Reads a whole journal file's bytes. Err: not a journal (wrong header); a short or torn
/// header of an otherwise empty file reads as empty. Records are read up to the first torn or
/// bad one (`Parsed::stopped`).
pub fn parse(bytes: &[u8]) -> Result<Parsed, String> {
    if bytes.len() < MAGIC.len() {
        if MAGIC.starts_with(bytes) {
            return Ok(Parsed {
                entries: Vec::new(),
                valid_len: 0,
                stopped: (!bytes.is_empty()).then(|| "torn header".to_string()),
            });
        }
        return Err("not a placement journal (bad header)".into());
    }
    if &bytes[..MAGIC.len()] != MAGIC {
        return Err("not a placement journal (bad header or unknown version)".into());
    }
    let mut at = MAGIC.len();
    let mut entries = Vec::new();
    let stopped = loop {
        let rest = &bytes[at..];
        if rest.is_empty() {
            break None;
        }
        if rest.len() < 8 {
            break Some(format!("torn record header at byte {at}"));
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        if len == 0 || len > BODY_MAX {
            break Some(format!("bad record length {len} at byte {at}"));
        }
        if rest.len() - 8 < len {
            break Some(format!("torn record at byte {at}"));
        }
        let body = &rest[8..8 + len];
        if crc32fast::hash(body) != crc {
            break Some(format!("CRC mismatch at byte {at}"));
        }
        match decode_body(body) {
            Ok(e) => entries.push(e),
            Err(why) => break Some(format!("bad record at byte {at}: {why}")),
        }
        at += 8 + len;
    };
    Ok(Parsed {
        entries,
        valid_len: at,
        stopped,
    })
}

// ----- the file (the writer thread's side) ---------------------------------------------------

/// Called before every fdatasync / fsync the log does: `None` in the daemon; a test puts a gate
/// there (to hold a sync while more changes are submitted) or a failure.
pub type BeforeSync = Option<Box<dyn FnMut() -> io::Result<()> + Send>>;

fn sync_file(f: &File, all: bool, before: &mut BeforeSync) -> io::Result<()> {
    if let Some(hook) = before {
        hook()?;
    }
    if all { f.sync_all() } else { f.sync_data() }
}

/// The journal file, owned by the writer thread (`Journal::start`; a probe or a test may drive
/// it directly): appends groups of records and makes each durable with one fdatasync.
pub struct Log {
    dir: PathBuf,
    /// `<FILE_NAME>.lock`, flock'ed while this process has the journal open.
    _lock: File,
    file: File,
    /// Bytes in the file.
    len: u64,
    /// What the file holds (with the records being appended): compaction rewrites exactly this.
    live: Live,
    /// Appends made durable (fdatasync) and compactions, since the start.
    pub syncs: u64,
    before_sync: BeforeSync,
}

/// What the start found.
#[derive(Debug)]
pub struct Recovered {
    pub live: Live,
    /// Records read.
    pub records: usize,
    /// Why reading stopped early (the tail from there was dropped).
    pub stopped: Option<String>,
    /// Bytes dropped from the end.
    pub dropped: u64,
}

fn sync_dir(dir: &Path, before: &mut BeforeSync) -> io::Result<()> {
    sync_file(&File::open(dir)?, true, before)
}

/// Writes a journal holding exactly `live` at `dir/FILE_NAME`: temp file, fsync, rename, fsync
/// of the directory. Returns the file's length.
fn write_compacted(dir: &Path, live: &Live, before: &mut BeforeSync) -> io::Result<u64> {
    let tmp = dir.join(format!("{FILE_NAME}.tmp"));
    let mut bytes = MAGIC.to_vec();
    for e in live.entries() {
        encode_record(&mut bytes, &e);
    }
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        sync_file(&f, true, before)?;
    }
    fs::rename(&tmp, dir.join(FILE_NAME))?;
    sync_dir(dir, before)?;
    Ok(bytes.len() as u64)
}

impl Log {
    /// Opens (or creates) the journal in `dir`, reads it up to its first torn or bad record,
    /// and rewrites it compacted. Err: it cannot be read or written, is larger than
    /// `FILE_MAX`, or is not a journal (never silently replaced: it may hold epochs).
    pub fn open(dir: &Path) -> Result<(Log, Recovered), String> {
        let path = dir.join(FILE_NAME);
        let shown = path.display();
        // One process at a time: a second one must not compact the file under the first.
        let lock_path = dir.join(format!("{FILE_NAME}.lock"));
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| format!("{}: {e}", lock_path.display()))?;
        match crate::sys::try_lock_exclusive(&lock) {
            Ok(true) => {}
            Ok(false) => {
                return Err(format!(
                    "{}: locked by another scd using this data folder",
                    lock_path.display()
                ));
            }
            Err(e) => return Err(format!("{}: {e}", lock_path.display())),
        }
        let bytes = match File::open(&path) {
            Ok(f) => {
                let size = f.metadata().map_err(|e| format!("{shown}: {e}"))?.len();
                if size > FILE_MAX {
                    return Err(format!(
                        "{shown}: {size} bytes, more than the {FILE_MAX} a journal may have"
                    ));
                }
                let mut b = Vec::with_capacity(size as usize);
                f.take(FILE_MAX)
                    .read_to_end(&mut b)
                    .map_err(|e| format!("{shown}: {e}"))?;
                b
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(format!("{shown}: {e}")),
        };
        let parsed = parse(&bytes).map_err(|e| format!("{shown}: {e}"))?;
        let mut live = Live::default();
        for e in &parsed.entries {
            live.apply(e);
        }
        let len = write_compacted(dir, &live, &mut None).map_err(|e| format!("{shown}: {e}"))?;
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| format!("{shown}: {e}"))?;
        let recovered = Recovered {
            live: live.clone(),
            records: parsed.entries.len(),
            stopped: parsed.stopped,
            dropped: (bytes.len() - parsed.valid_len) as u64,
        };
        Ok((
            Log {
                dir: dir.to_path_buf(),
                _lock: lock,
                file,
                len,
                live,
                syncs: 0,
                before_sync: None,
            },
            recovered,
        ))
    }

    /// What the file holds.
    pub fn live(&self) -> &Live {
        &self.live
    }

    /// Puts `hook` before every sync from now on (tests: a gate, or a failure).
    pub fn set_before_sync(&mut self, hook: BeforeSync) {
        self.before_sync = hook;
    }

    /// Writes `entries` (in this order) and fdatasyncs the file: once this returns Ok they
    /// survive a crash. Compacts instead when the file grew to several times its live size.
    /// Err: neither the append nor a rewrite of the whole journal could be made durable.
    pub fn append(&mut self, entries: &[Entry]) -> io::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut bytes = Vec::with_capacity(entries.len() * 64);
        for e in entries {
            self.live.apply(e);
            encode_record(&mut bytes, e);
        }
        let live_len =
            (self.live.placements.len() as u64) * 80 + (self.live.denied.len() as u64) * 600;
        if self.len > COMPACT_MIN && self.len > live_len.saturating_mul(4) {
            // The live entries already include these records.
            return self.rewrite();
        }
        let r = self
            .file
            .write_all(&bytes)
            .and_then(|_| sync_file(&self.file, false, &mut self.before_sync));
        match r {
            Ok(()) => {
                self.len += bytes.len() as u64;
                self.syncs += 1;
                Ok(())
            }
            Err(e) => {
                // What reached the file is unknown: rewrite the whole journal from the live
                // entries (which include these records) rather than leave a torn tail before
                // the next append.
                self.rewrite().map_err(|_| e)
            }
        }
    }

    fn rewrite(&mut self) -> io::Result<()> {
        let len = write_compacted(&self.dir, &self.live, &mut self.before_sync)?;
        self.file = OpenOptions::new()
            .append(true)
            .open(self.dir.join(FILE_NAME))?;
        self.len = len;
        self.syncs += 1;
        Ok(())
    }
}

// ----- the writer thread and group commit ----------------------------------------------------

/// Changes the cluster thread submitted together, numbered in submission order from 1.
struct Batch {
    seq: u64,
    entries: Vec<Entry>,
}

/// One group commit's outcome, sent back to the cluster thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done {
    /// Every batch numbered up to this one is committed (written and fdatasync'ed), or failed.
    pub upto: u64,
    /// Batches and records in this group.
    pub batches: u64,
    pub records: u64,
    /// Why the group could not be made durable (then those changes hold in memory only).
    pub error: Option<String>,
    /// Syncs (fdatasyncs and compactions) the writer made since the start.
    pub syncs: u64,
}

/// The writer thread: takes the batches in submission order; every batch submitted while the
/// last group was being synced goes into the next group, under one write and one fdatasync.
/// Ends when the cluster thread closes the channel, after the batches left are committed.
fn write_loop(mut log: Log, rx: flume::Receiver<Batch>, done: flume::Sender<Done>) {
    while let Ok(first) = rx.recv() {
        let mut upto = first.seq;
        let mut entries = first.entries;
        let mut batches = 1u64;
        for more in rx.try_iter() {
            // One submitter and one FIFO channel: the file order is the submission order.
            assert_eq!(more.seq, upto + 1, "journal batches out of order");
            upto = more.seq;
            entries.extend(more.entries);
            batches += 1;
        }
        let error = log.append(&entries).err().map(|e| e.to_string());
        let d = Done {
            upto,
            batches,
            records: entries.len() as u64,
            error,
            syncs: log.syncs,
        };
        // The cluster side gone (it is finishing): what comes next is still written.
        let _ = done.send(d);
    }
}

/// The placement journal as the cluster thread sees it: a mirror of the live entries (to tell
/// whether a change changes anything, and whether a session has a journaled placement), the
/// changes staged for the next batch, and the batches the writer thread has not committed yet.
///
/// A change is made durable by `add` (staged), `submit` (handed to the writer thread; returns
/// the batch number) and then [`committed`]`(journal, n).await` (the batch's group was written
/// and fdatasync'ed); the cluster thread runs other tasks meanwhile. [`pump`] must run on the
/// cluster thread to take the writer's answers.
pub struct Journal {
    live: Live,
    staged: Vec<Entry>,
    /// Number of the last batch submitted, and of the last one committed (0: none).
    submitted: u64,
    committed: u64,
    /// Batches submitted and not yet committed, oldest first, with the sessions they change.
    inflight: VecDeque<(u64, Vec<[u8; 16]>)>,
    /// Sessions whose latest change is in a batch not yet committed, with that batch's number.
    unsynced: HashMap<[u8; 16], u64>,
    /// Tasks waiting for a commit: all woken at each commit (they check their own number).
    waiters: Vec<Waker>,
    tx: Option<flume::Sender<Batch>>,
    done: flume::Receiver<Done>,
    writer: Option<JoinHandle<()>>,
    /// Records staged since the start (written, or being written).
    pub records: u64,
    /// Syncs the writer made since the start (the last it reported).
    pub syncs: u64,
    /// Groups that could not be made durable.
    pub errors: u64,
}

impl Journal {
    /// Opens the journal in `dir` (`Log::open`) and starts its writer thread.
    pub fn open(dir: &Path) -> Result<(Journal, Recovered), String> {
        let (log, recovered) = Log::open(dir)?;
        let j = Journal::start(log)
            .map_err(|e| format!("{}: writer thread: {e}", dir.join(FILE_NAME).display()))?;
        Ok((j, recovered))
    }

    /// Starts the writer thread over `log`; the mirror starts as what the log holds.
    pub fn start(log: Log) -> io::Result<Journal> {
        let live = log.live().clone();
        let (tx, rx) = flume::unbounded();
        let (done_tx, done) = flume::unbounded();
        let writer = std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || write_loop(log, rx, done_tx))?;
        Ok(Journal {
            live,
            staged: Vec::new(),
            submitted: 0,
            committed: 0,
            inflight: VecDeque::new(),
            unsynced: HashMap::new(),
            waiters: Vec::new(),
            tx: Some(tx),
            done,
            writer: Some(writer),
            records: 0,
            syncs: 0,
            errors: 0,
        })
    }

    /// The live placement of `hash` in the journal, if it has one (committed or not).
    pub fn placement(&self, hash: &[u8; 16]) -> Option<Placement> {
        self.live.placements.get(hash).copied()
    }

    /// Stages a record for the next batch (`submit`). A record that changes nothing live (the
    /// same placement again, a removal of none, a mark already set or not set) is not staged.
    /// True if it was staged.
    pub fn add(&mut self, e: Entry) -> bool {
        let changes = match &e {
            Entry::Place(h, p) => self.live.placements.get(h) != Some(p),
            Entry::Remove(h) => self.live.placements.contains_key(h),
            Entry::Deny(a, _) => !self.live.denied.contains_key(a),
            Entry::Clear(a) => self.live.denied.contains_key(a),
        };
        if !changes {
            return false;
        }
        self.live.apply(&e);
        self.staged.push(e);
        self.records += 1;
        true
    }

    /// Whether records are staged.
    pub fn has_staged(&self) -> bool {
        !self.staged.is_empty()
    }

    /// Hands the staged records to the writer thread as one batch and returns the number to
    /// wait for (`committed`): that batch's, or, with nothing staged, the last one submitted
    /// (a change found already made may be in it).
    pub fn submit(&mut self) -> u64 {
        if self.staged.is_empty() {
            return self.submitted;
        }
        self.submitted += 1;
        let seq = self.submitted;
        let entries = std::mem::take(&mut self.staged);
        let mut hashes = Vec::new();
        for e in &entries {
            if let Entry::Place(h, _) | Entry::Remove(h) = e {
                hashes.push(*h);
                self.unsynced.insert(*h, seq);
            }
        }
        self.inflight.push_back((seq, hashes));
        let sent = match &self.tx {
            Some(tx) => tx.send(Batch { seq, entries }).is_ok(),
            None => false,
        };
        if !sent {
            // The writer thread is gone (it panicked, or the journal is finished): fail loudly
            // now rather than leave the caller waiting forever.
            let d = Done {
                upto: seq,
                batches: 1,
                records: 0,
                error: Some("the journal's writer thread is gone".into()),
                syncs: self.syncs,
            };
            self.completed(&d);
        }
        seq
    }

    /// The number of the batch holding the latest change of `hash`, while it is not committed.
    pub fn unsynced(&self, hash: &[u8; 16]) -> Option<u64> {
        self.unsynced.get(hash).copied()
    }

    /// Number of the last batch submitted.
    pub fn submitted_seq(&self) -> u64 {
        self.submitted
    }

    /// Number of the last batch committed (or failed).
    pub fn committed_seq(&self) -> u64 {
        self.committed
    }

    /// Ready once batch `seq` is committed (or failed); else the task's waker is kept.
    pub fn poll_committed(&mut self, seq: u64, cx: &mut Context<'_>) -> Poll<()> {
        if self.committed >= seq {
            return Poll::Ready(());
        }
        if !self.waiters.iter().any(|w| w.will_wake(cx.waker())) {
            self.waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Takes a group's outcome from the writer thread: its batches are committed (or failed),
    /// and the tasks waiting are woken.
    pub fn completed(&mut self, d: &Done) {
        assert!(d.upto > self.committed, "journal commits out of order");
        assert!(
            d.upto <= self.submitted,
            "a commit of a batch never submitted"
        );
        self.committed = d.upto;
        while let Some((seq, _)) = self.inflight.front() {
            if *seq > d.upto {
                break;
            }
            let (seq, hashes) = self.inflight.pop_front().expect("front exists");
            for h in hashes {
                if self.unsynced.get(&h) == Some(&seq) {
                    self.unsynced.remove(&h);
                }
            }
        }
        self.syncs = self.syncs.max(d.syncs);
        if d.error.is_some() {
            self.errors += 1;
        }
        for w in self.waiters.drain(..) {
            w.wake();
        }
    }

    /// The writer's answers (for [`pump`]).
    pub fn answers(&self) -> flume::Receiver<Done> {
        self.done.clone()
    }

    /// The writer thread ended while batches were in flight (it panicked): they are failed
    /// (the error is counted) and no later batch waits.
    fn writer_gone(&mut self) -> Option<Done> {
        self.tx = None;
        (self.submitted > self.committed).then(|| {
            let d = Done {
                upto: self.submitted,
                batches: self.submitted - self.committed,
                records: 0,
                error: Some("the journal's writer thread ended".into()),
                syncs: self.syncs,
            };
            self.completed(&d);
            d
        })
    }

    /// Commits what is staged and waits for it on this thread (no other task runs meanwhile):
    /// for tests and the probe, never while [`pump`] runs. Err: a group failed.
    pub fn commit_blocking(&mut self) -> Result<(), String> {
        let errors = self.errors;
        let seq = self.submit();
        let mut failed = None;
        while self.committed < seq {
            match self.done.recv() {
                Ok(d) => {
                    if let Some(e) = &d.error {
                        failed = Some(e.clone());
                    }
                    self.completed(&d);
                }
                Err(_) => {
                    self.writer_gone();
                    return Err("the journal's writer thread ended".into());
                }
            }
        }
        if self.errors > errors {
            return Err(failed.unwrap_or_else(|| "the journal's writer thread is gone".into()));
        }
        Ok(())
    }

    /// Shutdown: submits what is staged, closes the writer's channel and waits until the
    /// writer thread committed every batch and ended. Returns the groups it reported (their
    /// errors are the caller's to log). Idempotent.
    pub fn finish(&mut self) -> Vec<Done> {
        if self.tx.is_some() {
            self.submit();
        }
        self.tx = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        let mut out = Vec::new();
        while let Ok(d) = self.done.try_recv() {
            if d.upto > self.committed {
                self.completed(&d);
                out.push(d);
            }
        }
        if let Some(d) = self.writer_gone() {
            out.push(d);
        }
        out
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        // Pending commits finish before the journal goes (a caller that wants their outcome
        // calls `finish` first).
        for d in self.finish() {
            if let Some(e) = d.error {
                log::error!("cluster: placement journal: {e} (at shutdown)");
            }
        }
    }
}

/// Ready once batch `seq` of `journal` is committed (or failed: the failure is counted and
/// logged by [`pump`]'s caller).
pub async fn committed(journal: &RefCell<Journal>, seq: u64) {
    poll_fn(|cx| journal.borrow_mut().poll_committed(seq, cx)).await
}

/// Takes the writer thread's answers on the cluster thread for as long as the writer runs,
/// calling `each` with every group's outcome (after its waiters were woken).
pub async fn pump(journal: &RefCell<Journal>, mut each: impl FnMut(&Journal, &Done)) {
    let rx = journal.borrow().answers();
    loop {
        match rx.recv_async().await {
            Ok(d) => {
                // `finish` may have taken it already.
                if d.upto > journal.borrow().committed {
                    journal.borrow_mut().completed(&d);
                    each(&journal.borrow(), &d);
                }
            }
            Err(_) => {
                let gone = journal.borrow_mut().writer_gone();
                if let Some(d) = gone {
                    each(&journal.borrow(), &d);
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::rc::Rc;
    use std::sync::Arc;
    use std::sync::atomic::AtomicU32;
    use std::sync::atomic::Ordering::SeqCst;

    fn a(n: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, n], 34567))
    }

    fn place(epoch: u32) -> Placement {
        Placement {
            epoch,
            master: Some(a(2)),
            backup: Some(a(3)),
            prev: Some(a(1)),
        }
    }

    fn sample() -> Vec<Entry> {
        vec![
            Entry::Place([1; 16], place(2)),
            Entry::Place(
                [2; 16],
                Placement {
                    epoch: 7,
                    master: Some("[::1]:9".parse().unwrap()),
                    backup: None,
                    prev: None,
                },
            ),
            Entry::Deny(a(1), "took over (epoch 2) — é".into()),
            Entry::Remove([2; 16]),
            Entry::Clear(a(9)),
        ]
    }

    fn file_of(entries: &[Entry]) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        for e in entries {
            encode_record(&mut b, e);
        }
        b
    }

    #[test]
    fn a_placement_record_has_its_documented_bytes() {
        // docs/storage.md, "Placement journal".
        let e = Entry::Place(
            [1; 16],
            Placement {
                epoch: 2,
                master: Some(a(2)),
                backup: Some(a(3)),
                prev: Some(a(1)),
            },
        );
        let mut body = vec![0x01];
        body.extend_from_slice(&[1; 16]);
        body.extend_from_slice(&[2, 0, 0, 0]);
        for n in [2u8, 3, 1] {
            body.extend_from_slice(&[0x04, 0x7f, 0, 0, n, 0x07, 0x87]);
        }
        assert_eq!(encode_body(&e), body);
        let mut rec = Vec::new();
        encode_record(&mut rec, &e);
        assert_eq!(rec[..4], [0x2a, 0, 0, 0]);
        assert_eq!(rec[4..8], crc32fast::hash(&body).to_le_bytes());
        assert_eq!(rec[8..], body[..]);
        assert_eq!(MAGIC, b"SCDPJ\x00\x00\x01");
    }

    #[test]
    fn records_round_trip() {
        let bytes = file_of(&sample());
        let p = parse(&bytes).unwrap();
        assert_eq!(p.entries, sample());
        assert_eq!(p.valid_len, bytes.len());
        assert_eq!(p.stopped, None);
        // A reason longer than WHY_MAX is cut (on a character boundary).
        let long = Entry::Deny(a(1), "é".repeat(WHY_MAX));
        let p = parse(&file_of(&[long])).unwrap();
        match &p.entries[..] {
            [Entry::Deny(_, why)] => assert!(why.len() <= WHY_MAX && why.starts_with('é')),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_torn_tail_is_cut_at_the_last_whole_record_and_the_file_is_truncated() {
        let whole = file_of(&sample());
        let two = file_of(&sample()[..2]).len();
        for cut in two..whole.len() {
            let p = parse(&whole[..cut]).unwrap();
            let n = p.entries.len();
            assert!(n >= 2, "cut {cut}");
            assert_eq!(p.entries[..], sample()[..n]);
            assert_eq!(p.valid_len, file_of(&sample()[..n]).len());
            assert_eq!(p.stopped.is_some(), p.valid_len != cut);
        }
        // On disk: opened, the torn tail is gone and what was whole survives.
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(FILE_NAME), &whole[..whole.len() - 3]).unwrap();
        let (mut j, rec) = Journal::open(dir.path()).unwrap();
        assert_eq!(rec.records, 4);
        assert!(rec.stopped.is_some());
        assert!(rec.dropped > 0);
        assert_eq!(rec.live.placements.len(), 1, "[2] was removed");
        assert_eq!(rec.live.denied.len(), 1);
        // Appending after the recovery gives a readable file.
        assert!(j.add(Entry::Place([3; 16], place(3))));
        j.commit_blocking().unwrap();
        let p = parse(&fs::read(dir.path().join(FILE_NAME)).unwrap()).unwrap();
        assert_eq!(p.stopped, None);
        assert_eq!(p.entries.len(), 3);
    }

    #[test]
    fn garbage_never_panics_and_never_passes_for_records() {
        // Deterministic pseudo-random bytes, with and without a valid header.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for round in 0..2000 {
            let len = (round * 7) % 300;
            let mut b = Vec::with_capacity(len + 8);
            if round % 2 == 0 {
                b.extend_from_slice(MAGIC);
            }
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b.push(x as u8);
            }
            if let Ok(p) = parse(&b) {
                assert!(p.valid_len <= b.len());
                assert!(
                    p.entries.is_empty(),
                    "random bytes with a matching CRC: {b:?}"
                );
            }
        }
        // Lengths at the edges: zero, over the limit, past the end.
        for len in [0u32, BODY_MAX as u32 + 1, u32::MAX, 100] {
            let mut b = MAGIC.to_vec();
            b.extend_from_slice(&len.to_le_bytes());
            b.extend_from_slice(&[0; 12]);
            let p = parse(&b).unwrap();
            assert!(p.entries.is_empty() && p.stopped.is_some());
            assert_eq!(p.valid_len, MAGIC.len());
        }
        // A record with a valid CRC over a bad body.
        for body in [
            vec![9u8],
            vec![KIND_PLACE, 1, 2],
            vec![KIND_REMOVE; 18],
            vec![KIND_DENY, 0],
        ] {
            let mut b = MAGIC.to_vec();
            b.extend_from_slice(&(body.len() as u32).to_le_bytes());
            b.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
            b.extend_from_slice(&body);
            let p = parse(&b).unwrap();
            assert!(p.entries.is_empty() && p.stopped.is_some(), "{body:?}");
        }
        // Not a journal: refused, and never rewritten by open.
        assert!(parse(b"hello, world").is_err());
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(FILE_NAME), b"hello, world").unwrap();
        assert!(Journal::open(dir.path()).is_err());
        assert_eq!(
            fs::read(dir.path().join(FILE_NAME)).unwrap(),
            b"hello, world"
        );
    }

    #[test]
    fn a_flipped_bit_ends_the_readable_part_there() {
        let whole = file_of(&sample());
        let first = file_of(&sample()[..1]).len();
        let second = file_of(&sample()[..2]).len();
        // Every bit of the second record.
        for byte in first..second {
            for bit in 0..8 {
                let mut b = whole.clone();
                b[byte] ^= 1 << bit;
                let p = parse(&b).unwrap();
                assert_eq!(p.entries, sample()[..1], "byte {byte} bit {bit}");
                assert_eq!(p.valid_len, first);
                assert!(p.stopped.is_some());
            }
        }
    }

    #[test]
    fn compaction_keeps_only_the_live_entries() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut j, rec) = Journal::open(dir.path()).unwrap();
            assert_eq!(rec.live, Live::default());
            for e in sample() {
                j.add(e);
            }
            // Changes nothing live: not written.
            assert!(!j.add(Entry::Remove([7; 16])));
            assert!(!j.add(Entry::Place([1; 16], place(2))));
            assert!(!j.add(Entry::Deny(a(1), "again".into())));
            j.commit_blocking().unwrap();
            assert!(j.add(Entry::Place([1; 16], place(3))));
            j.commit_blocking().unwrap();
            assert_eq!(j.syncs, 2);
        }
        let before = fs::read(dir.path().join(FILE_NAME)).unwrap();
        assert_eq!(parse(&before).unwrap().entries.len(), 5);
        let (j, rec) = Journal::open(dir.path()).unwrap();
        let second = Journal::open(dir.path()).err().unwrap_or_default();
        assert!(second.contains("locked"), "one process at a time: {second}");
        drop(j);
        assert_eq!(rec.records, 5);
        assert_eq!(rec.live.placements, HashMap::from([([1; 16], place(3))]));
        assert_eq!(
            rec.live.denied,
            HashMap::from([(a(1), "took over (epoch 2) — é".to_string())])
        );
        let after = parse(&fs::read(dir.path().join(FILE_NAME)).unwrap()).unwrap();
        assert_eq!(
            after.entries.len(),
            2,
            "only the live entries: {:?}",
            after.entries
        );
        assert!(!dir.path().join(format!("{FILE_NAME}.tmp")).exists());
        // Opened again: the same.
        let (_j, again) = Journal::open(dir.path()).unwrap();
        assert_eq!(again.live, rec.live);
    }

    /// Runs `body` as a task of a monoio event loop (as the cluster thread's tasks run: a
    /// `block_on` future that yields is polled again before the other tasks).
    fn run<F: std::future::Future<Output = ()> + 'static>(body: F) {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()
            .expect("runtime");
        rt.block_on(async move { monoio::spawn(body).await });
    }

    /// The records of the journal file in `dir`, in file order.
    fn on_disk(dir: &Path) -> Vec<Entry> {
        let p = parse(&fs::read(dir.join(FILE_NAME)).unwrap()).unwrap();
        assert_eq!(p.stopped, None);
        p.entries
    }

    #[test]
    fn batches_reach_the_file_in_the_order_they_were_submitted() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        // Places and removals of a few sessions, interleaved: replayed in another order they
        // would leave other live entries. Submitted without waiting, so the writer groups them.
        let mut sent = Vec::new();
        for i in 0..300u32 {
            let h = [(i % 7) as u8; 16];
            let e = if i % 3 == 2 {
                Entry::Remove(h)
            } else {
                Entry::Place(h, place(i + 1))
            };
            if j.add(e.clone()) {
                sent.push(e);
            }
            if i % 2 == 1 {
                j.submit();
            }
        }
        j.commit_blocking().unwrap();
        assert!(sent.len() > 200);
        assert_eq!(on_disk(dir.path()), sent);
        assert_eq!(j.records, sent.len() as u64);
        assert!(j.syncs >= 1 && j.syncs <= j.submitted_seq());
        assert_eq!(j.errors, 0);
        let mirror = j.live.clone();
        drop(j);
        let (_j, rec) = Journal::open(dir.path()).unwrap();
        assert_eq!(
            rec.live, mirror,
            "the file replays to what the cluster thread holds"
        );
    }

    #[test]
    fn changes_submitted_during_a_sync_share_the_next_one_and_wait_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = Log::open(dir.path()).unwrap();
        // Every sync says it started and waits for the test to let it go; `passed` counts the
        // syncs let go (the fdatasync runs right after).
        let (entered_tx, entered) = flume::unbounded::<u32>();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let passed = Arc::new(AtomicU32::new(0));
        let mut n = 0;
        let p = passed.clone();
        log.set_before_sync(Some(Box::new(move || {
            n += 1;
            let _ = entered_tx.send(n);
            released.recv().map_err(io::Error::other)?;
            p.fetch_add(1, SeqCst);
            Ok(())
        })));
        let j = Rc::new(RefCell::new(Journal::start(log).unwrap()));
        let jr = j.clone();
        run(async move {
            let j = jr;
            let seen = Rc::new(RefCell::new(Vec::new()));
            let (pj, s) = (j.clone(), seen.clone());
            monoio::spawn(async move {
                pump(&pj, |_, d| s.borrow_mut().push(d.clone())).await;
            });
            // The first change: its sync starts and is held.
            j.borrow_mut().add(Entry::Place([0; 16], place(2)));
            let first = j.borrow_mut().submit();
            assert_eq!(entered.recv_async().await.unwrap(), 1);
            // 100 changes from 100 tasks while it is held; each task checks, once its commit
            // is acknowledged, that the sync of its group was let go.
            let (acked_tx, acked) = flume::unbounded::<u64>();
            for i in 1..=100u8 {
                j.borrow_mut().add(Entry::Place([i; 16], place(2)));
                let seq = j.borrow_mut().submit();
                let (j, tx, passed) = (j.clone(), acked_tx.clone(), passed.clone());
                monoio::spawn(async move {
                    committed(&j, seq).await;
                    assert!(j.borrow().committed_seq() >= seq);
                    assert_eq!(passed.load(SeqCst), 2, "acknowledged before its sync");
                    tx.send(seq).unwrap();
                });
            }
            assert_eq!(
                j.borrow().committed_seq(),
                0,
                "nothing is acknowledged before its sync"
            );
            release.send(()).unwrap();
            committed(&j, first).await;
            assert_eq!(passed.load(SeqCst), 1);
            // The writer takes the 100 as one group, and holds in its sync.
            assert_eq!(entered.recv_async().await.unwrap(), 2);
            assert_eq!(j.borrow().committed_seq(), first);
            assert!(acked.is_empty());
            release.send(()).unwrap();
            let mut got: Vec<u64> = Vec::new();
            for _ in 0..100 {
                got.push(acked.recv_async().await.unwrap());
            }
            got.sort_unstable();
            assert_eq!(got, (2..=101).collect::<Vec<u64>>());
            let seen = seen.borrow();
            assert_eq!(seen.len(), 2, "two syncs for 101 changes: {seen:?}");
            assert_eq!((seen[0].upto, seen[0].batches), (1, 1));
            assert_eq!(
                (seen[1].upto, seen[1].batches, seen[1].records),
                (101, 100, 100)
            );
            assert!(seen.iter().all(|d| d.error.is_none()));
            assert_eq!(j.borrow().syncs, 2);
        });
        drop(j);
        let order: Vec<u8> = on_disk(dir.path())
            .iter()
            .map(|e| match e {
                Entry::Place(h, _) => h[0],
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            order,
            (0..=100).collect::<Vec<u8>>(),
            "the file order is the submit order"
        );
    }

    #[test]
    fn a_sync_that_fails_is_reported_and_the_journal_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = Log::open(dir.path()).unwrap();
        // Fails the syncs numbered in `fail`; the others pass.
        let calls = Arc::new(AtomicU32::new(0));
        let fail = [1u32, 3, 4];
        let c = calls.clone();
        log.set_before_sync(Some(Box::new(move || {
            let n = c.fetch_add(1, SeqCst) + 1;
            if fail.contains(&n) {
                Err(io::Error::other(format!("injected failure of sync {n}")))
            } else {
                Ok(())
            }
        })));
        let mut j = Journal::start(log).unwrap();
        // Sync 1 (the append's) fails: the whole journal is rewritten (syncs 2 and 3 are its
        // temp file and folder; 3 fails), so the group fails loudly.
        j.add(Entry::Place([1; 16], place(2)));
        let e = j.commit_blocking().unwrap_err();
        assert!(e.contains("injected failure of sync 1"), "{e}");
        assert_eq!(j.errors, 1);
        // Sync 4 (the next append's) fails, the rewrite (5, 6) works: committed.
        j.add(Entry::Place([2; 16], place(3)));
        j.commit_blocking().unwrap();
        assert_eq!(j.errors, 1);
        // And the next append is plain.
        j.add(Entry::Remove([1; 16]));
        j.commit_blocking().unwrap();
        assert_eq!(calls.load(SeqCst), 7);
        // The rewrite put the live entries (both placements), then the removal was appended.
        let written = on_disk(dir.path());
        assert_eq!(written.len(), 3, "{written:?}");
        assert_eq!(written[2], Entry::Remove([1; 16]));
        let mut replayed = Live::default();
        for e in &written {
            replayed.apply(e);
        }
        assert_eq!(replayed.placements, HashMap::from([([2; 16], place(3))]));
    }

    #[test]
    fn a_failed_group_wakes_its_waiters() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = Log::open(dir.path()).unwrap();
        log.set_before_sync(Some(Box::new(|| Err(io::Error::other("disk gone")))));
        let j = Rc::new(RefCell::new(Journal::start(log).unwrap()));
        let jr = j.clone();
        run(async move {
            let j = jr;
            let (errors_tx, errors) = flume::unbounded::<String>();
            let pj = j.clone();
            monoio::spawn(async move {
                pump(&pj, |_, d| {
                    if let Some(e) = &d.error {
                        errors_tx.send(e.clone()).unwrap();
                    }
                })
                .await;
            });
            j.borrow_mut().add(Entry::Deny(a(4), "took over".into()));
            let seq = j.borrow_mut().submit();
            committed(&j, seq).await;
            let e = errors.recv_async().await.unwrap();
            assert!(e.contains("disk gone"), "{e}");
            assert_eq!(j.borrow().errors, 1);
        });
    }

    #[test]
    fn finishing_commits_every_batch_submitted_first() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        for i in 0..50u8 {
            j.add(Entry::Place([i; 16], place(2)));
            j.submit();
        }
        // Staged, never submitted: finishing submits it too.
        j.add(Entry::Deny(a(5), "replaced".into()));
        let done = j.finish();
        assert_eq!(done.last().map(|d| d.upto), Some(51));
        assert_eq!(done.iter().map(|d| d.batches).sum::<u64>(), 51);
        assert!(done.iter().all(|d| d.error.is_none()));
        assert_eq!(j.committed_seq(), 51);
        // After the end, a change fails at once rather than wait forever.
        j.add(Entry::Remove([0; 16]));
        assert!(j.commit_blocking().is_err());
        assert_eq!(j.errors, 1);
        drop(j);
        assert_eq!(on_disk(dir.path()).len(), 51);
    }
}
