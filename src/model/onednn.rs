//! oneDNN, the library PyTorch's CPU convolutions run on, as the f32 CPU fast path of our
//! convolution and matrix products, loaded at run time.
//!
//! Why: at AlexNet's shapes its JIT-compiled direct convolutions (blocked `nChw16c`
//! layouts, forward, backward-data and backward-weights kernels) and its `sgemm` run the
//! layers 1.3–2× faster than im2col + the `gemm` crate (`benches/README.md`, "Training
//! step (CPU)"). Why loaded, not linked: a plain `cargo build` must work on a machine that has
//! only Rust, so the library is optional — Debian's `libdnnl2` (`apt-get install
//! libdnnl2`) is opened with `dlopen` on first use, and where it is missing (or
//! `PIPELINE_ONEDNN=off`) every op keeps its own CPU code ([`super::conv`],
//! [`super::matmul`]), which the f64 tests cover.
//!
//! Only oneDNN 2.x is accepted: its C API passes memory and operation descriptors by
//! value, in structs whose size this file knows (checked against the library's version
//! at load). Descriptors are kept as opaque, over-sized buffers that only the library
//! reads and writes.
//!
//! A convolution runs as one [`Plan`] per shape and direction, built once and cached:
//! the primitive picks its own (blocked) layouts, and reorders between them and the
//! plain NCHW / (G)OIHW tensors candle holds run on each call into reused
//! [`super::workspace`] buffers.
//!
//! Threads: one pool, rayon's (`RAYON_NUM_THREADS`). Debian's oneDNN runs on OpenMP,
//! whose idle threads spin after every call; beside rayon's (the other ops) they took a
//! fifth of the sample-size step's CPU. So each call is split here — a convolution over
//! the batch, a product over its result's longer side — into one part per rayon thread,
//! and each part runs single-threaded (`omp_set_num_threads(1)` on that thread: OpenMP
//! never starts a team). Primitives use caller-owned scratchpads, so the parts run one
//! primitive concurrently; the kernel gradient sums the parts' in part order, so a step
//! is the same bit for bit at a given thread count.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void};
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::Result;
use rayon::prelude::*;

use super::workspace::scratch;

type Status = c_int;
type Engine = *mut c_void;
type Stream = *mut c_void;
type Memory = *mut c_void;
type PrimDesc = *mut c_void;
type Prim = *mut c_void;
type Attr = *mut c_void;
type PostOps = *mut c_void;
type Dims = [i64; 12];

/// `dnnl_memory_desc_t` (696 bytes in 2.6) with room to spare.
#[repr(C, align(16))]
struct MemDesc([u8; 1024]);
/// `dnnl_convolution_desc_t` (5,976 bytes in 2.6) with room to spare.
#[repr(C, align(16))]
struct OpDesc([u8; 8192]);

impl MemDesc {
    fn boxed() -> Box<Self> {
        Box::new(Self([0; 1024]))
    }
}

#[repr(C)]
struct ExecArg {
    arg: c_int,
    memory: Memory,
}

#[repr(C)]
struct Version {
    major: c_int,
    minor: c_int,
    patch: c_int,
    hash: *const c_char,
}

// The values of dnnl_types.h (oneDNN 2.x) this file uses.
const SUCCESS: Status = 0;
const F32: c_int = 3;
const CPU: c_int = 1;
const STREAM_DEFAULT: u32 = 1;
const TAG_ANY: c_int = 1;
const TAG_X: c_int = 2;
const TAG_NCHW: c_int = 5; // also oihw
const TAG_GOIHW: c_int = 7;
const FORWARD_TRAINING: c_int = 64;
const CONVOLUTION_DIRECT: c_int = 1;
const ELTWISE_RELU: c_int = 0x1f;
const QUERY_SRC: c_int = 129;
const QUERY_DIFF_SRC: c_int = 130;
const QUERY_WEIGHTS: c_int = 131;
const QUERY_DIFF_WEIGHTS: c_int = 132;
const QUERY_DST: c_int = 133;
const QUERY_DIFF_DST: c_int = 134;
const QUERY_SCRATCHPAD: c_int = 136;
const SCRATCHPAD_USER: c_int = 1;
const ARG_SRC: c_int = 1;
const ARG_DST: c_int = 17;
const ARG_WEIGHTS: c_int = 33;
const ARG_BIAS: c_int = 41;
const ARG_DIFF_SRC: c_int = 129;
const ARG_DIFF_DST: c_int = 145;
const ARG_DIFF_WEIGHTS: c_int = 161;
const ARG_DIFF_BIAS: c_int = 169;
const ARG_SCRATCHPAD: c_int = 80;

