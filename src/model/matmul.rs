//! The CPU ops' matrix product: the `gemm` crate (the one candle's CPU backend calls),
//! but writing into a buffer we own and reading operands through any row/column
//! strides, so a transposed operand is a stride swap, not a copy, and a result can land
//! in a reused workspace or accumulate into the previous one.
//!
//! f32 products run on oneDNN's `sgemm` where that library is loaded ([`super::onednn`]:
//! 1.5–2× `gemm` at the fc layers' skinny shapes), whenever each operand has a unit
//! stride on one axis; everything else on `gemm`.
//!
//! `gemm` picks its kernels at run time (AVX-512 where the CPU has avx512f, see
//! Cargo.toml; AVX2+FMA or portable code elsewhere). It splits the work over rows and
//! columns of the result, never over the inner dimension, so a product is the same bit
//! for bit from run to run at a given thread count.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape};

use super::cpu_slice::contiguous_slice;
use super::onednn;

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
    if T::DTYPE == candle_core::DType::F32
        && let Ok(dnnl) = onednn::library()
        && let (Some(a), Some(b)) = (blas_operand(&lhs), blas_operand(&rhs))
        && dst_row_stride >= n
    {
        // SAFETY: T is f32 (checked above), so the slices are f32 slices.
        let f = |s: &[T]| unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<f32>(), s.len()) };
        let dst =
            unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<f32>(), dst.len()) };
        return dnnl.sgemm(
            (m, n, k),
            (f(lhs.data), a.0, a.1),
            (f(rhs.data), b.0, b.1),
            dst,
            dst_row_stride,
            accumulate,
        );
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

/// How a BLAS reads `m`: `(transposed, leading dimension)`, if one axis has unit stride.
fn blas_operand<T>(m: &Mat<'_, T>) -> Option<(bool, usize)> {
    if m.col_stride == 1 && m.row_stride >= m.cols.max(1) {
        Some((false, m.row_stride))
    } else if m.row_stride == 1 && m.col_stride >= m.rows.max(1) {
        Some((true, m.col_stride))
    } else {
        None
    }
}

/// `lhs @ rhs` of two contiguous 2-D tensors, either read transposed, as a (no-backward)
/// candle op through [`matmul`]: the fc layers' products.
pub(super) struct MatmulOp {
    pub lhs_t: bool,
    pub rhs_t: bool,
}

/// A contiguous 2-D tensor as a matrix (its transpose when `t`); `what` names it in errors.
pub(super) fn matrix<'a, T: candle_core::WithDType>(
    s: &'a CpuStorage,
    l: &Layout,
    t: bool,
    what: &str,
) -> Result<Mat<'a, T>> {
    let &[r, c] = l.dims() else {
        candle_core::bail!("{what} must be 2-D, got {:?}", l.dims())
    };
    let m = Mat::rows(contiguous_slice::<T>(s, l, what)?, r, c);
    Ok(if t { m.t() } else { m })
}

impl MatmulOp {
    fn run<T: candle_core::WithDType>(
        &self,
        a: &CpuStorage,
        al: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> Result<(Vec<T>, Shape)> {
        let lhs = matrix::<T>(a, al, self.lhs_t, "matmul: lhs")?;
        let rhs = matrix::<T>(b, bl, self.rhs_t, "matmul: rhs")?;
        let mut out = vec![T::zero(); lhs.rows * rhs.cols];
        matmul(&mut out, rhs.cols, lhs, rhs, false)?;
        Ok((out, Shape::from((lhs.rows, rhs.cols))))
    }
}

impl CustomOp2 for MatmulOp {
    fn name(&self) -> &'static str {
        "matmul"
    }

    fn cpu_fwd(
        &self,
        a: &CpuStorage,
        al: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        match a {
            CpuStorage::F32(_) => {
                let (v, s) = self.run::<f32>(a, al, b, bl)?;
                Ok((CpuStorage::F32(v), s))
            }
            CpuStorage::F64(_) => {
                let (v, s) = self.run::<f64>(a, al, b, bl)?;
                Ok((CpuStorage::F64(v), s))
            }
            _ => candle_core::bail!("matmul: supports f32/f64, got {:?}", a.dtype()),
        }
    }
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

    /// The f32 door (oneDNN's sgemm where loaded) on every operand orientation, with and
    /// without accumulation, a result row stride wider than the result, and an operand
    /// whose strides suit no BLAS (the `gemm` fallback), against an f64 triple loop.
    #[test]
    fn f32_products_match_naive() -> Result<()> {
        let (m, k, n) = (7, 33, 5);
        let a: Vec<f32> = (0..m * k).map(|v| (v as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|v| (v as f32 * 0.91).cos()).collect();
        let at: Vec<f32> = (0..k * m).map(|v| a[(v % m) * k + v / m]).collect();
        let bt: Vec<f32> = (0..n * k).map(|v| b[(v % k) * n + v / k]).collect();
        let naive = |i: usize, j: usize| {
            (0..k)
                .map(|p| a[i * k + p] as f64 * b[p * n + j] as f64)
                .sum::<f64>()
        };
        // a (m x k) stored with every other element: col stride 2 suits no BLAS.
        let a2: Vec<f32> = a.iter().flat_map(|&v| [v, 0.0]).collect();
        let lhs = [
            Mat::rows(&a, m, k),
            Mat::rows(&at, k, m).t(),
            Mat::strided(&a2, m, k, 2 * k, 2),
        ];
        let rhs = [Mat::rows(&b, k, n), Mat::rows(&bt, n, k).t()];
        let ldc = n + 3;
        for (li, l) in lhs.iter().enumerate() {
            for (ri, r) in rhs.iter().enumerate() {
                let mut c = vec![0f32; m * ldc];
                matmul(&mut c, ldc, *l, *r, false)?;
                matmul(&mut c, ldc, *l, *r, true)?;
                for i in 0..m {
                    for j in 0..n {
                        let d = (c[i * ldc + j] as f64 - 2.0 * naive(i, j)).abs();
                        assert!(d < 1e-4, "lhs {li} rhs {ri} ({i}, {j}) off by {d}");
                    }
                    assert!(c[i * ldc + n..(i + 1) * ldc].iter().all(|&v| v == 0.0));
                }
            }
        }
        Ok(())
    }
}
