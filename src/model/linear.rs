//! Fully connected layer with an optional fused ReLU (fc6, fc7, fc8).
//!
//! Why not `candle_nn::Linear` on the CPU: it computes `x @ wᵀ`, so candle's backward
//! produces the weight gradient as the transpose of a `(in, out)` GEMM result and then
//! accumulates it with a strided (non-vectorised) add — for fc6 (9216 x 4096 = 37.7 M
//! weights) that add costs more than the GEMMs. [`LinearOp`] computes `dW = dYᵀ @ x`
//! directly in `(out, in)` layout, skips `dx` when the input needs no gradient, and
//! folds the bias and the ReLU into the op. Off the CPU (or for f16/bf16) it is the
//! plain candle-ops formula, differentiated by candle.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Module, Result, Shape, Tensor};

use super::cpu_slice::contiguous_range;
use super::matmul::{MatmulOp, matmul, matrix};

/// `y = x @ weightᵀ + bias` with `weight (out, in)`, `bias (out)`, `x (batch, in)`.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Tensor) -> Self {
        Self { weight, bias }
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> &Tensor {
        &self.bias
    }

    /// `relu(x @ weightᵀ + bias)` (fc6, fc7).
    pub fn forward_relu(&self, x: &Tensor) -> Result<Tensor> {
        if use_custom(x) {
            x.apply_op3(&self.weight, &self.bias, LinearOp { relu: true })
        } else {
            self.forward(x)?.relu()
        }
    }
}

impl Module for Linear {
    /// `x @ weightᵀ + bias`: `(batch, in) -> (batch, out)`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if use_custom(x) {
            x.apply_op3(&self.weight, &self.bias, LinearOp { relu: false })
        } else {
            x.matmul(&self.weight.t()?)?.broadcast_add(&self.bias)
        }
    }
}

fn use_custom(x: &Tensor) -> bool {
    x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) && x.rank() == 2
}

/// The layer as a candle custom op (CPU): `(x, weight, bias) -> y`, optional ReLU.
#[derive(Debug, Clone, Copy)]
pub struct LinearOp {
    pub relu: bool,
}

fn bias_relu<T: candle_core::WithDType>(y: &mut [T], bias: &[T], relu: bool) {
    for row in y.chunks_mut(bias.len()) {
        for (v, &b) in row.iter_mut().zip(bias) {
            let s = *v + b;
            *v = if relu && s <= T::zero() { T::zero() } else { s };
        }
    }
}

/// `relu?(x @ wᵀ + bias)` for contiguous `x (batch, in)` and `w (out, in)`.
fn affine<T: candle_core::WithDType>(
    xs: &CpuStorage,
    xl: &Layout,
    ws: &CpuStorage,
    wl: &Layout,
    bias: &[T],
    relu: bool,
) -> Result<Vec<T>> {
    let x = matrix::<T>(xs, xl, false, "linear: x")?;
    let wt = matrix::<T>(ws, wl, true, "linear: weight")?;
    let (batch, fan_out) = (x.rows, wt.cols);
    let mut y = vec![T::zero(); batch * fan_out];
    matmul(&mut y, fan_out, x, wt, false)?;
    bias_relu(&mut y, bias, relu);
    Ok(y)
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (&[batch, fan_in], &[fan_out, w_in]) = (xl.dims(), wl.dims()) else {
            candle_core::bail!(
                "linear: expects 2-D x and weight, got {:?} / {:?}",
                xl.dims(),
                wl.dims()
            )
        };
        if fan_in != w_in || bl.dims() != [fan_out] {
            candle_core::bail!(
                "linear: x {:?}, weight {:?}, bias {:?}",
                xl.dims(),
                wl.dims(),
                bl.dims()
            )
        }
        // y = x @ wᵀ: wᵀ is the weight read with swapped strides, no copy.
        let bias = contiguous_range(bl, "linear: bias")?;
        let relu = self.relu;
        let y = match (xs, bs) {
            (CpuStorage::F32(_), CpuStorage::F32(b)) => {
                CpuStorage::F32(affine(xs, xl, ws, wl, &b[bias], relu)?)
            }
            (CpuStorage::F64(_), CpuStorage::F64(b)) => {
                CpuStorage::F64(affine(xs, xl, ws, wl, &b[bias], relu)?)
            }
            _ => candle_core::bail!("linear: supports f32/f64"),
        };
        Ok((y, Shape::from((batch, fan_out))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // (batch, out): small, so plain tensor ops are fine for the ReLU mask.
        let dy = if self.relu {
            (grad * res.gt(0.0)?.to_dtype(grad.dtype())?)?
        } else {
            grad.clone()
        };
        let dy = dy.contiguous()?;
        // dW = dYᵀ @ x, (out, in) as the weight is stored: no transposed accumulate.
        let dw = dy.apply_op2_no_bwd(
            &x.contiguous()?,
            &MatmulOp {
                lhs_t: true,
                rhs_t: false,
            },
        )?;
        let db = dy.sum(0)?;
        let dx = if x.track_op() {
            Some(dy.apply_op2_no_bwd(
                &w.contiguous()?,
                &MatmulOp {
                    lhs_t: false,
                    rhs_t: false,
                },
            )?)
        } else {
            None
        };
        Ok((dx, Some(dw), Some(db)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    use super::super::test_util::{max_abs_diff, rand_tensor};

    /// Values and gradients (x, weight, bias) equal the candle-ops formula, with and
    /// without the ReLU.
    #[test]
    fn matches_candle_ops() -> Result<()> {
        let x = Var::from_tensor(&rand_tensor(&[5, 7], 1))?;
        let w = Var::from_tensor(&rand_tensor(&[4, 7], 2))?;
        let b = Var::from_tensor(&rand_tensor(&[4], 3))?;
        let layer = Linear::new(w.as_tensor().clone(), b.as_tensor().clone());
        let r = rand_tensor(&[5, 4], 4);
        for relu in [false, true] {
            let ours = if relu {
                layer.forward_relu(x.as_tensor())?
            } else {
                layer.forward(x.as_tensor())?
            };
            let lin = x
                .as_tensor()
                .matmul(&w.as_tensor().t()?)?
                .broadcast_add(b.as_tensor())?;
            let theirs = if relu { lin.relu()? } else { lin };
            assert!(max_abs_diff(&ours, &theirs) < 1e-14);
            let g1 = (ours * &r)?.sum_all()?.backward()?;
            let g2 = (theirs * &r)?.sum_all()?.backward()?;
            for v in [&x, &w, &b] {
                assert!(
                    max_abs_diff(
                        g1.get(v.as_tensor()).unwrap(),
                        g2.get(v.as_tensor()).unwrap()
                    ) < 1e-14
                );
            }
        }
        // A plain (non-Var) input gets no gradient.
        let g = layer
            .forward(&rand_tensor(&[5, 7], 5))?
            .sum_all()?
            .backward()?;
        assert!(g.get(w.as_tensor()).is_some());
        Ok(())
    }
}
