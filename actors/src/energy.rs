//! Energy accounting for Eq. 8 (E_r = Q / (P_avg · T), i.e. requests per joule).
//!
//! Intel RAPL (`/sys/class/powercap/intel-rapl:0/energy_uj`) is used when readable. VMs like the
//! ones Tern is developed on expose no RAPL; there the node falls back to a CPU-time model:
//! joules = CPU-seconds used by this process × watts per busy core (default 10 W, a typical
//! server core under load). The model ignores idle power and everything outside the process,
//! so compare runs with the same source only; `/metrics` labels which one is in use.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where energy figures come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnergySource {
    Rapl,
    CpuModel,
}

impl EnergySource {
    pub fn as_str(self) -> &'static str {
        match self {
            EnergySource::Rapl => "rapl",
            EnergySource::CpuModel => "cpu_model",
        }
    }
}

pub use tern_metrics::MODEL_WATTS_PER_CORE;

/// Joules between two RAPL readings, allowing for one counter wrap-around.
pub fn rapl_delta_joules(start_uj: u64, now_uj: u64, max_range_uj: u64) -> f64 {
    let delta = if now_uj >= start_uj {
        now_uj - start_uj
    } else {
        max_range_uj.saturating_sub(start_uj) + now_uj
    };
    delta as f64 / 1e6
}

/// Joules the CPU-time model charges for `cpu` of process CPU time.
pub fn model_joules(cpu: Duration, watts_per_core: f64) -> f64 {
    cpu.as_secs_f64() * watts_per_core
}

/// Eq. 8: requests per joule; `None` before any energy was spent.
pub fn requests_per_joule(requests: u64, joules: f64) -> Option<f64> {
    (joules > 0.0).then(|| requests as f64 / joules)
}

/// Measures the node's energy since it started.
#[derive(Debug)]
pub struct EnergyMeter {
    rapl: Option<(PathBuf, u64, u64)>,
    cpu_start: Duration,
}

const RAPL: &str = "/sys/class/powercap/intel-rapl:0";

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// CPU time used by this process so far.
pub fn process_cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(
        t.tv_sec.max(0) as u64,
        t.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

impl EnergyMeter {
    pub fn start() -> Self {
        let dir = Path::new(RAPL);
        let rapl = read_u64(&dir.join("energy_uj")).map(|start| {
            let range = read_u64(&dir.join("max_energy_range_uj")).unwrap_or(u64::MAX);
            (dir.join("energy_uj"), start, range)
        });
        Self {
            rapl,
            cpu_start: process_cpu_time(),
        }
    }

    pub fn source(&self) -> EnergySource {
        if self.rapl.is_some() {
            EnergySource::Rapl
        } else {
            EnergySource::CpuModel
        }
    }

    /// Joules spent since [`EnergyMeter::start`].
    pub fn joules(&self) -> f64 {
        if let Some((path, start, range)) = &self.rapl
            && let Some(now) = read_u64(path)
        {
            return rapl_delta_joules(*start, now, *range);
        }
        model_joules(
            process_cpu_time().saturating_sub(self.cpu_start),
            MODEL_WATTS_PER_CORE,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rapl_counter_wrap_is_handled() {
        assert_eq!(rapl_delta_joules(1_000_000, 3_000_000, u64::MAX), 2.0);
        assert_eq!(rapl_delta_joules(9_000_000, 1_000_000, 10_000_000), 2.0);
    }

    #[test]
    fn model_and_eq8() {
        assert_eq!(model_joules(Duration::from_millis(1500), 10.0), 15.0);
        assert_eq!(requests_per_joule(30, 15.0), Some(2.0));
        assert_eq!(requests_per_joule(30, 0.0), None);
    }

    #[test]
    fn meter_grows_with_work() {
        let m = EnergyMeter::start();
        let before = m.joules();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(m.joules() > before, "{} -> {}", before, m.joules());
    }
}
