//! Plain-Rust forward pass over exported weights: the serving path.
//!
//! No tensors, no allocation per call: each layer is a `[in][out]` row-major matrix so the inner
//! loop runs over contiguous outputs and the compiler vectorises it without float reassociation.
//! The training backends use the same layout (`x · W + b`), so weights move between them as-is.

use crate::error::{PolicyError, Result};
use crate::rng::Rng;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use std::collections::BTreeMap;

/// Widest layer the stack-buffer forward pass supports.
pub const MAX_WIDTH: usize = 64;

/// One dense layer: `y = x · W + b`, W stored `[inputs][outputs]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Dense {
    /// Input width.
    pub inputs: usize,
    /// Output width.
    pub outputs: usize,
    /// Row-major `[inputs][outputs]`.
    pub weight: Vec<f32>,
    /// `[outputs]`.
    pub bias: Vec<f32>,
}

/// A multi-layer perceptron with ReLU between layers and a linear last layer.
///
/// ReLU, not tanh: `tanh` costs ~20 ns per call in libm and the dispatch budget is ~2 µs for
/// sixteen nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct Mlp {
    /// Layers, input first.
    pub layers: Vec<Dense>,
}

impl Mlp {
    /// Random initialisation (scaled uniform, He-style for ReLU; last layer scaled down so
    /// initial policies are close to uniform and initial values close to zero).
    pub fn new(sizes: &[usize], rng: &mut Rng, last_scale: f32) -> Result<Self> {
        if sizes.len() < 2 || sizes.iter().any(|&s| s == 0 || s > MAX_WIDTH) {
            return Err(PolicyError::InvalidInput(format!(
                "layer sizes {sizes:?} must be ≥ 2 entries in 1..={MAX_WIDTH}"
            )));
        }
        let mut layers = Vec::with_capacity(sizes.len() - 1);
        for (i, pair) in sizes.windows(2).enumerate() {
            let (n_in, n_out) = (pair[0], pair[1]);
            let last = i + 2 == sizes.len();
            let bound = (6.0 / n_in as f32).sqrt() * if last { last_scale } else { 1.0 };
            let weight = (0..n_in * n_out)
                .map(|_| (rng.next_f32() * 2.0 - 1.0) * bound)
                .collect();
            layers.push(Dense {
                inputs: n_in,
                outputs: n_out,
                weight,
                bias: vec![0.0; n_out],
            });
        }
        Ok(Mlp { layers })
    }

    /// Checks every layer's sizes and that consecutive layers chain.
    pub fn validate(&self, what: &str) -> Result<()> {
        if self.layers.is_empty() {
            return Err(PolicyError::InvalidInput(format!("{what}: no layers")));
        }
        let mut prev: Option<usize> = None;
        for (i, l) in self.layers.iter().enumerate() {
            if l.inputs == 0 || l.outputs == 0 || l.inputs > MAX_WIDTH || l.outputs > MAX_WIDTH {
                return Err(PolicyError::InvalidInput(format!(
                    "{what}.{i}: width out of 1..={MAX_WIDTH}"
                )));
            }
            if l.weight.len() != l.inputs * l.outputs {
                return Err(PolicyError::Shape {
                    what: format!("{what}.{i}.weight"),
                    expected: l.inputs * l.outputs,
                    got: l.weight.len(),
                });
            }
            if l.bias.len() != l.outputs {
                return Err(PolicyError::Shape {
                    what: format!("{what}.{i}.bias"),
                    expected: l.outputs,
                    got: l.bias.len(),
                });
            }
            if let Some(p) = prev
                && p != l.inputs
            {
                return Err(PolicyError::Shape {
                    what: format!("{what}.{i} input"),
                    expected: p,
                    got: l.inputs,
                });
            }
            if l.weight.iter().chain(&l.bias).any(|v| !v.is_finite()) {
                return Err(PolicyError::InvalidInput(format!(
                    "{what}.{i}: non-finite weight"
                )));
            }
            prev = Some(l.outputs);
        }
        Ok(())
    }

