//! The GPU handle: CUDA context and stream, the NVRTC-compiled kernel
//! modules (compiled once per process), the cuBLASLt state, and plain
//! upload/download helpers.

use std::collections::HashMap;
use std::ffi::{c_char, CStr, CString};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr,
    ValidAsZeroBits,
};
use cudarc::nvrtc::Ptx;

use crate::error::{ensure, KernelError, Result};
use crate::gemm::Blas;

/// One `.cu` file: its name, its source, and the kernels it exports.
struct ModuleSource {
    name: &'static str,
    source: &'static str,
    functions: &'static [&'static str],
}

/// Prepended to every module: types and helpers that all kernels share.
const COMMON: &str = include_str!("../common.cuh");

const MODULES: &[ModuleSource] = &[
    ModuleSource {
        name: "elementwise",
        source: include_str!("../elementwise.cu"),
        functions: &[
            "embedding_bf16",
            "rms_norm_bf16",
            "add_rms_norm_bf16",
            "rope_kv_write_bf16",
            "silu_mul_bf16",
            "fill_uniform_bf16",
            "interleave_parts_bf16",
        ],
    },
    ModuleSource {
        name: "sampling",
        source: include_str!("../sampling.cu"),
        functions: &["argmax_f32", "argmax_bf16", "sample_f32", "sample_bf16"],
    },
    ModuleSource {
        name: "gemv",
        source: include_str!("../gemv.cu"),
        functions: &["gemv1_bf16_out", "gemv1_f32_out"],
    },
    ModuleSource {
        name: "decode_attention",
        source: include_str!("../decode_attention.cu"),
        functions: &[
            "decode_attn_hd64_g1",
            "decode_attn_hd64_g2",
            "decode_attn_hd64_g4",
            "decode_attn_hd64_g8",
            "decode_attn_hd128_g1",
            "decode_attn_hd128_g2",
            "decode_attn_hd128_g4",
            "decode_attn_hd128_g8",
            "decode_attn_tc_hd64_g1",
            "decode_attn_tc_hd64_g2",
            "decode_attn_tc_hd64_g4",
            "decode_attn_tc_hd64_g8",
            "decode_attn_tc_hd128_g1",
            "decode_attn_tc_hd128_g2",
            "decode_attn_tc_hd128_g4",
            "decode_attn_tc_hd128_g8",
            "decode_combine",
        ],
    },
    ModuleSource {
        name: "prefill_attention",
        source: include_str!("../prefill_attention.cu"),
        functions: &[
            "prefill_attn_hd64_g1",
            "prefill_attn_hd64_g2",
            "prefill_attn_hd64_g4",
            "prefill_attn_hd64_g8",
            "prefill_attn_hd128_g1",
            "prefill_attn_hd128_g2",
            "prefill_attn_hd128_g4",
            "prefill_attn_hd128_g8",
            "prefill_attn_hd128_g4_mt1",
        ],
    },
];

/// Whether libcuda, NVRTC and cuBLASLt can all be loaded. cudarc panics on
/// the first call into a library it cannot load, so every entry point checks
/// this first.
pub fn cuda_libraries_present() -> Result<()> {
    // SAFETY: these only try to dlopen the libraries by name.
    unsafe {
        if !cudarc::driver::sys::is_culib_present() {
            return Err(KernelError::NoDriver);
        }
        if !cudarc::nvrtc::sys::is_culib_present() {
            return Err(KernelError::MissingLibrary("libnvrtc"));
        }
        if !cudarc::cublaslt::sys::is_culib_present() {
            return Err(KernelError::MissingLibrary("libcublasLt"));
        }
    }
    Ok(())
}

/// GPUs the driver sees.
pub fn device_count() -> Result<usize> {
    cuda_libraries_present()?;
    Ok(CudaContext::device_count()? as usize)
}

/// Where NVRTC finds `cuda_bf16.h` (NVRTC 13 ships no copy of its own):
/// `$CUDA_HOME/include` when set, else the toolkit's usual place.
fn cuda_include_dir() -> String {
    match std::env::var("CUDA_HOME") {
        Ok(home) if !home.is_empty() => format!("{home}/include"),
        _ => "/usr/local/cuda/include".to_string(),
    }
}

