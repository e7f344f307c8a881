//! PPO training backend on candle (pure Rust, CPU): autograd through `Var`s, a hand-written Adam
//! (candle-nn's would pull in another crate for 20 lines), global-norm gradient clipping.

use crate::error::{PolicyError, Result};
use crate::features::{NODE_FEATURES, QUOTA_FEATURES};
use crate::mlp::{Dense, Mlp};
use crate::policy::{PolicyWeights, quota_head_ranges};
use crate::ppo::{Backend, DispatchBatch, LossStats, PpoConfig, QuotaBatch};
use candle_core::{D, Device, Tensor, Var};

/// A trainable MLP: `[(W, b)]`, W `[in, out]`.
struct VarMlp {
    layers: Vec<(Var, Var)>,
}

impl VarMlp {
    fn from_mlp(m: &Mlp, dev: &Device) -> Result<Self> {
        let layers = m
            .layers
            .iter()
            .map(|l| {
                Ok((
                    Var::from_slice(&l.weight, (l.inputs, l.outputs), dev)?,
                    Var::from_slice(&l.bias, l.outputs, dev)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(VarMlp { layers })
    }

    fn to_mlp(&self) -> Result<Mlp> {
        let layers = self
            .layers
            .iter()
            .map(|(w, b)| {
                let (i, o) = w.as_tensor().dims2()?;
                Ok(Dense {
                    inputs: i,
                    outputs: o,
                    weight: w.as_tensor().flatten_all()?.to_vec1::<f32>()?,
                    bias: b.as_tensor().to_vec1::<f32>()?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Mlp { layers })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        let n = self.layers.len();
        for (i, (w, b)) in self.layers.iter().enumerate() {
            h = h.matmul(w.as_tensor())?.broadcast_add(b.as_tensor())?;
            if i + 1 < n {
                h = h.relu()?;
            }
        }
        Ok(h)
    }

    fn vars(&self) -> impl Iterator<Item = &Var> {
        self.layers.iter().flat_map(|(w, b)| [w, b])
    }
}

/// Adam over a fixed set of variables.
struct Adam {
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    t: i32,
}

impl Adam {
    fn new(vars: &[&Var]) -> Result<Self> {
        let z = vars
            .iter()
            .map(|v| v.as_tensor().zeros_like())
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Adam {
            m: z.clone(),
            v: z,
            t: 0,
        })
    }

    /// Clip the gradients to `max_norm` (global L2 over `vars`), then one Adam step.
    /// Returns the pre-clip gradient norm.
    fn step(
        &mut self,
        vars: &[&Var],
        grads: &candle_core::backprop::GradStore,
        lr: f64,
        max_norm: f32,
    ) -> Result<f32> {
        let gs: Vec<Tensor> = vars
            .iter()
            .map(|v| match grads.get(v.as_tensor()) {
                Some(g) => Ok(g.clone()),
                None => v.as_tensor().zeros_like(),
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let mut sq = 0.0f64;
        for g in &gs {
            sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
        let norm = sq.sqrt() as f32;
        if !norm.is_finite() {
            return Err(PolicyError::Backend("non-finite gradient".into()));
        }
        let scale = if norm > max_norm && max_norm > 0.0 {
            (max_norm / (norm + 1e-6)) as f64
        } else {
            1.0
        };
        self.t += 1;
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
        let bc1 = 1.0 - b1.powi(self.t);
        let bc2 = 1.0 - b2.powi(self.t);
        for (k, (var, g)) in vars.iter().zip(gs).enumerate() {
            // Detach everything the optimizer keeps: gradient tensors carry op history, and a
            // moment estimate built from them would chain every past step's graph (a leak of
            // ~400 MB per PPO update before this was added).
            let g = g.detach().affine(scale, 0.0)?;
            self.m[k] = (self.m[k].affine(b1, 0.0)? + g.affine(1.0 - b1, 0.0)?)?.detach();
            self.v[k] = (self.v[k].affine(b2, 0.0)? + g.sqr()?.affine(1.0 - b2, 0.0)?)?.detach();
            let mhat = self.m[k].affine(1.0 / bc1, 0.0)?;
            let vhat = self.v[k].affine(1.0 / bc2, 0.0)?;
            let upd = (mhat / vhat.sqrt()?.affine(1.0, eps)?)?.affine(lr, 0.0)?;
            var.set(&(var.as_tensor().detach() - upd)?)?;
        }
        Ok(norm)
    }
}

/// The candle backend.
pub struct CandleBackend {
    dev: Device,
    dispatch: VarMlp,
    dispatch_value: VarMlp,
    quota: VarMlp,
    quota_value: VarMlp,
    opt_dispatch: Adam,
    opt_quota: Adam,
}

impl std::fmt::Debug for CandleBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CandleBackend")
    }
}

/// Clipped surrogate, value loss and entropy pieces shared by both networks.
fn ppo_terms(
    logp: &Tensor,
    old_logp: &Tensor,
    adv: &Tensor,
    eps: f32,
) -> Result<(Tensor, f32, f32)> {
    let ratio = (logp - old_logp)?.exp()?;
    let s1 = (&ratio * adv)?;
    let s2 = (ratio.clamp(1.0 - eps, 1.0 + eps)? * adv)?;
    let pg = s1.minimum(&s2)?.mean_all()?.neg()?;
    let kl = (old_logp - logp)?.mean_all()?.to_scalar::<f32>()?;
    let r = ratio.to_vec1::<f32>()?;
    let clipped =
        r.iter().filter(|x| (**x - 1.0).abs() > eps).count() as f32 / r.len().max(1) as f32;
    Ok((pg, kl, clipped))
}

fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let lse = x.log_sum_exp(D::Minus1)?.unsqueeze(D::Minus1)?;
    Ok(x.broadcast_sub(&lse)?)
}

impl CandleBackend {
    /// New backend on the CPU with the given weights.
    pub fn new(w: &PolicyWeights) -> Result<Self> {
        w.validate()?;
        let dev = Device::Cpu;
        let dispatch = VarMlp::from_mlp(&w.dispatch, &dev)?;
        let dispatch_value = VarMlp::from_mlp(&w.dispatch_value, &dev)?;
        let quota = VarMlp::from_mlp(&w.quota, &dev)?;
        let quota_value = VarMlp::from_mlp(&w.quota_value, &dev)?;
        let dv: Vec<&Var> = dispatch.vars().chain(dispatch_value.vars()).collect();
        let qv: Vec<&Var> = quota.vars().chain(quota_value.vars()).collect();
        let opt_dispatch = Adam::new(&dv)?;
        let opt_quota = Adam::new(&qv)?;
        Ok(CandleBackend {
            dev,
            dispatch,
            dispatch_value,
            quota,
            quota_value,
            opt_dispatch,
            opt_quota,
        })
    }

    fn t2(&self, data: &[f32], r: usize, c: usize) -> Result<Tensor> {
        if data.len() != r * c {
            return Err(PolicyError::Shape {
                what: "batch tensor".into(),
                expected: r * c,
                got: data.len(),
            });
        }
        Ok(Tensor::from_slice(data, (r, c), &self.dev)?)
    }

    fn t1(&self, data: &[f32]) -> Result<Tensor> {
        Ok(Tensor::from_slice(data, data.len(), &self.dev)?)
    }
}

impl Backend for CandleBackend {
    fn name(&self) -> &'static str {
        "candle"
    }

    fn load(&mut self, w: &PolicyWeights) -> Result<()> {
        *self = CandleBackend::new(w)?;
        Ok(())
    }

    fn export(&self) -> Result<PolicyWeights> {
        let w = PolicyWeights {
            dispatch: self.dispatch.to_mlp()?,
            dispatch_value: self.dispatch_value.to_mlp()?,
            quota: self.quota.to_mlp()?,
            quota_value: self.quota_value.to_mlp()?,
        };
        w.validate()?;
        Ok(w)
    }

    fn step_dispatch(&mut self, b: &DispatchBatch, cfg: &PpoConfig) -> Result<LossStats> {
        let (bs, n, f) = (b.batch, b.nodes, NODE_FEATURES);
        if bs == 0 || n == 0 {
            return Ok(LossStats::default());
        }
        let x = self.t2(&b.obs, bs * n, f)?;
        let logits = self.dispatch.forward(&x)?.reshape((bs, n))?;
        let cold = self.t2(&b.cold, bs, n)?;
        let mask = self.t2(&b.mask, bs, n)?;
        // Eq. 1 score, then masking by a large negative offset (exp underflows to exactly 0).
        let scores = (logits - cold.affine(cfg.lambda_dispatch as f64, 0.0)?)?;
        let masked = (scores + mask.affine(1e9, -1e9)?)?;
        let logp_all = log_softmax(&masked)?;
        let actions = Tensor::from_slice(&b.actions, (bs, 1), &self.dev)?;
        let logp = logp_all.gather(&actions, 1)?.squeeze(1)?;
        let old = self.t1(&b.old_logp)?;
        let adv = self.t1(&b.adv)?;
        let (pg, kl, clip_frac) = ppo_terms(&logp, &old, &adv, cfg.clip_eps)?;
        let p = logp_all.exp()?;
        // Masked entries: p = 0 exactly, so p·logp = 0 and they add no entropy.
        let entropy = (p * logp_all)?.sum(1)?.neg()?.mean_all()?;
        let pooled = self.t2(&b.pooled, bs, f)?;
        let v = self.dispatch_value.forward(&pooled)?.squeeze(1)?;
        let ret = self.t1(&b.returns)?;
        let vloss = (v - ret)?.sqr()?.mean_all()?;
        let loss = ((&pg + vloss.affine(cfg.vf_coef as f64, 0.0)?)?
            - entropy.affine(cfg.ent_coef as f64, 0.0)?)?;
        let grads = loss.backward()?;
        let vars: Vec<&Var> = self
            .dispatch
            .vars()
            .chain(self.dispatch_value.vars())
            .collect();
        let grad_norm = self
            .opt_dispatch
            .step(&vars, &grads, cfg.lr, cfg.max_grad_norm)?;
        Ok(LossStats {
            policy_loss: pg.to_scalar::<f32>()?,
            value_loss: vloss.to_scalar::<f32>()?,
            entropy: entropy.to_scalar::<f32>()?,
            approx_kl: kl,
            clip_frac,
            grad_norm,
        })
    }

    fn step_quota(&mut self, b: &QuotaBatch, cfg: &PpoConfig) -> Result<LossStats> {
        let bs = b.batch;
        if bs == 0 {
            return Ok(LossStats::default());
        }
        let x = self.t2(&b.obs, bs, QUOTA_FEATURES)?;
        let logits = self.quota.forward(&x)?;
        let actions = Tensor::from_slice(&b.actions, (bs, 3), &self.dev)?;
        let mut logp: Option<Tensor> = None;
        let mut ent: Option<Tensor> = None;
        for (h, r) in quota_head_ranges().into_iter().enumerate() {
            let lp_all = log_softmax(&logits.narrow(1, r.start, r.len())?)?;
            let a = actions.narrow(1, h, 1)?.contiguous()?;
            let lp = lp_all.gather(&a, 1)?.squeeze(1)?;
            let e = (lp_all.exp()? * &lp_all)?.sum(1)?.neg()?;
            logp = Some(match logp {
                Some(t) => (t + lp)?,
                None => lp,
            });
            ent = Some(match ent {
                Some(t) => (t + e)?,
                None => e,
            });
        }
        let (Some(logp), Some(ent)) = (logp, ent) else {
            return Err(PolicyError::Backend("quota network has no heads".into()));
        };
        let old = self.t1(&b.old_logp)?;
        let adv = self.t1(&b.adv)?;
        let (pg, kl, clip_frac) = ppo_terms(&logp, &old, &adv, cfg.clip_eps)?;
        let entropy = ent.mean_all()?;
        let v = self.quota_value.forward(&x)?.squeeze(1)?;
        let ret = self.t1(&b.returns)?;
        let vloss = (v - ret)?.sqr()?.mean_all()?;
        let loss = ((&pg + vloss.affine(cfg.vf_coef as f64, 0.0)?)?
            - entropy.affine(cfg.ent_coef as f64, 0.0)?)?;
        let grads = loss.backward()?;
        let vars: Vec<&Var> = self.quota.vars().chain(self.quota_value.vars()).collect();
        let grad_norm = self
            .opt_quota
            .step(&vars, &grads, cfg.lr, cfg.max_grad_norm)?;
        Ok(LossStats {
            policy_loss: pg.to_scalar::<f32>()?,
            value_loss: vloss.to_scalar::<f32>()?,
            entropy: entropy.to_scalar::<f32>()?,
            approx_kl: kl,
            clip_frac,
            grad_norm,
        })
    }

    fn dispatch_logits(&self, obs: &[f32], nodes: usize) -> Result<Vec<f32>> {
        let x = self.t2(obs, nodes, NODE_FEATURES)?;
        Ok(self.dispatch.forward(&x)?.squeeze(1)?.to_vec1::<f32>()?)
    }

    fn quota_logits(&self, obs: &[f32]) -> Result<Vec<f32>> {
        let x = self.t2(obs, 1, QUOTA_FEATURES)?;
        Ok(self.quota.forward(&x)?.squeeze(0)?.to_vec1::<f32>()?)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::features::{NodeFeatures, QuotaFeatures};
    use crate::ppo::{DispatchRollout, QuotaRollout, SamplingDispatch, ppo_update};
    use crate::rng::Rng;

    fn candidates(seed: u64, n: usize) -> Vec<NodeFeatures> {
        let mut r = Rng::new(seed);
        (0..n)
            .map(|i| NodeFeatures {
                warm_instances: r.below(4) as f32,
                queue_depth: r.below(10) as f32,
                concurrency: 8.0,
                cpu_util: r.next_f32(),
                mem_util: r.next_f32(),
                expected_cold_ms: [0.0, 4.2, 25.0, 63.5][r.below(4)],
                recent_latency_ms: 100.0 * r.next_f32(),
                rtt_ms: 10.0 * r.next_f32(),
                expected_exec_ms: 50.0 * r.next_f32(),
                time_limit_ms: 300.0,
                speed: 1.0,
                class: (i % 3) as u8,
                alive: true,
                has_capacity: true,
            })
            .collect()
    }

    #[test]
    fn candle_and_plain_rust_forward_agree() {
        let w = PolicyWeights::init(21).unwrap();
        let be = CandleBackend::new(&w).unwrap();
        for seed in 0..5 {
            let c = candidates(seed, 16);
            let obs: Vec<f32> = c.iter().flat_map(|n| n.to_vector()).collect();
            let cl = be.dispatch_logits(&obs, 16).unwrap();
            for (i, n) in c.iter().enumerate() {
                let p = w.dispatch.forward(&n.to_vector()).unwrap()[0];
                assert!(
                    (p - cl[i]).abs() <= 1e-5,
                    "node {i}: plain {p} candle {}",
                    cl[i]
                );
            }
            let q = QuotaFeatures {
                latency_ms: 10.0 * seed as f32,
                queue_depth: 3.0,
                tenant_weight: 1.0,
                mem_use: 0.1,
                cold_start_rate: 0.2,
                arrival_rate: 5.0,
                mean_exec_ms: 12.0,
                idle_p50_ms: 900.0,
            };
            let ql = be.quota_logits(&q.to_vector()).unwrap();
            let pl = w.quota_logits(&q).unwrap();
            for (a, b) in ql.iter().zip(&pl) {
                assert!((a - b).abs() <= 1e-5, "quota: candle {a} plain {b}");
            }
        }
        // Export is lossless.
        assert_eq!(be.export().unwrap(), w);
    }

    /// A toy contextual bandit: node 0..4, reward 0 for the one with a warm instance, −1 otherwise.
    fn bandit_rollout(w: &PolicyWeights, seed: u64, steps: usize) -> (DispatchRollout, f32) {
        let mut s = SamplingDispatch::new(w.clone(), 0.0, seed);
        let mut r = Rng::new(seed ^ 99);
        let mut rewards = Vec::new();
        let ctx = crate::baselines::DispatchCtx {
            function_key: 0,
            now_ms: 0.0,
        };
        for _ in 0..steps {
            let warm = r.below(4);
            let mut c = vec![
                NodeFeatures {
                    concurrency: 4.0,
                    ..NodeFeatures::default()
                };
                4
            ];
            c[warm].warm_instances = 1.0;
            let a = crate::baselines::Dispatcher::dispatch(&mut s, &ctx, &c).unwrap();
            rewards.push(if a == warm { 0.0 } else { -1.0 });
        }
        let mean = rewards.iter().sum::<f32>() / steps as f32;
        let mut ro = s.finish(&rewards).unwrap();
        // Bandit: every step is its own episode.
        ro.dones.iter_mut().for_each(|d| *d = true);
        (ro, mean)
    }

    fn train_bandit(seed: u64, iters: usize) -> (PolicyWeights, Vec<f32>) {
        let mut w = PolicyWeights::init(seed).unwrap();
        let mut be = CandleBackend::new(&w).unwrap();
        let cfg = PpoConfig {
            minibatch: 256,
            lr: 1e-2,
            ..PpoConfig::default()
        };
        let mut rng = Rng::new(seed);
        let mut curve = Vec::new();
        for it in 0..iters {
            let (ro, mean) = bandit_rollout(&w, seed * 1000 + it as u64, 512);
            curve.push(mean);
            ppo_update(&mut be, &ro, &QuotaRollout::default(), &cfg, 4096, &mut rng).unwrap();
            w = be.export().unwrap();
        }
        (w, curve)
    }

    #[test]
    fn ppo_learns_a_toy_bandit_and_is_deterministic() {
        let (w1, curve) = train_bandit(3, 12);
        // Random choice among 4 gets −0.75 on average; the learned policy must do far better.
        assert!(curve[0] < -0.5, "start {curve:?}");
        assert!(*curve.last().unwrap() > -0.2, "end {curve:?}");
        let (w2, curve2) = train_bandit(3, 12);
        assert_eq!(curve, curve2);
        assert_eq!(w1, w2, "same seed → bit-identical weights");
        let (w3, _) = train_bandit(4, 2);
        assert_ne!(w1, w3);
    }
}
