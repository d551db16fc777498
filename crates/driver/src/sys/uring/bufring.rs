//! Memory the kernel writes into while a receive is outstanding: the provided-buffer ring
//! (`IORING_REGISTER_PBUF_RING`, receive buffers shared by every connection of a ring, picked by
//! the kernel only when data arrives) and the buffers of one-shot receives.
//!
//! Both are raw heap allocations reached only through raw pointers, as `iocp/overlapped.rs` does
//! for `OVERLAPPED`s: the kernel may write into any buffer it holds at any time, so no Rust
//! reference to that memory may exist except to one buffer the kernel has handed back and not
//! been given again (the slice lent to a completion callback).

use std::alloc::{Layout, alloc_zeroed, dealloc, handle_alloc_error};
use std::io;
use std::mem::ManuallyDrop;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::IoUring;

/// The kernel's ring entries are page-aligned.
const PAGE: usize = 4096;

/// One descriptor of the ring, as the kernel reads it (`struct io_uring_buf`). The first
/// entry's `resv` is the ring's tail (`struct io_uring_buf_ring`).
#[repr(C)]
struct Entry {
    addr: u64,
    len: u32,
    bid: u16,
    resv: u16,
}

const _: () = assert!(size_of::<Entry>() == 16);
/// Where the tail lives: over the first entry's `resv` field.
const TAIL_OFFSET: usize = 14;

/// Buffers the kernel writes into: `count` buffers of `size` bytes in one zeroed, page-aligned
/// heap block, after `header` bytes (a multiple of the page size) for whatever goes with them.
///
/// The block is reached only through raw pointers; [`Buffers::filled`] lends one buffer that the
/// kernel is not writing.
pub(super) struct Buffers {
    base: NonNull<u8>,
    layout: Layout,
    header: usize,
    count: usize,
    size: usize,
}

impl Buffers {
    pub(super) fn new(header: usize, count: usize, size: usize) -> io::Result<Buffers> {
        debug_assert_eq!(header % PAGE, 0);
        let too_big = || io::Error::new(io::ErrorKind::InvalidInput, "receive buffers too large");
        let total = count
            .checked_mul(size)
            .and_then(|n| n.checked_add(header))
            .ok_or_else(too_big)?
            .max(1);
        let layout = Layout::from_size_align(total, PAGE).map_err(|_| too_big())?;
        // SAFETY: the layout's size is not zero.
        let base = unsafe { alloc_zeroed(layout) };
        let base = NonNull::new(base).unwrap_or_else(|| handle_alloc_error(layout));
        Ok(Buffers {
            base,
            layout,
            header,
            count,
            size,
        })
    }

    /// The first byte of the block (the header).
    fn base(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    /// The first byte of buffer `i`: where the kernel writes.
    pub(super) fn ptr(&self, i: usize) -> *mut u8 {
        assert!(i < self.count, "buffer index out of range");
        // Inside the block: `header + i * size < header + count * size`.
        self.base().wrapping_add(self.header + i * self.size)
    }

    /// The size of one buffer.
    pub(super) fn size(&self) -> usize {
        self.size
    }

    /// The first `len` bytes of buffer `i`, as the kernel wrote them.
    ///
    /// # Safety
    ///
    /// The kernel must not be writing into buffer `i`: no operation that may write into it is
    /// outstanding (for a provided buffer: the kernel handed it back with a completion, and it
    /// has not been given back since; [`BufRing::push`] takes `&mut self`, so it cannot be while
    /// the slice lives).
    pub(super) unsafe fn filled(&self, i: usize, len: usize) -> &[u8] {
        assert!(len <= self.size, "longer than a buffer");
        // SAFETY: `len` bytes inside buffer `i` (`ptr` checks `i`), inside the block, which lives
        // as long as `self`; nothing writes them while the slice lives (the caller's promise).
        unsafe { std::slice::from_raw_parts(self.ptr(i), len) }
    }

    /// Keeps the memory alive for ever: the kernel may still write into it.
    pub(super) fn leak(self) {
        let _ = ManuallyDrop::new(self);
    }
}

impl Drop for Buffers {
    fn drop(&mut self) {
        // SAFETY: `base` was allocated in `new` with `layout` and is freed only here, once. The
        // owner drops the buffers only when the kernel can no longer write into them (`Ring`:
        // after its io_uring; one-shot buffers: with no receive outstanding), else it leaks them.
        unsafe { dealloc(self.base.as_ptr(), self.layout) };
    }
}

/// A provided-buffer ring: `count` descriptors (the ring the kernel picks buffers from), then,
/// from the next page, the `count` buffers they describe, in one [`Buffers`] block.
///
/// The memory must outlive every receive that may pick a buffer: a [`Ring`] owns it and frees
/// it only after its io_uring is gone, or leaks it.
pub(super) struct BufRing {
    mem: Buffers,
    count: u16,
    /// Our copy of the tail; published to the kernel by [`BufRing::publish`].
    tail: u16,
    pub(super) group: u16,
}

impl BufRing {
    /// `count` (a power of two) buffers of `size` bytes, every one of them in the ring (once
    /// [`BufRing::publish`] is called).
    pub(super) fn new(group: u16, count: u16, size: u32) -> io::Result<BufRing> {
        assert!(
            count.is_power_of_two(),
            "buffer count must be a power of two"
        );
        let header = (usize::from(count) * size_of::<Entry>()).next_multiple_of(PAGE);
        let mut ring = BufRing {
            mem: Buffers::new(header, usize::from(count), size as usize)?,
            count,
            tail: 0,
            group,
        };
        for bid in 0..count {
            ring.push(bid);
        }
        Ok(ring)
    }

