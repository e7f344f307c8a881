//! The paper's Eq. 4, isolation strength as resource mutual exclusion:
//! `R_iso = Σ_i w_i · (1 − ρ_i) / n` over `n` resource dimensions, with `w_i` the weight of
//! dimension `i` and `ρ_i` its sharing ratio (0: the tenant has it to itself, 1: it shares it
//! with every other tenant on the node). Pure.
//!
//! How the sharing ratios are read off the isolation in force ([`Sharing::of_cell`]):
//! - **CPU**: a cell's cgroup guarantees it its weight's part of the node's CPU under
//!   contention and no more (there is no `cpu.max` unless set), so `ρ = 1 − w / Σ w` over the
//!   node's running cells;
//! - **memory**: a cell's own `memory.max` (its pages cannot be taken by, nor counted
//!   against, another tenant) gives `ρ = 0`; read-only pages it maps (the binary, artifacts)
//!   are shared but cannot be written, so they do not count;
//! - **PID**, **network**, **filesystem (VFS)**: its own PID namespace with `pids.max`, its own
//!   empty network namespace, its own read-only root: `ρ = 0` each;
//! - **system calls**: a seccomp allow-list in force (anything else kills the cell): `ρ = 0`.
//!
//! In-process every dimension is the node process's, shared by all tenants: `ρ = 1` each,
//! `R_iso = 0` (WebAssembly's memory isolation inside the process is not an OS resource
//! separation and is not scored here).

/// The resource dimensions Eq. 4 sums over here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Resource {
    Cpu,
    Memory,
    Pid,
    Network,
    Vfs,
    Syscalls,
}

impl Resource {
    pub const ALL: [Resource; 6] = [
        Resource::Cpu,
        Resource::Memory,
        Resource::Pid,
        Resource::Network,
        Resource::Vfs,
        Resource::Syscalls,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Cpu => "cpu",
            Resource::Memory => "memory",
            Resource::Pid => "pid",
            Resource::Network => "net",
            Resource::Vfs => "vfs",
            Resource::Syscalls => "syscalls",
        }
    }
}

/// The weight `w_i` of each dimension (all 1 by default, so `R_iso` is in 0..=1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Weights(pub [f64; 6]);

impl Default for Weights {
    fn default() -> Self {
        Self([1.0; 6])
    }
}

/// The sharing ratio `ρ_i` of each dimension, in [`Resource::ALL`] order.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sharing(pub [f64; 6]);

impl Sharing {
    /// Everything shared: guests in the node process.
    pub fn in_process() -> Self {
        Self([1.0; 6])
    }

    /// A cell whose CPU weight is `weight` among running cells whose weights sum to
    /// `total_weight` (its own included).
    pub fn of_cell(weight: u32, total_weight: u64) -> Self {
        let guaranteed = if total_weight == 0 {
            1.0
        } else {
            (f64::from(weight) / total_weight as f64).clamp(0.0, 1.0)
        };
        Self([1.0 - guaranteed, 0.0, 0.0, 0.0, 0.0, 0.0])
    }

    pub fn of(&self, r: Resource) -> f64 {
        self.0[r as usize]
    }

    /// Eq. 4: `Σ_i w_i · (1 − ρ_i) / n`.
    pub fn strength(&self, weights: &Weights) -> f64 {
        let n = self.0.len() as f64;
        self.0
            .iter()
            .zip(weights.0)
            .map(|(rho, w)| w * (1.0 - rho.clamp(0.0, 1.0)))
            .sum::<f64>()
            / n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eq4_is_zero_in_process_and_grows_with_a_cells_cpu_share() {
        let w = Weights::default();
        assert_eq!(Sharing::in_process().strength(&w), 0.0);
        // Alone on the node: nothing shared at all.
        assert!((Sharing::of_cell(100, 100).strength(&w) - 1.0).abs() < 1e-12);
        // One of four equal cells: 3/4 of the CPU shared, the other five dimensions not.
        let quarter = Sharing::of_cell(100, 400);
        assert!((quarter.of(Resource::Cpu) - 0.75).abs() < 1e-12);
        assert!((quarter.strength(&w) - (0.25 + 5.0) / 6.0).abs() < 1e-12);
        // Weights scale each dimension: CPU counted twice as much.
        let mut heavy_cpu = w;
        heavy_cpu.0[Resource::Cpu as usize] = 2.0;
        assert!((quarter.strength(&heavy_cpu) - (0.5 + 5.0) / 6.0).abs() < 1e-12);
    }
}
