//! Dense linear layers on cuBLASLt: `y[T, out] = x[T, in] · Wᵀ` with W in
//! HuggingFace layout `[out, in]`, bf16 operands, fp32 accumulation, bf16 or
//! f32 output. Descriptors are cached per shape so a steady-state call is
//! one `cublasLtMatmul`.
//!
//! The algorithm is chosen once per *bucket* of token counts ([`bucket`]),
//! not per count: a serving engine meets a new prefill length nearly every
//! step, and a first GEMM at a new length paid the heuristic query and the
//! lazy load of a kernel image it had not run yet — 1.4 to 13 ms on top of
//! a 7 ms step on the H100, which made prefill steps in serving runs slower
//! than the same shapes in the (warmed-up, repeated) profile.
//! [`Gpu::warm_gemm`] runs every bucket of a weight once at start-up, so in
//! serving every count finds its algorithm and its kernel loaded.

use std::collections::HashMap;
use std::ffi::c_void;
use std::mem::size_of;
use std::sync::{Arc, Mutex};

use cudarc::cublaslt::{result, sys};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};
use half::bf16;

use crate::error::{ensure, KernelError, Result};
use crate::gpu::Gpu;
use crate::launch::{rd, wr};

/// 32 MiB: NVIDIA's recommended cuBLASLt workspace on Hopper (cuBLAS docs,
/// "cublasLtMatmul workspace").
const WORKSPACE_BYTES: usize = 32 << 20;

/// Output element types a GEMM can write.
pub trait GemmOut: cudarc::driver::DeviceRepr {
    #[doc(hidden)]
    const DTYPE: sys::cudaDataType;
    #[doc(hidden)]
    const GEMV_SUFFIX: &'static str;
}
impl GemmOut for bf16 {
    const DTYPE: sys::cudaDataType = sys::cudaDataType::CUDA_R_16BF;
    const GEMV_SUFFIX: &'static str = "bf16_out";
}
impl GemmOut for f32 {
    const DTYPE: sys::cudaDataType = sys::cudaDataType::CUDA_R_32F;
    const GEMV_SUFFIX: &'static str = "f32_out";
}

/// Up to this many tokens, `Gpu::gemm` uses the skinny kernel of gemv.cu:
/// at one token it streams W at 0.84-0.98 of copy bandwidth against
/// cuBLASLt's 0.75-0.94; at four it reached 0.54 against 0.74
/// (kernels/BENCH.md), so only single tokens take it.
pub const GEMV_MAX_TOKENS: usize = 1;
/// Output rows per block of the skinny kernel (warps × rows per warp).
const GEMV_ROWS_PER_BLOCK: usize = 16;

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct PlanKey {
    tokens: u64,
    in_features: u64,
    out_features: u64,
    out_f32: bool,
    /// Smallest alignment of the three pointers (capped at 256 bytes).
    align: u32,
}

/// Token counts sharing one algorithm: exact up to 32, then rounded up to
/// 32, 128 and 512 as counts grow (71 buckets up to 8192). The bucket's
/// algorithm was chosen for its largest count, so it tiles every smaller
/// count of the bucket too (checked by `cublasLtMatmulAlgoCheck`).
pub fn bucket(tokens: usize) -> usize {
    let step = match tokens {
        0..=32 => 1,
        33..=512 => 32,
        513..=2048 => 128,
        _ => 512,
    };
    tokens.div_ceil(step) * step
}

/// One shape's descriptors and chosen algorithm.
struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    a: sys::cublasLtMatrixLayout_t,
    b: sys::cublasLtMatrixLayout_t,
    c: sys::cublasLtMatrixLayout_t,
    algo: sys::cublasLtMatmulAlgo_t,
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: created in `Blas::plan` and owned only here.
        unsafe {
            let _ = result::destroy_matrix_layout(self.a);
            let _ = result::destroy_matrix_layout(self.b);
            let _ = result::destroy_matrix_layout(self.c);
            let _ = result::destroy_matmul_desc(self.desc);
        }
    }
}

