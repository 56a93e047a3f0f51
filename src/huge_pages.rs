//! A global allocator for the training step's large buffers: transparent huge pages,
//! and freed large blocks kept for reuse instead of handed back to the kernel.
//!
//! Why: glibc serves every allocation above 32 MiB (its largest mmap threshold) with a
//! fresh `mmap` and returns it with `munmap` on free. candle allocates every op's output
//! and every gradient afresh, so the training step maps and unmaps such buffers many
//! times per step (at full size pool1's input gradient is 37 MB, and candle's gradient
//! accumulation adds two more of the same size). Each page of each of them cost a fault
//! and a kernel zeroing on first touch: measured, ~37 % of the full-size step's CPU time
//! in the kernel with 4 KiB pages, and still 15 % in `clear_page` with huge pages alone.
//!
//! So blocks of at least [`HugePages::MIN_BYTES`] are mapped here, 2 MiB-aligned and
//! advised `MADV_HUGEPAGE` (one fault maps 2 MiB), and on free they go to a small cache
//! keyed by their size rounded up to 2 MiB. The next allocation of that size takes the
//! block back as it is: no fault, no zeroing (`alloc_zeroed` clears it in user space).
//! A step allocates the same shapes every time, so after the first step nearly every
//! large block is a reused one. What the cache holds while unused is bounded by
//! [`HugePages::CACHE_LIMIT`] and [`SLOTS`] blocks; past them the oldest blocks are
//! unmapped. The same idea as PyTorch's caching allocator for CUDA memory.
//!
//! The binaries that train opt in with
//! `#[global_allocator] static A: pipeline::huge_pages::HugePages = HugePages;`.
//! Everywhere but Linux it is the system allocator unchanged. Where transparent huge
//! pages are off (`/sys/kernel/mm/transparent_hugepage/enabled` = `never`) the kernel
//! ignores the advice and the cache still saves the faults.

use std::alloc::{GlobalAlloc, Layout, System};

/// The system allocator for small blocks; large ones mapped, advised and cached here.
pub struct HugePages;

impl HugePages {
    /// Smallest block handled here: below a few huge pages glibc serves most blocks from
    /// its heap, where they are reused without faults anyway.
    pub const MIN_BYTES: usize = 4 << 20;
    /// Most bytes of freed blocks kept for reuse.
    pub const CACHE_LIMIT: usize = 2 << 30;
    const HUGE_PAGE: usize = 2 << 20;

    /// Whether a block of this layout is handled here rather than by `System`.
    fn is_large(layout: &Layout) -> bool {
        cfg!(target_os = "linux")
            && layout.size() >= Self::MIN_BYTES
            && layout.align() <= Self::HUGE_PAGE
    }

    fn block_size(layout: &Layout) -> usize {
        layout.size().next_multiple_of(Self::HUGE_PAGE)
    }
}

#[cfg(target_os = "linux")]
mod large {
    use std::sync::{Mutex, MutexGuard};

    use super::HugePages;

    /// Freed blocks the cache holds at most (a step at full size frees a few dozen
    /// distinct large sizes).
    pub(super) const SLOTS: usize = 64;

    /// Freed blocks `(size, address)`, oldest first; no allocation inside the allocator.
    struct Cache {
        blocks: [(usize, usize); SLOTS],
        len: usize,
        bytes: usize,
    }

    static CACHE: Mutex<Cache> = Mutex::new(Cache {
        blocks: [(0, 0); SLOTS],
        len: 0,
        bytes: 0,
    });

