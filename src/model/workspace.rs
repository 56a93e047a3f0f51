//! Scratch buffers that the CPU ops reuse from call to call instead of allocating.
//!
//! A training step runs the same ops on the same shapes every time. Temporaries such as
//! the im2col matrices (conv1 at batch 128: 560 MB when built whole) used to be
//! allocated, page-faulted in, zeroed and unmapped on every call, which cost more CPU
//! time than the GEMMs that read them. Here each thread keeps a small pool of buffers
//! per element type; [`scratch`] hands out the best-fitting one, grown if needed, and
//! it goes back to the pool when dropped. Only temporaries live here: the outputs an
//! op hands to candle are fresh `Vec`s that candle owns.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};
use std::thread::LocalKey;

/// Element types with a pool of their own.
pub(super) trait ScratchElem: candle_core::WithDType {
    fn pool() -> &'static LocalKey<RefCell<Vec<Vec<Self>>>>;
}

thread_local! {
    static POOL_F32: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
    static POOL_F64: RefCell<Vec<Vec<f64>>> = const { RefCell::new(Vec::new()) };
}

impl ScratchElem for f32 {
    fn pool() -> &'static LocalKey<RefCell<Vec<Vec<f32>>>> {
        &POOL_F32
    }
}

impl ScratchElem for f64 {
    fn pool() -> &'static LocalKey<RefCell<Vec<Vec<f64>>>> {
        &POOL_F64
    }
}

/// A buffer of `len` elements from the pool. Its contents are whatever the previous
/// user left there: the caller writes every element before reading it.
pub(super) fn scratch<T: ScratchElem>(len: usize) -> Scratch<T> {
    let mut buf = T::pool().with(|p| {
        let mut p = p.borrow_mut();
        // The smallest buffer that is big enough, else the biggest (grown below), so
        // a pool serving the same calls every step settles at a few buffers.
        let fit = (0..p.len())
            .filter(|&i| p[i].capacity() >= len)
            .min_by_key(|&i| p[i].capacity())
            .or_else(|| (0..p.len()).max_by_key(|&i| p[i].capacity()));
        fit.map(|i| p.swap_remove(i)).unwrap_or_default()
    });
    if buf.len() < len {
        buf.resize(len, T::zero());
    }
    Scratch { buf, len }
}

/// A pooled buffer; derefs to its first `len` elements.
pub(super) struct Scratch<T: ScratchElem> {
    buf: Vec<T>,
    len: usize,
}

impl<T: ScratchElem> Deref for Scratch<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.buf[..self.len]
    }
}

impl<T: ScratchElem> DerefMut for Scratch<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.buf[..self.len]
    }
}

impl<T: ScratchElem> Drop for Scratch<T> {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        // try_with: a buffer dropped while its thread shuts down is simply freed.
        let _ = T::pool().try_with(|p| p.borrow_mut().push(buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_sized() {
        let first = {
            let mut a = scratch::<f32>(1000);
            a[999] = 1.0;
            a.as_ptr()
        };
        // The same buffer comes back for a request it can hold.
        let b = scratch::<f32>(500);
        assert_eq!(b.len(), 500);
        assert_eq!(b.as_ptr(), first);
        // A second request while the first is out gets another buffer.
        let c = scratch::<f32>(10);
        assert_ne!(c.as_ptr(), first);
    }
}
