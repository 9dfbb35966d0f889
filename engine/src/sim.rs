//! A simulated disk for crash tests: the same shard code runs on it as on real files.
//!
//! It keeps the *durable* image (what a power loss leaves) apart from the *volatile* one
//! (what the page cache holds). A flush snapshots the listed files when it is submitted and
//! makes that snapshot durable when it completes, like `fdatasync`: writes made after the
//! submission are not covered. `crash` stops the world and returns the disk a power loss
//! would leave: every write not covered by a completed flush may have reached the disk or
//! not, 512-byte sector by sector, and some sectors are torn (a prefix new, the rest old);
//! files created or removed without a directory sync may or may not exist, and unsynced new
//! files may be cut short.
//!
//! Faults that real disks cannot produce on demand are injected here: a flush that fails with
//! an errno (EIO, ENOSPC), and flushes held in flight.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io;
use std::os::fd::RawFd;

use crate::storage::{FileId, FlushDone, Storage};

/// Sector size of the simulated medium: the unit in which unflushed writes reach the disk.
pub const SECTOR: usize = 512;

/// A small deterministic PRNG (SplitMix64), so a failing run replays from its seed.
#[derive(Clone, Debug)]
pub struct SimRng(u64);

impl SimRng {
    pub fn new(seed: u64) -> SimRng {
        SimRng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n.max(1))) >> 64) as u64
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }
}

/// What a power loss leaves: durable file contents and the manifest. Clone it to crash the
/// same state several ways.
#[derive(Clone, Debug, Default)]
pub struct SimDisk {
    pub files: BTreeMap<String, Vec<u8>>,
    pub manifest: Option<Vec<u8>>,
}

#[derive(Clone, Debug)]
enum DirOp {
    Create(String),
    Remove(String),
}

struct Inflight {
    flush_no: u64,
    data: Vec<(String, Vec<u8>)>,
    dir_ops: Vec<DirOp>,
    fail: Option<i32>,
}

struct SimFile {
    name: String,
    data: Vec<u8>,
}

/// Crash-simulating storage. See the module documentation.
pub struct SimStorage {
    /// Names whose directory entry is durable.
    durable_names: BTreeSet<String>,
    /// Durable contents (by name; visible only if the name is durable).
    durable_data: BTreeMap<String, Vec<u8>>,
    manifest: Option<Vec<u8>>,
    files: Vec<Option<SimFile>>,
    /// Directory changes not yet covered by a submitted directory sync.
    dir_ops: Vec<DirOp>,
    inflight: VecDeque<Inflight>,
    fail_next: Option<i32>,
    hold: bool,
    dead: bool,
    flushes_completed: u64,
}

impl SimStorage {
    /// An empty disk.
    pub fn new() -> SimStorage {
        SimStorage::from_disk(SimDisk::default())
    }

    /// A disk holding exactly `disk` (e.g. what `crash` returned).
    pub fn from_disk(disk: SimDisk) -> SimStorage {
        SimStorage {
            durable_names: disk.files.keys().cloned().collect(),
            durable_data: disk.files,
            manifest: disk.manifest,
            files: Vec::new(),
            dir_ops: Vec::new(),
            inflight: VecDeque::new(),
            fail_next: None,
            hold: false,
            dead: false,
            flushes_completed: 0,
        }
    }

    /// The next flush submitted fails with this errno (e.g. `libc::EIO`, `libc::ENOSPC`) and
    /// makes nothing durable.
    pub fn fail_next_flush(&mut self, errno: i32) {
        self.fail_next = Some(errno);
    }

    /// While held, submitted flushes stay in flight (`reap` completes none).
    pub fn hold_flushes(&mut self, hold: bool) {
        self.hold = hold;
    }

    /// Flushes that completed so far.
    pub fn flushes_completed(&self) -> u64 {
        self.flushes_completed
    }

    /// The disk as it would be after a clean shutdown (everything durable).
    pub fn clean_image(&self) -> SimDisk {
        let mut disk = SimDisk {
            files: BTreeMap::new(),
            manifest: self.manifest.clone(),
        };
        for f in self.files.iter().flatten() {
            disk.files.insert(f.name.clone(), f.data.clone());
        }
        disk
    }

    /// What is durable right now, exactly (no tearing): after a completed `sync`, this must
    /// hold everything.
    pub fn durable_image(&self) -> SimDisk {
        let mut disk = SimDisk {
            files: BTreeMap::new(),
            manifest: self.manifest.clone(),
        };
        for name in &self.durable_names {
            if let Some(d) = self.durable_data.get(name) {
                disk.files.insert(name.clone(), d.clone());
            }
        }
        disk
    }