/// cuBLASLt handle, workspace and plan cache.
pub(crate) struct Blas {
    handle: sys::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    plans: Mutex<HashMap<PlanKey, Plan>>,
    /// The heuristic's algorithm per bucket (`PlanKey::tokens` = the
    /// bucket's largest count).
    algos: Mutex<HashMap<PlanKey, sys::cublasLtMatmulAlgo_t>>,
}

// SAFETY: the handle and descriptors are used under the `plans` lock or only
// read; cuBLASLt handles may be shared across threads.
unsafe impl Send for Blas {}
unsafe impl Sync for Blas {}

impl Drop for Blas {
    fn drop(&mut self) {
        self.plans.lock().expect("plan lock").clear();
        // SAFETY: the handle is not used after this.
        unsafe {
            let _ = result::destroy_handle(self.handle);
        }
    }
}

fn blas_err(what: &str, e: impl std::fmt::Debug) -> KernelError {
    KernelError::Blas(format!("{what}: {e:?}"))
}

impl Blas {
    pub(crate) fn new(stream: Arc<CudaStream>) -> Result<Blas> {
        let handle = result::create_handle().map_err(|e| blas_err("create handle", e))?;
        let workspace = stream.alloc_zeros::<u8>(WORKSPACE_BYTES)?;
        Ok(Blas { handle, workspace, plans: Mutex::new(HashMap::new()), algos: Mutex::new(HashMap::new()) })
    }

    /// Descriptors for exactly `key`'s shape, with no algorithm yet.
    fn descriptors(key: PlanKey, out_type: sys::cudaDataType) -> Result<Plan> {
        let bf = sys::cudaDataType::CUDA_R_16BF;
        // Column-major view: yᵀ[out, T] = (W as col-major [in, out])ᵀ · xᵀ[in, T].
        let a = result::create_matrix_layout(bf, key.in_features, key.out_features, key.in_features as i64)
            .map_err(|e| blas_err("layout W", e))?;
        let b = result::create_matrix_layout(bf, key.in_features, key.tokens, key.in_features as i64)
            .map_err(|e| blas_err("layout x", e))?;
        let c = result::create_matrix_layout(out_type, key.out_features, key.tokens, key.out_features as i64)
            .map_err(|e| blas_err("layout y", e))?;
        let desc = result::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType::CUDA_R_32F,
        )
        .map_err(|e| blas_err("matmul desc", e))?;
        // SAFETY: an all-zero algorithm is plain data, replaced before use.
        let plan = Plan { desc, a, b, c, algo: unsafe { std::mem::zeroed() } };
        let transpose: i32 = 1; // CUBLAS_OP_T
        // SAFETY: the descriptor is live; the attribute value is an integer.
        unsafe {
            result::set_matmul_desc_attribute(
                plan.desc,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                &transpose as *const i32 as *const c_void,
                size_of::<i32>(),
            )
        }
        .map_err(|e| blas_err("transa", e))?;
        Ok(plan)
    }

    /// The heuristic's first choice for `plan`'s shape.
    fn heuristic(&self, plan: &Plan, align: u32) -> Result<sys::cublasLtMatmulAlgo_t> {
        // SAFETY: descriptors are live; attribute values are plain integers.
        unsafe {
            let pref = result::create_matmul_pref().map_err(|e| blas_err("preference", e))?;
            let ws = WORKSPACE_BYTES;
            let mut r = result::set_matmul_pref_attribute(
                pref,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &ws as *const usize as *const c_void,
                size_of::<usize>(),
            );
            for attr in [
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
            ] {
                r = r.and_then(|()| {
                    result::set_matmul_pref_attribute(
                        pref,
                        attr,
                        &align as *const u32 as *const c_void,
                        size_of::<u32>(),
                    )
                });
            }
            let heuristic = r.and_then(|()| {
                result::get_matmul_algo_heuristic(self.handle, plan.desc, plan.a, plan.b, plan.c, plan.c, pref)
            });
            let _ = result::destroy_matmul_pref(pref);
            Ok(heuristic.map_err(|e| blas_err("no algorithm for this shape", e))?.algo)
        }
    }

    /// Whether `algo` runs `plan`'s exact shape within the workspace.
    fn algo_fits(&self, plan: &Plan, algo: &sys::cublasLtMatmulAlgo_t) -> bool {
        // SAFETY: descriptors are live; `out` is written by the call.
        unsafe {
            let mut out: sys::cublasLtMatmulHeuristicResult_t = std::mem::zeroed();
            let status = sys::cublasLtMatmulAlgoCheck(self.handle, plan.desc, plan.a, plan.b, plan.c, plan.c, algo, &mut out);
            status == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS && out.workspaceSize <= WORKSPACE_BYTES
        }
    }

    /// `key`'s plan: its own descriptors, its bucket's algorithm (chosen
    /// on first use of the bucket), or its own heuristic choice where the
    /// bucket's does not fit it.
    fn plan(&self, key: PlanKey, out_type: sys::cudaDataType) -> Result<Plan> {
        let mut plan = Self::descriptors(key, out_type)?;
        let bkey = PlanKey { tokens: bucket(key.tokens as usize) as u64, ..key };
        let mut algos = self.algos.lock().expect("algo lock");
        let algo = match algos.get(&bkey) {
            Some(a) => *a,
            None => {
                let a = if bkey == key { self.heuristic(&plan, key.align)? } else { self.heuristic(&Self::descriptors(bkey, out_type)?, key.align)? };
                algos.insert(bkey, a);
                a
            }
        };
        plan.algo = if bkey == key || self.algo_fits(&plan, &algo) { algo } else { self.heuristic(&plan, key.align)? };
        Ok(plan)
    }
}

