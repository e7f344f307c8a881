//! Reading the dispatch network's exported weights (tern-policy's safetensors checkpoint).

use std::path::Path;

use tern_policy::policy::PolicyWeights;
use tern_policy::sim::Calibration;

/// A checkpoint that cannot be served: unreadable, not safetensors, missing tensors, wrong
/// layer widths, or non-finite weights.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("policy_checkpoint {path}: {message}")]
pub struct CheckpointError {
    pub path: String,
    pub message: String,
}

impl CheckpointError {
    pub fn new(path: &Path, message: String) -> Self {
        Self {
            path: path.display().to_string(),
            message,
        }
    }
}

/// A checkpoint as the node serves it: the networks, and the measured constants they were
/// trained with (`None`: the simulator's assumed classes).
#[derive(Clone, Debug)]
pub struct Checkpoint {
    pub weights: PolicyWeights,
    pub calibration: Option<Calibration>,
}

/// Reads a tern-policy checkpoint (`policy_checkpoint`). Calibration metadata that is there
/// but incomplete or invalid is an error: serving the networks with other constants than
/// they were trained with would be silently wrong.
pub fn read_checkpoint(path: &Path) -> Result<Checkpoint, CheckpointError> {
    let bytes = std::fs::read(path).map_err(|e| CheckpointError::new(path, e.to_string()))?;
    let (weights, meta) = PolicyWeights::from_safetensors(&bytes)
        .map_err(|e| CheckpointError::new(path, e.to_string()))?;
    let calibration =
        Calibration::from_metadata(&meta).map_err(|e| CheckpointError::new(path, e.to_string()))?;
    Ok(Checkpoint {
        weights,
        calibration,
    })
}
