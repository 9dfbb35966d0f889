//! The placement journal: the placements a restart must not forget, and the read-lease denial
//! marks, kept in `<data_dir>/cluster-placements.journal` (layout, recovery rule and crash
//! windows: docs/storage.md, "Placement journal").
//!
//! - Append-only records, each `len u32 | crc32 u32 | body`; a record is durable once
//!   [`Journal::commit`] returned (write + fdatasync).
//! - At start ([`Journal::open`]) the file is read up to the first torn or bad record (a crash
//!   mid-append), the live entries are rebuilt, and the file is rewritten with only those
//!   (temp file, fsync, rename, fsync of the directory). The same compaction runs while serving
//!   when the file grew to several times its live size.
//! - Only placements not derivable from a session ID are written (the caller decides: see
//!   `route.rs`, `State::set_placement`); the journal keeps a mirror of its live entries so the
//!   caller can tell whether a session has one.
//!
//! Every byte read is checked before use; garbage never panics, it ends the readable part.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

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

// ----- the file ------------------------------------------------------------------------------

/// The open journal (cluster thread only).
pub struct Journal {
    dir: PathBuf,
    /// `<FILE_NAME>.lock`, flock'ed while this process has the journal open.
    _lock: File,
    file: File,
    /// Bytes in the file.
    len: u64,
    live: Live,
    /// Records appended but not yet written and synced (see `commit`).
    pending: Vec<u8>,
    /// Records written since the start, and fdatasyncs done.
    pub records: u64,
    pub syncs: u64,
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

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes a journal holding exactly `live` at `dir/FILE_NAME`: temp file, fsync, rename, fsync
/// of the directory. Returns the file's length.
fn write_compacted(dir: &Path, live: &Live) -> io::Result<u64> {
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
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(FILE_NAME))?;
    sync_dir(dir)?;
    Ok(bytes.len() as u64)
}

impl Journal {
    /// Opens (or creates) the journal in `dir`, reads it up to its first torn or bad record,
    /// and rewrites it compacted. Err: it cannot be read or written, is larger than
    /// `FILE_MAX`, or is not a journal (never silently replaced: it may hold epochs).
    pub fn open(dir: &Path) -> Result<(Journal, Recovered), String> {
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
        let len = write_compacted(dir, &live).map_err(|e| format!("{shown}: {e}"))?;
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
            Journal {
                dir: dir.to_path_buf(),
                _lock: lock,
                file,
                len,
                live,
                pending: Vec::new(),
                records: 0,
                syncs: 0,
            },
            recovered,
        ))
    }

    /// The live placement of `hash` in the journal, if it has one.
    pub fn placement(&self, hash: &[u8; 16]) -> Option<Placement> {
        self.live.placements.get(hash).copied()
    }

    /// Adds a record to the pending group (durable at the next `commit`). A record that changes
    /// nothing live (the same placement again, a removal of none, a mark already set or not set)
    /// is not added. True if it was added.
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
        encode_record(&mut self.pending, &e);
        self.records += 1;
        true
    }

    /// Whether records wait for `commit`.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Writes the pending records and fdatasyncs the file: once this returns Ok they survive a
    /// crash. Compacts first when the file grew to several times its live size.
    pub fn commit(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let live_len =
            (self.live.placements.len() as u64) * 80 + (self.live.denied.len() as u64) * 600;
        if self.len > COMPACT_MIN && self.len > live_len.saturating_mul(4) {
            // The live entries already include the pending ones.
            self.len = write_compacted(&self.dir, &self.live)?;
            self.file = OpenOptions::new()
                .append(true)
                .open(self.dir.join(FILE_NAME))?;
            self.pending.clear();
            self.syncs += 1;
            return Ok(());
        }
        let r = self
            .file
            .write_all(&self.pending)
            .and_then(|_| self.file.sync_data());
        match r {
            Ok(()) => {
                self.len += self.pending.len() as u64;
                self.pending.clear();
                self.syncs += 1;
                Ok(())
            }
            Err(e) => {
                // What reached the file is unknown: rewrite the whole journal from the live
                // entries (which include these records) rather than leave a torn tail before
                // the next append.
                self.pending.clear();
                match write_compacted(&self.dir, &self.live).and_then(|len| {
                    self.file = OpenOptions::new()
                        .append(true)
                        .open(self.dir.join(FILE_NAME))?;
                    Ok(len)
                }) {
                    Ok(len) => {
                        self.len = len;
                        self.syncs += 1;
                        Ok(())
                    }
                    Err(_) => Err(e),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        j.commit().unwrap();
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
            j.commit().unwrap();
            assert!(j.add(Entry::Place([1; 16], place(3))));
            j.commit().unwrap();
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
}
