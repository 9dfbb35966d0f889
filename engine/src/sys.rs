//! The real storage backend: slab files mapped with mmap, flushed with fdatasync driven
//! through io_uring (or, where io_uring is refused, by a helper thread).
//!
//! This is the engine's only module with `unsafe`: mapping files, creating the eventfd and
//! pushing io_uring submissions. Each block has a `// SAFETY:` note.
//!
//! Files are mapped *read-only*: reads are served from the mapping with no copy and no
//! syscall. Records are written with `pwrite` into the page cache (which the mapping sees at
//! once) and made durable by `fdatasync` submitted through io_uring. Writing through a writable
//! shared mapping instead cost 2-3x more per 4 KiB record here: every write to a page that
//! writeback had cleaned takes a write-protect fault, and writeback must write-protect the
//! mapped pages again (with a TLB shootdown) each time. An `IORING_OP_WRITE` per record would
//! need its buffer kept until completion and reads served from it meanwhile, and ext4 hands
//! buffered ring writes to kernel worker threads anyway. Measurements: docs/storage.md.
//! The only operation the ring carries is `IORING_OP_FSYNC` (with `DATASYNC` for slab files),
//! which references no user memory, so no buffer can be freed under the kernel's feet.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;

use io_uring::{IoUring, opcode, squeue, types};
use memmap2::{Mmap, MmapOptions};

use crate::constants::{MANIFEST_SIZE_MAX, RING_ENTRIES};
use crate::storage::{FileId, FlushDone, Storage};

/// How a `SysStorage` drives its flushes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FlushMode {
    /// io_uring where the kernel allows it, else the helper thread.
    #[default]
    Auto,
    /// io_uring only: opening fails if the ring cannot be set up.
    Uring,
    /// A helper thread that calls fdatasync and signals an eventfd (never blocks the shard
    /// thread either, but costs a thread and a wake-up per flush).
    Thread,
}

const MANIFEST: &str = "manifest";
const MANIFEST_TMP: &str = "manifest.tmp";
const LOCK_FILE: &str = "lock";

struct Mapped {
    name: String,
    file: File,
    map: Mmap,
}

/// mmapped slab files in one shard directory, flushed through io_uring.
pub struct SysStorage {
    dir: PathBuf,
    dir_file: File,
    /// Held (with an exclusive lock) for as long as the storage is open, so that two
    /// processes never map the same slab files.
    _lock: File,
    files: Vec<Option<Mapped>>,
    flusher: Flusher,
    /// One record assembled for a single pwrite.
    scratch: Vec<u8>,
}

impl SysStorage {
    /// Opens (creating if needed) the shard directory `root/shard-NNNN` and takes its lock.
    pub fn open(root: &Path, shard_index: u32, mode: FlushMode) -> io::Result<SysStorage> {
        let dir = root.join(format!("shard-{shard_index:04}"));
        fs::create_dir_all(&dir)?;
        let dir_file = File::open(&dir)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))?;
        // SAFETY: flock takes no pointers; the fd is open (owned by `lock`) for the call.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!("{} is in use by another process", dir.display()),
                ));
            }
            return Err(e);
        }
        let flusher = match mode {
            FlushMode::Thread => Flusher::Thread(ThreadFlusher::new()?),
            FlushMode::Uring => Flusher::Uring(Box::new(UringFlusher::new()?)),
            FlushMode::Auto => match UringFlusher::new() {
                Ok(u) => Flusher::Uring(Box::new(u)),
                Err(_) => Flusher::Thread(ThreadFlusher::new()?),
            },
        };
        Ok(SysStorage {
            dir,
            dir_file,
            _lock: lock,
            files: Vec::new(),
            flusher,
            scratch: Vec::new(),
        })
    }

    /// The shard directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn mapped(&self, id: FileId) -> &Mapped {
        match self.files.get(id as usize) {
            Some(Some(m)) => m,
            // The shard only uses ids this storage handed out and never one it removed.
            _ => panic!("slab file id {id} is not open"),
        }
    }

    fn add(&mut self, name: &str, file: File) -> io::Result<FileId> {
        let len = file.metadata()?.len();
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "empty slab file",
            ));
        }
        // SAFETY: the file is a regular file in a directory this process holds an exclusive
        // lock on (see `open`), so no other cooperating process maps or truncates it while
        // mapped; this process never truncates a mapped file (`remove` unmaps first) and only
        // changes its bytes with pwrite inside its length. The read-only mapping lives in
        // `Mapped` next to the file and is only reached through `bytes`, as a slice.
        let map = unsafe { MmapOptions::new().len(len as usize).map(&file)? };
        let id = self.files.len() as FileId;
        self.files.push(Some(Mapped {
            name: name.to_string(),
            file,
            map,
        }));
        Ok(id)
    }
}

