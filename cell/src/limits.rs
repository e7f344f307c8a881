//! What a cell may use, and the cgroup files that say so in each cgroup version.
//!
//! Pure: [`CellLimits::files`] turns limits into `(controller, file, value)` triples for
//! cgroup v2 or v1, and [`crate::cgroup`] writes them. Kept apart so the mapping, which is
//! where the two versions differ, is tested without a cgroup filesystem.

use crate::error::Error;

/// The cgroup controllers a cell uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Controller {
    Cpu,
    /// cgroup v1 keeps CPU usage in a controller of its own (`cpuacct`); v2 in `cpu.stat`.
    CpuAcct,
    Memory,
    Pids,
}

impl Controller {
    /// The name in `/proc/self/cgroup` and in mount options (v1).
    pub fn name(self) -> &'static str {
        match self {
            Controller::Cpu => "cpu",
            Controller::CpuAcct => "cpuacct",
            Controller::Memory => "memory",
            Controller::Pids => "pids",
        }
    }
}

/// Which cgroup interface a host offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

/// A CPU bandwidth cap: `quota_us` of CPU time in every `period_us` (200 000 in 100 000 is two
/// CPUs' worth).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuMax {
    pub quota_us: u64,
    pub period_us: u64,
}

/// A cell's limits. `None` means unlimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CellLimits {
    /// Relative CPU weight under contention, 1..=10 000 (v2 `cpu.weight`, default 100; v1
    /// `cpu.shares` = weight × 1024 / 100).
    pub cpu_weight: u32,
    pub cpu_max: Option<CpuMax>,
    /// Hard memory limit: past it the kernel reclaims, then OOM-kills inside the cell.
    pub memory_max: Option<u64>,
    /// Where reclaim pressure starts (v2 `memory.high`; v1 has no equivalent and uses the soft
    /// limit, which only applies when the host is short of memory).
    pub memory_high: Option<u64>,
    /// At most this many tasks (processes and threads) in the cell.
    pub pids_max: Option<u64>,
}

impl Default for CellLimits {
    fn default() -> Self {
        Self {
            cpu_weight: DEFAULT_CPU_WEIGHT,
            cpu_max: None,
            memory_max: None,
            memory_high: None,
            pids_max: None,
        }
    }
}

/// cgroup v2's default `cpu.weight`.
pub const DEFAULT_CPU_WEIGHT: u32 = 100;
const MAX_CPU_WEIGHT: u32 = 10_000;
/// The kernel's bounds for a CFS period (1 ms to 1 s).
const CPU_PERIOD_US: std::ops::RangeInclusive<u64> = 1_000..=1_000_000;
/// The kernel refuses quotas below 1 ms.
const MIN_CPU_QUOTA_US: u64 = 1_000;

impl CellLimits {
    /// Refuses values the kernel would refuse (or silently clamp), naming the field.
    pub fn validate(&self) -> Result<(), Error> {
        if !(1..=MAX_CPU_WEIGHT).contains(&self.cpu_weight) {
            return Err(Error::InvalidLimit {
                field: "cpu_weight",
                reason: format!("{} is outside 1..={MAX_CPU_WEIGHT}", self.cpu_weight),
            });
        }
        if let Some(m) = self.cpu_max {
            if !CPU_PERIOD_US.contains(&m.period_us) {
                return Err(Error::InvalidLimit {
                    field: "cpu_max.period_us",
                    reason: format!("{} is outside 1000..=1000000", m.period_us),
                });
            }
            if m.quota_us < MIN_CPU_QUOTA_US {
                return Err(Error::InvalidLimit {
                    field: "cpu_max.quota_us",
                    reason: format!("{} is below {MIN_CPU_QUOTA_US}", m.quota_us),
                });
            }
        }
        if let (Some(high), Some(max)) = (self.memory_high, self.memory_max)
            && high > max
        {
            return Err(Error::InvalidLimit {
                field: "memory_high",
                reason: format!("{high} is above memory_max {max}"),
            });
        }
        if self.pids_max == Some(0) {
            return Err(Error::InvalidLimit {
                field: "pids_max",
                reason: "0 would stop the cell itself".into(),
            });
        }
        Ok(())
    }