    /// Stops the world: returns what a power loss at this instant leaves on the disk, chosen
    /// by `rng`. Afterwards this storage is dead: flushes fail, nothing more reaches the disk.
    pub fn crash(&mut self, rng: &mut SimRng) -> SimDisk {
        self.dead = true;
        // Directory: durable names, then each unsynced change (in order) may have landed.
        let mut names = self.durable_names.clone();
        let mut pending: Vec<DirOp> = Vec::new();
        for f in &self.inflight {
            pending.extend(f.dir_ops.iter().cloned());
        }
        pending.extend(self.dir_ops.iter().cloned());
        for op in pending {
            if rng.chance(1, 2) {
                match op {
                    DirOp::Create(n) => {
                        names.insert(n);
                    }
                    DirOp::Remove(n) => {
                        names.remove(&n);
                    }
                }
            }
        }
        let mut disk = SimDisk {
            files: BTreeMap::new(),
            manifest: self.manifest.clone(),
        };
        for name in names {
            let volatile = self
                .files
                .iter()
                .flatten()
                .find(|f| f.name == name)
                .map(|f| &f.data);
            let base = self.durable_data.get(&name);
            let image = match (base, volatile) {
                (Some(b), None) => b.clone(),
                (Some(b), Some(v)) => tear(b, v, rng),
                (None, Some(v)) => {
                    // Never data-synced: blocks may not even be allocated. Start from zeros
                    // and maybe cut the file short.
                    let zeros = vec![0u8; v.len()];
                    let mut img = tear(&zeros, v, rng);
                    if rng.chance(1, 4) {
                        let sectors = img.len() / SECTOR;
                        img.truncate(rng.below(sectors as u64 + 1) as usize * SECTOR);
                    }
                    img
                }
                // Removed from the volatile side and never durable: nothing to show.
                (None, None) => continue,
            };
            disk.files.insert(name, image);
        }
        disk
    }

    fn file(&self, id: FileId) -> &SimFile {
        match self.files.get(id as usize) {
            Some(Some(f)) => f,
            _ => panic!("sim file id {id} is not open"),
        }
    }

    fn complete(&mut self, f: Inflight, out: &mut Vec<FlushDone>) {
        if let Some(errno) = f.fail {
            out.push((f.flush_no, Err(io::Error::from_raw_os_error(errno))));
            return;
        }
        for op in f.dir_ops {
            match op {
                DirOp::Create(n) => {
                    self.durable_names.insert(n);
                }
                DirOp::Remove(n) => {
                    self.durable_names.remove(&n);
                    self.durable_data.remove(&n);
                }
            }
        }
        for (name, data) in f.data {
            self.durable_data.insert(name, data);
        }
        self.flushes_completed += 1;
        out.push((f.flush_no, Ok(())));
    }
}

impl Default for SimStorage {
    fn default() -> Self {
        SimStorage::new()
    }
}

/// `old` with each differing sector of `new` applied, not applied, or torn.
fn tear(old: &[u8], new: &[u8], rng: &mut SimRng) -> Vec<u8> {
    let mut out = old.to_vec();
    out.resize(new.len(), 0);
    let mut at = 0;
    while at < new.len() {
        let end = (at + SECTOR).min(new.len());
        if out[at..end] != new[at..end] {
            match rng.below(8) {
                0..=3 => out[at..end].copy_from_slice(&new[at..end]),
                4..=6 => {}
                _ => {
                    let cut = at + rng.below((end - at) as u64) as usize;
                    out[at..cut].copy_from_slice(&new[at..cut]);
                }
            }
        }
        at = end;
    }
    out
}

impl Storage for SimStorage {
    fn list(&mut self) -> io::Result<Vec<(String, u64)>> {
        Ok(self
            .durable_names
            .iter()
            .filter(|n| n.starts_with("slab-") && n.ends_with(".dat"))
            .map(|n| {
                (
                    n.clone(),
                    self.durable_data.get(n).map_or(0, |d| d.len() as u64),
                )
            })
            .collect())
    }

