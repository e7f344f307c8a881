//! The core of `matmul-json`, copied from the preview-1 command
//! (`functions/src/bin/matmul-json.rs`) with serde_json swapped for [`crate::json`]: the same
//! parsing, the same arithmetic in the same order and the same printing, hence the same bytes.
//! A change to one copy must be made to the other.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::json::{self, Value};

const DEFAULT_N: u64 = 64;
const MAX_N: u64 = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Matmul,
    MatmulT,
    Square,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Matmul => "matmul",
            Op::MatmulT => "matmul_t",
            Op::Square => "square",
        }
    }
}

struct Task {
    task_id: Value,
    n: usize,
    seed: u64,
    op: Op,
    scale: f32,
}

pub struct Meta {
    pub node: String,
    pub request_id: String,
}

fn parse_task(obj: &BTreeMap<String, Value>) -> Result<Task, String> {
    let n = match obj.get("n") {
        None | Some(Value::Null) => DEFAULT_N,
        Some(v) => v
            .as_u64()
            .filter(|n| (1..=MAX_N).contains(n))
            .ok_or_else(|| format!("\"n\" must be an integer in 1..={MAX_N}, got {v}"))?,
    };
    let seed = match obj.get("seed") {
        None | Some(Value::Null) => 0,
        Some(v) => v
            .as_u64()
            .or_else(|| v.as_i64().map(|s| s as u64))
            .ok_or_else(|| format!("\"seed\" must be an integer, got {v}"))?,
    };
    let op = match obj.get("op") {
        None | Some(Value::Null) => Op::Matmul,
        Some(Value::String(s)) => match s.as_str() {
            "matmul" => Op::Matmul,
            "matmul_t" => Op::MatmulT,
            "square" => Op::Square,
            other => {
                return Err(format!(
                    "unknown \"op\" {other:?} (expected matmul, matmul_t or square)"
                ));
            }
        },
        Some(v) => return Err(format!("\"op\" must be a string, got {v}")),
    };
    let scale = match obj.get("scale") {
        None | Some(Value::Null) => 1.0,
        Some(v) => v
            .as_f64()
            .map(|s| s as f32)
            .filter(|s| s.is_finite())
            .ok_or_else(|| format!("\"scale\" must be a finite number, got {v}"))?,
    };
    Ok(Task {
        task_id: obj.get("task_id").cloned().unwrap_or(Value::Null),
        n: n as usize,
        seed,
        op,
        scale,
    })
}

/// xorshift64 seeded through splitmix64, so nearby seeds give unrelated streams.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Rng(if z == 0 { 0x2545_F491_4F6C_DD1D } else { z })
    }

    /// Uniform in [-1, 1), from the top 24 bits (exact in f32).
    fn next_f32(&mut self) -> f32 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        ((x >> 40) as f32) * (2.0 / (1u32 << 24) as f32) - 1.0
    }

    fn matrix(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n * n).map(|_| self.next_f32() * scale).collect()
    }
}

/// C = A·B for row-major n×n matrices, in i-k-j order: the innermost loop is
/// `c_row += a_ik * b_row` over contiguous rows, which LLVM vectorises to
/// f32x4 with `+simd128` (no reduction, so no reassociation is needed).
/// The preview-1 build enables simd128 for the whole module; here only this function has it, so
/// the other components of the workspace stay free of SIMD. Either way the result is the same:
/// each element sees the same multiplications and additions in the same order.
#[cfg_attr(target_arch = "wasm32", target_feature(enable = "simd128"))]
fn matmul(a: &[f32], b: &[f32], n: usize) -> Vec<f32> {
    let mut c = vec![0.0f32; n * n];
    for (a_row, c_row) in a.chunks_exact(n).zip(c.chunks_exact_mut(n)) {
        for (&a_ik, b_row) in a_row.iter().zip(b.chunks_exact(n)) {
            for (c_ij, &b_kj) in c_row.iter_mut().zip(b_row) {
                *c_ij += a_ik * b_kj;
            }
        }
    }
    c
}

fn transpose(m: &[f32], n: usize) -> Vec<f32> {
    let mut t = vec![0.0f32; n * n];
    for (i, row) in m.chunks_exact(n).enumerate() {
        for (j, &v) in row.iter().enumerate() {
            t[j * n + i] = v;
        }
    }
    t
}

fn run(task: &Task, meta: &Meta, out: &mut String) {
    let n = task.n;
    let mut rng = Rng::new(task.seed);
    let a = rng.matrix(n, task.scale);
    let c = match task.op {
        Op::Matmul => matmul(&a, &rng.matrix(n, 1.0), n),
        Op::MatmulT => matmul(&a, &transpose(&rng.matrix(n, 1.0), n), n),
        Op::Square => matmul(&a, &a, n),
    };
    let sum: f64 = c.iter().map(|&x| f64::from(x)).sum();
    let checksum = (sum * 1e6).round() / 1e6;
    let timestamp_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);

    out.push_str("{\"task_id\":");
    json::push_value(out, &task.task_id);
    out.push_str(",\"op\":");
    json::push_str(out, task.op.name());
    out.push_str(",\"n\":");
    out.push_str(&n.to_string());
    out.push_str(",\"checksum\":");
    json::push_f64(out, checksum);
    out.push_str(",\"c00\":");
    json::push_f32(out, c[0]);
    out.push_str(",\"node\":");
    json::push_str(out, &meta.node);
    out.push_str(",\"request_id\":");
    json::push_str(out, &meta.request_id);
    out.push_str(",\"timestamp_ms\":");
    out.push_str(&timestamp_ms.to_string());
    out.push('}');
}

pub fn process(input: &[u8], meta: &Meta) -> Result<String, String> {
    let value: Value = json::from_slice(input).map_err(|e| format!("malformed JSON input: {e}"))?;
    let mut out = String::new();
    match value {
        Value::Object(obj) => {
            let task = parse_task(&obj)?;
            run(&task, meta, &mut out);
        }
        Value::Array(items) => {
            // Validate everything first so a bad item fails fast.
            let tasks = items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::Object(obj) => parse_task(obj).map_err(|e| format!("item {i}: {e}")),
                    other => Err(format!("item {i}: expected a JSON object, got {other}")),
                })
                .collect::<Result<Vec<_>, _>>()?;
            out.push('[');
            for (i, task) in tasks.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                run(task, meta, &mut out);
            }
            out.push(']');
        }
        _ => return Err("input must be a JSON object or an array of objects".to_string()),
    }
    Ok(out)
}
