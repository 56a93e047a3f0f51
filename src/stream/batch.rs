//! Batches as the consumer receives them, in buffers that are recycled: after
//! warm-up the stream allocates nothing per image or per batch.

pub use crate::buffer_pool::BufferPool;

/// One batch: `images` is NCHW f32 `[len·views, 3, crop, crop]`, raw RGB minus the
/// mean in 0–255 units; for ten-crop evaluation image i's views are rows
/// `i·10 .. i·10+10`.
pub struct Batch {
    /// Position of this batch in the epoch (0-based).
    pub index: usize,
    pub images: Vec<f32>,
    pub labels: Vec<i64>,
    /// Source keys, when the stream was asked for them.
    pub keys: Vec<String>,
    /// Views per image: 1, or 10 for ten-crop.
    pub views: usize,
    pub crop: usize,
    pool: Option<BufferPool<f32>>,
}

impl Batch {
    pub fn new(
        index: usize,
        images: Vec<f32>,
        labels: Vec<i64>,
        keys: Vec<String>,
        views: usize,
        crop: usize,
        pool: BufferPool<f32>,
    ) -> Self {
        Self {
            index,
            images,
            labels,
            keys,
            views,
            crop,
            pool: Some(pool),
        }
    }

    /// Images in the batch.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// `[N, 3, crop, crop]` with N = images × views.
    pub fn shape(&self) -> [usize; 4] {
        [self.len() * self.views, 3, self.crop, self.crop]
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.give(std::mem::take(&mut self.images));
        }
    }
}
