//! How our CPU ops read a tensor: its storage sliced to the layout's contiguous range.
//! Every op here works on contiguous buffers; a strided operand is an error naming the
//! op and the operand, never a silent copy.

use std::ops::Range;

use candle_core::{CpuStorage, Layout, Result, WithDType};

/// The elements of a contiguous tensor (`what` names it in the error: "conv2d: bias").
pub fn contiguous_slice<'a, T: WithDType>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> Result<&'a [T]> {
    let range = contiguous_range(layout, what)?;
    Ok(&storage.as_slice::<T>()?[range])
}

/// Where a contiguous tensor's elements sit in its storage.
pub fn contiguous_range(layout: &Layout, what: &str) -> Result<Range<usize>> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(start..end),
        None => candle_core::bail!("{what}: expects a contiguous input"),
    }
}