    fn cache() -> MutexGuard<'static, Cache> {
        // Nothing below panics while holding the lock; a poisoned lock is still sound.
        CACHE.lock().unwrap_or_else(|e| e.into_inner())
    }

    impl Cache {
        fn remove(&mut self, i: usize) -> (usize, usize) {
            let block = self.blocks[i];
            self.blocks.copy_within(i + 1..self.len, i);
            self.len -= 1;
            self.bytes -= block.0;
            block
        }
    }

    /// A cached block of exactly `size` bytes (the most recently freed: warmest in the
    /// caches), if any.
    pub(super) fn take(size: usize) -> Option<*mut u8> {
        let mut c = cache();
        let i = (0..c.len).rev().find(|&i| c.blocks[i].0 == size)?;
        Some(c.remove(i).1 as *mut u8)
    }

    /// A fresh 2 MiB-aligned mapping of `size` bytes (a multiple of 2 MiB), advised to
    /// use huge pages; null if the kernel refuses.
    pub(super) fn map(size: usize) -> *mut u8 {
        let huge = HugePages::HUGE_PAGE;
        // SAFETY: an anonymous private mapping touches no existing memory; the parts
        // trimmed off below lie inside it and outside the block handed out.
        unsafe {
            let raw = libc::mmap(
                std::ptr::null_mut(),
                size + huge,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if raw == libc::MAP_FAILED {
                return std::ptr::null_mut();
            }
            let raw = raw as usize;
            let start = raw.next_multiple_of(huge);
            if start > raw {
                libc::munmap(raw as *mut libc::c_void, start - raw);
            }
            let tail = raw + size + huge - (start + size);
            if tail > 0 {
                libc::munmap((start + size) as *mut libc::c_void, tail);
            }
            // Failure (a kernel without THP) leaves ordinary pages: nothing to handle.
            libc::madvise(start as *mut libc::c_void, size, libc::MADV_HUGEPAGE);
            start as *mut u8
        }
    }

    /// Keeps a freed block for reuse, unmapping the oldest ones (or this one) to stay
    /// within the cache's bounds.
    pub(super) fn give_back(ptr: *mut u8, size: usize) {
        let mut unmap = [(0usize, 0usize); SLOTS + 1];
        let mut n = 0;
        {
            let mut c = cache();
            if size <= HugePages::CACHE_LIMIT {
                while c.len > 0 && (c.len == SLOTS || c.bytes + size > HugePages::CACHE_LIMIT) {
                    unmap[n] = c.remove(0);
                    n += 1;
                }
                let at = c.len;
                c.blocks[at] = (size, ptr as usize);
                c.len += 1;
                c.bytes += size;
            } else {
                unmap[n] = (size, ptr as usize);
                n += 1;
            }
        }
        for &(size, addr) in &unmap[..n] {
            // SAFETY: each block was mapped by `map` with this size and is no longer in
            // use (freed by its owner, then dropped from the cache).
            unsafe { libc::munmap(addr as *mut libc::c_void, size) };
        }
    }

    /// Bytes of freed blocks the cache holds now.
    #[cfg(test)]
    pub(super) fn cached_bytes() -> usize {
        cache().bytes
    }
}

#[cfg(not(target_os = "linux"))]
mod large {
    // `HugePages::is_large` is false off Linux: nothing reaches these.
    pub(super) fn take(_size: usize) -> Option<*mut u8> {
        None
    }
    pub(super) fn map(_size: usize) -> *mut u8 {
        std::ptr::null_mut()
    }
    pub(super) fn give_back(_ptr: *mut u8, _size: usize) {}
}