/// The library's entry points this file calls (resolved once).
#[allow(clippy::type_complexity)]
struct Api {
    _lib: libloading::Library,
    engine_create: unsafe extern "C" fn(*mut Engine, c_int, usize) -> Status,
    stream_create: unsafe extern "C" fn(*mut Stream, Engine, u32) -> Status,
    stream_wait: unsafe extern "C" fn(Stream) -> Status,
    stream_destroy: unsafe extern "C" fn(Stream) -> Status,
    md_init_by_tag: unsafe extern "C" fn(*mut MemDesc, c_int, *const i64, c_int, c_int) -> Status,
    md_get_size: unsafe extern "C" fn(*const MemDesc) -> usize,
    md_equal: unsafe extern "C" fn(*const MemDesc, *const MemDesc) -> c_int,
    memory_create: unsafe extern "C" fn(*mut Memory, *const MemDesc, Engine, *mut c_void) -> Status,
    memory_destroy: unsafe extern "C" fn(Memory) -> Status,
    conv_fwd_init: unsafe extern "C" fn(
        *mut OpDesc,
        c_int,
        c_int,
        *const MemDesc,
        *const MemDesc,
        *const MemDesc,
        *const MemDesc,
        *const i64,
        *const i64,
        *const i64,
    ) -> Status,
    conv_bwd_data_init: unsafe extern "C" fn(
        *mut OpDesc,
        c_int,
        *const MemDesc,
        *const MemDesc,
        *const MemDesc,
        *const i64,
        *const i64,
        *const i64,
    ) -> Status,
    conv_bwd_weights_init: unsafe extern "C" fn(
        *mut OpDesc,
        c_int,
        *const MemDesc,
        *const MemDesc,
        *const MemDesc,
        *const MemDesc,
        *const i64,
        *const i64,
        *const i64,
    ) -> Status,
    pd_create: unsafe extern "C" fn(*mut PrimDesc, *const OpDesc, Attr, Engine, PrimDesc) -> Status,
    pd_destroy: unsafe extern "C" fn(PrimDesc) -> Status,
    pd_query_md: unsafe extern "C" fn(PrimDesc, c_int, c_int) -> *const MemDesc,
    reorder_pd_create: unsafe extern "C" fn(
        *mut PrimDesc,
        *const MemDesc,
        Engine,
        *const MemDesc,
        Engine,
        Attr,
    ) -> Status,
    prim_create: unsafe extern "C" fn(*mut Prim, PrimDesc) -> Status,
    prim_execute: unsafe extern "C" fn(Prim, Stream, c_int, *const ExecArg) -> Status,
    attr_create: unsafe extern "C" fn(*mut Attr) -> Status,
    attr_destroy: unsafe extern "C" fn(Attr) -> Status,
    attr_set_post_ops: unsafe extern "C" fn(Attr, PostOps) -> Status,
    attr_set_scratchpad_mode: unsafe extern "C" fn(Attr, c_int) -> Status,
    post_ops_create: unsafe extern "C" fn(*mut PostOps) -> Status,
    post_ops_destroy: unsafe extern "C" fn(PostOps) -> Status,
    post_ops_append_eltwise: unsafe extern "C" fn(PostOps, f32, c_int, f32, f32) -> Status,
    sgemm: unsafe extern "C" fn(
        c_char,
        c_char,
        i64,
        i64,
        i64,
        f32,
        *const f32,
        i64,
        *const f32,
        i64,
        f32,
        *mut f32,
        i64,
    ) -> Status,
    omp_set_num_threads: Option<unsafe extern "C" fn(c_int)>,
}

/// The loaded library: its entry points, one CPU engine, and the cached conv plans.
pub(super) struct OneDnn {
    api: Api,
    engine: Engine,
    version: String,
    plans: Mutex<HashMap<PlanKey, Arc<Plan>>>,
}

// SAFETY: the engine is immutable after creation and oneDNN allows using it from any
// thread; the plans are behind a mutex, and each is safe to run concurrently (see Plan).
unsafe impl Send for OneDnn {}
unsafe impl Sync for OneDnn {}

/// Whether the library is in use (or why not), for the benches and `train`'s summary.
pub fn describe() -> String {
    match library() {
        Ok(d) => format!("oneDNN {} (libdnnl.so.2, loaded at run time)", d.version),
        Err(why) => format!("oneDNN not in use ({why}): the built-in CPU kernels run"),
    }
}

/// The library, loaded on first use, or why not.
pub(super) fn library() -> std::result::Result<&'static OneDnn, &'static str> {
    static LIB: OnceLock<std::result::Result<OneDnn, String>> = OnceLock::new();
    LIB.get_or_init(|| {
        if std::env::var("PIPELINE_ONEDNN").is_ok_and(|v| matches!(v.as_str(), "0" | "off")) {
            return Err("PIPELINE_ONEDNN=off".into());
        }
        // SAFETY: loading runs the library's initialisers, which oneDNN keeps free of
        // side effects on the process beyond its own state.
        unsafe { OneDnn::load() }
    })
    .as_ref()
    .map_err(|e| e.as_str())
}

/// Resolves one symbol as a function pointer of type `F`.
///
/// SAFETY: `F` must be the symbol's C signature.
unsafe fn sym<F: Copy>(lib: &libloading::Library, name: &str) -> std::result::Result<F, String> {
    let c = format!("{name}\0");
    unsafe { lib.get::<F>(c.as_bytes()) }
        .map(|s| *s)
        .map_err(|e| format!("libdnnl.so.2 lacks {name}: {e}"))
}

