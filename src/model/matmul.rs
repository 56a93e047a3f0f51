//! The CPU ops' matrix product: the `gemm` crate (the one candle's CPU backend calls),
//! but writing into a buffer we own and reading operands through any row/column
//! strides, so a transposed operand is a stride swap, not a copy, and a result can land
//! in a reused workspace or accumulate into the previous one.
//!
//! `gemm` picks its kernels at run time (AVX-512 where the CPU has avx512f, see
//! Cargo.toml; AVX2+FMA or portable code elsewhere). It splits the work over rows and
//! columns of the result, never over the inner dimension, so a product is the same bit
//! for bit from run to run at a given thread count.

use candle_core::Result;

/// A read-only matrix view: element `(i, j)` is `data[i * row_stride + j * col_stride]`.
#[derive(Clone, Copy)]
pub(super) struct Mat<'a, T> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a, T> Mat<'a, T> {
    /// A row-major `rows x cols` matrix (row stride `cols`).
    pub fn rows(data: &'a [T], rows: usize, cols: usize) -> Self {
        Self::strided(data, rows, cols, cols, 1)
    }

    pub fn strided(data: &'a [T], rows: usize, cols: usize, rs: usize, cs: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride: rs,
            col_stride: cs,
        }
    }

    /// The transpose: the same elements, strides swapped.
    pub fn t(self) -> Self {
        Self::strided(
            self.data,
            self.cols,
            self.rows,
            self.col_stride,
            self.row_stride,
        )
    }

    fn fits(&self, what: &str) -> Result<()> {
        fits(
            self.data.len(),
            self.rows,
            self.cols,
            self.row_stride,
            self.col_stride,
            what,
        )
    }
}

fn fits(len: usize, rows: usize, cols: usize, rs: usize, cs: usize, what: &str) -> Result<()> {
    let last = (rows.max(1) - 1) * rs + (cols.max(1) - 1) * cs;
    if rows > 0 && cols > 0 && last >= len {
        candle_core::bail!("matmul: {what} {rows}x{cols} (strides {rs}, {cs}) overruns {len}")
    }
    Ok(())
}

/// `dst = lhs @ rhs`, or `dst += lhs @ rhs` when `accumulate`; `dst` is row-major
/// `lhs.rows x rhs.cols` with row stride `dst_row_stride`.
pub(super) fn matmul<T: candle_core::WithDType>(
    dst: &mut [T],
    dst_row_stride: usize,
    lhs: Mat<'_, T>,
    rhs: Mat<'_, T>,
    accumulate: bool,
) -> Result<()> {
    let (m, n, k) = (lhs.rows, rhs.cols, lhs.cols);
    if !matches!(T::DTYPE, candle_core::DType::F32 | candle_core::DType::F64) {
        candle_core::bail!("matmul: supports f32/f64, got {:?}", T::DTYPE)
    }
    if rhs.rows != k {
        candle_core::bail!("matmul: {m}x{k} @ {}x{n}", rhs.rows)
    }
    lhs.fits("lhs")?;
    rhs.fits("rhs")?;
    fits(dst.len(), m, n, dst_row_stride, 1, "dst")?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    let threads = candle_core::utils::get_num_threads();
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: every index the product touches was checked against its slice above, and
    // `dst` is borrowed mutably, so it aliases neither operand.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_row_stride as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr(),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            T::one(),
            T::one(),
            false,
            false,
            false,
            parallelism,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain, transposed and accumulated products against a triple loop.
    #[test]
    fn matches_naive_product() -> Result<()> {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f64> = (0..m * k).map(|v| (v as f64 * 0.37).sin()).collect();
        let b: Vec<f64> = (0..k * n).map(|v| (v as f64 * 0.91).cos()).collect();
        let naive = |i: usize, j: usize| (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum::<f64>();
        let mut c = vec![0.0; m * n];
        matmul(&mut c, n, Mat::rows(&a, m, k), Mat::rows(&b, k, n), false)?;
        matmul(&mut c, n, Mat::rows(&a, m, k), Mat::rows(&b, k, n), true)?;
        // bᵀ stored row-major, read back transposed.
        let bt: Vec<f64> = (0..n * k).map(|v| b[(v % k) * n + v / k]).collect();
        let mut d = vec![0.0; m * n];
        matmul(
            &mut d,
            n,
            Mat::rows(&a, m, k),
            Mat::rows(&bt, n, k).t(),
            false,
        )?;
        for i in 0..m {
            for j in 0..n {
                assert!((c[i * n + j] - 2.0 * naive(i, j)).abs() < 1e-12);
                assert!((d[i * n + j] - naive(i, j)).abs() < 1e-12);
            }
        }
        assert!(
            matmul(
                &mut d[1..],
                n,
                Mat::rows(&a, m, k),
                Mat::rows(&b, k, n),
                false
            )
            .is_err()
        );
        Ok(())
    }
}