    /// The address of the descriptors, for `IORING_REGISTER_PBUF_RING`.
    fn entries(&self) -> *mut Entry {
        self.mem.base().cast()
    }

    /// The buffers (buffer `bid` is the one descriptor `bid` names).
    pub(super) fn buffers(&self) -> &Buffers {
        &self.mem
    }

    /// Gives buffer `bid` back to the kernel (visible after [`BufRing::publish`]).
    pub(super) fn push(&mut self, bid: u16) {
        let addr = self.mem.ptr(usize::from(bid)) as u64;
        let len = self.mem.size() as u32;
        let index = usize::from(self.tail & (self.count - 1));
        let entry = self.entries().wrapping_add(index);
        // SAFETY:
        // - `index < count`, so the entry is inside the descriptor pages of the block;
        // - the kernel reads no entry between the published tail and ours, so nothing else
        //   touches the fields written here; they are written through the raw pointer, field by
        //   field, leaving `resv` alone (the first entry's is the tail, which the kernel reads).
        unsafe {
            ptr::addr_of_mut!((*entry).addr).write(addr);
            ptr::addr_of_mut!((*entry).len).write(len);
            ptr::addr_of_mut!((*entry).bid).write(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Publishes the buffers pushed since the last call.
    pub(super) fn publish(&self) {
        let tail = self.mem.base().wrapping_add(TAIL_OFFSET).cast::<u16>();
        // SAFETY: the tail is the first entry's `resv` field, inside the block and aligned for a
        // `u16` (offset 14 of a page-aligned block); the kernel only reads it, atomically, and
        // the release store orders the entry writes before it.
        unsafe { AtomicU16::from_ptr(tail) }.store(self.tail, Ordering::Release);
    }

    /// Keeps the memory alive for ever: a receive may still pick a buffer.
    fn leak(self) {
        self.mem.leak();
    }
}

/// An io_uring and the buffer ring registered with it, which must outlive the kernel's use of
/// it: dropping a `Ring` drops the io_uring first, then frees the buffers, or leaks them if
/// receives may still be outstanding ([`Ring::leak_buffers`]).
pub(super) struct Ring {
    /// `None` only while being dropped.
    uring: Option<IoUring>,
    bufs: Option<BufRing>,
    leak: bool,
}

impl Ring {
    pub(super) fn new(uring: IoUring) -> Ring {
        Ring {
            uring: Some(uring),
            bufs: None,
            leak: false,
        }
    }

    /// Registers `count` buffers of `size` bytes as group `group`.
    pub(super) fn register_buffers(&mut self, group: u16, count: u16, size: u32) -> io::Result<()> {
        let bufs = BufRing::new(group, count, size)?;
        // SAFETY: the descriptors are a live page-aligned block of `count` entries. This `Ring`
        // owns it from now on, and frees it only after the io_uring is dropped (`Drop`), or
        // never (`leak_buffers`).
        unsafe {
            self.uring().submitter().register_buf_ring_with_flags(
                bufs.entries() as u64,
                count,
                group,
                0,
            )?;
        }
        bufs.publish();
        self.bufs = Some(bufs);
        Ok(())
    }

    pub(super) fn uring(&self) -> &IoUring {
        self.uring
            .as_ref()
            .expect("the io_uring lives until the Ring is dropped")
    }

    pub(super) fn uring_mut(&mut self) -> &mut IoUring {
        self.uring
            .as_mut()
            .expect("the io_uring lives until the Ring is dropped")
    }

    pub(super) fn bufs(&self) -> Option<&BufRing> {
        self.bufs.as_ref()
    }

    /// The io_uring and the buffer ring, borrowed apart.
    pub(super) fn parts(&mut self) -> (&mut IoUring, Option<&mut BufRing>) {
        let uring = self
            .uring
            .as_mut()
            .expect("the io_uring lives until dropped");
        (uring, self.bufs.as_mut())
    }

    /// Never frees the buffers: a receive may pick one after the ring is dropped.
    pub(super) fn leak_buffers(&mut self) {
        self.leak = true;
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // The kernel lets go of the buffer ring with the io_uring.
        drop(self.uring.take());
        if let Some(bufs) = self.bufs.take() {
            if self.leak {
                bufs.leak();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The pure-memory parts, without a kernel (these run under Miri).

    use super::*;

    /// The descriptors `(addr, len, bid)` and the published tail, as the kernel would read them.
    fn kernel_view(ring: &BufRing) -> (Vec<(u64, u32, u16)>, u16) {
        let e = ring.entries();
        // SAFETY: every entry and the tail are inside the block; nothing writes them meanwhile
        // (this test is the only user).
        unsafe {
            let entries = (0..usize::from(ring.count))
                .map(|i| {
                    let e = e.add(i);
                    (
                        ptr::addr_of!((*e).addr).read(),
                        ptr::addr_of!((*e).len).read(),
                        ptr::addr_of!((*e).bid).read(),
                    )
                })
                .collect();
            let tail = AtomicU16::from_ptr(ring.mem.base().add(TAIL_OFFSET).cast());
            (entries, tail.load(Ordering::Acquire))
        }
    }

    #[test]
    fn every_buffer_starts_in_the_ring() {
        let ring = BufRing::new(3, 8, 100).unwrap();
        assert_eq!(ring.tail, 8);
        assert_eq!(kernel_view(&ring).1, 0, "nothing published yet");
        ring.publish();
        let (entries, tail) = kernel_view(&ring);
        assert_eq!(tail, 8);
        for (i, &(addr, len, bid)) in entries.iter().enumerate() {
            assert_eq!(usize::from(bid), i);
            assert_eq!(len, 100);
            assert_eq!(addr, ring.mem.ptr(i) as u64);
        }
        assert_eq!(ring.mem.base() as usize % PAGE, 0, "page-aligned");
        assert_eq!(entries[0].0 as usize % PAGE, 0, "buffers start on a page");
    }

    #[test]
    fn data_reads_what_the_kernel_wrote_and_push_recycles() {
        let mut ring = BufRing::new(0, 4, 64).unwrap();
        ring.publish();
        // The kernel picks buffer 2 and writes into it, through its address.
        let (entries, _) = kernel_view(&ring);
        let (addr, _, bid) = entries[2];
        let kernel = ring.mem.ptr(usize::from(bid));
        assert_eq!(kernel as u64, addr);
        // SAFETY:
        // - the "kernel" writes 5 bytes inside buffer 2, which it holds;
        // - then it hands the buffer back, and it is not pushed while the slice lives.
        let data = unsafe {
            ptr::copy_nonoverlapping(b"abcde".as_ptr(), kernel, 5);
            ring.buffers().filled(usize::from(bid), 5)
        };
        assert_eq!(data, b"abcde");
        // Given back: it goes at the tail, wrapping around the ring, and the tail that overlays
        // entry 0's `resv` is left alone by `push`.
        ring.push(bid);
        ring.publish();
        let (entries, tail) = kernel_view(&ring);
        assert_eq!(tail, 5);
        assert_eq!(entries[0], (addr, 64, 2));
    }

    #[test]
    fn the_tail_wraps_at_u16() {
        let mut ring = BufRing::new(0, 2, 8).unwrap();
        for _ in 0..70_000u32 {
            ring.push(1);
        }
        ring.publish();
        assert_eq!(kernel_view(&ring).1, (2 + 70_000u32) as u16);
    }

    #[test]
    fn one_shot_buffers_are_apart() {
        let bufs = Buffers::new(0, 3, 10).unwrap();
        assert_eq!(bufs.ptr(1) as usize - bufs.ptr(0) as usize, 10);
        // SAFETY: the "kernel" writes inside buffer 1, then is done with it; nothing writes
        // buffer 2.
        let (data, untouched) = unsafe {
            ptr::copy_nonoverlapping(b"hello".as_ptr(), bufs.ptr(1), 5);
            (bufs.filled(1, 5), bufs.filled(2, 10))
        };
        assert_eq!(data, b"hello");
        assert_eq!(untouched, [0; 10], "zeroed, and buffer 1 did not spill");
    }
}
