//! Slot bookkeeping over the slab files of one shard: which slots are free, live or waiting
//! for a flush before they may be reused, and the growth of files.
//!
//! File `slab-CC-NNNNNN.dat` holds slots of class `CC`; a slot's place in the shard is a `Loc`
//! (class, position of the file in its class, slot number). Files of a class are numbered in
//! creation order and only the last one is ever removed (by compaction), so positions are
//! stable.

use std::io;

use crate::constants::{
    CLASS_COUNT, SLAB_FILE_SIZE_FIRST, SLAB_FILE_SIZE_MAX, SLAB_FILE_SLOTS_MIN,
    SLAB_FILES_PER_CLASS_MAX, SLAB_HEADER_REGION,
};
use crate::record::{SlabHeader, slot_size};
use crate::storage::{FileId, Storage};

/// Where a slot is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Loc {
    pub class: u8,
    pub file: u16,
    pub slot: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SlotState {
    /// Reusable now.
    Free,
    /// Holds the record an index entry points to.
    Live,
    /// No longer needed, but reusable only once the flush that made its replacement durable
    /// has completed (so a crash can never leave a session without any good copy).
    Pending,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct SlotMeta {
    pub state: SlotState,
    /// When the live record in this slot may be reclaimed (sessions: their expiry; tombstones:
    /// the expiry of the last older copy they shield). Lets the expiry sweep run without
    /// touching the mapped pages.
    pub reclaim_at_ms: u64,
}

pub(crate) struct SlabFile {
    pub id: FileId,
    pub slots: Vec<SlotMeta>,
    /// Free slot numbers; popped from the end, so the lowest slot is reused first.
    pub free: Vec<u32>,
    pub live: u32,
    pub pending: u32,
}

impl SlabFile {
    pub fn new(id: FileId, slot_count: usize) -> SlabFile {
        SlabFile {
            id,
            slots: vec![
                SlotMeta {
                    state: SlotState::Free,
                    reclaim_at_ms: 0
                };
                slot_count
            ],
            free: Vec::new(),
            live: 0,
            pending: 0,
        }
    }

    /// Rebuilds the free list from the slot states (after recovery).
    pub fn rebuild_free(&mut self) {
        self.free.clear();
        self.live = 0;
        self.pending = 0;
        for (i, m) in self.slots.iter().enumerate().rev() {
            match m.state {
                SlotState::Free => self.free.push(i as u32),
                SlotState::Live => self.live += 1,
                SlotState::Pending => self.pending += 1,
            }
        }
    }
}

#[derive(Default)]
pub(crate) struct Class {
    pub files: Vec<SlabFile>,
    /// Number for the next file created in this class (above every number ever seen, damaged
    /// files included, so a name is never reused).
    pub next_number: u32,
}

pub(crate) struct Slabs {
    pub classes: Vec<Class>,
    pub shard_index: u32,
}

/// The name of a slab file.
pub(crate) fn file_name(class: usize, number: u32) -> String {
    format!("slab-{class:02}-{number:06}.dat")
}

/// Class and number from a slab file name, or `None` if it is not one of ours.
pub(crate) fn parse_file_name(name: &str) -> Option<(usize, u32)> {
    let rest = name.strip_prefix("slab-")?.strip_suffix(".dat")?;
    let (c, n) = rest.split_once('-')?;
    if c.len() != 2 || n.len() != 6 || !c.bytes().chain(n.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let class: usize = c.parse().ok()?;
    let number: u32 = n.parse().ok()?;
    (class < CLASS_COUNT).then_some((class, number))
}

/// Slots of the `position`-th file of a class: files double from `SLAB_FILE_SIZE_FIRST` to
/// `SLAB_FILE_SIZE_MAX`.
pub(crate) fn slots_for_file(class: usize, position: usize) -> usize {
    let shift = position.min(16) as u32;
    let bytes = SLAB_FILE_SIZE_FIRST
        .saturating_mul(1 << shift)
        .min(SLAB_FILE_SIZE_MAX);
    (bytes / slot_size(class)).max(SLAB_FILE_SLOTS_MIN)
}

impl Slabs {
    pub fn new(shard_index: u32) -> Slabs {
        Slabs {
            classes: (0..CLASS_COUNT).map(|_| Class::default()).collect(),
            shard_index,
        }
    }

    pub fn offset(loc: Loc) -> usize {
        SLAB_HEADER_REGION + loc.slot as usize * slot_size(loc.class as usize)
    }

    pub fn file(&self, loc: Loc) -> &SlabFile {
        &self.classes[loc.class as usize].files[loc.file as usize]
    }

    pub fn meta_mut(&mut self, loc: Loc) -> &mut SlotMeta {
        &mut self.classes[loc.class as usize].files[loc.file as usize].slots[loc.slot as usize]
    }

    /// The whole slot's bytes.
    pub fn slot_bytes<'a, S: Storage>(&self, storage: &'a S, loc: Loc) -> &'a [u8] {
        let f = self.file(loc);
        let at = Self::offset(loc);
        &storage.bytes(f.id)[at..at + slot_size(loc.class as usize)]
    }

    /// A free slot of `class`, from the lowest file that has one; grows the class by a file
    /// when none has. Returns the slot and whether a file was created.
    pub fn alloc<S: Storage>(&mut self, storage: &mut S, class: usize) -> io::Result<(Loc, bool)> {
        let c = &mut self.classes[class];
        for (pos, f) in c.files.iter_mut().enumerate() {
            if let Some(slot) = f.free.pop() {
                return Ok((
                    Loc {
                        class: class as u8,
                        file: pos as u16,
                        slot,
                    },
                    false,
                ));
            }
        }
        if c.files.len() >= SLAB_FILES_PER_CLASS_MAX {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!("class {class} already has {SLAB_FILES_PER_CLASS_MAX} slab files"),
            ));
        }
        let pos = c.files.len();
        let slots = slots_for_file(class, pos);
        let number = c.next_number;
        let header = SlabHeader {
            class: class as u16,
            slot_size: slot_size(class) as u32,
            shard_index: self.shard_index,
            file_number: number,
        };
        let len = SLAB_HEADER_REGION + slots * slot_size(class);
        let id = storage.create(&file_name(class, number), len, &header.encode())?;
        c.next_number = number + 1;
        let mut f = SlabFile::new(id, slots);
        f.rebuild_free();
        let slot = f.free.pop().unwrap_or(0);
        c.files.push(f);
        Ok((
            Loc {
                class: class as u8,
                file: pos as u16,
                slot,
            },
            true,
        ))
    }

    /// Marks an allocated slot live.
    pub fn set_live(&mut self, loc: Loc, reclaim_at_ms: u64) {
        let f = &mut self.classes[loc.class as usize].files[loc.file as usize];
        let m = &mut f.slots[loc.slot as usize];
        debug_assert!(m.state == SlotState::Free, "slot {loc:?} allocated twice");
        m.state = SlotState::Live;
        m.reclaim_at_ms = reclaim_at_ms;
        f.live += 1;
    }

    /// A live slot is no longer needed; reusable after the next completed flush.
    pub fn set_pending(&mut self, loc: Loc) {
        let f = &mut self.classes[loc.class as usize].files[loc.file as usize];
        let m = &mut f.slots[loc.slot as usize];
        debug_assert!(m.state == SlotState::Live, "slot {loc:?} freed twice");
        m.state = SlotState::Pending;
        f.live -= 1;
        f.pending += 1;
    }

    /// A pending slot's flush has completed: reusable now.
    pub fn release_pending(&mut self, loc: Loc) {
        let Some(f) = self
            .classes
            .get_mut(loc.class as usize)
            .and_then(|c| c.files.get_mut(loc.file as usize))
        else {
            return;
        };
        let m = &mut f.slots[loc.slot as usize];
        if m.state == SlotState::Pending {
            m.state = SlotState::Free;
            f.pending -= 1;
            f.free.push(loc.slot);
        }
    }

    /// A slot that was allocated but never made live (a failed write): back to the free list.
    pub fn unalloc(&mut self, loc: Loc) {
        let f = &mut self.classes[loc.class as usize].files[loc.file as usize];
        if f.slots[loc.slot as usize].state == SlotState::Free {
            f.free.push(loc.slot);
        }
    }

    /// A live slot is reusable at once (its record shields nothing and nothing depends on it).
    pub fn free_now(&mut self, loc: Loc) {
        let f = &mut self.classes[loc.class as usize].files[loc.file as usize];
        let m = &mut f.slots[loc.slot as usize];
        if m.state == SlotState::Live {
            m.state = SlotState::Free;
            f.live -= 1;
            f.free.push(loc.slot);
        }
    }

    /// Total slot bytes and slot counts (for statistics).
    pub fn totals(&self) -> (u64, u64, u64) {
        let mut bytes = 0u64;
        let mut slots = 0u64;
        let mut files = 0u64;
        for (c, class) in self.classes.iter().enumerate() {
            for f in &class.files {
                files += 1;
                slots += f.slots.len() as u64;
                bytes += (SLAB_HEADER_REGION + f.slots.len() * slot_size(c)) as u64;
            }
        }
        (bytes, slots, files)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip() {
        assert_eq!(file_name(3, 17), "slab-03-000017.dat");
        assert_eq!(parse_file_name("slab-03-000017.dat"), Some((3, 17)));
        assert_eq!(parse_file_name("slab-99-000017.dat"), None);
        assert_eq!(parse_file_name("slab-3-000017.dat"), None);
        assert_eq!(parse_file_name("slab-03-00001x.dat"), None);
        assert_eq!(parse_file_name("manifest"), None);
    }

    #[test]
    fn files_grow_geometrically_within_bounds() {
        assert_eq!(slots_for_file(0, 0), SLAB_FILE_SIZE_FIRST / 128);
        assert_eq!(slots_for_file(0, 1), 2 * SLAB_FILE_SIZE_FIRST / 128);
        assert_eq!(slots_for_file(0, 40), SLAB_FILE_SIZE_MAX / 128);
        assert_eq!(slots_for_file(CLASS_COUNT - 1, 0), SLAB_FILE_SLOTS_MIN);
    }
}
