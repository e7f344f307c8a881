//! The crate's error type.

use thiserror::Error;

/// Everything that can go wrong in `tern-policy`. Bad input is reported, never panicked on.
#[derive(Debug, Error)]
pub enum PolicyError {
    /// A weight matrix or vector does not have the size its layer declares.
    #[error("shape mismatch in {what}: expected {expected}, got {got}")]
    Shape {
        /// Which tensor or layer.
        what: String,
        /// Expected element count.
        expected: usize,
        /// Actual element count.
        got: usize,
    },
    /// An input value is NaN, infinite or out of its domain.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A checkpoint is missing a tensor or cannot be parsed.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// The trace file cannot be parsed.
    #[error("trace line {line}: {msg}")]
    Trace {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        msg: String,
    },
    /// Error from the training backend (candle or tch).
    #[error("backend: {0}")]
    Backend(String),
    /// The background trainer is gone (thread panicked or was shut down).
    #[error("trainer unavailable: {0}")]
    Trainer(String),
    /// Benchmark data cannot be written as or read from JSON.
    #[error("benchmark data: {0}")]
    BenchData(String),
}

#[cfg(feature = "candle")]
impl From<candle_core::Error> for PolicyError {
    fn from(e: candle_core::Error) -> Self {
        PolicyError::Backend(e.to_string())
    }
}

impl From<safetensors::SafeTensorError> for PolicyError {
    fn from(e: safetensors::SafeTensorError) -> Self {
        PolicyError::Checkpoint(e.to_string())
    }
}

/// Crate result alias.
pub type Result<T> = std::result::Result<T, PolicyError>;