impl Storage for SysStorage {
    fn list(&mut self) -> io::Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("slab-") && name.ends_with(".dat") && entry.file_type()?.is_file() {
                out.push((name, entry.metadata()?.len()));
            }
        }
        out.sort();
        Ok(out)
    }

    fn open(&mut self, name: &str) -> io::Result<FileId> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.dir.join(name))?;
        self.add(name, file)
    }

    fn create(&mut self, name: &str, len: usize, head: &[u8]) -> io::Result<FileId> {
        let path = self.dir.join(name);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        // Written out rather than fallocated or sparse: overwriting blocks that are already
        // written needs no extent conversion at fdatasync time (about twice the flush rate,
        // see docs/storage.md).
        let filled = (|| {
            let zeros = vec![0u8; 1 << 20];
            let first = head.len().min(len);
            file.write_all(&head[..first])?;
            let mut at = first;
            while at < len {
                let n = (len - at).min(zeros.len());
                file.write_all(&zeros[..n])?;
                at += n;
            }
            Ok::<(), io::Error>(())
        })();
        let added = filled.and_then(|()| self.add(name, file));
        if added.is_err() {
            // A half-written file would block this name forever (create_new): take it away.
            let _ = fs::remove_file(&path);
        }
        added
    }

    fn remove(&mut self, id: FileId) -> io::Result<()> {
        let m = self.files.get_mut(id as usize).and_then(Option::take);
        if let Some(m) = m {
            let path = self.dir.join(&m.name);
            drop(m);
            fs::remove_file(path)?;
        }
        Ok(())
    }

    fn bytes(&self, id: FileId) -> &[u8] {
        &self.mapped(id).map
    }

    fn write(&mut self, id: FileId, offset: usize, parts: &[&[u8]]) -> io::Result<()> {
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        for p in parts {
            buf.extend_from_slice(p);
        }
        let m = self.mapped(id);
        if offset + buf.len() > m.map.len() {
            self.scratch = buf;
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "write past end of slab file",
            ));
        }
        let r = m.file.write_all_at(&buf, offset as u64);
        self.scratch = buf;
        r
    }

    fn read_manifest(&mut self) -> io::Result<Option<Vec<u8>>> {
        let mut f = match File::open(self.dir.join(MANIFEST)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut buf = Vec::new();
        // Bounded: a manifest is a few dozen bytes; a huge one is damage, not a reason to
        // allocate.
        (&mut f).take(MANIFEST_SIZE_MAX + 1).read_to_end(&mut buf)?;
        Ok(Some(buf))
    }

    fn write_manifest(&mut self, bytes: &[u8]) -> io::Result<()> {
        let tmp = self.dir.join(MANIFEST_TMP);
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, self.dir.join(MANIFEST))?;
        self.dir_file.sync_all()
    }

    fn submit_flush(&mut self, flush_no: u64, files: &[FileId], sync_dir: bool) -> io::Result<()> {
        let mut fds = Vec::with_capacity(files.len() + 1);
        for &id in files {
            fds.push((self.mapped(id).file.as_raw_fd(), true));
        }
        if sync_dir {
            fds.push((self.dir_file.as_raw_fd(), false));
        }
        match &mut self.flusher {
            Flusher::Uring(u) => u.submit(flush_no, &fds),
            Flusher::Thread(t) => t.submit(flush_no, &fds),
        }
    }

    fn reap(&mut self, out: &mut Vec<FlushDone>) {
        match &mut self.flusher {
            Flusher::Uring(u) => u.reap(out),
            Flusher::Thread(t) => t.reap(out),
        }
    }

    fn wait(&mut self) -> io::Result<()> {
        match &mut self.flusher {
            Flusher::Uring(u) => u.wait(),
            Flusher::Thread(t) => t.wait(),
        }
    }

    fn completion_fd(&self) -> Option<RawFd> {
        Some(match &self.flusher {
            Flusher::Uring(u) => u.eventfd.as_raw_fd(),
            Flusher::Thread(t) => t.eventfd.as_raw_fd(),
        })
    }

    fn describe(&self) -> &'static str {
        match &self.flusher {
            Flusher::Uring(_) => "mmap + fdatasync via io_uring",
            Flusher::Thread(_) => "mmap + fdatasync on a helper thread",
        }
    }
}