impl OneDnn {
    unsafe fn load() -> std::result::Result<Self, String> {
        let lib = unsafe { libloading::Library::new("libdnnl.so.2") }
            .map_err(|e| format!("libdnnl.so.2 not found ({e}); install libdnnl2"))?;
        let version: unsafe extern "C" fn() -> *const Version =
            unsafe { sym(&lib, "dnnl_version")? };
        // SAFETY: dnnl_version returns a pointer to a static struct.
        let v = unsafe { &*version() };
        if v.major != 2 {
            return Err(format!(
                "oneDNN {}.{} found, this build speaks 2.x",
                v.major, v.minor
            ));
        }
        let api = unsafe {
            Api {
                engine_create: sym(&lib, "dnnl_engine_create")?,
                stream_create: sym(&lib, "dnnl_stream_create")?,
                stream_wait: sym(&lib, "dnnl_stream_wait")?,
                stream_destroy: sym(&lib, "dnnl_stream_destroy")?,
                md_init_by_tag: sym(&lib, "dnnl_memory_desc_init_by_tag")?,
                md_get_size: sym(&lib, "dnnl_memory_desc_get_size")?,
                md_equal: sym(&lib, "dnnl_memory_desc_equal")?,
                memory_create: sym(&lib, "dnnl_memory_create")?,
                memory_destroy: sym(&lib, "dnnl_memory_destroy")?,
                conv_fwd_init: sym(&lib, "dnnl_convolution_forward_desc_init")?,
                conv_bwd_data_init: sym(&lib, "dnnl_convolution_backward_data_desc_init")?,
                conv_bwd_weights_init: sym(&lib, "dnnl_convolution_backward_weights_desc_init")?,
                pd_create: sym(&lib, "dnnl_primitive_desc_create")?,
                pd_destroy: sym(&lib, "dnnl_primitive_desc_destroy")?,
                pd_query_md: sym(&lib, "dnnl_primitive_desc_query_md")?,
                reorder_pd_create: sym(&lib, "dnnl_reorder_primitive_desc_create")?,
                prim_create: sym(&lib, "dnnl_primitive_create")?,
                prim_execute: sym(&lib, "dnnl_primitive_execute")?,
                attr_create: sym(&lib, "dnnl_primitive_attr_create")?,
                attr_destroy: sym(&lib, "dnnl_primitive_attr_destroy")?,
                attr_set_post_ops: sym(&lib, "dnnl_primitive_attr_set_post_ops")?,
                attr_set_scratchpad_mode: sym(&lib, "dnnl_primitive_attr_set_scratchpad_mode")?,
                post_ops_create: sym(&lib, "dnnl_post_ops_create")?,
                post_ops_destroy: sym(&lib, "dnnl_post_ops_destroy")?,
                post_ops_append_eltwise: sym(&lib, "dnnl_post_ops_append_eltwise")?,
                sgemm: sym(&lib, "dnnl_sgemm")?,
                // libgomp, loaded as the library's dependency.
                omp_set_num_threads: sym(&lib, "omp_set_num_threads").ok(),
                _lib: lib,
            }
        };
        let mut engine = std::ptr::null_mut();
        check(
            unsafe { (api.engine_create)(&mut engine, CPU, 0) },
            "engine_create",
        )
        .map_err(|e| e.to_string())?;
        Ok(Self {
            api,
            engine,
            version: format!("{}.{}.{}", v.major, v.minor, v.patch),
            plans: Mutex::new(HashMap::new()),
        })
    }

    /// This thread's next oneDNN calls run on it alone: the work is split over rayon's
    /// threads by the callers here, so OpenMP never starts a team of its own.
    fn single_threaded(&self) {
        if let Some(set) = self.api.omp_set_num_threads {
            // SAFETY: plain libgomp call; it sets the calling thread's own thread count.
            unsafe { set(1) }
        }
    }