    /// Input width.
    pub fn inputs(&self) -> usize {
        self.layers.first().map_or(0, |l| l.inputs)
    }

    /// Output width.
    pub fn outputs(&self) -> usize {
        self.layers.last().map_or(0, |l| l.outputs)
    }

    /// Forward pass of one input into `out` (len ≥ outputs). Inputs shorter than the first layer
    /// are an error; the network must have been validated (done by every constructor path).
    pub fn forward_into(&self, x: &[f32], out: &mut [f32]) -> Result<()> {
        if x.len() != self.inputs() || out.len() < self.outputs() {
            return Err(PolicyError::Shape {
                what: "mlp forward".into(),
                expected: self.inputs(),
                got: x.len(),
            });
        }
        let mut a = [0.0f32; MAX_WIDTH];
        let mut b = [0.0f32; MAX_WIDTH];
        a[..x.len()].copy_from_slice(x);
        let n = self.layers.len();
        for (li, layer) in self.layers.iter().enumerate() {
            let y = &mut b[..layer.outputs];
            y.copy_from_slice(&layer.bias);
            for (i, &xi) in a[..layer.inputs].iter().enumerate() {
                let row = &layer.weight[i * layer.outputs..(i + 1) * layer.outputs];
                for (yo, &w) in y.iter_mut().zip(row) {
                    *yo += xi * w;
                }
            }
            if li + 1 < n {
                for v in y.iter_mut() {
                    *v = v.max(0.0);
                }
            }
            std::mem::swap(&mut a, &mut b);
        }
        out[..self.outputs()].copy_from_slice(&a[..self.outputs()]);
        Ok(())
    }

    /// Convenience: forward pass returning a fresh vector.
    pub fn forward(&self, x: &[f32]) -> Result<Vec<f32>> {
        let mut out = vec![0.0; self.outputs()];
        self.forward_into(x, &mut out)?;
        Ok(out)
    }

    /// Flat `(name, shape, data)` list: `{prefix}.{i}.weight` `[in, out]`, `{prefix}.{i}.bias` `[out]`.
    pub fn named_tensors(&self, prefix: &str) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let mut v = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            v.push((
                format!("{prefix}.{i}.weight"),
                vec![l.inputs, l.outputs],
                l.weight.clone(),
            ));
            v.push((
                format!("{prefix}.{i}.bias"),
                vec![l.outputs],
                l.bias.clone(),
            ));
        }
        v
    }

    /// Rebuild from named tensors (as produced by [`Mlp::named_tensors`]); layer count is
    /// discovered from the names.
    pub fn from_named(prefix: &str, t: &BTreeMap<String, (Vec<usize>, Vec<f32>)>) -> Result<Self> {
        let mut layers = Vec::new();
        for i in 0.. {
            let wn = format!("{prefix}.{i}.weight");
            let Some((wshape, w)) = t.get(&wn) else { break };
            let bn = format!("{prefix}.{i}.bias");
            let (_, b) = t
                .get(&bn)
                .ok_or_else(|| PolicyError::Checkpoint(format!("missing {bn}")))?;
            if wshape.len() != 2 {
                return Err(PolicyError::Checkpoint(format!(
                    "{wn}: rank {}",
                    wshape.len()
                )));
            }
            layers.push(Dense {
                inputs: wshape[0],
                outputs: wshape[1],
                weight: w.clone(),
                bias: b.clone(),
            });
        }
        let mlp = Mlp { layers };
        mlp.validate(prefix)
            .map_err(|e| PolicyError::Checkpoint(e.to_string()))?;
        Ok(mlp)
    }
}

/// Serialise named f32 tensors as safetensors bytes.
pub fn to_safetensors(
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    metadata: BTreeMap<String, String>,
) -> Result<Vec<u8>> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s, d)| {
            (
                n.clone(),
                s.clone(),
                d.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        })
        .collect();
    let mut views = Vec::with_capacity(bytes.len());
    for (n, s, d) in &bytes {
        views.push((n.clone(), TensorView::new(Dtype::F32, s.clone(), d)?));
    }
    Ok(safetensors::serialize(
        views,
        Some(metadata.into_iter().collect()),
    )?)
}

