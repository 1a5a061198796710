//! GPUs: the `[hardware]` scenario section and a catalog of datasheet
//! figures — dense peak FLOPS per dtype, HBM capacity and bandwidth, the
//! GPU-to-GPU fabric and its topology, the host link, the inter-node
//! network and a price per GPU-hour — that the cost model, the KV capacity
//! and cost reports derive from.

use serde::{Deserialize, Serialize};

/// `[hardware]`: a catalog GPU, optionally with figures overridden inline,
/// and how many of them (data-parallel replicas of `parallelism.tp` GPUs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HardwareSpec {
    #[serde(default = "default_gpu")]
    pub gpu: String,
    #[serde(default = "one")]
    pub count: u32,
    pub memory_gb: Option<f64>,
    pub mem_bandwidth_gb_per_s: Option<f64>,
    pub bf16_tflops: Option<f64>,
    /// Dense fp8 tensor-core peak; absent on a GPU without fp8 GEMMs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fp8_tflops: Option<f64>,
    /// Dense int8 tensor-core peak (TOPS); absent on a GPU without them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub int8_tops: Option<f64>,
    /// Dense fp4 (NVFP4/MXFP4) tensor-core peak; absent before Blackwell /
    /// CDNA 4. Used when weights and activations are both fp4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fp4_tflops: Option<f64>,
    /// Host link (PCIe) bandwidth per direction, for KV swapping.
    pub host_link_gb_per_s: Option<f64>,
    /// GPU-to-GPU bandwidth per direction (NVLink, else PCIe), for tensor
    /// parallelism's all-reduces.
    pub interconnect_gb_per_s: Option<f64>,
    /// How the GPUs of a node are wired (see `Topology`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology: Option<Topology>,
    /// GPUs one node (one NVLink/xGMI domain) holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus_per_node: Option<u32>,
    /// Inter-node network bandwidth per GPU per direction (its NIC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_gb_per_s: Option<f64>,
    /// What one GPU costs an hour, for cost reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_usd_per_gpu_hour: Option<f64>,
}

impl Default for HardwareSpec {
    fn default() -> Self {
        HardwareSpec {
            gpu: default_gpu(),
            count: 1,
            memory_gb: None,
            mem_bandwidth_gb_per_s: None,
            bf16_tflops: None,
            fp8_tflops: None,
            int8_tops: None,
            fp4_tflops: None,
            host_link_gb_per_s: None,
            interconnect_gb_per_s: None,
            topology: None,
            gpus_per_node: None,
            network_gb_per_s: None,
            price_usd_per_gpu_hour: None,
        }
    }
}

fn default_gpu() -> String {
    "h100-sxm".into()
}

fn one() -> u32 {
    1
}

/// Replicas one simulation holds (each keeps its own KV pool in memory).
pub const MAX_GPUS: u32 = 4096;

/// How the GPUs of one node reach each other, which sets the bandwidth a
/// collective among `n` of them gets (`GpuConfig::collective_bytes_per_s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Topology {
    /// NVSwitch: every GPU reaches every other at its full link figure.
    Switch,
    /// Point-to-point links to each other GPU of the node (xGMI on MI300X
    /// platforms): the link figure is the sum over the node's peers, and a
    /// group of `n` uses the links to its `n − 1` peers.
    Mesh,
    /// A bridge joins GPUs in pairs (H100 PCIe's NVLink bridge); a larger
    /// group falls back to the host link.
    Pairs,
    /// No GPU fabric: peers talk over PCIe at the link figure.
    Pcie,
}

/// Element type a tensor-core GEMM runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MathDtype {
    Bf16,
    Fp8,
    Int8,
    /// NVFP4 / MXFP4 block-scaled 4-bit floats (Blackwell, CDNA 4).
    Fp4,
}

