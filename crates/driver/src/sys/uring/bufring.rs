//! A provided-buffer ring (`IORING_REGISTER_PBUF_RING`): receive buffers shared by every
//! connection of a ring, picked by the kernel only when data arrives.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::IoUring;
use io_uring::types::BufRingEntry;

/// The ring of buffer descriptors and the buffers themselves.
///
/// The descriptors live in an anonymous mapping (the kernel wants it page-aligned); the buffers in
/// one heap block. Both must outlive every receive that may pick a buffer: the owner keeps them
/// until the ring is gone, or leaks them ([`BufRing::leak`]).
pub(super) struct BufRing {
    entries: NonNull<BufRingEntry>,
    entries_len: usize,
    count: u16,
    size: u32,
    data: Box<[u8]>,
    /// Our copy of the tail; published to the kernel by [`BufRing::publish`].
    tail: u16,
    pub(super) group: u16,
}

impl BufRing {
    /// Registers `count` buffers of `size` bytes as group `group` of `ring`.
    pub(super) fn new(ring: &IoUring, group: u16, count: u16, size: u32) -> io::Result<BufRing> {
        assert!(
            count.is_power_of_two(),
            "buffer count must be a power of two"
        );
        let entries_len = usize::from(count) * size_of::<BufRingEntry>();
        // SAFETY: an anonymous private mapping with no address hint; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                entries_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let entries = NonNull::new(ptr.cast::<BufRingEntry>()).expect("mmap returned null");
        let mut ring_buf = BufRing {
            entries,
            entries_len,
            count,
            size,
            data: vec![0u8; usize::from(count) * size as usize].into_boxed_slice(),
            tail: 0,
            group,
        };
        // SAFETY: the descriptor memory is a live page-aligned mapping of `count` entries, and it
        // stays mapped until this `BufRing` is dropped after the ring, or is leaked.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                entries.as_ptr() as u64,
                count,
                group,
                0,
            )?;
        }
        for bid in 0..count {
            ring_buf.push(bid);
        }
        ring_buf.publish();
        Ok(ring_buf)
    }

    /// The bytes the kernel received into buffer `bid`.
    pub(super) fn data(&self, bid: u16, len: usize) -> &[u8] {
        let start = usize::from(bid) * self.size as usize;
        &self.data[start..start + len]
    }

    /// Gives buffer `bid` back to the kernel (visible after [`BufRing::publish`]).
    pub(super) fn push(&mut self, bid: u16) {
        let mask = self.count - 1;
        let addr = self.data.as_ptr() as u64 + u64::from(bid) * u64::from(self.size);
        // SAFETY: `tail & mask` is below `count`, so the entry is inside the mapping. The kernel
        // does not read entries between the published tail and ours.
        let entry = unsafe { &mut *self.entries.as_ptr().add(usize::from(self.tail & mask)) };
        entry.set_addr(addr);
        entry.set_len(self.size);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Publishes the buffers pushed since the last call.
    pub(super) fn publish(&self) {
        // SAFETY: `tail` points at the `tail` field that overlays the first entry's reserved
        // field, inside the mapping; the kernel reads it atomically, and the release store orders
        // the entry writes before it.
        unsafe {
            let tail = BufRingEntry::tail(self.entries.as_ptr()).cast::<AtomicU16>();
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    /// Keeps the memory alive for ever: a receive may still pick a buffer.
    pub(super) fn leak(self) {
        std::mem::forget(self);
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: the mapping was created in `new` with this length, and the owner drops a
        // `BufRing` only after its io_uring is gone and no receive is outstanding.
        unsafe {
            libc::munmap(self.entries.as_ptr().cast(), self.entries_len);
        }
    }
}