    /// `C = A B` (or `C += A B` when `accumulate`) for row-major operands, each either
    /// stored as is (`trans` false, leading dimension `ld`) or as its transpose. The
    /// longer side of `C` is cut into one block per rayon thread, each block one
    /// single-threaded sgemm; every element is summed in the same order whatever the
    /// blocks, so a product is the same bit for bit at any thread count.
    pub(super) fn sgemm(
        &self,
        (m, n, k): (usize, usize, usize),
        a: (&[f32], bool, usize),
        b: (&[f32], bool, usize),
        c: &mut [f32],
        ldc: usize,
        accumulate: bool,
    ) -> Result<()> {
        let by_rows = m >= n;
        let blocks = split(if by_rows { m } else { n });
        // Raw addresses (as integers, so the closure is Send): blocks write disjoint
        // parts of C.
        let (pa, pb, pc) = (
            a.0.as_ptr() as usize,
            b.0.as_ptr() as usize,
            c.as_mut_ptr() as usize,
        );
        let run = |&(start, len): &(usize, usize)| -> Result<()> {
            // Block of rows: A's rows start..start+len (row `start` of A is at `start *
            // lda`, or at column `start` when A is stored transposed), C's rows likewise.
            // Block of columns: B's and C's columns.
            let (mm, nn) = if by_rows { (len, n) } else { (m, len) };
            let a_off = if by_rows {
                if a.1 { start } else { start * a.2 }
            } else {
                0
            };
            let b_off = if by_rows {
                0
            } else if b.1 {
                start * b.2
            } else {
                start
            };
            let c_off = if by_rows { start * ldc } else { start };
            let t = |tr: bool| if tr { b'T' as c_char } else { b'N' as c_char };
            self.single_threaded();
            // SAFETY: the caller (`matmul`) checked every operand's extent against its
            // slice; the block offsets stay inside those extents, and the blocks of C are
            // disjoint.
            let s = unsafe {
                (self.api.sgemm)(
                    t(a.1),
                    t(b.1),
                    mm as i64,
                    nn as i64,
                    k as i64,
                    1.0,
                    (pa as *const f32).add(a_off),
                    a.2 as i64,
                    (pb as *const f32).add(b_off),
                    b.2 as i64,
                    if accumulate { 1.0 } else { 0.0 },
                    (pc as *mut f32).add(c_off),
                    ldc as i64,
                )
            };
            check(s, "sgemm")
        };
        blocks.par_iter().map(run).collect()
    }

    /// The cached plan for `key`, built on first use.
    fn plan(&self, key: PlanKey) -> Result<Arc<Plan>> {
        let mut plans = self.plans.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = plans.get(&key) {
            return Ok(p.clone());
        }
        let plan = Arc::new(Plan::build(self, key)?);
        plans.insert(key, plan.clone());
        Ok(plan)
    }

    /// Runs `pass` on each part of the batch (one per rayon thread, see [`split`]) on
    /// that thread: part `(b0, nb)` gets its plan and the buffers `args` names for it,
    /// given its own slice of `outs`.
    fn run_parts(
        &self,
        shape: ConvShape,
        pass: Pass,
        parts: &[(usize, usize)],
        outs: Vec<&mut [f32]>,
        args: impl Fn((usize, usize), &mut [f32]) -> Vec<(c_int, *mut f32)> + Sync,
    ) -> Result<()> {
        parts
            .par_iter()
            .zip(outs)
            .map(|(&(b0, nb), out)| {
                let key = PlanKey {
                    shape: shape.with_batch(nb),
                    pass,
                };
                self.plan(key)?.run(self, &args((b0, nb), out))
            })
            .collect()
    }

    /// `out = conv(x, w) + bias` (then ReLU when `relu`), all plain row-major tensors.
    pub(super) fn conv_forward(
        &self,
        shape: ConvShape,
        relu: bool,
        (x, w, bias): (&[f32], &[f32], &[f32]),
        out: &mut [f32],
    ) -> Result<()> {
        let parts = split(shape.b);
        let outs = split_mut(out, &parts, shape.out_image());
        self.run_parts(
            shape,
            Pass::Forward { relu },
            &parts,
            outs,
            |(b0, nb), out| {
                vec![
                    (ARG_SRC, images(x, b0, nb, shape.in_image())),
                    (ARG_WEIGHTS, w.as_ptr().cast_mut()),
                    (ARG_BIAS, bias.as_ptr().cast_mut()),
                    (ARG_DST, out.as_mut_ptr()),
                ]
            },
        )
    }

    /// `dx` of the convolution from the kernel and the output gradient.
    pub(super) fn conv_backward_data(
        &self,
        shape: ConvShape,
        (w, dy): (&[f32], &[f32]),
        dx: &mut [f32],
    ) -> Result<()> {
        let parts = split(shape.b);
        let dxs = split_mut(dx, &parts, shape.in_image());
        self.run_parts(shape, Pass::BackwardData, &parts, dxs, |(b0, nb), dx| {
            vec![
                (ARG_WEIGHTS, w.as_ptr().cast_mut()),
                (ARG_DIFF_DST, images(dy, b0, nb, shape.out_image())),
                (ARG_DIFF_SRC, dx.as_mut_ptr()),
            ]
        })
    }

    /// `[dW | db]` of the convolution (`dwb`: the kernel gradient, then the bias's) from
    /// the input and the output gradient. Each part of the batch gives its own, summed in
    /// part order (the same bits for the same thread count).
    pub(super) fn conv_backward_weights(
        &self,
        shape: ConvShape,
        (x, dy): (&[f32], &[f32]),
        dwb: &mut [f32],
    ) -> Result<()> {
        let parts = split(shape.b);
        let n_w = dwb.len() - shape.c_out;
        // Part 0 writes into `dwb`; the others into buffers of their own.
        let mut extra: Vec<Vec<f32>> = (1..parts.len()).map(|_| vec![0f32; dwb.len()]).collect();
        let mut outs: Vec<&mut [f32]> = vec![&mut *dwb];
        outs.extend(extra.iter_mut().map(|v| v.as_mut_slice()));
        self.run_parts(
            shape,
            Pass::BackwardWeights,
            &parts,
            outs,
            |(b0, nb), out| {
                vec![
                    (ARG_SRC, images(x, b0, nb, shape.in_image())),
                    (ARG_DIFF_DST, images(dy, b0, nb, shape.out_image())),
                    (ARG_DIFF_WEIGHTS, out.as_mut_ptr()),
                    (ARG_DIFF_BIAS, out[n_w..].as_mut_ptr()),
                ]
            },
        )?;
        for part in &extra {
            dwb.par_chunks_mut(1 << 14)
                .zip(part.par_chunks(1 << 14))
                .for_each(|(d, p)| d.iter_mut().zip(p).for_each(|(d, p)| *d += p));
        }
        Ok(())
    }
}

