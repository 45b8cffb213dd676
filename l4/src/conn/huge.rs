//! Fixed-size arrays that the kernel may back with 2 MiB pages.
//!
//! The connection table's slab and index are read at random, one cache line per packet: with 4 KiB pages a
//! table of a million sessions spans tens of thousands of pages, far more than the TLB holds, so most lookups
//! would also walk the page tables. An array of at least 2 MiB is allocated 2 MiB-aligned (its size rounded up
//! to whole 2 MiB pages) and marked with `madvise(MADV_HUGEPAGE)` before it is first written, so with
//! transparent huge pages in `madvise` or `always` mode its memory comes in 2 MiB pages. The advice is a hint:
//! without huge pages the array works the same in ordinary pages. Smaller arrays are ordinary allocations.

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// Size and alignment of a huge page.
const HUGE_PAGE: usize = 2 << 20;

/// A boxed slice of `T`, allocated once, in huge pages when it is large enough.
pub struct HugeSlice<T: Copy> {
    ptr: NonNull<T>,
    len: usize,
    layout: Layout,
}

// SAFETY: a HugeSlice owns its elements like a Box<[T]> does.
unsafe impl<T: Copy + Send> Send for HugeSlice<T> {}
// SAFETY: as above; shared access only hands out `&[T]`.
unsafe impl<T: Copy + Sync> Sync for HugeSlice<T> {}

impl<T: Copy> HugeSlice<T> {
    /// `len` copies of `value`.
    pub fn new(value: T, len: usize) -> Self {
        let bytes = std::mem::size_of::<T>().checked_mul(len).expect("array size overflows");
        let huge = bytes >= HUGE_PAGE;
        let layout = if huge {
            Layout::from_size_align(bytes.next_multiple_of(HUGE_PAGE), HUGE_PAGE)
        } else {
            Layout::from_size_align(bytes.max(1), std::mem::align_of::<T>())
        }
        .expect("array layout");
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc(layout) };
        let Some(ptr) = NonNull::new(raw.cast::<T>()) else {
            handle_alloc_error(layout)
        };
        if huge {
            // SAFETY: advice on memory this allocation owns (2 MiB-aligned, `layout.size()` bytes); it does not
            // change the contents' meaning. A failure (no THP support) leaves ordinary pages: ignored.
            unsafe { libc::madvise(raw.cast(), layout.size(), libc::MADV_HUGEPAGE) };
        }
        for i in 0..len {
            // SAFETY: `i < len`, inside the allocation, properly aligned for `T`.
            unsafe { ptr.as_ptr().add(i).write(value) };
        }
        HugeSlice { ptr, len, layout }
    }

    /// Bytes reserved (the elements, rounded up to whole huge pages when huge).
    pub fn reserved_bytes(&self) -> usize {
        self.layout.size()
    }
}

impl<T: Copy> Deref for HugeSlice<T> {
    type Target = [T];

    #[inline]
    fn deref(&self) -> &[T] {
        // SAFETY: `len` initialized elements start at `ptr`, owned by `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Copy> DerefMut for HugeSlice<T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Copy> Drop for HugeSlice<T> {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; `T: Copy` needs no drop.
        unsafe { dealloc(self.ptr.as_ptr().cast(), self.layout) };
    }
}

impl<T: Copy + std::fmt::Debug> std::fmt::Debug for HugeSlice<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HugeSlice")
            .field("len", &self.len)
            .field("reserved_bytes", &self.layout.size())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(align(64))]
    #[derive(Debug, Clone, Copy, PartialEq)]
    struct Line([u64; 8]);

    #[test]
    fn small_arrays_are_plain_and_aligned() {
        let mut a = HugeSlice::new(Line([7; 8]), 10);
        assert_eq!(a.len(), 10);
        assert!(a.iter().all(|l| *l == Line([7; 8])));
        assert_eq!(a.as_ptr() as usize % 64, 0);
        assert_eq!(a.reserved_bytes(), 640);
        a[3].0[0] = 1;
        assert_eq!(a[3].0[0], 1);
        assert_eq!(a[2].0[0], 7);
        let empty = HugeSlice::new(0u32, 0);
        assert!(empty.is_empty());
    }

    #[test]
    fn large_arrays_are_huge_page_aligned_and_rounded_up() {
        let n = (3 << 20) / 64 + 1; // just over 3 MiB
        let mut a = HugeSlice::new(Line([1; 8]), n);
        assert_eq!(a.as_ptr() as usize % HUGE_PAGE, 0);
        assert_eq!(a.reserved_bytes(), 4 << 20);
        assert!(a.iter().all(|l| l.0 == [1; 8]));
        a[n - 1].0[7] = 9;
        assert_eq!(a[n - 1].0[7], 9);
    }
}