/// Compiles one module to a CUBIN for `arch` (e.g. "sm_90"). A CUBIN, not
/// PTX, so that loading it costs no driver JIT on a fresh machine.
pub fn compile_module_cubin(
    name: &'static str,
    source: &str,
    arch: &str,
) -> Result<Vec<u8>> {
    use cudarc::nvrtc::{result, sys};
    let full = format!("{COMMON}\n{source}");
    let src = CString::new(full).map_err(|_| KernelError::Compile {
        module: name,
        log: "source contains a NUL byte".into(),
    })?;
    let cname = CString::new(format!("{name}.cu")).expect("module names hold no NUL");
    let compile_err = |log: String| KernelError::Compile { module: name, log };
    let prog = result::create_program(&src, Some(&cname)).map_err(|e| compile_err(e.to_string()))?;
    let options = [
        format!("--gpu-architecture={arch}"),
        format!("--include-path={}", cuda_include_dir()),
        "-std=c++17".to_string(),
        "--use_fast_math".to_string(),
        "-default-device".to_string(),
    ];
    // SAFETY: `prog` is a live program; it is destroyed once below.
    let out = unsafe {
        match result::compile_program(prog, &options) {
            Ok(()) => {
                let mut size = 0usize;
                sys::nvrtcGetCUBINSize(prog, &mut size)
                    .result()
                    .map_err(|e| compile_err(e.to_string()))
                    .and_then(|()| {
                        let mut cubin = vec![0u8; size];
                        sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr() as *mut c_char)
                            .result()
                            .map_err(|e| compile_err(e.to_string()))
                            .map(|()| cubin)
                    })
            }
            Err(_) => {
                let log = result::get_program_log(prog)
                    .map(|raw| CStr::from_ptr(raw.as_ptr()).to_string_lossy().into_owned())
                    .unwrap_or_else(|e| e.to_string());
                Err(compile_err(log))
            }
        }
    };
    // SAFETY: created above, not used after this.
    let _ = unsafe { result::destroy_program(prog) };
    out
}

type CubinSet = Vec<(&'static str, Arc<Vec<u8>>)>;

/// Compiles every module for `arch`, once per process (in parallel threads:
/// NVRTC is thread-safe), and hands out the cached CUBINs afterwards.
pub fn compiled_modules(arch: &str) -> Result<CubinSet> {
    static CACHE: OnceLock<Mutex<HashMap<String, CubinSet>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(set) = cache.lock().expect("cubin cache lock").get(arch) {
        return Ok(set.clone());
    }
    let compiled: Vec<Result<Vec<u8>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = MODULES
            .iter()
            .map(|m| scope.spawn(move || compile_module_cubin(m.name, m.source, arch)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("NVRTC compile thread panicked"))
            .collect()
    });
    let mut set = CubinSet::new();
    for (m, cubin) in MODULES.iter().zip(compiled) {
        set.push((m.name, Arc::new(cubin?)));
    }
    cache
        .lock()
        .expect("cubin cache lock")
        .insert(arch.to_string(), set.clone());
    Ok(set)
}

/// The handle every launcher hangs off: one device, one stream (launches are
/// ordered on it), the compiled kernels, cuBLASLt and scratch memory.
pub struct Gpu {
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    functions: HashMap<&'static str, CudaFunction>,
    pub(crate) blas: Blas,
    /// Split-context partials of decode attention, the newest (largest)
    /// last; grows on demand.
    pub(crate) scratch_f32: Mutex<Vec<CudaSlice<f32>>>,
    pub(crate) num_sms: u32,
    name: String,
    compute_capability: (i32, i32),
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("name", &self.name)
            .field("compute_capability", &self.compute_capability)
            .field("num_sms", &self.num_sms)
            .finish()
    }
}

/// Stops the device's stream-ordered pool from handing its memory back to
/// the driver at every synchronisation (its default release threshold is
/// 0): an engine syncs once a step, and re-mapping a step's activations
/// each time costs time that varies with the step's size. The pool then
/// keeps at most the largest step's activations, which the KV pool's
/// sizing already leaves free (vLLM's caching allocator does the same).
fn keep_pool_memory(ctx: &CudaContext) -> Result<()> {
    use cudarc::driver::sys;
    let threshold = u64::MAX;
    // SAFETY: the pool handle comes from the driver for this context's
    // device; the attribute takes a u64.
    unsafe {
        let mut pool = std::ptr::null_mut();
        sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()).result()?;
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            &threshold as *const u64 as *mut std::ffi::c_void,
        )
        .result()?;
    }
    Ok(())
}

impl Gpu {
    /// Opens device `ordinal`, compiles (or reuses) the kernels, creates the
    /// stream and cuBLASLt handle. "no CUDA driver found" on machines without
    /// one, never a panic.
    pub fn new(ordinal: usize) -> Result<Gpu> {
        cuda_libraries_present()?;
        let ctx = CudaContext::new(ordinal)?;
        // One stream, launches in order: cudarc's per-buffer event tracking
        // would only add two event records to every launch.
        // SAFETY: no buffers exist yet, and all work goes on `stream`.
        unsafe { ctx.disable_event_tracking() };
        let cc = ctx.compute_capability()?;
        // mma.sync m16n8k16 with bf16 operands needs sm_80 or newer.
        ensure(cc.0 >= 8, || {
            format!("compute capability {}.{} is below 8.0 (bf16 tensor cores)", cc.0, cc.1)
        })?;
        let arch = format!("sm_{}{}", cc.0, cc.1);
        let stream = ctx.new_stream()?;
        keep_pool_memory(&ctx)?;
        let mut functions = HashMap::new();
        for (name, cubin) in compiled_modules(&arch)? {
            let module = ctx.load_module(Ptx::from_binary(cubin.as_ref().clone()))?;
            let source = MODULES.iter().find(|m| m.name == name).expect("known module");
            for &f in source.functions {
                functions.insert(f, module.load_function(f)?);
            }
        }
        let num_sms = ctx.attribute(
            cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
        )? as u32;
        let blas = Blas::new(stream.clone())?;
        Ok(Gpu {
            name: ctx.name()?,
            ctx,
            stream,
            functions,
            blas,
            scratch_f32: Mutex::new(Vec::new()),
            num_sms,
            compute_capability: cc,
        })
    }