// SAFETY: small blocks are `System`'s, passed through unchanged. A large block is a
// private mapping of `block_size(layout)` bytes, 2 MiB-aligned (so aligned for any
// `align <= 2 MiB`), owned by one caller at a time: it is in the cache only between
// its `dealloc` and the next `take` of it.
unsafe impl GlobalAlloc for HugePages {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !Self::is_large(&layout) {
            return unsafe { System.alloc(layout) };
        }
        let size = Self::block_size(&layout);
        large::take(size).unwrap_or_else(|| large::map(size))
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !Self::is_large(&layout) {
            return unsafe { System.alloc_zeroed(layout) };
        }
        let size = Self::block_size(&layout);
        match large::take(size) {
            Some(p) => {
                // SAFETY: the block holds at least `layout.size()` bytes.
                unsafe { std::ptr::write_bytes(p, 0, layout.size()) };
                p
            }
            // A fresh mapping reads as zeros.
            None => large::map(size),
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if Self::is_large(&layout) {
            large::give_back(ptr, Self::block_size(&layout));
        } else {
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `realloc`'s contract: `new_size` is non-zero and fits `isize` with
        // `layout.align()`.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (Self::is_large(&layout), Self::is_large(&new_layout)) {
            (false, false) => unsafe { System.realloc(ptr, layout, new_size) },
            (true, true) if Self::block_size(&layout) == Self::block_size(&new_layout) => ptr,
            _ => {
                let q = unsafe { self.alloc(new_layout) };
                if !q.is_null() {
                    // SAFETY: both blocks are live and distinct; the copy stays inside both.
                    unsafe {
                        std::ptr::copy_nonoverlapping(ptr, q, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                }
                q
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A large block and a small one come back zeroed, keep what is written through a
    /// growing and a shrinking realloc, and free cleanly.
    #[test]
    fn blocks_round_trip_through_realloc() {
        for size in [HugePages::MIN_BYTES * 2 + 12_345, 4096] {
            let layout = Layout::from_size_align(size, 64).unwrap();
            // SAFETY: non-zero sizes; every access stays inside the live block.
            unsafe {
                let p = HugePages.alloc_zeroed(layout);
                assert!(!p.is_null());
                let block = std::slice::from_raw_parts_mut(p, size);
                assert!(block.iter().all(|&b| b == 0), "{size}: not zeroed");
                for (i, b) in block.iter_mut().enumerate() {
                    *b = (i % 251) as u8;
                }
                let q = HugePages.realloc(p, layout, size * 2);
                assert!(!q.is_null());
                let grown = std::slice::from_raw_parts(q, size);
                assert!(grown.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
                let r = HugePages.realloc(q, Layout::from_size_align(size * 2, 64).unwrap(), 1000);
                let shrunk = std::slice::from_raw_parts(r, 1000);
                assert!(
                    shrunk
                        .iter()
                        .enumerate()
                        .all(|(i, &b)| b == (i % 251) as u8)
                );
                HugePages.dealloc(r, Layout::from_size_align(1000, 64).unwrap());
            }
        }
    }

    /// A freed large block is handed out again for the same size, unchanged (`alloc`)
    /// or cleared (`alloc_zeroed`), and the cache never holds more than its limit.
    #[cfg(target_os = "linux")]
    #[test]
    fn freed_large_blocks_are_reused_and_bounded() {
        // A size no other test allocates, so the block found is this test's.
        let size = HugePages::MIN_BYTES + 3 * HugePages::HUGE_PAGE + 77;
        let layout = Layout::from_size_align(size, 4096).unwrap();
        // SAFETY: as above.
        unsafe {
            let p = HugePages.alloc(layout);
            assert_eq!(p as usize % HugePages::HUGE_PAGE, 0, "not 2 MiB-aligned");
            std::slice::from_raw_parts_mut(p, size).fill(7);
            HugePages.dealloc(p, layout);
            let q = HugePages.alloc(layout);
            assert_eq!(q, p, "the freed block was not reused");
            assert!(std::slice::from_raw_parts(q, size).iter().all(|&b| b == 7));
            HugePages.dealloc(q, layout);
            let z = HugePages.alloc_zeroed(layout);
            assert_eq!(z, p);
            assert!(std::slice::from_raw_parts(z, size).iter().all(|&b| b == 0));
            HugePages.dealloc(z, layout);
            // Freeing more than the limit in blocks keeps at most the limit cached.
            let big = Layout::from_size_align(HugePages::CACHE_LIMIT / 3 + 1, 64).unwrap();
            let blocks: Vec<_> = (0..4).map(|_| HugePages.alloc(big)).collect();
            for b in blocks {
                assert!(!b.is_null());
                HugePages.dealloc(b, big);
                assert!(large::cached_bytes() <= HugePages::CACHE_LIMIT);
            }
        }
    }
}