fn to_i32(v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| KernelError::Invalid(format!("{v} exceeds i32")))
}

/// Largest power of two (up to 256) dividing `ptr`.
fn alignment(ptr: u64) -> u32 {
    if ptr == 0 {
        256
    } else {
        (1u64 << ptr.trailing_zeros().min(8)) as u32
    }
}

impl Gpu {
    /// `y[tokens, out] = x[tokens, in] · Wᵀ`, W row-major `[out, in]` (the
    /// HuggingFace layout), bf16 in, fp32 accumulation, `O` = bf16 or f32 out
    /// (f32 for the LM head's logits). All three buffers are contiguous.
    /// Up to [`GEMV_MAX_TOKENS`] tokens run on the skinny kernel, more on
    /// cuBLASLt.
    pub fn gemm<O: GemmOut>(
        &self,
        x: &impl DevicePtr<bf16>,
        w: &impl DevicePtr<bf16>,
        y: &mut impl DevicePtrMut<O>,
        tokens: usize,
        in_features: usize,
        out_features: usize,
    ) -> Result<()> {
        if tokens > GEMV_MAX_TOKENS || !in_features.is_multiple_of(8) {
            return self.gemm_cublaslt(x, w, y, tokens, in_features, out_features);
        }
        let (xp, wp, yp) = self.gemm_operands(x, w, y, tokens, in_features, out_features)?;
        if xp % 16 != 0 || wp % 16 != 0 {
            // The skinny kernel reads 16-byte vectors.
            return self.gemm_cublaslt(x, w, y, tokens, in_features, out_features);
        }
        let s = &self.stream;
        let f = self.function(&format!("gemv1_{}", O::GEMV_SUFFIX))?;
        let (t, k, n) = (to_i32(tokens)?, to_i32(in_features)?, to_i32(out_features)?);
        let mut b = s.launch_builder(f);
        b.arg(&xp).arg(&wp).arg(&yp).arg(&t).arg(&k).arg(&n);
        let cfg = LaunchConfig {
            grid_dim: (out_features.div_ceil(GEMV_ROWS_PER_BLOCK) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: arguments match gemv_impl; lengths and alignment checked.
        unsafe { b.launch(cfg) }?;
        Ok(())
    }

    /// Device addresses of a GEMM's operands, after checking the shape
    /// against their lengths.
    fn gemm_operands<O: GemmOut>(
        &self,
        x: &impl DevicePtr<bf16>,
        w: &impl DevicePtr<bf16>,
        y: &mut impl DevicePtrMut<O>,
        tokens: usize,
        in_features: usize,
        out_features: usize,
    ) -> Result<(u64, u64, u64)> {
        ensure(tokens > 0 && in_features > 0 && out_features > 0, || {
            format!("gemm shape {tokens}x{in_features}x{out_features} has a zero")
        })?;
        let s = &self.stream;
        let ((xp, x_len), (wp, w_len), (yp, y_len)) = (rd(s, x), rd(s, w), wr(s, y));
        for (name, len, need) in [
            ("x", x_len, tokens * in_features),
            ("W", w_len, out_features * in_features),
            ("y", y_len, tokens * out_features),
        ] {
            ensure(len >= need, || format!("gemm: {name} holds {len} < {need}"))?;
        }
        Ok((xp, wp, yp))
    }

    /// Runs `w` ([out, in]) once at the largest count of every token bucket
    /// up to `max_tokens`, so that serving never pays a first GEMM's
    /// algorithm choice and kernel load (see the module docs). Returns the
    /// GEMMs run.
    pub fn warm_gemm(&self, w: &impl DevicePtr<bf16>, in_features: usize, out_features: usize, max_tokens: usize) -> Result<usize> {
        if max_tokens == 0 {
            return Ok(0);
        }
        let x = self.stream.alloc_zeros::<bf16>(max_tokens * in_features)?;
        let mut y = self.stream.alloc_zeros::<bf16>(max_tokens * out_features)?;
        let (mut m, mut runs) = (1, 0);
        while m <= max_tokens {
            let b = bucket(m);
            self.gemm(&x, w, &mut y, b.min(max_tokens), in_features, out_features)?;
            runs += 1;
            m = b + 1;
        }
        Ok(runs)
    }

    /// [`Gpu::gemm`] on cuBLASLt whatever the token count (the benchmark's
    /// comparison point for the skinny kernel).
    #[doc(hidden)]
    pub fn gemm_cublaslt<O: GemmOut>(
        &self,
        x: &impl DevicePtr<bf16>,
        w: &impl DevicePtr<bf16>,
        y: &mut impl DevicePtrMut<O>,
        tokens: usize,
        in_features: usize,
        out_features: usize,
    ) -> Result<()> {
        let (xp, wp, yp) = self.gemm_operands(x, w, y, tokens, in_features, out_features)?;
        let stream = &self.stream;
        let key = PlanKey {
            tokens: tokens as u64,
            in_features: in_features as u64,
            out_features: out_features as u64,
            out_f32: O::DTYPE == sys::cudaDataType::CUDA_R_32F,
            align: alignment(xp).min(alignment(wp)).min(alignment(yp)),
        };
        ensure(key.align >= 2, || "gemm: buffers must be 2-byte aligned".into())?;
        // cuBLASLt runs in the calling thread's current context.
        self.ctx.bind_to_thread()?;
        let blas = &self.blas;
        let mut plans = blas.plans.lock().expect("plan lock");
        if let std::collections::hash_map::Entry::Vacant(e) = plans.entry(key) {
            let plan = blas.plan(key, O::DTYPE)?;
            e.insert(plan);
        }
        let plan = &plans[&key];
        let (alpha, beta) = (1.0f32, 0.0f32);
        let (ws, _sws) = blas.workspace.device_ptr(stream);
        // SAFETY: shapes were checked against the buffers' lengths above; the
        // plan's layouts describe exactly these shapes.
        unsafe {
            result::matmul(
                blas.handle,
                plan.desc,
                &alpha as *const f32 as *const c_void,
                &beta as *const f32 as *const c_void,
                wp as *const c_void,
                plan.a,
                xp as *const c_void,
                plan.b,
                yp as *const c_void,
                plan.c,
                yp as *mut c_void,
                plan.c,
                &plan.algo,
                ws as *mut c_void,
                WORKSPACE_BYTES,
                stream.cu_stream() as sys::cudaStream_t,
            )
        }
        .map_err(|e| blas_err("matmul", e))
    }
}
