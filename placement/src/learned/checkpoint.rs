//! Reading the dispatch network's exported weights (tern-policy's safetensors checkpoint).

use std::path::Path;

use tern_policy::policy::PolicyWeights;

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

/// Reads a tern-policy checkpoint (`policy_checkpoint`).
pub fn read_checkpoint(path: &Path) -> Result<PolicyWeights, CheckpointError> {
    let bytes = std::fs::read(path).map_err(|e| CheckpointError::new(path, e.to_string()))?;
    let (weights, _meta) = PolicyWeights::from_safetensors(&bytes)
        .map_err(|e| CheckpointError::new(path, e.to_string()))?;
    Ok(weights)
}