/// Parse safetensors bytes into named f32 tensors plus metadata.
#[allow(clippy::type_complexity)]
pub fn from_safetensors(
    bytes: &[u8],
) -> Result<(
    BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    BTreeMap<String, String>,
)> {
    let (_, meta) = SafeTensors::read_metadata(bytes)?;
    let st = SafeTensors::deserialize(bytes)?;
    let mut out = BTreeMap::new();
    for name in st.names() {
        let t = st.tensor(name)?;
        if t.dtype() != Dtype::F32 {
            return Err(PolicyError::Checkpoint(format!(
                "{name}: dtype {:?}, expected F32",
                t.dtype()
            )));
        }
        let data: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        out.insert(name.to_string(), (t.shape().to_vec(), data));
    }
    let metadata = meta
        .metadata()
        .clone()
        .map(|m| m.into_iter().collect())
        .unwrap_or_default();
    Ok((out, metadata))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn forward_matches_hand_computation() {
        // 2 → 2 (relu) → 1
        let mlp = Mlp {
            layers: vec![
                Dense {
                    inputs: 2,
                    outputs: 2,
                    weight: vec![1.0, -1.0, 2.0, 0.5],
                    bias: vec![0.0, 0.1],
                },
                Dense {
                    inputs: 2,
                    outputs: 1,
                    weight: vec![3.0, -2.0],
                    bias: vec![0.25],
                },
            ],
        };
        mlp.validate("t").unwrap();
        // h = relu([1*1 + 2*2, -1*1 + 0.5*2 + 0.1]) = relu([5, 0.1]) = [5, 0.1]
        // y = 3*5 - 2*0.1 + 0.25 = 15.05
        let y = mlp.forward(&[1.0, 2.0]).unwrap();
        assert!((y[0] - 15.05).abs() < 1e-5, "{y:?}");
        // relu clips: x = [-1, 0] → h = relu([-1, 1 + 0.1]) = [0, 1.1] → y = -2.2 + 0.25
        let y = mlp.forward(&[-1.0, 0.0]).unwrap();
        assert!((y[0] + 1.95).abs() < 1e-5, "{y:?}");
    }

    #[test]
    fn wrong_input_width_is_an_error() {
        let mlp = Mlp::new(&[3, 4, 1], &mut Rng::new(0), 1.0).unwrap();
        assert!(mlp.forward(&[1.0, 2.0]).is_err());
        assert!(Mlp::new(&[3], &mut Rng::new(0), 1.0).is_err());
        assert!(Mlp::new(&[3, 1000], &mut Rng::new(0), 1.0).is_err());
    }

    #[test]
    fn validate_catches_bad_shapes_and_nan() {
        let mut mlp = Mlp::new(&[3, 4, 1], &mut Rng::new(0), 1.0).unwrap();
        mlp.layers[1].bias.push(0.0);
        assert!(matches!(mlp.validate("x"), Err(PolicyError::Shape { .. })));
        let mut mlp = Mlp::new(&[3, 4, 1], &mut Rng::new(0), 1.0).unwrap();
        mlp.layers[0].weight[0] = f32::NAN;
        assert!(mlp.validate("x").is_err());
    }

    #[test]
    fn safetensors_round_trip_is_bit_exact() {
        let mlp = Mlp::new(&[5, 8, 3], &mut Rng::new(42), 0.1).unwrap();
        let mut meta = BTreeMap::new();
        meta.insert("k".to_string(), "v".to_string());
        let bytes = to_safetensors(&mlp.named_tensors("net"), meta).unwrap();
        let (t, m) = from_safetensors(&bytes).unwrap();
        assert_eq!(m.get("k").map(String::as_str), Some("v"));
        let back = Mlp::from_named("net", &t).unwrap();
        assert_eq!(back, mlp);
        assert!(Mlp::from_named("other", &t).is_err());
        assert!(from_safetensors(b"garbage").is_err());
    }
}