/// One GPU's figures in base units.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuConfig {
    pub name: String,
    pub memory_bytes: u64,
    pub mem_bandwidth_bytes_per_s: f64,
    /// Dense (no sparsity) bf16 tensor-core peak.
    pub bf16_flops_per_s: f64,
    pub host_link_bytes_per_s: f64,
    pub interconnect_bytes_per_s: f64,
    /// Dense fp8 peak; `None` where the GPU has no fp8 tensor cores.
    pub fp8_flops_per_s: Option<f64>,
    /// Dense int8 peak (ops/s); `None` where unsupported.
    pub int8_ops_per_s: Option<f64>,
    /// Dense fp4 peak; `None` where unsupported (Hopper, Ampere, Ada, CDNA 3).
    pub fp4_flops_per_s: Option<f64>,
    pub topology: Topology,
    pub gpus_per_node: u32,
    /// Per GPU, per direction, between nodes.
    pub network_bytes_per_s: f64,
    pub price_usd_per_gpu_hour: f64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum HardwareError {
    #[error("hardware.gpu: unknown GPU {0:?}; expected one of {CATALOG_NAMES}, or \"custom\" with every figure given")]
    Unknown(String),
    #[error("hardware.{0}: required for a custom GPU")]
    Missing(&'static str),
    #[error("hardware.{key}: must be a number in (0, {max}], got {value:?}")]
    OutOfRange { key: &'static str, value: f64, max: f64 },
    #[error("hardware.count: must be between 1 and {MAX_GPUS}, got {0}")]
    BadCount(u32),
    #[error("hardware.gpus_per_node: must be between 1 and {MAX_GPUS}, got {0}")]
    BadNode(u32),
}

impl HardwareError {
    /// The scenario key the error is about.
    pub fn key(&self) -> String {
        match self {
            HardwareError::Unknown(_) => "hardware.gpu".into(),
            HardwareError::Missing(k) | HardwareError::OutOfRange { key: k, .. } => format!("hardware.{k}"),
            HardwareError::BadCount(_) => "hardware.count".into(),
            HardwareError::BadNode(_) => "hardware.gpus_per_node".into(),
        }
    }
}

/// A catalog row in the scenario's units: GB (10^9 B), GB/s per direction
/// (half a datasheet's bidirectional figure), dense TFLOPS (half the "with
/// sparsity" figure datasheets headline).
struct Entry {
    name: &'static str,
    memory_gb: f64,
    bandwidth_gb_per_s: f64,
    bf16_tflops: f64,
    fp8_tflops: Option<f64>,
    int8_tops: Option<f64>,
    fp4_tflops: Option<f64>,
    host_link_gb_per_s: f64,
    interconnect_gb_per_s: f64,
    topology: Topology,
    gpus_per_node: u32,
    network_gb_per_s: f64,
    price_usd_per_gpu_hour: f64,
}

const CATALOG_NAMES: &str = "h100-sxm, h100-pcie, h200, b200, a100-80gb-sxm, a100-40gb-sxm, l40s, mi300x, gb200, b300, h20, l4, mi325x, mi355x";

/// Prices are assumptions: representative 2025 on-demand cloud rates per
/// GPU (they vary by provider, region and commitment by 2× or more) — set
/// `hardware.price_usd_per_gpu_hour` to a real quote.
const CATALOG: [Entry; 14] = [
    Entry {
        name: "h100-sxm",
        // NVIDIA H100 Tensor Core GPU datasheet (SXM): 80 GB HBM3, 3.35 TB/s;
        // bf16 1,979 / fp8 3,958 / int8 3,958 with sparsity; PCIe Gen5 128
        // GB/s; NVLink 4 900 GB/s through NVSwitch (HGX H100, 8 GPUs).
        memory_gb: 80.0,
        bandwidth_gb_per_s: 3350.0,
        bf16_tflops: 989.4,
        fp8_tflops: Some(1978.9),
        int8_tops: Some(1978.9),
        fp4_tflops: None,
        host_link_gb_per_s: 64.0,
        interconnect_gb_per_s: 450.0,
        topology: Topology::Switch,
        gpus_per_node: 8,
        // DGX H100 datasheet: 8× ConnectX-7 400 Gb/s, one per GPU.
        network_gb_per_s: 50.0,
        price_usd_per_gpu_hour: 3.00, // assumption
    },
    Entry {
        name: "h100-pcie",
        // NVIDIA H100 datasheet (PCIe, PB-11133): 80 GB HBM2e, 2 TB/s; bf16
        // 1,513 / fp8 3,026 / int8 3,026 with sparsity; PCIe Gen5 128 GB/s;
        // a 2-way NVLink bridge, 600 GB/s.
        memory_gb: 80.0,
        bandwidth_gb_per_s: 2000.0,
        bf16_tflops: 756.5,
        fp8_tflops: Some(1513.0),
        int8_tops: Some(1513.0),
        fp4_tflops: None,
        host_link_gb_per_s: 64.0,
        interconnect_gb_per_s: 300.0,
        topology: Topology::Pairs,
        // Assumption: an 8-card PCIe server with a 200 Gb/s NIC per GPU.
        gpus_per_node: 8,
        network_gb_per_s: 25.0,
        price_usd_per_gpu_hour: 2.50, // assumption
    },
    Entry {
        name: "h200",
        // NVIDIA H200 datasheet (SXM): 141 GB HBM3e, 4.8 TB/s, H100 SXM's
        // compute; PCIe Gen5 128 GB/s; NVLink 4 900 GB/s (HGX H200, 8 GPUs).
        memory_gb: 141.0,
        bandwidth_gb_per_s: 4800.0,
        bf16_tflops: 989.4,
        fp8_tflops: Some(1978.9),
        int8_tops: Some(1978.9),
        fp4_tflops: None,
        host_link_gb_per_s: 64.0,
        interconnect_gb_per_s: 450.0,
        topology: Topology::Switch,
        gpus_per_node: 8,
        // DGX H200 datasheet: 8× ConnectX-7 400 Gb/s.
        network_gb_per_s: 50.0,
        price_usd_per_gpu_hour: 3.50, // assumption
    },
    Entry {
        name: "b200",
        // NVIDIA HGX B200 datasheet: 1,440 GB HBM3e and 64 TB/s over 8 GPUs
        // (180 GB, 8 TB/s each); bf16 4.5 / fp8 9 / int8 9 PFLOPS with
        // sparsity; NVLink 5 1.8 TB/s through NVSwitch; 0.8 TB/s networking
        // over 8 GPUs (100 GB/s each, both directions). Host link: PCIe Gen5
        // x16, 128 GB/s (DGX B200 datasheet).
        memory_gb: 180.0,
        bandwidth_gb_per_s: 8000.0,
        bf16_tflops: 2250.0,
        fp8_tflops: Some(4500.0),
        int8_tops: Some(4500.0),
        // Blackwell datasheet: fp4 18 PFLOPS with sparsity.
        fp4_tflops: Some(9000.0),
        host_link_gb_per_s: 64.0,
        interconnect_gb_per_s: 900.0,
        topology: Topology::Switch,
        gpus_per_node: 8,
        network_gb_per_s: 50.0,
        price_usd_per_gpu_hour: 5.00, // assumption
    },
    Entry {
        name: "a100-80gb-sxm",
        // NVIDIA A100 datasheet (80GB SXM): 2,039 GB/s; bf16 312 dense, int8
        // 624 dense (1,248 with sparsity), no fp8; PCIe Gen4 64 GB/s; NVLink 3
        // 600 GB/s through NVSwitch (HGX A100, 8 GPUs).
        memory_gb: 80.0,
        bandwidth_gb_per_s: 2039.0,
        bf16_tflops: 312.0,
        fp8_tflops: None,
        int8_tops: Some(624.0),
        fp4_tflops: None,
        host_link_gb_per_s: 32.0,
        interconnect_gb_per_s: 300.0,
        topology: Topology::Switch,
        gpus_per_node: 8,
        // DGX A100 datasheet: 8× ConnectX-6 200 Gb/s HDR, one per GPU.
        network_gb_per_s: 25.0,
        price_usd_per_gpu_hour: 1.80, // assumption
    },
    Entry {
        name: "a100-40gb-sxm",
        // NVIDIA A100 datasheet (40GB SXM): 40 GB HBM2, 1,555 GB/s; compute,
        // links and fabric as the 80GB SXM.
        memory_gb: 40.0,
        bandwidth_gb_per_s: 1555.0,
        bf16_tflops: 312.0,
        fp8_tflops: None,
        int8_tops: Some(624.0),
        fp4_tflops: None,
        host_link_gb_per_s: 32.0,
        interconnect_gb_per_s: 300.0,
        topology: Topology::Switch,
        gpus_per_node: 8,
        network_gb_per_s: 25.0,
        price_usd_per_gpu_hour: 1.30, // assumption
    },
    Entry {
        name: "l40s",
        // NVIDIA L40S datasheet: 48 GB GDDR6, 864 GB/s; bf16 733 / fp8 1,466
        // / int8 1,466 with sparsity; PCIe Gen4 x16 64 GB/s; no NVLink, so
        // peers talk over PCIe.
        memory_gb: 48.0,
        bandwidth_gb_per_s: 864.0,
        bf16_tflops: 362.05,
        fp8_tflops: Some(733.0),
        int8_tops: Some(733.0),
        fp4_tflops: None,
        host_link_gb_per_s: 32.0,
        interconnect_gb_per_s: 32.0,
        topology: Topology::Pcie,
        // Assumption: an 8-card PCIe server with a 200 Gb/s NIC per GPU.
        gpus_per_node: 8,
        network_gb_per_s: 25.0,
        price_usd_per_gpu_hour: 1.50, // assumption
    },
    Entry {
        name: "mi300x",
        // AMD Instinct MI300X datasheet: 192 GB HBM3, 5.3 TB/s; bf16 1,307.4
        // / fp8 2,614.9 / int8 2,614.9 dense; PCIe Gen5 x16 128 GB/s; 7
        // Infinity Fabric (xGMI) links of 128 GB/s (896 GB/s aggregate), one
        // to each other GPU of an 8-GPU platform's fully connected mesh.
        memory_gb: 192.0,
        bandwidth_gb_per_s: 5300.0,
        bf16_tflops: 1307.4,
        fp8_tflops: Some(2614.9),
        int8_tops: Some(2614.9),
        fp4_tflops: None,
        host_link_gb_per_s: 64.0,
        interconnect_gb_per_s: 448.0,
        topology: Topology::Mesh,
        gpus_per_node: 8,
        // Assumption: one 400 Gb/s NIC per GPU, as the H100/H200/B200 nodes.
        network_gb_per_s: 50.0,
        price_usd_per_gpu_hour: 2.00, // assumption
    },
    Entry {
        name: "gb200",
        // One GPU of a GB200 NVL72 (NVIDIA GB200 NVL72 datasheet: 72 GPUs,
        // 13.4 TB HBM3e (186 GB a GPU, as MLPerf's GB200-186GB systems list),
        // 576 TB/s, fp4 1,440 / fp8 720 / int8 720 / bf16 360 PFLOPS with
        // sparsity, NVLink 5 130 TB/s over one 72-GPU switched domain);
        // host link: NVLink-C2C 900 GB/s per Grace, shared by its two GPUs
        // (225 GB/s a GPU a direction); 72 ConnectX-7 400 Gb/s NICs.
        memory_gb: 186.0,
        bandwidth_gb_per_s: 8000.0,
        bf16_tflops: 2500.0,
        fp8_tflops: Some(5000.0),
        int8_tops: Some(5000.0),
        fp4_tflops: Some(10000.0),
        host_link_gb_per_s: 225.0,
        interconnect_gb_per_s: 900.0,
        topology: Topology::Switch,
        gpus_per_node: 72,
        network_gb_per_s: 50.0,
        price_usd_per_gpu_hour: 6.00, // assumption
    },
    Entry {
        name: "b300",
        // NVIDIA HGX B300 (Blackwell Ultra) datasheet, over 8 GPUs: fp4 144 /
        // 108 PFLOPS (sparse / dense), fp8 72, bf16 36 PFLOPS and int8 2
        // POPS with sparsity, up to 2.3 TB HBM3e (288 GB a GPU, 8 TB/s),
        // NVLink 5 1.8 TB/s a GPU, 1.6 TB/s networking (ConnectX-8 800 Gb/s
        // a GPU); host link PCIe Gen6 x16 (128 GB/s a direction).
        memory_gb: 288.0,
        bandwidth_gb_per_s: 8000.0,
        bf16_tflops: 2250.0,
        fp8_tflops: Some(4500.0),
        int8_tops: Some(125.0),
        fp4_tflops: Some(13500.0),
        host_link_gb_per_s: 128.0,
        interconnect_gb_per_s: 900.0,
        topology: Topology::Switch,
        gpus_per_node: 8,
        network_gb_per_s: 100.0,
        price_usd_per_gpu_hour: 7.00, // assumption
    },
    Entry {
        name: "h20",
        // NVIDIA H20 (HGX H20) product specification: 96 GB HBM3, 4.0 TB/s;
        // fp8 296 / bf16 148 TFLOPS, int8 296 TOPS dense; NVLink 4 900 GB/s
        // through NVSwitch (8 GPUs); PCIe Gen5 x16. NIC an assumption (400
        // Gb/s a GPU, as HGX H100).
        memory_gb: 96.0,
        bandwidth_gb_per_s: 4000.0,
        bf16_tflops: 148.0,
        fp8_tflops: Some(296.0),
        int8_tops: Some(296.0),
        fp4_tflops: None,
        host_link_gb_per_s: 64.0,
        interconnect_gb_per_s: 450.0,
        topology: Topology::Switch,
        gpus_per_node: 8,
        network_gb_per_s: 50.0,
        price_usd_per_gpu_hour: 1.50, // assumption
    },
    Entry {
        name: "l4",
        // NVIDIA L4 datasheet: 24 GB GDDR6, 300 GB/s; fp8 485 / bf16 242 /
        // int8 485 with sparsity; PCIe Gen4 x16 64 GB/s; no NVLink. Node and
        // NIC an assumption (8 cards, 100 Gb/s a card).
        memory_gb: 24.0,
        bandwidth_gb_per_s: 300.0,
        bf16_tflops: 121.0,
        fp8_tflops: Some(242.5),
        int8_tops: Some(242.5),
        fp4_tflops: None,
        host_link_gb_per_s: 32.0,
        interconnect_gb_per_s: 32.0,
        topology: Topology::Pcie,
        gpus_per_node: 8,
        network_gb_per_s: 12.5,
        price_usd_per_gpu_hour: 0.80, // assumption
    },
    Entry {
        name: "mi325x",
        // AMD Instinct MI325X datasheet: 256 GB HBM3E, 6 TB/s; MI300X's
        // compute (bf16 1,307.4 / fp8 2,614.9 / int8 2,614.9 dense); PCIe
        // Gen5 x16; 7 Infinity Fabric links of 128 GB/s, fully connected
        // 8-GPU platform. NIC an assumption.
        memory_gb: 256.0,
        bandwidth_gb_per_s: 6000.0,
        bf16_tflops: 1307.4,
        fp8_tflops: Some(2614.9),
        int8_tops: Some(2614.9),
        fp4_tflops: None,
        host_link_gb_per_s: 64.0,
        interconnect_gb_per_s: 448.0,
        topology: Topology::Mesh,
        gpus_per_node: 8,
        network_gb_per_s: 50.0,
        price_usd_per_gpu_hour: 2.50, // assumption
    },
    Entry {
        name: "mi355x",
        // AMD Instinct MI355X datasheet (CDNA 4): 288 GB HBM3E, 8 TB/s; 256
        // CUs × 8,192 fp8 FLOP/clock × 2.4 GHz = 5,033.2 TFLOPS fp8 dense
        // (AMD: 5 PF), bf16 half that, MXFP4/MXFP6 twice, int8 as fp8; PCIe
        // Gen5 x16; 7 Infinity Fabric links of 153.6 GB/s (1,075.2 GB/s),
        // fully connected 8-GPU platform. NIC an assumption.
        memory_gb: 288.0,
        bandwidth_gb_per_s: 8000.0,
        bf16_tflops: 2516.6,
        fp8_tflops: Some(5033.2),
        int8_tops: Some(5033.2),
        fp4_tflops: Some(10066.3),
        host_link_gb_per_s: 64.0,
        interconnect_gb_per_s: 537.6,
        topology: Topology::Mesh,
        gpus_per_node: 8,
        network_gb_per_s: 50.0,
        price_usd_per_gpu_hour: 3.00, // assumption
    },
];

/// Canonical catalog name of `gpu`: a catalog name, or an alias the
/// benchmark files use (`h100_sxm`, `h200_sxm`, `H100`, `h200`, …),
/// case-insensitive, `_` read as `-`. `None` outside the catalog.
pub fn resolve_gpu_name(gpu: &str) -> Option<&'static str> {
    let g = gpu.trim().to_ascii_lowercase().replace('_', "-");
    let g = g.strip_prefix("nvidia-").or(g.strip_prefix("amd-")).unwrap_or(&g).to_string();
    let alias = match g.as_str() {
        "h100" | "h100-sxm5" | "h100-80gb" | "h100-sxm-80gb" => "h100-sxm",
        "h200-sxm" | "h200-141gb" | "h200-sxm-141gb" => "h200",
        "b200-sxm" | "hgx-b200" => "b200",
        "hgx-b300" | "b300-sxm" | "blackwell-ultra" => "b300",
        "gb200-nvl72" => "gb200",
        "a100" | "a100-sxm" | "a100-80gb" => "a100-80gb-sxm",
        "a100-40gb" => "a100-40gb-sxm",
        other => other,
    };
    CATALOG.iter().map(|e| e.name).find(|n| *n == alias)
}

/// What a custom GPU gets when a figure it needs only for one feature is
/// left out: PCIe Gen5 x16 (64 GB/s a direction) for the host link and
/// GPU peers, a switched 8-GPU node, a 400 Gb/s NIC. Assumptions, each
/// overridable.
const CUSTOM_LINK_GB_PER_S: f64 = 64.0;
const CUSTOM_GPUS_PER_NODE: u32 = 8;
const CUSTOM_NETWORK_GB_PER_S: f64 = 50.0;

impl GpuConfig {
    pub fn resolve(spec: &HardwareSpec) -> Result<GpuConfig, HardwareError> {
        if spec.count == 0 || spec.count > MAX_GPUS {
            return Err(HardwareError::BadCount(spec.count));
        }
        let canonical = resolve_gpu_name(&spec.gpu);
        let base = canonical.and_then(|n| CATALOG.iter().find(|e| e.name == n));
        if base.is_none() && spec.gpu != "custom" {
            return Err(HardwareError::Unknown(spec.gpu.clone()));
        }
        // Upper bounds far beyond any GPU keep simulated time finite.
        let check = |key, v: f64, max: f64| {
            if v.is_finite() && v > 0.0 && v <= max {
                Ok(v)
            } else {
                Err(HardwareError::OutOfRange { key, value: v, max })
            }
        };
        let pick = |over: Option<f64>, from: fn(&Entry) -> f64, key, max: f64| {
            check(key, over.or(base.map(from)).ok_or(HardwareError::Missing(key))?, max)
        };
        let optional = |over: Option<f64>, from: fn(&Entry) -> Option<f64>, key| {
            over.or(base.and_then(from)).map(|v| check(key, v, 1e6)).transpose()
        };
        let gpus_per_node = spec.gpus_per_node.or(base.map(|e| e.gpus_per_node)).unwrap_or(CUSTOM_GPUS_PER_NODE);
        if gpus_per_node == 0 || gpus_per_node > MAX_GPUS {
            return Err(HardwareError::BadNode(gpus_per_node));
        }
        // Figures only one feature needs (swapping, tensor parallelism across
        // nodes) default for a custom GPU rather than fail.
        let or_default = |over: Option<f64>, from: fn(&Entry) -> f64, default: f64, key| {
            check(key, over.or(base.map(from)).unwrap_or(default), 1e6)
        };
        Ok(GpuConfig {
            name: canonical.map_or(spec.gpu.clone(), str::to_string),
            memory_bytes: (pick(spec.memory_gb, |e| e.memory_gb, "memory_gb", 1e5)? * 1e9) as u64,
            mem_bandwidth_bytes_per_s: pick(spec.mem_bandwidth_gb_per_s, |e| e.bandwidth_gb_per_s, "mem_bandwidth_gb_per_s", 1e6)? * 1e9,
            bf16_flops_per_s: pick(spec.bf16_tflops, |e| e.bf16_tflops, "bf16_tflops", 1e6)? * 1e12,
            fp8_flops_per_s: optional(spec.fp8_tflops, |e| e.fp8_tflops, "fp8_tflops")?.map(|v| v * 1e12),
            int8_ops_per_s: optional(spec.int8_tops, |e| e.int8_tops, "int8_tops")?.map(|v| v * 1e12),
            fp4_flops_per_s: optional(spec.fp4_tflops, |e| e.fp4_tflops, "fp4_tflops")?.map(|v| v * 1e12),
            host_link_bytes_per_s: or_default(spec.host_link_gb_per_s, |e| e.host_link_gb_per_s, CUSTOM_LINK_GB_PER_S, "host_link_gb_per_s")?
                * 1e9,
            interconnect_bytes_per_s: or_default(spec.interconnect_gb_per_s, |e| e.interconnect_gb_per_s, CUSTOM_LINK_GB_PER_S, "interconnect_gb_per_s")?
                * 1e9,
            topology: spec.topology.or(base.map(|e| e.topology)).unwrap_or(Topology::Switch),
            gpus_per_node,
            network_bytes_per_s: or_default(spec.network_gb_per_s, |e| e.network_gb_per_s, CUSTOM_NETWORK_GB_PER_S, "network_gb_per_s")? * 1e9,
            // A custom GPU must be priced: no number is better than a made-up one.
            price_usd_per_gpu_hour: pick(spec.price_usd_per_gpu_hour, |e| e.price_usd_per_gpu_hour, "price_usd_per_gpu_hour", 1e6)?,
        })
    }

    /// The spec with every figure filled in, for `scenario.resolved.toml`.
    pub fn to_spec(&self, count: u32) -> HardwareSpec {
        HardwareSpec {
            gpu: self.name.clone(),
            count,
            memory_gb: Some(self.memory_bytes as f64 / 1e9),
            mem_bandwidth_gb_per_s: Some(self.mem_bandwidth_bytes_per_s / 1e9),
            bf16_tflops: Some(self.bf16_flops_per_s / 1e12),
            fp8_tflops: self.fp8_flops_per_s.map(|v| v / 1e12),
            int8_tops: self.int8_ops_per_s.map(|v| v / 1e12),
            fp4_tflops: self.fp4_flops_per_s.map(|v| v / 1e12),
            host_link_gb_per_s: Some(self.host_link_bytes_per_s / 1e9),
            interconnect_gb_per_s: Some(self.interconnect_bytes_per_s / 1e9),
            topology: Some(self.topology),
            gpus_per_node: Some(self.gpus_per_node),
            network_gb_per_s: Some(self.network_bytes_per_s / 1e9),
            price_usd_per_gpu_hour: Some(self.price_usd_per_gpu_hour),
        }
    }

    /// Dense tensor-core peak for GEMMs in `dtype`; `None` where the GPU has
    /// no such tensor cores.
    pub fn peak_flops_per_s(&self, dtype: MathDtype) -> Option<f64> {
        match dtype {
            MathDtype::Bf16 => Some(self.bf16_flops_per_s),
            MathDtype::Fp8 => self.fp8_flops_per_s,
            MathDtype::Int8 => self.int8_ops_per_s,
            MathDtype::Fp4 => self.fp4_flops_per_s,
        }
    }

    /// Bandwidth per GPU per direction that a collective (ring all-reduce,
    /// all-to-all) among `n` GPUs gets: within a node it follows the
    /// topology; a group spanning nodes is held to the slower of that and
    /// the network, which its ring crosses.
    pub fn collective_bytes_per_s(&self, n: u32) -> f64 {
        let node = self.gpus_per_node;
        let within = n.min(node);
        let intra = match self.topology {
            Topology::Switch | Topology::Pcie => self.interconnect_bytes_per_s,
            Topology::Mesh if node > 1 => self.interconnect_bytes_per_s * (within.max(2) - 1) as f64 / (node - 1) as f64,
            Topology::Mesh => self.interconnect_bytes_per_s,
            Topology::Pairs if within <= 2 => self.interconnect_bytes_per_s,
            Topology::Pairs => self.host_link_bytes_per_s,
        };
        if n > node {
            intra.min(self.network_bytes_per_s)
        } else {
            intra
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(name: &str) -> GpuConfig {
        GpuConfig::resolve(&HardwareSpec { gpu: name.into(), ..Default::default() }).unwrap()
    }

    #[test]
    fn catalog_and_overrides() {
        let h = GpuConfig::resolve(&HardwareSpec::default()).unwrap();
        assert_eq!(h.memory_bytes, 80_000_000_000);
        assert_eq!(h.mem_bandwidth_bytes_per_s, 3.35e12);
        let spec = HardwareSpec { gpu: "h200".into(), mem_bandwidth_gb_per_s: Some(4000.0), ..Default::default() };
        let g = GpuConfig::resolve(&spec).unwrap();
        assert_eq!((g.memory_bytes, g.mem_bandwidth_bytes_per_s), (141_000_000_000, 4.0e12));
        assert_eq!(GpuConfig::resolve(&g.to_spec(1)).unwrap(), g);
        let a100 = gpu("a100-80gb-sxm");
        assert_eq!((a100.host_link_bytes_per_s, a100.interconnect_bytes_per_s), (32e9, 300e9), "catalog links");
        let priced = HardwareSpec { price_usd_per_gpu_hour: Some(1.25), ..Default::default() };
        assert_eq!(GpuConfig::resolve(&priced).unwrap().price_usd_per_gpu_hour, 1.25);
    }

    #[test]
    fn every_catalog_gpu_resolves_and_round_trips() {
        assert_eq!(CATALOG.iter().map(|e| e.name).collect::<Vec<_>>().join(", "), CATALOG_NAMES);
        for e in &CATALOG {
            let g = gpu(e.name);
            assert_eq!(GpuConfig::resolve(&g.to_spec(3)).unwrap(), g, "{}", e.name);
            // Dense fp8 and int8 are twice bf16 on every tensor core listed
            // (the datasheets' ratio; L40S quotes 362.05 bf16 against 733 fp8).
            // (B300 cut int8 to 2 POPS over 8 GPUs: not in this check.)
            let int8 = if e.name == "b300" { None } else { g.int8_ops_per_s };
            for peak in [g.fp8_flops_per_s, int8].into_iter().flatten() {
                let ratio = peak / g.bf16_flops_per_s;
                assert!((ratio - 2.0).abs() < 0.03, "{} {ratio}", e.name);
            }
            assert!(g.price_usd_per_gpu_hour > 0.0 && g.network_bytes_per_s > 0.0);
        }
    }

    #[test]
    fn datasheet_figures_of_the_new_gpus() {
        let b200 = gpu("b200");
        assert_eq!((b200.memory_bytes, b200.mem_bandwidth_bytes_per_s), (180_000_000_000, 8e12));
        assert_eq!(b200.peak_flops_per_s(MathDtype::Fp8), Some(4.5e15));
        let mi = gpu("mi300x");
        assert_eq!((mi.memory_bytes, mi.mem_bandwidth_bytes_per_s, mi.bf16_flops_per_s), (192_000_000_000, 5.3e12, 1307.4e12));
        assert_eq!(mi.topology, Topology::Mesh);
        let pcie = gpu("h100-pcie");
        assert_eq!((pcie.mem_bandwidth_bytes_per_s, pcie.topology), (2e12, Topology::Pairs));
        let a40 = gpu("a100-40gb-sxm");
        assert_eq!((a40.memory_bytes, a40.mem_bandwidth_bytes_per_s), (40_000_000_000, 1.555e12));
        // Ampere has no fp8 tensor cores: no peak, and none invented.
        assert_eq!(a40.peak_flops_per_s(MathDtype::Fp8), None);
        assert_eq!(a40.peak_flops_per_s(MathDtype::Int8), Some(624e12));
        assert_eq!(a40.to_spec(1).fp8_tflops, None);
    }

    #[test]
    fn datasheet_figures_of_the_2025_gpus_and_aliases() {
        let gb = gpu("gb200");
        assert_eq!((gb.memory_bytes, gb.gpus_per_node, gb.peak_flops_per_s(MathDtype::Fp4)), (186_000_000_000, 72, Some(10e15)));
        let b3 = gpu("b300");
        assert_eq!((b3.memory_bytes, b3.peak_flops_per_s(MathDtype::Fp4), b3.peak_flops_per_s(MathDtype::Int8)), (288_000_000_000, Some(13.5e15), Some(125e12)));
        assert_eq!((gpu("h20").bf16_flops_per_s, gpu("h20").mem_bandwidth_bytes_per_s), (148e12, 4e12));
        assert_eq!((gpu("l4").memory_bytes, gpu("l4").topology), (24_000_000_000, Topology::Pcie));
        assert_eq!(gpu("mi325x").memory_bytes, 256_000_000_000);
        assert_eq!(gpu("mi355x").peak_flops_per_s(MathDtype::Fp4), Some(10066.3e12));
        // Hopper has no fp4 tensor cores.
        assert_eq!(gpu("h100-sxm").peak_flops_per_s(MathDtype::Fp4), None);
        for (alias, name) in [("h100_sxm", "h100-sxm"), ("h200_sxm", "h200"), ("H100", "h100-sxm"), ("h100", "h100-sxm"), ("H200", "h200"), ("B200", "b200")] {
            assert_eq!(resolve_gpu_name(alias), Some(name), "{alias}");
            assert_eq!(gpu(alias).name, name);
        }
        assert_eq!(resolve_gpu_name("tpu"), None);
    }

    #[test]
    fn collective_bandwidth_follows_the_topology() {
        // NVSwitch: the full link whatever the group; across nodes the NIC.
        let h = gpu("h100-sxm");
        assert_eq!((h.collective_bytes_per_s(2), h.collective_bytes_per_s(8)), (450e9, 450e9));
        assert_eq!(h.collective_bytes_per_s(16), 50e9);
        // xGMI mesh: a pair shares one of 7 links (64 GB/s), all 8 use 448.
        let mi = gpu("mi300x");
        assert!((mi.collective_bytes_per_s(2) - 64e9).abs() < 1.0);
        assert!((mi.collective_bytes_per_s(4) - 192e9).abs() < 1.0);
        assert_eq!(mi.collective_bytes_per_s(8), 448e9);
        // A bridged pair, then PCIe.
        let p = gpu("h100-pcie");
        assert_eq!((p.collective_bytes_per_s(2), p.collective_bytes_per_s(4)), (300e9, 64e9));
        assert_eq!(gpu("l40s").collective_bytes_per_s(4), 32e9);
    }

    #[test]
    fn bad_hardware_is_an_error() {
        let neg = HardwareSpec { bf16_tflops: Some(-1.0), ..Default::default() };
        assert!(matches!(GpuConfig::resolve(&neg), Err(HardwareError::OutOfRange { key: "bf16_tflops", .. })));
        let custom = HardwareSpec { gpu: "custom".into(), ..Default::default() };
        assert_eq!(GpuConfig::resolve(&custom), Err(HardwareError::Missing("memory_gb")));
        let zero = HardwareSpec { count: 0, ..Default::default() };
        assert_eq!(GpuConfig::resolve(&zero), Err(HardwareError::BadCount(0)));
        let node = HardwareSpec { gpus_per_node: Some(0), ..Default::default() };
        assert_eq!(GpuConfig::resolve(&node).unwrap_err().key(), "hardware.gpus_per_node");
        let fp8 = HardwareSpec { fp8_tflops: Some(f64::NAN), ..Default::default() };
        assert!(matches!(GpuConfig::resolve(&fp8), Err(HardwareError::OutOfRange { key: "fp8_tflops", .. })));
        let unknown = GpuConfig::resolve(&HardwareSpec { gpu: "tpu".into(), ..Default::default() }).unwrap_err();
        assert!(unknown.to_string().contains("mi300x"), "{unknown}");
    }

    #[test]
    fn custom_gpu_needs_its_price_and_defaults_the_rest() {
        let figures = HardwareSpec {
            gpu: "custom".into(),
            memory_gb: Some(96.0),
            mem_bandwidth_gb_per_s: Some(4000.0),
            bf16_tflops: Some(500.0),
            ..Default::default()
        };
        assert_eq!(GpuConfig::resolve(&figures), Err(HardwareError::Missing("price_usd_per_gpu_hour")));
        let priced = HardwareSpec { price_usd_per_gpu_hour: Some(2.0), ..figures };
        let g = GpuConfig::resolve(&priced).unwrap();
        assert_eq!((g.fp8_flops_per_s, g.topology, g.gpus_per_node), (None, Topology::Switch, 8));
        assert_eq!((g.host_link_bytes_per_s, g.interconnect_bytes_per_s, g.network_bytes_per_s), (64e9, 64e9, 50e9));
    }
}