    /// The files to write, in an order the kernel accepts from any previous setting: in v1
    /// the period before the quota (a quota is checked against the period in force).
    pub fn files(&self, version: CgroupVersion) -> Vec<(Controller, &'static str, String)> {
        let or_max = |v: Option<u64>| v.map_or_else(|| "max".to_owned(), |v| v.to_string());
        let or_minus_one = |v: Option<u64>| v.map_or_else(|| "-1".to_owned(), |v| v.to_string());
        match version {
            CgroupVersion::V2 => vec![
                (Controller::Cpu, "cpu.weight", self.cpu_weight.to_string()),
                (
                    Controller::Cpu,
                    "cpu.max",
                    match self.cpu_max {
                        Some(m) => format!("{} {}", m.quota_us, m.period_us),
                        None => "max 100000".to_owned(),
                    },
                ),
                (Controller::Memory, "memory.max", or_max(self.memory_max)),
                (Controller::Memory, "memory.high", or_max(self.memory_high)),
                (Controller::Pids, "pids.max", or_max(self.pids_max)),
            ],
            CgroupVersion::V1 => vec![
                (
                    Controller::Cpu,
                    "cpu.shares",
                    v1_shares(self.cpu_weight).to_string(),
                ),
                (
                    Controller::Cpu,
                    "cpu.cfs_period_us",
                    self.cpu_max.map_or(100_000, |m| m.period_us).to_string(),
                ),
                (
                    Controller::Cpu,
                    "cpu.cfs_quota_us",
                    or_minus_one(self.cpu_max.map(|m| m.quota_us)),
                ),
                (
                    Controller::Memory,
                    "memory.limit_in_bytes",
                    or_minus_one(self.memory_max),
                ),
                (
                    Controller::Memory,
                    "memory.soft_limit_in_bytes",
                    or_minus_one(self.memory_high),
                ),
                (Controller::Pids, "pids.max", or_max(self.pids_max)),
            ],
        }
    }
}

/// v1 `cpu.shares` for a v2-style weight: 100 ↔ 1024 (both versions' defaults), within the
/// kernel's 2..=262 144.
fn v1_shares(weight: u32) -> u64 {
    (u64::from(weight) * 1024 / 100).clamp(2, 262_144)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn limits() -> CellLimits {
        CellLimits {
            cpu_weight: 300,
            cpu_max: Some(CpuMax {
                quota_us: 50_000,
                period_us: 100_000,
            }),
            memory_max: Some(256 << 20),
            memory_high: Some(192 << 20),
            pids_max: Some(64),
        }
    }

    fn value(files: &[(Controller, &str, String)], name: &str) -> String {
        files.iter().find(|f| f.1 == name).unwrap().2.clone()
    }

    #[test]
    fn v2_files_carry_each_limit_and_max_where_unlimited() {
        let f = limits().files(CgroupVersion::V2);
        assert_eq!(value(&f, "cpu.weight"), "300");
        assert_eq!(value(&f, "cpu.max"), "50000 100000");
        assert_eq!(value(&f, "memory.max"), "268435456");
        assert_eq!(value(&f, "memory.high"), "201326592");
        assert_eq!(value(&f, "pids.max"), "64");
        let open = CellLimits::default().files(CgroupVersion::V2);
        for (file, expected) in [
            ("cpu.weight", "100"),
            ("cpu.max", "max 100000"),
            ("memory.max", "max"),
            ("memory.high", "max"),
            ("pids.max", "max"),
        ] {
            assert_eq!(value(&open, file), expected, "{file}");
        }
    }

    #[test]
    fn v1_files_map_weight_to_shares_and_write_the_period_before_the_quota() {
        let f = limits().files(CgroupVersion::V1);
        assert_eq!(value(&f, "cpu.shares"), "3072");
        let period = f.iter().position(|f| f.1 == "cpu.cfs_period_us").unwrap();
        let quota = f.iter().position(|f| f.1 == "cpu.cfs_quota_us").unwrap();
        assert!(period < quota);
        assert_eq!(value(&f, "cpu.cfs_quota_us"), "50000");
        assert_eq!(value(&f, "memory.limit_in_bytes"), "268435456");
        assert_eq!(value(&f, "memory.soft_limit_in_bytes"), "201326592");
        assert_eq!(value(&f, "pids.max"), "64");
        let open = CellLimits::default().files(CgroupVersion::V1);
        assert_eq!(
            value(&open, "cpu.shares"),
            "1024",
            "both versions' defaults agree"
        );
        assert_eq!(value(&open, "cpu.cfs_quota_us"), "-1");
        assert_eq!(value(&open, "memory.limit_in_bytes"), "-1");
        assert_eq!(v1_shares(1), 10);
        assert_eq!(v1_shares(10_000), 102_400);
    }

    #[test]
    fn limits_the_kernel_would_refuse_are_refused_naming_the_field() {
        let field = |l: CellLimits| match l.validate() {
            Err(Error::InvalidLimit { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert!(limits().validate().is_ok());
        assert_eq!(
            field(CellLimits {
                cpu_weight: 0,
                ..limits()
            }),
            "cpu_weight"
        );
        assert_eq!(
            field(CellLimits {
                cpu_max: Some(CpuMax {
                    quota_us: 10,
                    period_us: 100_000
                }),
                ..limits()
            }),
            "cpu_max.quota_us"
        );
        assert_eq!(
            field(CellLimits {
                cpu_max: Some(CpuMax {
                    quota_us: 10_000,
                    period_us: 10
                }),
                ..limits()
            }),
            "cpu_max.period_us"
        );
        assert_eq!(
            field(CellLimits {
                memory_high: Some(1 << 40),
                ..limits()
            }),
            "memory_high"
        );
        assert_eq!(
            field(CellLimits {
                pids_max: Some(0),
                ..limits()
            }),
            "pids_max"
        );
    }
}
