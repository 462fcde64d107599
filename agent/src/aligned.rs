//! The process allocator for the agent's binaries: the system allocator, with allocations
//! aligned beyond what `malloc` guarantees taken from `malloc` too (with room to align them)
//! instead of from `posix_memalign`.
//!
//! Why: tract aligns every tensor to the CPU's vector size (32 or 64 bytes), so a small
//! model's run makes several such allocations per request. glibc serves `posix_memalign`
//! past its per-thread cache, splitting a larger chunk and freeing the pieces each time:
//! about 530 instructions an allocation against tens for a cached `malloc`, 4,000 a request
//! on the digits fixture (docs/benchmarks.md). The price is at most `align` bytes more per
//! over-aligned allocation.

use std::alloc::{GlobalAlloc, Layout, System};

/// What `malloc` aligns every allocation to on 64-bit glibc and musl; anything asking for more
/// goes the over-aligned way. (Where `malloc` guarantees less, `System` still honours the
/// blocks' 16-byte layouts, through `posix_memalign`, so the arithmetic below holds anyway.)
const MALLOC_ALIGN: usize = 16;

/// The system allocator, with over-aligned allocations carved from a larger `malloc`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Allocator;

/// The block an over-aligned `layout` is carved from: `align` bytes more, at `malloc`'s
/// alignment, so an aligned address with a word before it always fits (the block starts at a
/// multiple of 16, and the first multiple of `align` at least 16 bytes in is at most `align`
/// bytes in).
fn outer(layout: Layout) -> Option<Layout> {
    let size = layout.size().checked_add(layout.align())?;
    Layout::from_size_align(size, MALLOC_ALIGN).ok()
}

fn over_aligned(layout: Layout) -> bool {
    layout.align() > MALLOC_ALIGN
}

// SAFETY: every block comes from `System` with the layout it is returned with: plain
// layouts are passed through; an over-aligned one is carved from the `outer` block, whose
// start is kept in the word just before the address handed out and read back on free.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !over_aligned(layout) {
            // SAFETY: the caller's contract, passed on.
            return unsafe { System.alloc(layout) };
        }
        let Some(outer) = outer(layout) else {
            return std::ptr::null_mut();
        };
        // SAFETY: `outer` has a non-zero size (at least `align`).
        let block = unsafe { System.alloc(outer) };
        if block.is_null() {
            return block;
        }
        let start = block as usize;
        let aligned = (start + MALLOC_ALIGN).next_multiple_of(layout.align());
        // SAFETY: `aligned - start` is between 16 and `align` bytes, so the address and the
        // word before it lie in the block and `size` bytes from it too; the word is 8-aligned
        // (`aligned` is a multiple of at least 32).
        unsafe {
            let user = block.add(aligned - start);
            user.cast::<usize>().sub(1).write(start);
            user
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !over_aligned(layout) {
            // SAFETY: the caller's contract, passed on.
            return unsafe { System.dealloc(ptr, layout) };
        }
        let Some(outer) = outer(layout) else {
            return;
        };
        // SAFETY: `ptr` came from `alloc` with this layout, which wrote the block's start
        // just before it.
        unsafe {
            let start = ptr.cast::<usize>().sub(1).read();
            System.dealloc(start as *mut u8, outer);
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !over_aligned(layout) {
            // SAFETY: the caller's contract, passed on.
            return unsafe { System.alloc_zeroed(layout) };
        }
        // SAFETY: as `alloc`; the `size` bytes handed out are then zeroed.
        unsafe {
            let user = self.alloc(layout);
            if !user.is_null() {
                user.write_bytes(0, layout.size());
            }
            user
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !over_aligned(layout) {
            // SAFETY: the caller's contract, passed on.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: a new block of the same alignment, the bytes both hold copied, the old one
        // freed with its own layout (the trait's default, spelled out for the layouts used).
        unsafe {
            let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
            let moved = self.alloc(new_layout);
            if !moved.is_null() {
                std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            moved
        }
    }
}

#[cfg(test)]
#[allow(unsafe_code)]
mod tests {
    use super::*;

    #[test]
    fn every_alignment_is_honoured_and_blocks_hold_their_bytes() {
        let allocator = Allocator;
        for align in [1, 8, 16, 32, 64, 128, 4096] {
            for size in [1, 7, 16, 63, 64, 65, 1000, 1 << 20] {
                let layout = Layout::from_size_align(size, align).unwrap_or_else(|e| panic!("{e}"));
                // SAFETY: non-zero sizes; every block is freed with the layout it came with.
                unsafe {
                    let zeroed = allocator.alloc_zeroed(layout);
                    assert!(!zeroed.is_null());
                    assert_eq!(zeroed as usize % align, 0, "align {align}, size {size}");
                    assert!(
                        std::slice::from_raw_parts(zeroed, size)
                            .iter()
                            .all(|b| *b == 0)
                    );
                    let block = allocator.alloc(layout);
                    assert_eq!(block as usize % align, 0, "align {align}, size {size}");
                    for i in 0..size {
                        block.add(i).write(i as u8);
                    }
                    let grown = allocator.realloc(block, layout, size * 2);
                    assert_eq!(grown as usize % align, 0, "align {align}, size {size}");
                    for i in 0..size {
                        assert_eq!(grown.add(i).read(), i as u8);
                    }
                    let grown_layout = Layout::from_size_align(size * 2, align).unwrap_or(layout);
                    let shrunk = allocator.realloc(grown, grown_layout, size.div_ceil(2));
                    assert_eq!(shrunk as usize % align, 0, "align {align}, size {size}");
                    for i in 0..size.div_ceil(2) {
                        assert_eq!(shrunk.add(i).read(), i as u8);
                    }
                    let shrunk_layout = Layout::from_size_align(size.div_ceil(2), align)
                        .unwrap_or_else(|e| panic!("{e}"));
                    allocator.dealloc(shrunk, shrunk_layout);
                    allocator.dealloc(zeroed, layout);
                }
            }
        }
    }

    #[test]
    fn a_size_that_cannot_be_padded_is_refused_not_wrapped() {
        let layout =
            Layout::from_size_align(usize::MAX / 2 - 63, 64).unwrap_or_else(|e| panic!("{e}"));
        // SAFETY: a non-zero size; the null answer is not freed.
        let block = unsafe { Allocator.alloc(layout) };
        assert!(block.is_null());
    }
}