/// Images `b0..b0 + nb` of a batch stored `per` elements an image, as an argument
/// pointer (read-only arguments are passed as `*mut`, as the C API takes them).
fn images(v: &[f32], b0: usize, nb: usize, per: usize) -> *mut f32 {
    v[b0 * per..(b0 + nb) * per].as_ptr().cast_mut()
}

/// `n` cut into one contiguous part per rayon thread (fewer when `n` is smaller):
/// `(start, len)`, in order.
fn split(n: usize) -> Vec<(usize, usize)> {
    let k = candle_core::utils::get_num_threads().clamp(1, n.max(1));
    (0..k)
        .map(|i| (i * n / k, (i + 1) * n / k - i * n / k))
        .collect()
}

/// `v` cut at the parts' boundaries, `per` elements per unit.
fn split_mut<'a>(mut v: &'a mut [f32], parts: &[(usize, usize)], per: usize) -> Vec<&'a mut [f32]> {
    let mut out = Vec::with_capacity(parts.len());
    for &(_, len) in parts {
        let (head, tail) = std::mem::take(&mut v).split_at_mut(len * per);
        out.push(head);
        v = tail;
    }
    out
}

fn check(status: Status, what: &str) -> Result<()> {
    if status == SUCCESS {
        Ok(())
    } else {
        candle_core::bail!(
            "oneDNN {what} failed with status {status} (PIPELINE_ONEDNN=off runs the built-in \
             CPU kernels instead)"
        )
    }
}

/// A convolution's sizes: input `(b, c_in, h, w)`, kernel `(c_out, c_in / groups, kh,
/// kw)`, output `(b, c_out, oh, ow)`, one stride and one padding for both axes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct ConvShape {
    pub b: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub oh: usize,
    pub ow: usize,
    pub stride: usize,
    pub padding: usize,
    pub groups: usize,
}

impl ConvShape {
    /// The same convolution over `b` images.
    fn with_batch(self, b: usize) -> Self {
        Self { b, ..self }
    }

    fn src_dims(&self) -> [usize; 4] {
        [self.b, self.c_in, self.h, self.w]
    }

    fn dst_dims(&self) -> [usize; 4] {
        [self.b, self.c_out, self.oh, self.ow]
    }

    /// The kernel's dims and plain layout: `(c_out, c_in, kh, kw)` as OIHW, or with
    /// groups `(g, c_out / g, c_in / g, kh, kw)` as GOIHW (the same memory).
    fn weight_dims(&self) -> (Vec<usize>, c_int) {
        let (g, kh, kw) = (self.groups, self.kh, self.kw);
        if g > 1 {
            (vec![g, self.c_out / g, self.c_in / g, kh, kw], TAG_GOIHW)
        } else {
            (vec![self.c_out, self.c_in, kh, kw], TAG_NCHW)
        }
    }

    /// Elements of one input image.
    fn in_image(&self) -> usize {
        self.c_in * self.h * self.w
    }

