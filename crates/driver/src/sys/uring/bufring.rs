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

/// The descriptors and the buffers of a provided-buffer ring, in one page-aligned allocation:
/// `count` descriptors, then (from the next page) `count` buffers of `size` bytes.
///
/// The memory must outlive every receive that may pick a buffer: a [`Ring`] owns it and frees
/// it only after its io_uring is gone, or leaks it.
pub(super) struct BufRing {
    base: NonNull<u8>,
    layout: Layout,
    /// Offset of the first buffer from `base`.
    bufs: usize,
    count: u16,
    size: u32,
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
        let too_big = || io::Error::new(io::ErrorKind::InvalidInput, "buffer ring too large");
        let bufs = (usize::from(count) * size_of::<Entry>()).next_multiple_of(PAGE);
        let total = usize::from(count)
            .checked_mul(size as usize)
            .and_then(|n| n.checked_add(bufs))
            .ok_or_else(too_big)?;
        let layout = Layout::from_size_align(total, PAGE).map_err(|_| too_big())?;
        // SAFETY: the layout's size is not zero (at least one page of descriptors).
        let base = unsafe { alloc_zeroed(layout) };
        let base = NonNull::new(base).unwrap_or_else(|| handle_alloc_error(layout));
        let mut ring = BufRing {
            base,
            layout,
            bufs,
            count,
            size,
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
        self.base.as_ptr().cast()
    }

    /// The first byte of buffer `bid`.
    fn buffer(&self, bid: u16) -> *mut u8 {
        assert!(bid < self.count, "buffer id out of range");
        // The offset is inside the allocation: `bufs + bid * size < bufs + count * size`.
        self.base
            .as_ptr()
            .wrapping_add(self.bufs + usize::from(bid) * self.size as usize)
    }

    /// The `len` bytes the kernel received into buffer `bid`.
    ///
    /// # Safety
    ///
    /// The kernel must have handed buffer `bid` back (a completion named it) and the buffer must
    /// not have been given back to it since ([`BufRing::push`] takes `&mut self`, so it cannot be
    /// while the slice lives); `len` is at most the buffer's size.
    pub(super) unsafe fn data(&self, bid: u16, len: usize) -> &[u8] {
        assert!(len <= self.size as usize, "longer than a buffer");
        // SAFETY: the buffer is inside the allocation (`buffer` checks `bid`) and `len` fits in
        // it; the kernel does not write into it until it is pushed again (the caller's promise),
        // which needs `&mut self`, so nothing writes it while the slice lives.
        unsafe { std::slice::from_raw_parts(self.buffer(bid), len) }
    }

