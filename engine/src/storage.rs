//! The storage a shard runs on, as a parameter (TigerBeetle style).
//!
//! The real backend (`sys::SysStorage`) keeps slab files mapped with `mmap` and flushes them
//! with `fdatasync` driven through io_uring. The simulated backend (`sim::SimStorage`) keeps
//! a durable image apart from the volatile one, so a test can crash it at any point. The shard
//! code is the same on both.
//!
//! The contract a backend must keep:
//! - `write` changes the volatile image at once (`bytes` sees it); nothing is durable until a
//!   flush *submitted after* the write has completed successfully.
//! - `submit_flush` makes durable every write made to the listed files before the call (and,
//!   with `sync_dir`, every file created or removed before the call). Completions are reported
//!   by `reap`, each exactly once, in any order.
//! - `write_manifest` is atomic and durable when it returns.

use std::io;
use std::os::fd::RawFd;

/// A file handle handed out by a backend.
pub type FileId = u32;

/// A finished flush: its number (as given to `submit_flush`) and whether it succeeded.
pub type FlushDone = (u64, io::Result<()>);

/// Slab files and their flushing. See the module documentation for the contract.
pub trait Storage {
    /// Slab files present at open: names and lengths in bytes.
    fn list(&mut self) -> io::Result<Vec<(String, u64)>>;
    /// Opens (and maps) an existing file.
    fn open(&mut self, name: &str) -> io::Result<FileId>;
    /// Creates a file of `len` bytes whose content is `head` followed by zeros, written out
    /// (not sparse, not fallocated: overwriting written blocks is what makes fdatasync cheap).
    fn create(&mut self, name: &str, len: usize, head: &[u8]) -> io::Result<FileId>;
    /// Removes a file. Its id must not be used again.
    fn remove(&mut self, id: FileId) -> io::Result<()>;
    /// The file's bytes, as they are now (volatile image).
    fn bytes(&self, id: FileId) -> &[u8];
    /// Writes `parts`, one after the other, into the file at `offset` (within the file). On
    /// return `bytes` shows them. An error means the write may be partly done.
    fn write(&mut self, id: FileId, offset: usize, parts: &[&[u8]]) -> io::Result<()>;
    /// The manifest's bytes, or `None` when there is none.
    fn read_manifest(&mut self) -> io::Result<Option<Vec<u8>>>;
    /// Replaces the manifest atomically and durably.
    fn write_manifest(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Starts flush number `flush_no` of `files` (and of the directory when `sync_dir`).
    fn submit_flush(&mut self, flush_no: u64, files: &[FileId], sync_dir: bool) -> io::Result<()>;
    /// Moves finished flushes into `out`, without blocking.
    fn reap(&mut self, out: &mut Vec<FlushDone>);
    /// Blocks until at least one submitted flush has finished (returns at once when none is
    /// in flight). For tests, tools and shutdown, never for the daemon's event loop.
    fn wait(&mut self) -> io::Result<()>;
    /// A file descriptor that becomes readable when a flush finishes (an eventfd), for the
    /// daemon's event loop; `None` when completions are only found by polling.
    fn completion_fd(&self) -> Option<RawFd>;
    /// A short description of the flush mechanism in use (for logs and reports).
    fn describe(&self) -> &'static str;
}
