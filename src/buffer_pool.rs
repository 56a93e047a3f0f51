//! Recycled buffers: the stages that move images (ingest's decode → write, the
//! stream's read → shuffle → batch) reuse the same few large buffers, so after
//! warm-up they allocate (and page-fault) nothing per image.

use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// A free list of buffers, shared by the producer and every live user.
#[derive(Clone)]
pub struct BufferPool<T> {
    free: Arc<Mutex<Vec<Vec<T>>>>,
}

impl<T: Default + Clone> BufferPool<T> {
    pub fn new() -> Self {
        Self {
            free: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// A buffer of exactly `len` elements (contents unspecified). A recycled
    /// buffer of the same length comes back without a single write.
    pub fn take(&self, len: usize) -> Vec<T> {
        let mut buffer = self
            .free
            .lock()
            .expect("pool lock")
            .pop()
            .unwrap_or_default();
        buffer.resize(len, T::default());
        buffer
    }

    pub fn give(&self, buffer: Vec<T>) {
        self.free.lock().expect("pool lock").push(buffer);
    }
}

impl<T: Default + Clone> Default for BufferPool<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl BufferPool<u8> {
    /// Hands `buffer` out as `Bytes` (slices of it shared freely); it returns
    /// to this pool when the last slice is dropped.
    pub fn share(&self, buffer: Vec<u8>) -> Bytes {
        Bytes::from_owner(PooledBuffer {
            buffer,
            pool: self.clone(),
        })
    }
}

/// The owner behind [`BufferPool::share`].
struct PooledBuffer {
    buffer: Vec<u8>,
    pool: BufferPool<u8>,
}

impl AsRef<[u8]> for PooledBuffer {
    fn as_ref(&self) -> &[u8] {
        &self.buffer
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.buffer));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_buffer_returns_when_its_last_slice_is_dropped() {
        let pool = BufferPool::<u8>::new();
        let mut buffer = pool.take(8);
        buffer.copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        let bytes = pool.share(buffer);
        let tail = bytes.slice(4..);
        drop(bytes);
        assert!(
            pool.free.lock().unwrap().is_empty(),
            "a slice is still alive"
        );
        assert_eq!(&tail[..], &[5, 6, 7, 8]);
        drop(tail);
        // Same length: the recycled buffer keeps its contents (nothing rewritten).
        assert_eq!(pool.take(8), vec![1, 2, 3, 4, 5, 6, 7, 8]);
    }
}
