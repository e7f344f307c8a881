//! Constants measured on real Tern nodes, which replace the simulator's assumed ones.
//!
//! The assumed classes ([`NodeClass::edge`] and its siblings) carry figures from elsewhere
//! (Workers-like and Lambda-like cold starts of 4.2 and 63.5 ms, 4 / 6 / 9 W per core). A
//! [`Calibration`] is what `bench/experiments/real-nodes.sh calibration` measured on Tern
//! nodes of each class on one machine: cold start, reuse, per-request overhead, relative speed,
//! power per busy core and the hop between nodes. What a calibration does not measure stays as
//! assumed, and says so: memory, slots, time limits (configuration, not measurements) and the
//! access RTT of a class (where a node stands, not what it is).

use std::collections::BTreeMap;

use super::{NodeClass, SimConfig};
use crate::error::{PolicyError, Result};

/// Measured constants for the simulated cluster.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "candle", derive(serde::Serialize, serde::Deserialize))]
pub struct Calibration {
    /// What produced the numbers: command, commit, date, machine.
    pub source: String,
    /// Cost of running a request off its entry node, ms (forwarding there and the answer back).
    pub hop_ms: f64,
    /// One entry per simulator class (`edge`, `standard`, `burst`), each exactly once.
    pub classes: Vec<ClassCalibration>,
}

/// Measured constants of one node class.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "candle", derive(serde::Serialize, serde::Deserialize))]
pub struct ClassCalibration {
    /// The simulator class it calibrates: `edge`, `standard` or `burst`.
    pub class: String,
    /// Extra time of a request whose module is not loaded on the node, ms.
    pub cold_start_ms: f32,
    /// Extra time of a request whose module is loaded but has no idle instance, ms.
    pub reuse_ms: f32,
    /// Time every request costs on top of its guest's execution, ms.
    pub overhead_ms: f32,
    /// Execution speed relative to the `standard` class's.
    pub speed: f32,
    /// Power of one busy core, W.
    pub busy_w_per_core: f32,
}

impl Calibration {
    /// Checks every value: each class once, every figure finite and not negative, speed and
    /// power above 0, hop finite and not negative.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(PolicyError::InvalidInput(format!("calibration: {what}")));
        if !self.hop_ms.is_finite() || self.hop_ms < 0.0 {
            return bad(format!("hop_ms {} is not a duration", self.hop_ms));
        }
        for name in CLASSES {
            let n = self.classes.iter().filter(|c| c.class == name).count();
            if n != 1 {
                return bad(format!("class {name} appears {n} times, not once"));
            }
        }
        for c in &self.classes {
            if !CLASSES.contains(&c.class.as_str()) {
                return bad(format!(
                    "unknown class {:?} (edge, standard or burst)",
                    c.class
                ));
            }
            for (what, v) in &c.fields()[..3] {
                let (what, v) = (*what, *v);
                if !v.is_finite() || v < 0.0 {
                    return bad(format!("{} {what} {v} is not a duration", c.class));
                }
            }
            for (what, v) in [("speed", c.speed), ("busy_w_per_core", c.busy_w_per_core)] {
                if !v.is_finite() || v <= 0.0 {
                    return bad(format!("{} {what} {v} is not above 0", c.class));
                }
            }
        }
        Ok(())
    }

    /// `class` with this calibration's measured constants in place of the assumed ones.
    pub fn apply(&self, class: &NodeClass) -> NodeClass {
        let mut c = class.clone();
        if let Some(m) = self.classes.iter().find(|m| m.class == class.name) {
            c.cold_start_ms = m.cold_start_ms;
            c.reuse_ms = Some(m.reuse_ms);
            c.overhead_ms = m.overhead_ms;
            c.speed = m.speed;
            c.busy_w_per_core = m.busy_w_per_core;
        }
        c
    }
}

/// The simulator classes a calibration covers.
const CLASSES: [&str; 3] = ["edge", "standard", "burst"];

/// Prefix of a calibration's entries in a checkpoint's metadata.
const META: &str = "calibration.";

impl Calibration {
    /// The calibration as checkpoint metadata (`calibration.source`, `calibration.hop_ms`,
    /// `calibration.<class>.<field>`): the constants a checkpoint was trained with travel with
    /// it, so whoever serves it can give it the same ones.
    pub fn to_metadata(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert(format!("{META}source"), self.source.clone());
        m.insert(format!("{META}hop_ms"), self.hop_ms.to_string());
        for c in &self.classes {
            for (field, v) in c.fields() {
                m.insert(format!("{META}{}.{field}", c.class), v.to_string());
            }
        }
        m
    }

    /// The calibration a checkpoint's metadata carries: `Ok(None)` if it has none (trained with
    /// the assumed classes); an error if it is incomplete, unparsable or invalid.
    pub fn from_metadata(meta: &BTreeMap<String, String>) -> Result<Option<Self>> {
        if !meta.keys().any(|k| k.starts_with(META)) {
            return Ok(None);
        }
        let get = |key: String| {
            meta.get(&key).ok_or_else(|| {
                PolicyError::Checkpoint(format!("calibration metadata: {key} is missing"))
            })
        };
        let num = |key: String| -> Result<f64> {
            let v = get(key.clone())?;
            v.parse::<f64>().map_err(|_| {
                PolicyError::Checkpoint(format!(
                    "calibration metadata: {key} = {v:?} is not a number"
                ))
            })
        };
        let mut classes = Vec::new();
        for name in CLASSES {
            let f = |field: &str| num(format!("{META}{name}.{field}")).map(|v| v as f32);
            classes.push(ClassCalibration {
                class: name.to_string(),
                cold_start_ms: f("cold_start_ms")?,
                reuse_ms: f("reuse_ms")?,
                overhead_ms: f("overhead_ms")?,
                speed: f("speed")?,
                busy_w_per_core: f("busy_w_per_core")?,
            });
        }
        let cal = Calibration {
            source: get(format!("{META}source"))?.clone(),
            hop_ms: num(format!("{META}hop_ms"))?,
            classes,
        };
        cal.validate()
            .map_err(|e| PolicyError::Checkpoint(format!("calibration metadata: {e}")))?;
        Ok(Some(cal))
    }
}

impl ClassCalibration {
    /// The measured figures by name.
    fn fields(&self) -> [(&'static str, f32); 5] {
        [
            ("cold_start_ms", self.cold_start_ms),
            ("reuse_ms", self.reuse_ms),
            ("overhead_ms", self.overhead_ms),
            ("speed", self.speed),
            ("busy_w_per_core", self.busy_w_per_core),
        ]
    }
}

impl SimConfig {
    /// [`SimConfig::heterogeneous`] with `cal`'s measured constants in every node and its hop.
    pub fn calibrated(seed: u64, cal: &Calibration) -> Result<Self> {
        cal.validate()?;
        let mut cfg = SimConfig::heterogeneous(seed);
        cfg.nodes = cfg.nodes.iter().map(|c| cal.apply(c)).collect();
        cfg.hop_rtt_ms = cal.hop_ms;
        Ok(cfg)
    }
}
