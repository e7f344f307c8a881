//! The simulated functions: memory and execution time, derived from a seed.

use crate::rng::Rng;

/// A simulated function.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionSpec {
    /// Stable key (hash) for affinity.
    pub key: u64,
    /// Owning tenant.
    pub tenant: usize,
    /// Memory the function needs, MiB.
    pub mem_mb: f32,
    /// Median execution time on the reference CPU with 1 core, ms.
    pub exec_ms: f32,
}

/// Derive function specs for `n` functions deterministically from a seed: memory 64–256 MiB,
/// log-normal execution time with median ~12 ms (a few heavy ones past the edge time limit).
pub fn make_functions(n: usize, tenant_of: &[usize], seed: u64) -> Vec<FunctionSpec> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|i| {
            let mem = [64.0, 128.0, 128.0, 256.0][rng.below(4)];
            let exec = (12.0 * (0.9 * rng.normal()).exp()).clamp(1.0, 400.0) as f32;
            FunctionSpec {
                key: rng.next_u64(),
                tenant: tenant_of.get(i).copied().unwrap_or(0),
                mem_mb: mem,
                exec_ms: exec,
            }
        })
        .collect()
}