    /// Gives buffer `bid` back to the kernel (visible after [`BufRing::publish`]).
    pub(super) fn push(&mut self, bid: u16) {
        let addr = self.buffer(bid) as u64;
        let index = usize::from(self.tail & (self.count - 1));
        let entry = self.entries().wrapping_add(index);
        // SAFETY:
        // - `index < count`, so the entry is inside the descriptor pages of the allocation;
        // - the kernel reads no entry between the published tail and ours, so nothing else
        //   touches the fields written here; they are written through the raw pointer, field by
        //   field, leaving `resv` alone (the first entry's is the tail, which the kernel reads).
        unsafe {
            ptr::addr_of_mut!((*entry).addr).write(addr);
            ptr::addr_of_mut!((*entry).len).write(self.size);
            ptr::addr_of_mut!((*entry).bid).write(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Publishes the buffers pushed since the last call.
    pub(super) fn publish(&self) {
        let tail = self.base.as_ptr().wrapping_add(TAIL_OFFSET).cast::<u16>();
        // SAFETY: the tail is the first entry's `resv` field, inside the allocation and aligned
        // for a `u16` (offset 14 of a page-aligned block); the kernel only reads it, atomically,
        // and the release store orders the entry writes before it.
        unsafe { AtomicU16::from_ptr(tail) }.store(self.tail, Ordering::Release);
    }

    /// Keeps the memory alive for ever: a receive may still pick a buffer.
    fn leak(self) {
        std::mem::forget(self);
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: `base` was allocated in `new` with `layout` and is freed only here, once. A
        // `BufRing` registered with a ring is dropped only by its `Ring`, after the io_uring.
        unsafe { dealloc(self.base.as_ptr(), self.layout) };
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

/// The buffer of a one-shot receive: a heap block the kernel writes into while the receive is
/// outstanding, reached only through its raw pointer meanwhile.
pub(super) struct RawBuf {
    ptr: NonNull<u8>,
    len: usize,
}

impl RawBuf {
    pub(super) fn new(len: usize) -> RawBuf {
        let raw = Box::into_raw(vec![0u8; len].into_boxed_slice());
        RawBuf {
            ptr: NonNull::new(raw.cast::<u8>()).expect("Box is never null"),
            len,
        }
    }

    /// Where the kernel writes.
    pub(super) fn as_mut_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The first `n` bytes the kernel received.
    ///
    /// # Safety
    ///
    /// No receive into this buffer may be outstanding.
    pub(super) unsafe fn filled(&self, n: usize) -> &[u8] {
        assert!(n <= self.len, "more than the buffer holds");
        // SAFETY: `n` bytes inside the block, which nothing writes while no receive is
        // outstanding (the caller's promise) and which lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), n) }
    }

    /// Keeps the memory alive for ever: a receive into it may be outstanding.
    pub(super) fn leak(self) {
        let _ = ManuallyDrop::new(self);
    }
}

impl Drop for RawBuf {
    fn drop(&mut self) {
        let slice = ptr::slice_from_raw_parts_mut(self.ptr.as_ptr(), self.len);
        // SAFETY: `ptr` and `len` come from the `Box<[u8]>` made in `new`, freed only here, once;
        // the owner drops a buffer only when no receive into it is outstanding (else `leak`).
        drop(unsafe { Box::from_raw(slice) });
    }
}

#[cfg(test)]
mod tests {
    //! The pure-memory parts, without a kernel (these run under Miri).

    use super::*;

    fn entry(ring: &BufRing, index: usize) -> (u64, u32, u16) {
        let e = ring.entries().wrapping_add(index);
        // SAFETY: `index < count`; nothing else touches the memory in this test.
        unsafe {
            (
                ptr::addr_of!((*e).addr).read(),
                ptr::addr_of!((*e).len).read(),
                ptr::addr_of!((*e).bid).read(),
            )
        }
    }

    fn published_tail(ring: &BufRing) -> u16 {
        // SAFETY: the tail is inside the allocation, aligned; nothing writes it concurrently.
        unsafe { AtomicU16::from_ptr(ring.base.as_ptr().add(TAIL_OFFSET).cast()) }
            .load(Ordering::Acquire)
    }

    #[test]
    fn every_buffer_starts_in_the_ring() {
        let ring = BufRing::new(3, 8, 100).unwrap();
        assert_eq!(ring.tail, 8);
        assert_eq!(published_tail(&ring), 0, "nothing published yet");
        ring.publish();
        assert_eq!(published_tail(&ring), 8);
        for i in 0..8u16 {
            let (addr, len, bid) = entry(&ring, usize::from(i));
            assert_eq!(bid, i);
            assert_eq!(len, 100);
            assert_eq!(addr, ring.buffer(i) as u64);
        }
        assert_eq!(ring.base.as_ptr() as usize % PAGE, 0, "page-aligned");
        assert_eq!(ring.bufs % PAGE, 0, "buffers start on a page");
    }

    #[test]
    fn data_reads_what_the_kernel_wrote_and_push_recycles() {
        let mut ring = BufRing::new(0, 4, 64).unwrap();
        ring.publish();
        // The kernel picks buffer 2 and writes into it, through its address.
        let (addr, _, bid) = entry(&ring, 2);
        let kernel = addr as usize as *mut u8;
        for i in 0..5 {
            // SAFETY: inside buffer 2, which the "kernel" owns at this point.
            unsafe { kernel.add(i).write(b'a' + i as u8) };
        }
        // SAFETY: the "kernel" handed buffer `bid` back and it was not pushed again.
        assert_eq!(unsafe { ring.data(bid, 5) }, b"abcde");
        // Given back: it goes at the tail, wrapping around the ring.
        ring.push(bid);
        ring.publish();
        assert_eq!(published_tail(&ring), 5);
        assert_eq!(entry(&ring, 0), (addr, 64, 2));
        // The tail overlays entry 0's `resv`, which `push` left alone.
        assert_eq!(published_tail(&ring), 5);
    }

    #[test]
    fn the_tail_wraps_at_u16() {
        let mut ring = BufRing::new(0, 2, 8).unwrap();
        for _ in 0..70_000u32 {
            ring.push(1);
        }
        ring.publish();
        assert_eq!(published_tail(&ring), (2 + 70_000u32) as u16);
    }

    #[test]
    fn raw_buffers_hand_back_what_was_written() {
        let buf = RawBuf::new(16);
        assert_eq!(buf.len(), 16);
        // SAFETY: inside the block; no receive is outstanding.
        unsafe { ptr::copy_nonoverlapping(b"hello".as_ptr(), buf.as_mut_ptr(), 5) };
        // SAFETY: no receive is outstanding.
        assert_eq!(unsafe { buf.filled(5) }, b"hello");
    }
}
