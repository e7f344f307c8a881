//! The core of `matmul-json`, the paper's workload, shared by the preview-1 command
//! (`src/bin/matmul-json.rs`: stdin in, stdout out) and the `wasi:http/proxy` component
//! (`components/matmul-json`: request body in, response body out), so both answer the same
//! bytes.
//!
//! Input (stdin, or the request body): a JSON object such as
//! `{"task_id":"t1","n":64,"seed":7,"op":"matmul","scale":1.0,"pad":"..."}`
//! (every field optional; unknown fields such as `pad` are ignored), or a
//! JSON array of such objects (map mode).
//!
//! * `n`: matrix size, integer in 1..=1024, default 64.
//! * `seed`: integer, default 0; A then B are filled from a xorshift64
//!   stream seeded from it, with values in [-1, 1).
//! * `op`: `matmul` (A·B, default), `matmul_t` (A·Bᵀ) or `square` (A·A).
//! * `scale`: finite number, default 1.0; every element of A is multiplied
//!   by it before the product.
//! * `task_id`: any JSON value, echoed back (default `null`).
//!
//! Output (stdout, or the response body), one object per input object, keys in this order:
//! `{"task_id":..,"op":..,"n":..,"checksum":..,"c00":..,"node":..,"request_id":..,"timestamp_ms":..}`
//! where `checksum` is the f64 sum of C rounded to 6 decimals, `c00` is
//! C\[0\]\[0\] (f32), `node`/`request_id` come from `TERN_NODE` /
//! `TERN_REQUEST_ID` (empty string if unset) and `timestamp_ms` is Unix time
//! in milliseconds. In map mode the output is a JSON array of those objects,
//! one per input item, in order.
//!
//! Errors (malformed JSON, wrong field types, `n` out of range, unknown `op`;
//! in map mode any bad item fails the whole call): `{"error":"..."}` on
//! stdout and exit code 2.

use serde_json::{Map, Value};
use std::time::{SystemTime, UNIX_EPOCH};

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

fn parse_task(obj: &Map<String, Value>) -> Result<Task, String> {
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
/// The preview-1 build enables simd128 for the whole module; the component build only for
/// this function. Either way each element sees the same operations in the same order.
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
    out.push_str(&json(&task.task_id));
    out.push_str(",\"op\":");
    out.push_str(&json(task.op.name()));
    out.push_str(",\"n\":");
    out.push_str(&n.to_string());
    out.push_str(",\"checksum\":");
    out.push_str(&json(&checksum));
    out.push_str(",\"c00\":");
    out.push_str(&json(&c[0]));
    out.push_str(",\"node\":");
    out.push_str(&json(&meta.node));
    out.push_str(",\"request_id\":");
    out.push_str(&json(&meta.request_id));
    out.push_str(",\"timestamp_ms\":");
    out.push_str(&timestamp_ms.to_string());
    out.push('}');
}

fn json<T: serde::Serialize + ?Sized>(v: &T) -> String {
    // Serialising strings, numbers and `Value`s cannot fail; non-finite
    // floats become `null`.
    serde_json::to_string(v).unwrap_or_else(|_| "null".to_string())
}

/// The output for `input`, or the message of the error that refuses it.
pub fn process(input: &[u8], meta: &Meta) -> Result<String, String> {
    let value: Value =
        serde_json::from_slice(input).map_err(|e| format!("malformed JSON input: {e}"))?;
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

/// `{"error":MESSAGE}`: what a refused input is answered with.
pub fn error_body(message: &str) -> String {
    format!("{{\"error\":{}}}", json(message))
}