impl Drop for SysStorage {
    fn drop(&mut self) {
        // Let every flush in flight finish before the files close, so that a shutdown never
        // races the kernel (fsync holds no user memory, so this is about order, not safety).
        let mut sink = Vec::new();
        loop {
            let busy = match &self.flusher {
                Flusher::Uring(u) => !u.inflight.is_empty(),
                Flusher::Thread(t) => t.in_flight > 0,
            };
            if !busy || self.wait().is_err() {
                break;
            }
            self.reap(&mut sink);
        }
    }
}

/// Waits until `fd` is readable or `timeout_ms` passes (-1: no limit); true if readable.
/// For tools and tests that have no event loop of their own to wait on `completion_fd`.
pub fn wait_readable(fd: RawFd, timeout_ms: i32) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: `p` is a valid pollfd for the duration of the call and nfds is 1; an
        // invalid fd is reported through `revents` (POLLNVAL), not undefined behaviour.
        let n = unsafe { libc::poll(&mut p, 1, timeout_ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if p.revents & libc::POLLNVAL != 0 {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        return Ok(n > 0 && p.revents & libc::POLLIN != 0);
    }
}

enum Flusher {
    Uring(Box<UringFlusher>),
    Thread(ThreadFlusher),
}

fn new_eventfd() -> io::Result<File> {
    // SAFETY: eventfd takes no pointers; the flags are valid constants.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by eventfd, is valid and owned by nobody else.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Empties an eventfd's counter; the fd is non-blocking, so an empty counter is not an error.
fn drain_eventfd(f: &File) {
    let mut buf = [0u8; 8];
    let _ = (&*f).read(&mut buf);
}

struct Pending {
    flush_no: u64,
    ops_left: u32,
    error: Option<io::Error>,
}

struct UringFlusher {
    ring: IoUring,
    eventfd: File,
    inflight: Vec<Pending>,
    /// Entries that did not fit in the submission queue yet.
    backlog: VecDeque<squeue::Entry>,
}

impl UringFlusher {
    fn new() -> io::Result<UringFlusher> {
        let ring = IoUring::new(RING_ENTRIES)?;
        let eventfd = new_eventfd()?;
        ring.submitter().register_eventfd(eventfd.as_raw_fd())?;
        Ok(UringFlusher {
            ring,
            eventfd,
            inflight: Vec::new(),
            backlog: VecDeque::new(),
        })
    }

    fn push_backlog(&mut self) -> io::Result<()> {
        while let Some(e) = self.backlog.front() {
            let pushed = {
                let mut sq = self.ring.submission();
                // SAFETY: the entry is an IORING_OP_FSYNC on a file descriptor that stays open
                // until its completion has been reaped (files are only closed by `remove`,
                // which the shard calls only for files with no flush in flight, and by drop,
                // which waits for every flush first). FSYNC references no user memory.
                unsafe { sq.push(e).is_ok() }
            };
            if pushed {
                self.backlog.pop_front();
            } else {
                // Queue full: hand what is queued to the kernel, which frees the slots.
                self.ring.submit()?;
            }
        }
        self.ring.submit()?;
        Ok(())
    }

    fn submit(&mut self, flush_no: u64, fds: &[(RawFd, bool)]) -> io::Result<()> {
        if fds.is_empty() {
            self.inflight.push(Pending {
                flush_no,
                ops_left: 1,
                error: None,
            });
            let nop = opcode::Nop::new().build().user_data(flush_no);
            self.backlog.push_back(nop);
            return self.push_backlog();
        }
        self.inflight.push(Pending {
            flush_no,
            ops_left: fds.len() as u32,
            error: None,
        });
        for &(fd, data_only) in fds {
            let flags = if data_only {
                types::FsyncFlags::DATASYNC
            } else {
                types::FsyncFlags::empty()
            };
            let e = opcode::Fsync::new(types::Fd(fd))
                .flags(flags)
                .build()
                .user_data(flush_no);
            self.backlog.push_back(e);
        }
        self.push_backlog()
    }

    fn reap(&mut self, out: &mut Vec<FlushDone>) {
        // Reset the eventfd before draining, so a completion that lands after the drain
        // signals it again.
        drain_eventfd(&self.eventfd);
        if !self.backlog.is_empty() {
            let _ = self.push_backlog();
        }
        for cqe in self.ring.completion() {
            let flush_no = cqe.user_data();
            let Some(i) = self.inflight.iter().position(|p| p.flush_no == flush_no) else {
                continue;
            };
            let p = &mut self.inflight[i];
            if cqe.result() < 0 && p.error.is_none() {
                p.error = Some(io::Error::from_raw_os_error(-cqe.result()));
            }
            p.ops_left -= 1;
            if p.ops_left == 0 {
                let p = self.inflight.remove(i);
                out.push((p.flush_no, p.error.map_or(Ok(()), Err)));
            }
        }
    }

    fn wait(&mut self) -> io::Result<()> {
        if self.inflight.is_empty() {
            return Ok(());
        }
        if !self.backlog.is_empty() {
            self.push_backlog()?;
        }
        self.ring.submit_and_wait(1)?;
        Ok(())
    }
}

struct Job {
    flush_no: u64,
    files: Vec<(File, bool)>,
}

struct ThreadFlusher {
    jobs: Option<mpsc::Sender<Job>>,
    done: mpsc::Receiver<FlushDone>,
    eventfd: File,
    thread: Option<JoinHandle<()>>,
    in_flight: usize,
    ready: VecDeque<FlushDone>,
}

impl ThreadFlusher {
    fn new() -> io::Result<ThreadFlusher> {
        let eventfd = new_eventfd()?;
        let signal = eventfd.try_clone()?;
        let (jobs, job_rx) = mpsc::channel::<Job>();
        let (done_tx, done) = mpsc::channel::<FlushDone>();
        let thread = std::thread::Builder::new()
            .name("scd-flush".into())
            .spawn(move || {
                for job in job_rx {
                    let mut result = Ok(());
                    for (f, data_only) in &job.files {
                        let r = if *data_only {
                            f.sync_data()
                        } else {
                            f.sync_all()
                        };
                        if let Err(e) = r {
                            result = Err(e);
                            break;
                        }
                    }
                    if done_tx.send((job.flush_no, result)).is_err() {
                        return;
                    }
                    let _ = (&signal).write(&1u64.to_ne_bytes());
                }
            })?;
        Ok(ThreadFlusher {
            jobs: Some(jobs),
            done,
            eventfd,
            thread: Some(thread),
            in_flight: 0,
            ready: VecDeque::new(),
        })
    }

    fn submit(&mut self, flush_no: u64, fds: &[(RawFd, bool)]) -> io::Result<()> {
        let mut files = Vec::with_capacity(fds.len());
        for &(fd, data_only) in fds {
            // A duplicate descriptor, so the helper thread never uses one the shard closed.
            // SAFETY: `fd` is open for the duration of this call (borrowed from a `File` the
            // storage owns); `BorrowedFd` does not outlive it and `try_clone_to_owned` dups it.
            let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            files.push((File::from(borrowed.try_clone_to_owned()?), data_only));
        }
        let Some(jobs) = &self.jobs else {
            return Err(io::Error::other("flush thread is gone"));
        };
        jobs.send(Job { flush_no, files })
            .map_err(|_| io::Error::other("flush thread is gone"))?;
        self.in_flight += 1;
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<FlushDone>) {
        drain_eventfd(&self.eventfd);
        while let Some(d) = self.ready.pop_front() {
            self.in_flight -= 1;
            out.push(d);
        }
        while let Ok(d) = self.done.try_recv() {
            self.in_flight -= 1;
            out.push(d);
        }
    }

    fn wait(&mut self) -> io::Result<()> {
        if self.in_flight == 0 || !self.ready.is_empty() {
            return Ok(());
        }
        match self.done.recv() {
            Ok(d) => {
                self.ready.push_back(d);
                Ok(())
            }
            Err(_) => Err(io::Error::other("flush thread is gone")),
        }
    }
}

impl Drop for ThreadFlusher {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Measurements behind the choice of flush mechanism (docs/storage.md). Used by the
/// `flush_probe` example; kept here because mapping a file needs `unsafe`.
#[doc(hidden)]
pub mod probe {
    use std::fs::{File, OpenOptions};
    use std::io::{self, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    use std::path::Path;
    use std::time::Instant;

    use io_uring::{IoUring, opcode, squeue, types};
    use memmap2::MmapOptions;

    /// How records reach the disk.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Mechanism {
        /// memcpy into a shared mapping, then fdatasync of the file (blocking call).
        MmapFdatasync,
        /// memcpy into a shared mapping, then IORING_OP_FSYNC(DATASYNC) (the engine's choice).
        MmapUringFsync,
        /// memcpy into a shared mapping, then msync(MS_SYNC) of each written range.
        MmapMsync,
        /// pwrite of each record, then fdatasync.
        PwriteFdatasync,
        /// IORING_OP_WRITE of each record, then IORING_OP_FSYNC(DATASYNC), one submission.
        UringWriteFsync,
    }

    /// How the file was prepared.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Prep {
        /// Every block written (zeros) and synced before the run.
        Prewritten,
        /// fallocate'd: blocks reserved but unwritten.
        Fallocated,
    }

    /// One measured configuration.
    #[derive(Clone, Debug)]
    pub struct Row {
        pub mechanism: Mechanism,
        pub prep: Prep,
        pub batch: usize,
        pub writes_per_s: f64,
        pub commit_p50_us: f64,
        pub commit_p99_us: f64,
        /// CPU-side cost of putting one record in place (before the flush), microseconds.
        pub write_us: f64,
    }

    const FILE_LEN: usize = 64 << 20;
    const SLOT: usize = 5120;

    fn prepare(path: &Path, prep: Prep) -> io::Result<File> {
        let _ = std::fs::remove_file(path);
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        match prep {
            Prep::Prewritten => {
                let zeros = vec![0u8; 1 << 20];
                for _ in 0..FILE_LEN / zeros.len() {
                    f.write_all(&zeros)?;
                }
            }
            Prep::Fallocated => {
                // SAFETY: fallocate takes no pointers; the fd is open for the call.
                let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, FILE_LEN as libc::off_t) };
                if r != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        f.sync_all()?;
        Ok(f)
    }

    /// Runs `rounds` commits of `batch` records of `record_len` bytes at random slots of a
    /// 64 MiB file in `dir`, with one flush per commit.
    pub fn run(
        dir: &Path,
        mechanism: Mechanism,
        prep: Prep,
        record_len: usize,
        batch: usize,
        rounds: usize,
    ) -> io::Result<Row> {
        let path = dir.join("flush-probe.dat");
        let file = prepare(&path, prep)?;
        // SAFETY: the file was just created by this function under a name nobody else uses,
        // is not truncated while mapped, and the map is dropped before the file is removed.
        let mut map = unsafe { MmapOptions::new().len(FILE_LEN).map_mut(&file)? };
        let mut ring = IoUring::new(256)?;
        let record: Vec<u8> = (0..record_len).map(|i| (i * 7 + 3) as u8).collect();
        let slots = FILE_LEN / SLOT;
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut commit_us = Vec::with_capacity(rounds);
        let mut write_ns_total = 0u128;
        let started = Instant::now();
        let mut offsets = Vec::with_capacity(batch);
        for round in 0..rounds {
            offsets.clear();
            for _ in 0..batch {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                offsets.push((x % slots as u64) as usize * SLOT);
            }
            let t = Instant::now();
            match mechanism {
                Mechanism::MmapFdatasync | Mechanism::MmapUringFsync | Mechanism::MmapMsync => {
                    for &o in &offsets {
                        map[o..o + record_len].copy_from_slice(&record);
                        map[o] = round as u8;
                    }
                }
                Mechanism::PwriteFdatasync => {
                    for &o in &offsets {
                        file.write_all_at(&record, o as u64)?;
                    }
                }
                Mechanism::UringWriteFsync => {}
            }
            write_ns_total += t.elapsed().as_nanos();
            match mechanism {
                Mechanism::MmapFdatasync | Mechanism::PwriteFdatasync => file.sync_data()?,
                Mechanism::MmapMsync => {
                    for &o in &offsets {
                        map.flush_range(o, record_len)?;
                    }
                }
                Mechanism::MmapUringFsync => {
                    let e = opcode::Fsync::new(types::Fd(file.as_raw_fd()))
                        .flags(types::FsyncFlags::DATASYNC)
                        .build();
                    // SAFETY: FSYNC references no memory; the fd outlives the wait below.
                    unsafe { ring.submission().push(&e).map_err(io::Error::other)? };
                    ring.submit_and_wait(1)?;
                    for c in ring.completion() {
                        if c.result() < 0 {
                            return Err(io::Error::from_raw_os_error(-c.result()));
                        }
                    }
                }
                Mechanism::UringWriteFsync => {
                    let mut sq = ring.submission();
                    for &o in &offsets {
                        let e = opcode::Write::new(
                            types::Fd(file.as_raw_fd()),
                            record.as_ptr(),
                            record_len as u32,
                        )
                        .offset(o as u64)
                        .build()
                        .flags(squeue::Flags::IO_LINK);
                        // SAFETY: `record` outlives the submit_and_wait below, which waits for
                        // every completion of this round (batch writes + the fsync) before the
                        // buffer can be touched again; the fd stays open.
                        unsafe { sq.push(&e).map_err(io::Error::other)? };
                    }
                    let e = opcode::Fsync::new(types::Fd(file.as_raw_fd()))
                        .flags(types::FsyncFlags::DATASYNC)
                        .build();
                    // SAFETY: as above; FSYNC references no memory.
                    unsafe { sq.push(&e).map_err(io::Error::other)? };
                    drop(sq);
                    ring.submit_and_wait(batch + 1)?;
                    let mut seen = 0;
                    while seen < batch + 1 {
                        for c in ring.completion() {
                            seen += 1;
                            if c.result() < 0 {
                                return Err(io::Error::from_raw_os_error(-c.result()));
                            }
                        }
                        if seen < batch + 1 {
                            ring.submit_and_wait(1)?;
                        }
                    }
                }
            }
            commit_us.push(t.elapsed().as_secs_f64() * 1e6);
        }
        let elapsed = started.elapsed().as_secs_f64();
        drop(map);
        drop(file);
        let _ = std::fs::remove_file(&path);
        commit_us.sort_by(f64::total_cmp);
        let pct = |p: f64| commit_us[((commit_us.len() as f64 - 1.0) * p) as usize];
        Ok(Row {
            mechanism,
            prep,
            batch,
            writes_per_s: (rounds * batch) as f64 / elapsed,
            commit_p50_us: pct(0.5),
            commit_p99_us: pct(0.99),
            write_us: write_ns_total as f64 / 1e3 / (rounds * batch) as f64,
        })
    }
}