    fn open(&mut self, name: &str) -> io::Result<FileId> {
        if !self.durable_names.contains(name) {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        let data = self.durable_data.get(name).cloned().unwrap_or_default();
        if data.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "empty slab file",
            ));
        }
        self.files.push(Some(SimFile {
            name: name.to_string(),
            data,
        }));
        Ok((self.files.len() - 1) as FileId)
    }

    fn create(&mut self, name: &str, len: usize, head: &[u8]) -> io::Result<FileId> {
        if self.files.iter().flatten().any(|f| f.name == name) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        let mut data = vec![0u8; len];
        let n = head.len().min(len);
        data[..n].copy_from_slice(&head[..n]);
        self.files.push(Some(SimFile {
            name: name.to_string(),
            data,
        }));
        self.dir_ops.push(DirOp::Create(name.to_string()));
        Ok((self.files.len() - 1) as FileId)
    }

    fn remove(&mut self, id: FileId) -> io::Result<()> {
        if let Some(f) = self.files.get_mut(id as usize).and_then(Option::take) {
            self.dir_ops.push(DirOp::Remove(f.name));
        }
        Ok(())
    }

    fn bytes(&self, id: FileId) -> &[u8] {
        &self.file(id).data
    }

    fn write(&mut self, id: FileId, offset: usize, parts: &[&[u8]]) -> io::Result<()> {
        let f = match self.files.get_mut(id as usize) {
            Some(Some(f)) => f,
            _ => panic!("sim file id {id} is not open"),
        };
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if offset + total > f.data.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "write past end of file",
            ));
        }
        let mut at = offset;
        for p in parts {
            f.data[at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
        Ok(())
    }

    fn read_manifest(&mut self) -> io::Result<Option<Vec<u8>>> {
        Ok(self.manifest.clone())
    }

    fn write_manifest(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.dead {
            return Err(io::Error::other("simulated disk is gone"));
        }
        self.manifest = Some(bytes.to_vec());
        Ok(())
    }

    fn submit_flush(&mut self, flush_no: u64, files: &[FileId], sync_dir: bool) -> io::Result<()> {
        if self.dead {
            return Err(io::Error::other("simulated disk is gone"));
        }
        let data = files
            .iter()
            .map(|&id| {
                let f = self.file(id);
                (f.name.clone(), f.data.clone())
            })
            .collect();
        let dir_ops = if sync_dir {
            std::mem::take(&mut self.dir_ops)
        } else {
            Vec::new()
        };
        let fail = self.fail_next.take();
        self.inflight.push_back(Inflight {
            flush_no,
            data,
            dir_ops,
            fail,
        });
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<FlushDone>) {
        if self.hold || self.dead {
            return;
        }
        while let Some(f) = self.inflight.pop_front() {
            self.complete(f, out);
        }
    }

    fn wait(&mut self) -> io::Result<()> {
        if !self.inflight.is_empty() && (self.hold || self.dead) {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "flushes are held",
            ));
        }
        Ok(())
    }

    fn completion_fd(&self) -> Option<RawFd> {
        None
    }

    fn describe(&self) -> &'static str {
        "simulated disk"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unflushed_writes_may_be_lost_flushed_ones_never() {
        let mut s = SimStorage::new();
        let id = s.create("slab-00-000000.dat", 4096, b"head").unwrap();
        s.submit_flush(1, &[id], true).unwrap();
        let mut done = Vec::new();
        s.reap(&mut done);
        assert!(matches!(done.as_slice(), [(1, Ok(()))]));
        s.write(id, 1024, &[&[7u8; 1024]]).unwrap();
        let mut lost_some = false;
        for seed in 0..32 {
            let mut rng = SimRng::new(seed);
            let disk = s.crash_clone(&mut rng);
            let f = &disk.files["slab-00-000000.dat"];
            assert_eq!(&f[..4], b"head");
            if f[1024..2048] != [7u8; 1024] {
                lost_some = true;
            }
        }
        assert!(lost_some, "a crash never lost an unflushed write");
    }

    #[test]
    fn failed_flush_reports_errno() {
        let mut s = SimStorage::new();
        let id = s.create("slab-00-000000.dat", 4096, b"").unwrap();
        s.fail_next_flush(libc::EIO);
        s.submit_flush(1, &[id], true).unwrap();
        let mut done = Vec::new();
        s.reap(&mut done);
        assert!(matches!(&done[..], [(1, Err(e))] if e.raw_os_error() == Some(libc::EIO)));
    }

    impl SimStorage {
        fn crash_clone(&self, rng: &mut SimRng) -> SimDisk {
            let mut c = SimStorage {
                durable_names: self.durable_names.clone(),
                durable_data: self.durable_data.clone(),
                manifest: self.manifest.clone(),
                files: self
                    .files
                    .iter()
                    .map(|f| {
                        f.as_ref().map(|f| SimFile {
                            name: f.name.clone(),
                            data: f.data.clone(),
                        })
                    })
                    .collect(),
                dir_ops: self.dir_ops.clone(),
                inflight: VecDeque::new(),
                fail_next: None,
                hold: false,
                dead: false,
                flushes_completed: 0,
            };
            c.crash(rng)
        }
    }
}