    /// Elements of one output image.
    fn out_image(&self) -> usize {
        self.c_out * self.oh * self.ow
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Pass {
    Forward { relu: bool },
    BackwardData,
    BackwardWeights,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PlanKey {
    shape: ConvShape,
    pass: Pass,
}

/// One argument of a primitive: the plain layout the caller hands over, the layout the
/// primitive chose, and the reorder between them when they differ.
struct Arg {
    arg: c_int,
    /// Read by the primitive (reordered before it runs) or written (after).
    input: bool,
    user: Box<MemDesc>,
    /// Owned by the plan's primitive descriptor.
    inner: *const MemDesc,
    inner_floats: usize,
    reorder: Option<Reorder>,
}

/// A reorder primitive with its descriptor (kept alive: the scratchpad layout points
/// into it) and scratchpad size.
struct Reorder {
    prim: Prim,
    _pd: PrimDesc,
    scratchpad: Scratchpad,
}

/// A primitive's scratchpad: its layout (owned by the primitive descriptor) and size.
#[derive(Clone, Copy)]
struct Scratchpad {
    md: *const MemDesc,
    floats: usize,
}

/// A primitive for one shape and pass, with its arguments.
struct Plan {
    /// Kept alive: the arguments' inner layouts point into it.
    _pd: PrimDesc,
    prim: Prim,
    scratchpad: Scratchpad,
    args: Vec<Arg>,
}

// SAFETY: a plan is immutable once built; oneDNN primitives may execute on several
// threads at once when, as here, each call brings its own stream, memories and
// scratchpad (user scratchpad mode).
unsafe impl Send for Plan {}
unsafe impl Sync for Plan {}

/// The scratchpad a primitive descriptor asks for (none: zero floats).
///
/// SAFETY: `pd` must be a live primitive descriptor.
unsafe fn scratchpad_of(d: &OneDnn, pd: PrimDesc) -> Scratchpad {
    let md = unsafe { (d.api.pd_query_md)(pd, QUERY_SCRATCHPAD, 0) };
    let floats = if md.is_null() {
        0
    } else {
        unsafe { (d.api.md_get_size)(md) }.div_ceil(4)
    };
    Scratchpad { md, floats }
}

/// A descriptor of an f32 tensor of `dims` in layout `tag` (`TAG_ANY`: the primitive's
/// choice).
fn desc(d: &OneDnn, dims: &[usize], tag: c_int) -> Result<Box<MemDesc>> {
    let mut md = MemDesc::boxed();
    let mut dd: Dims = [0; 12];
    for (o, &v) in dd.iter_mut().zip(dims) {
        *o = v as i64;
    }
    // SAFETY: writes one descriptor buffer, larger than the library's struct.
    check(
        unsafe { (d.api.md_init_by_tag)(&mut *md, dims.len() as c_int, dd.as_ptr(), F32, tag) },
        "memory desc",
    )?;
    Ok(md)
}

/// The plain descriptors of a convolution's tensors: `(src, weights, bias, dst)`.
fn plain_descs(d: &OneDnn, s: &ConvShape) -> Result<[Box<MemDesc>; 4]> {
    let (wdims, wtag) = s.weight_dims();
    Ok([
        desc(d, &s.src_dims(), TAG_NCHW)?,
        desc(d, &wdims, wtag)?,
        desc(d, &[s.c_out], TAG_X)?,
        desc(d, &s.dst_dims(), TAG_NCHW)?,
    ])
}

/// Creates the operation descriptor of `pass` (and the primitive descriptor).
fn conv_pd(d: &OneDnn, s: &ConvShape, pass: Pass, bias: &MemDesc) -> Result<PrimDesc> {
    let src = desc(d, &s.src_dims(), TAG_ANY)?;
    let wei = desc(d, &s.weight_dims().0, TAG_ANY)?;
    let dst = desc(d, &s.dst_dims(), TAG_ANY)?;
    // Both spatial axes alike.
    let pair = |v: usize| -> Dims {
        let mut d = [0; 12];
        d[..2].fill(v as i64);
        d
    };
    let (strides, pad) = (pair(s.stride), pair(s.padding));
    let a = &d.api;
    let fwd_desc = || -> Result<Box<OpDesc>> {
        let mut od = Box::new(OpDesc([0; 8192]));
        // SAFETY: descriptor buffers outlive the call; the op buffer is large enough.
        check(
            unsafe {
                (a.conv_fwd_init)(
                    &mut *od,
                    FORWARD_TRAINING,
                    CONVOLUTION_DIRECT,
                    &*src,
                    &*wei,
                    bias,
                    &*dst,
                    strides.as_ptr(),
                    pad.as_ptr(),
                    pad.as_ptr(),
                )
            },
            "convolution forward desc",
        )?;
        Ok(od)
    };
    let create = |od: &OpDesc, attr: Attr, hint: PrimDesc| -> Result<PrimDesc> {
        let mut pd = std::ptr::null_mut();
        // SAFETY: the descriptor is initialised; attr and hint may be null.
        check(
            unsafe { (a.pd_create)(&mut pd, od, attr, d.engine, hint) },
            "convolution primitive desc",
        )?;
        Ok(pd)
    };
    // Every primitive takes its scratchpad from the caller (`SCRATCHPAD_USER`), so one
    // primitive can run on several threads at once; the forward pass fuses the ReLU as an
    // eltwise post-op.
    let relu = matches!(pass, Pass::Forward { relu: true });
    let (mut attr, mut po) = (std::ptr::null_mut(), std::ptr::null_mut());
    // SAFETY: plain attribute calls; both objects are destroyed below.
    let attr_made = unsafe {
        check((a.attr_create)(&mut attr), "attr")
            .and_then(|_| {
                check(
                    (a.attr_set_scratchpad_mode)(attr, SCRATCHPAD_USER),
                    "scratchpad mode",
                )
            })
            .and_then(|_| check((a.post_ops_create)(&mut po), "post ops"))
            .and_then(|_| {
                if relu {
                    check(
                        (a.post_ops_append_eltwise)(po, 1.0, ELTWISE_RELU, 0.0, 0.0),
                        "relu",
                    )?;
                    check((a.attr_set_post_ops)(attr, po), "post ops")?;
                }
                Ok(())
            })
    };
    let made = attr_made.and_then(|_| match pass {
        Pass::Forward { .. } => create(&*fwd_desc()?, attr, std::ptr::null_mut()),
        Pass::BackwardData | Pass::BackwardWeights => {
            // The backward passes are described relative to a forward one (a hint).
            let hint = create(&*fwd_desc()?, std::ptr::null_mut(), std::ptr::null_mut())?;
            let mut od = Box::new(OpDesc([0; 8192]));
            // SAFETY: descriptor buffers outlive the call; the op buffer is large enough.
            let made = check(
                unsafe {
                    if pass == Pass::BackwardData {
                        (a.conv_bwd_data_init)(
                            &mut *od,
                            CONVOLUTION_DIRECT,
                            &*src,
                            &*wei,
                            &*dst,
                            strides.as_ptr(),
                            pad.as_ptr(),
                            pad.as_ptr(),
                        )
                    } else {
                        (a.conv_bwd_weights_init)(
                            &mut *od,
                            CONVOLUTION_DIRECT,
                            &*src,
                            &*wei,
                            bias,
                            &*dst,
                            strides.as_ptr(),
                            pad.as_ptr(),
                            pad.as_ptr(),
                        )
                    }
                },
                "convolution backward desc",
            )
            .and_then(|_| create(&od, attr, hint));
            // SAFETY: the hint is only read while creating.
            unsafe { (a.pd_destroy)(hint) };
            made
        }
    });
    // SAFETY: created above (null handles are accepted by the destroy calls).
    unsafe {
        (a.post_ops_destroy)(po);
        (a.attr_destroy)(attr);
    }
    made
}

impl Plan {
    fn build(d: &OneDnn, key: PlanKey) -> Result<Self> {
        let s = &key.shape;
        let [src, wei, bias, dst] = plain_descs(d, s)?;
        let pd = conv_pd(d, s, key.pass, &bias)?;
        let spec: Vec<(c_int, bool, Box<MemDesc>, c_int)> = match key.pass {
            Pass::Forward { .. } => vec![
                (ARG_SRC, true, src, QUERY_SRC),
                (ARG_WEIGHTS, true, wei, QUERY_WEIGHTS),
                (ARG_BIAS, true, bias, 0),
                (ARG_DST, false, dst, QUERY_DST),
            ],
            Pass::BackwardData => vec![
                (ARG_WEIGHTS, true, wei, QUERY_WEIGHTS),
                (ARG_DIFF_DST, true, dst, QUERY_DIFF_DST),
                (ARG_DIFF_SRC, false, src, QUERY_DIFF_SRC),
            ],
            Pass::BackwardWeights => vec![
                (ARG_SRC, true, src, QUERY_SRC),
                (ARG_DIFF_DST, true, dst, QUERY_DIFF_DST),
                (ARG_DIFF_WEIGHTS, false, wei, QUERY_DIFF_WEIGHTS),
                (ARG_DIFF_BIAS, false, bias, 0),
            ],
        };
        let mut plan = Plan {
            _pd: pd,
            prim: std::ptr::null_mut(),
            // SAFETY: `pd` was just created.
            scratchpad: unsafe { scratchpad_of(d, pd) },
            args: Vec::new(),
        };
        let a = &d.api;
        // SAFETY: every handle created here is owned by `plan`, which lives as long as
        // the process (plans are cached for good, one per shape and pass).
        unsafe {
            check((a.prim_create)(&mut plan.prim, pd), "convolution primitive")?;
            for (arg, input, user, query) in spec {
                // The bias keeps its plain layout (queried layouts equal it anyway).
                let inner: *const MemDesc = if query == 0 {
                    &*user
                } else {
                    (a.pd_query_md)(pd, query, 0)
                };
                if inner.is_null() {
                    candle_core::bail!("oneDNN: convolution has no layout for argument {arg}")
                }
                let reorder = if (a.md_equal)(&*user, inner) != 0 {
                    None
                } else {
                    let (from, to) = if input {
                        (&*user as *const _, inner)
                    } else {
                        (inner, &*user as *const _)
                    };
                    let (mut rpd, mut attr) = (std::ptr::null_mut(), std::ptr::null_mut());
                    let made = check((a.attr_create)(&mut attr), "attr")
                        .and_then(|_| {
                            check(
                                (a.attr_set_scratchpad_mode)(attr, SCRATCHPAD_USER),
                                "scratchpad mode",
                            )
                        })
                        .and_then(|_| {
                            check(
                                (a.reorder_pd_create)(&mut rpd, from, d.engine, to, d.engine, attr),
                                "reorder desc",
                            )
                        });
                    (a.attr_destroy)(attr);
                    made?;
                    let mut r = std::ptr::null_mut();
                    check((a.prim_create)(&mut r, rpd), "reorder")?;
                    Some(Reorder {
                        prim: r,
                        _pd: rpd,
                        scratchpad: scratchpad_of(d, rpd),
                    })
                };
                let inner_floats = (a.md_get_size)(inner).div_ceil(4);
                plan.args.push(Arg {
                    arg,
                    input,
                    user,
                    inner,
                    inner_floats,
                    reorder,
                });
            }
        }
        Ok(plan)
    }

    /// Runs the primitive on the caller's plain buffers (`(argument, pointer)`, sized
    /// by the shape) on this thread alone, reordering into and out of the primitive's
    /// layouts; the stream, the memories and the scratchpads are this call's own.
    fn run(&self, d: &OneDnn, buffers: &[(c_int, *mut f32)]) -> Result<()> {
        d.single_threaded();
        let a = &d.api;
        let mut stream = std::ptr::null_mut();
        // SAFETY: one stream on the engine, destroyed below.
        check(
            unsafe { (a.stream_create)(&mut stream, d.engine, STREAM_DEFAULT) },
            "stream",
        )?;
        let mut call = Call {
            d,
            memories: Vec::new(),
            bufs: Vec::new(),
        };
        let result = (|| -> Result<()> {
            let mut exec = Vec::with_capacity(self.args.len() + 1);
            let mut after = Vec::new();
            for arg in &self.args {
                let Some(&(_, ptr)) = buffers.iter().find(|(k, _)| *k == arg.arg) else {
                    candle_core::bail!("oneDNN: no buffer for argument {}", arg.arg)
                };
                let user = call.memory(&*arg.user, ptr)?;
                let Some(reorder) = &arg.reorder else {
                    exec.push(ExecArg {
                        arg: arg.arg,
                        memory: user,
                    });
                    continue;
                };
                let inner = call.buffer(arg.inner, arg.inner_floats)?;
                let pad = call.scratchpad(reorder.scratchpad)?;
                if arg.input {
                    execute(
                        d,
                        reorder.prim,
                        stream,
                        &[(ARG_SRC, user), (ARG_DST, inner)],
                        pad,
                    )?;
                } else {
                    after.push((reorder.prim, inner, user, pad));
                }
                exec.push(ExecArg {
                    arg: arg.arg,
                    memory: inner,
                });
            }
            if let Some(pad) = call.scratchpad(self.scratchpad)? {
                exec.push(ExecArg {
                    arg: ARG_SCRATCHPAD,
                    memory: pad,
                });
            }
            // SAFETY: every argument's memory is alive until the stream is drained.
            check(
                unsafe { (a.prim_execute)(self.prim, stream, exec.len() as c_int, exec.as_ptr()) },
                "convolution",
            )?;
            for (prim, inner, user, pad) in after {
                execute(d, prim, stream, &[(ARG_SRC, inner), (ARG_DST, user)], pad)?;
            }
            check(unsafe { (a.stream_wait)(stream) }, "stream wait")
        })();
        drop(call);
        // SAFETY: created above; the stream was drained (or the call failed).
        unsafe { (a.stream_destroy)(stream) };
        result
    }
}

/// The memory objects and buffers of one call, released when it ends.
struct Call<'a> {
    d: &'a OneDnn,
    memories: Vec<Memory>,
    bufs: Vec<super::workspace::Scratch<f32>>,
}

impl Call<'_> {
    /// A memory object of layout `md` over `ptr`.
    fn memory(&mut self, md: *const MemDesc, ptr: *mut f32) -> Result<Memory> {
        let mut m = std::ptr::null_mut();
        // SAFETY: `ptr` addresses at least `md`'s size: the callers size their buffers
        // from the same shape, and ours come from `buffer`.
        check(
            unsafe { (self.d.api.memory_create)(&mut m, md, self.d.engine, ptr.cast()) },
            "memory",
        )?;
        self.memories.push(m);
        Ok(m)
    }

    /// A memory object of layout `md` over a reused buffer of `floats` elements.
    fn buffer(&mut self, md: *const MemDesc, floats: usize) -> Result<Memory> {
        let mut buf = scratch::<f32>(floats);
        let m = self.memory(md, buf.as_mut_ptr())?;
        self.bufs.push(buf);
        Ok(m)
    }

    /// A primitive's scratchpad, if it needs one.
    fn scratchpad(&mut self, sp: Scratchpad) -> Result<Option<Memory>> {
        if sp.floats == 0 {
            return Ok(None);
        }
        self.buffer(sp.md, sp.floats).map(Some)
    }
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        for &m in &self.memories {
            // SAFETY: created by `memory`; the stream they were used on was drained.
            unsafe { (self.d.api.memory_destroy)(m) };
        }
    }
}

/// Executes a reorder (`ARG_SRC` = from, `ARG_DST` = to, as ARG_FROM/ARG_TO are
/// defined) with its scratchpad, if it has one.
fn execute(
    d: &OneDnn,
    prim: Prim,
    stream: Stream,
    args: &[(c_int, Memory)],
    pad: Option<Memory>,
) -> Result<()> {
    let mut exec: Vec<ExecArg> = args
        .iter()
        .map(|&(arg, memory)| ExecArg { arg, memory })
        .collect();
    if let Some(memory) = pad {
        exec.push(ExecArg {
            arg: ARG_SCRATCHPAD,
            memory,
        });
    }
    // SAFETY: the memories are alive until the caller drains the stream.
    check(
        unsafe { (d.api.prim_execute)(prim, stream, exec.len() as c_int, exec.as_ptr()) },
        "reorder",
    )
}
