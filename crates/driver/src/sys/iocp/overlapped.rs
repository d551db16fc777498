//! Memory the kernel writes while an operation is pending: `OVERLAPPED`s (and the address buffers
//! of `AcceptEx`), allocated once, at stable addresses, and never freed while pending.
//!
//! A [`Table`] is a heap array that is reached only through raw pointers: the kernel writes into
//! an entry between the call that starts an operation and the completion packet, so no Rust
//! reference to a pending entry may exist. A completion packet hands back the entry's address,
//! and [`Table::index_of`] turns it back into an index.

use std::mem::{align_of, size_of};
use std::ptr::{self, NonNull};

use windows_sys::Win32::System::IO::OVERLAPPED;

/// What a [`Table`] may hold: `#[repr(C)]` plain old data whose first field is the `OVERLAPPED`,
/// so that a pointer to the entry is a pointer to its `OVERLAPPED`.
///
/// # Safety
///
/// The type must be `#[repr(C)]` with an `OVERLAPPED` as its first field, and all zeroes must be a
/// valid value of it.
pub(super) unsafe trait Entry: Sized {}

// SAFETY: `OVERLAPPED` is `#[repr(C)]` plain old data (integers, a union of integers and a
// pointer, a handle), and trivially starts with itself.
unsafe impl Entry for OVERLAPPED {}

/// A fixed-size heap array of `T`, at a stable address until dropped, never borrowed.
pub(super) struct Table<T: Entry> {
    ptr: NonNull<T>,
    len: usize,
}

impl<T: Entry> Table<T> {
    /// `len` zeroed entries.
    pub(super) fn new(len: usize) -> Table<T> {
        let entries: Box<[T]> = (0..len)
            // SAFETY: `T: Entry` promises that all zeroes is a valid `T`.
            .map(|_| unsafe { std::mem::zeroed::<T>() })
            .collect();
        let ptr = NonNull::new(Box::into_raw(entries).cast::<T>()).expect("Box is never null");
        Table { ptr, len }
    }

    /// The entry at `index`, as the pointer handed to the kernel.
    ///
    /// # Panics
    ///
    /// If `index` is out of bounds.
    pub(super) fn get(&self, index: usize) -> *mut T {
        assert!(index < self.len, "overlapped table index out of bounds");
        // SAFETY: `index < len`, so the offset stays inside the allocation.
        unsafe { self.ptr.as_ptr().add(index) }
    }

    /// The `OVERLAPPED` of entry `index`.
    pub(super) fn overlapped(&self, index: usize) -> *mut OVERLAPPED {
        self.get(index).cast()
    }

    /// Zeroes entry `index` before it is handed to the kernel for a new operation (an `OVERLAPPED`
    /// must start with zero `Internal`, `Offset` and `hEvent` fields).
    ///
    /// # Safety
    ///
    /// No operation may be pending on the entry.
    pub(super) unsafe fn reset(&self, index: usize) {
        // SAFETY: the entry is in bounds (`get` checks), no operation is pending on it (the
        // caller's promise) so nothing else writes it, and all zeroes is a valid `T`.
        unsafe { ptr::write_bytes(self.get(index), 0, 1) }
    }

    /// The index of the entry whose `OVERLAPPED` is at `overlapped`, if it belongs to this table.
    pub(super) fn index_of(&self, overlapped: *const OVERLAPPED) -> Option<usize> {
        let base = self.ptr.as_ptr() as usize;
        let offset = (overlapped as usize).checked_sub(base)?;
        let index = offset / size_of::<T>();
        (offset % size_of::<T>() == 0 && index < self.len).then_some(index)
    }

    /// Gives the memory up for ever: the kernel may still write into a pending entry, so it must
    /// never be freed (a port dropped while operations are pending).
    pub(super) fn leak(self) {
        std::mem::forget(self);
    }
}

impl<T: Entry> Drop for Table<T> {
    fn drop(&mut self) {
        let slice = ptr::slice_from_raw_parts_mut(self.ptr.as_ptr(), self.len);
        // SAFETY: `ptr` and `len` come from the `Box<[T]>` made in `new`, freed only here, once.
        // The owner drops a table only when none of its entries is pending (otherwise it calls
        // `leak`).
        drop(unsafe { Box::from_raw(slice) });
    }
}

const _: () = assert!(align_of::<OVERLAPPED>() <= 8);

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C)]
    struct WithBuffer {
        overlapped: OVERLAPPED,
        buf: [u8; 20],
    }

    // SAFETY: `#[repr(C)]`, `OVERLAPPED` first, plain old data.
    unsafe impl Entry for WithBuffer {}

    #[test]
    fn index_of_finds_entries_and_only_them() {
        let table = Table::<WithBuffer>::new(4);
        for i in 0..4 {
            assert_eq!(table.index_of(table.overlapped(i)), Some(i));
        }
        let inside = (table.overlapped(1) as usize + 8) as *const OVERLAPPED;
        assert_eq!(table.index_of(inside), None);
        let other = Table::<OVERLAPPED>::new(1);
        assert_eq!(table.index_of(other.overlapped(0)), None);
        assert_eq!(table.index_of(ptr::null()), None);
    }
}