    /// The device's name as the driver reports it ("NVIDIA H100 80GB HBM3").
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Streaming multiprocessors on the device.
    pub fn num_sms(&self) -> u32 {
        self.num_sms
    }

    /// The stream every launcher enqueues on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The CUDA context (for events, extra streams, raw driver calls).
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// Waits for everything enqueued so far.
    pub fn synchronize(&self) -> Result<()> {
        Ok(self.stream.synchronize()?)
    }

    /// Milliseconds per call, sorted, over `reps` CUDA-event-timed groups of
    /// `inner` back-to-back calls after `warmup` untimed ones; `f(i)` runs
    /// call i. Calls are queued without a sync in between, so host launch
    /// overhead overlaps earlier calls' GPU work, as in the engine.
    pub fn time_calls<E: From<KernelError>>(
        &self,
        warmup: usize,
        reps: usize,
        inner: usize,
        mut f: impl FnMut(usize) -> std::result::Result<(), E>,
    ) -> std::result::Result<Vec<f64>, E> {
        let mut call = 0;
        for _ in 0..warmup {
            f(call)?;
            call += 1;
        }
        self.synchronize()?;
        let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let mut times = Vec::with_capacity(reps);
        for _ in 0..reps {
            let (start, stop) = (self.ctx.new_event(flags).map_err(KernelError::from)?, self.ctx.new_event(flags).map_err(KernelError::from)?);
            start.record(&self.stream).map_err(KernelError::from)?;
            for _ in 0..inner {
                f(call)?;
                call += 1;
            }
            stop.record(&self.stream).map_err(KernelError::from)?;
            stop.synchronize().map_err(KernelError::from)?;
            times.push(start.elapsed_ms(&stop).map_err(KernelError::from)? as f64 / inner as f64);
        }
        times.sort_by(f64::total_cmp);
        Ok(times)
    }

    pub(crate) fn function(&self, name: &str) -> Result<&CudaFunction> {
        self.functions
            .get(name)
            .ok_or_else(|| KernelError::Invalid(format!("no kernel named {name}")))
    }

    /// Copies a host slice into a new device buffer.
    pub fn upload<T: DeviceRepr>(&self, host: &[T]) -> Result<CudaSlice<T>> {
        Ok(self.stream.clone_htod(host)?)
    }

    /// Copies a device buffer (or view) back to the host; waits for the stream.
    pub fn download<T: DeviceRepr + Default + Clone, S: DevicePtr<T>>(
        &self,
        dev: &S,
    ) -> Result<Vec<T>> {
        Ok(self.stream.clone_dtoh(dev)?)
    }

    /// Overwrites a device buffer with a host slice of the same length.
    pub fn upload_into<T: DeviceRepr, D: DevicePtrMut<T>>(&self, host: &[T], dev: &mut D) -> Result<()> {
        ensure(host.len() == dev.len(), || {
            format!("upload of {} elements into a buffer of {}", host.len(), dev.len())
        })?;
        Ok(self.stream.memcpy_htod(host, dev)?)
    }

    /// A new device buffer of `len` zeros.
    pub fn zeros<T: DeviceRepr + ValidAsZeroBits>(&self, len: usize) -> Result<CudaSlice<T>> {
        Ok(self.stream.alloc_zeros(len)?)
    }

    /// A device buffer of at least `len` f32 scratch, shared by launchers
    /// that run in stream order (so one buffer is never used twice at once).
    pub(crate) fn with_scratch<R>(
        &self,
        len: usize,
        f: impl FnOnce(&mut CudaSlice<f32>) -> Result<R>,
    ) -> Result<R> {
        let mut guard = self.scratch_f32.lock().expect("scratch lock");
        if guard.last().is_none_or(|s| s.len() < len) {
            // The old buffers stay: a captured CUDA graph may address them.
            // Growth at least doubles, so they are at most as large as the
            // newest together.
            let grown = guard.last().map_or(0, |s| 2 * s.len());
            guard.push(self.stream.alloc_zeros::<f32>(len.max(grown).max(1 << 16))?);
        }
        f(guard.last_mut().expect("scratch allocated above"))
    }
}
