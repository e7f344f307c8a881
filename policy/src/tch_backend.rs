//! PPO training backend on LibTorch via `tch` (feature `tch`). Same layout (`x · W + b`, W
//! `[in, out]`), same losses and Adam settings as the candle backend, so weights move between
//! them and the plain-Rust serving path unchanged.
//!
//! tch is single-threaded here (`tch::set_num_threads(1)`): the decisions it would serve are tiny
//! and intra-op threads only add contention on a 2-vCPU node.

use crate::error::{PolicyError, Result};
use crate::features::{NODE_FEATURES, QUOTA_FEATURES};
use crate::mlp::{Dense, Mlp};
use crate::policy::{PolicyWeights, quota_head_ranges};
use crate::ppo::{Backend, DispatchBatch, LossStats, PpoConfig, QuotaBatch};
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};

impl From<tch::TchError> for PolicyError {
    fn from(e: tch::TchError) -> Self {
        PolicyError::Backend(e.to_string())
    }
}

struct TchMlp {
    layers: Vec<(Tensor, Tensor)>,
}

impl TchMlp {
    fn new(path: &nn::Path, m: &Mlp) -> Result<Self> {
        let mut layers = Vec::new();
        for (i, l) in m.layers.iter().enumerate() {
            let p = path / i.to_string();
            let w = Tensor::f_from_slice(&l.weight)?.f_view([l.inputs as i64, l.outputs as i64])?;
            let b = Tensor::f_from_slice(&l.bias)?;
            layers.push((p.var_copy("weight", &w), p.var_copy("bias", &b)));
        }
        Ok(TchMlp { layers })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.shallow_clone();
        let n = self.layers.len();
        for (i, (w, b)) in self.layers.iter().enumerate() {
            h = h.f_matmul(w)?.f_add(b)?;
            if i + 1 < n {
                h = h.f_relu()?;
            }
        }
        Ok(h)
    }

    fn to_mlp(&self) -> Result<Mlp> {
        let mut layers = Vec::new();
        for (w, b) in &self.layers {
            let size = w.size();
            let (i, o) = match size.as_slice() {
                [i, o] => (*i as usize, *o as usize),
                _ => return Err(PolicyError::Backend(format!("weight rank {:?}", size))),
            };
            layers.push(Dense {
                inputs: i,
                outputs: o,
                weight: Vec::<f32>::try_from(w.f_flatten(0, -1)?.f_detach()?)?,
                bias: Vec::<f32>::try_from(b.f_detach()?)?,
            });
        }
        Ok(Mlp { layers })
    }
}

/// The tch backend (CPU).
pub struct TchBackend {
    dispatch_vs: nn::VarStore,
    quota_vs: nn::VarStore,
    dispatch: TchMlp,
    dispatch_value: TchMlp,
    quota: TchMlp,
    quota_value: TchMlp,
    opt_dispatch: nn::Optimizer,
    opt_quota: nn::Optimizer,
    lr: f64,
}

impl std::fmt::Debug for TchBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TchBackend")
    }
}

fn t2(data: &[f32], r: usize, c: usize) -> Result<Tensor> {
    if data.len() != r * c {
        return Err(PolicyError::Shape {
            what: "batch tensor".into(),
            expected: r * c,
            got: data.len(),
        });
    }
    Ok(Tensor::f_from_slice(data)?.f_view([r as i64, c as i64])?)
}

fn scalar(t: &Tensor) -> Result<f32> {
    Ok(f32::try_from(t.f_detach()?)?)
}

fn ppo_terms(logp: &Tensor, old: &Tensor, adv: &Tensor, eps: f32) -> Result<(Tensor, f32, f32)> {
    let ratio = logp.f_sub(old)?.f_exp()?;
    let s1 = ratio.f_mul(adv)?;
    let s2 = ratio
        .f_clamp(1.0 - eps as f64, 1.0 + eps as f64)?
        .f_mul(adv)?;
    let pg = s1.f_minimum(&s2)?.f_mean(Kind::Float)?.f_neg()?;
    let kl = scalar(&old.f_sub(logp)?.f_mean(Kind::Float)?)?;
    let r = Vec::<f32>::try_from(ratio.f_detach()?)?;
    let clipped =
        r.iter().filter(|x| (**x - 1.0).abs() > eps).count() as f32 / r.len().max(1) as f32;
    Ok((pg, kl, clipped))
}

fn grad_norm(vars: &[Tensor]) -> Result<f32> {
    let mut sq = 0.0f64;
    for v in vars {
        let g = v.grad();
        if g.defined() {
            sq += scalar(&g.f_square()?.f_sum(Kind::Float)?)? as f64;
        }
    }
    Ok(sq.sqrt() as f32)
}

impl TchBackend {
    /// New backend with the given weights; sets LibTorch to one intra-op thread.
    pub fn new(w: &PolicyWeights, lr: f64) -> Result<Self> {
        w.validate()?;
        tch::set_num_threads(1);
        let dispatch_vs = nn::VarStore::new(Device::Cpu);
        let quota_vs = nn::VarStore::new(Device::Cpu);
        let dispatch = TchMlp::new(&(dispatch_vs.root() / "dispatch"), &w.dispatch)?;
        let dispatch_value =
            TchMlp::new(&(dispatch_vs.root() / "dispatch_value"), &w.dispatch_value)?;
        let quota = TchMlp::new(&(quota_vs.root() / "quota"), &w.quota)?;
        let quota_value = TchMlp::new(&(quota_vs.root() / "quota_value"), &w.quota_value)?;
        // Same Adam as the candle backend: β = (0.9, 0.999), ε = 1e-8, no weight decay.
        let opt_dispatch = nn::Adam::default().build(&dispatch_vs, lr)?;
        let opt_quota = nn::Adam::default().build(&quota_vs, lr)?;
        Ok(TchBackend {
            dispatch_vs,
            quota_vs,
            dispatch,
            dispatch_value,
            quota,
            quota_value,
            opt_dispatch,
            opt_quota,
            lr,
        })
    }
}

impl Backend for TchBackend {
    fn name(&self) -> &'static str {
        "tch"
    }

    fn load(&mut self, w: &PolicyWeights) -> Result<()> {
        *self = TchBackend::new(w, self.lr)?;
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
        if (cfg.lr - self.lr).abs() > 0.0 {
            self.opt_dispatch.set_lr(cfg.lr);
            self.opt_quota.set_lr(cfg.lr);
            self.lr = cfg.lr;
        }
        let x = t2(&b.obs, bs * n, f)?;
        let logits = self.dispatch.forward(&x)?.f_view([bs as i64, n as i64])?;
        let cold = t2(&b.cold, bs, n)?;
        let mask = t2(&b.mask, bs, n)?;
        let scores = logits.f_sub(&cold.f_mul_scalar(cfg.lambda_dispatch as f64)?)?;
        let masked = scores.f_add(&mask.f_mul_scalar(1e9)?.f_sub_scalar(1e9)?)?;
        let logp_all = masked.f_log_softmax(-1, Kind::Float)?;
        let actions: Vec<i64> = b.actions.iter().map(|&a| a as i64).collect();
        let idx = Tensor::f_from_slice(&actions)?.f_view([bs as i64, 1])?;
        let logp = logp_all.f_gather(1, &idx, false)?.f_squeeze_dim(1)?;
        let old = Tensor::f_from_slice(&b.old_logp)?;
        let adv = Tensor::f_from_slice(&b.adv)?;
        let (pg, kl, clip_frac) = ppo_terms(&logp, &old, &adv, cfg.clip_eps)?;
        let entropy = logp_all
            .f_exp()?
            .f_mul(&logp_all)?
            .f_sum_dim_intlist(1, false, Kind::Float)?
            .f_neg()?
            .f_mean(Kind::Float)?;
        let pooled = t2(&b.pooled, bs, f)?;
        let v = self.dispatch_value.forward(&pooled)?.f_squeeze_dim(1)?;
        let ret = Tensor::f_from_slice(&b.returns)?;
        let vloss = v.f_sub(&ret)?.f_square()?.f_mean(Kind::Float)?;
        let loss = pg
            .f_add(&vloss.f_mul_scalar(cfg.vf_coef as f64)?)?
            .f_sub(&entropy.f_mul_scalar(cfg.ent_coef as f64)?)?;
        self.opt_dispatch.zero_grad();
        loss.f_backward()?;
        let norm = grad_norm(&self.dispatch_vs.trainable_variables())?;
        self.opt_dispatch.clip_grad_norm(cfg.max_grad_norm as f64);
        self.opt_dispatch.step();
        Ok(LossStats {
            policy_loss: scalar(&pg)?,
            value_loss: scalar(&vloss)?,
            entropy: scalar(&entropy)?,
            approx_kl: kl,
            clip_frac,
            grad_norm: norm,
        })
    }

    fn step_quota(&mut self, b: &QuotaBatch, cfg: &PpoConfig) -> Result<LossStats> {
        let bs = b.batch;
        if bs == 0 {
            return Ok(LossStats::default());
        }
        let x = t2(&b.obs, bs, QUOTA_FEATURES)?;
        let logits = self.quota.forward(&x)?;
        let actions: Vec<i64> = b.actions.iter().map(|&a| a as i64).collect();
        let acts = Tensor::f_from_slice(&actions)?.f_view([bs as i64, 3])?;
        let mut logp = Tensor::f_zeros([bs as i64], (Kind::Float, Device::Cpu))?;
        let mut ent = Tensor::f_zeros([bs as i64], (Kind::Float, Device::Cpu))?;
        for (h, r) in quota_head_ranges().into_iter().enumerate() {
            let lp_all = logits
                .f_narrow(1, r.start as i64, r.len() as i64)?
                .f_log_softmax(-1, Kind::Float)?;
            let a = acts.f_narrow(1, h as i64, 1)?;
            logp = logp.f_add(&lp_all.f_gather(1, &a, false)?.f_squeeze_dim(1)?)?;
            let e = lp_all
                .f_exp()?
                .f_mul(&lp_all)?
                .f_sum_dim_intlist(1, false, Kind::Float)?
                .f_neg()?;
            ent = ent.f_add(&e)?;
        }
        let old = Tensor::f_from_slice(&b.old_logp)?;
        let adv = Tensor::f_from_slice(&b.adv)?;
        let (pg, kl, clip_frac) = ppo_terms(&logp, &old, &adv, cfg.clip_eps)?;
        let entropy = ent.f_mean(Kind::Float)?;
        let v = self.quota_value.forward(&x)?.f_squeeze_dim(1)?;
        let ret = Tensor::f_from_slice(&b.returns)?;
        let vloss = v.f_sub(&ret)?.f_square()?.f_mean(Kind::Float)?;
        let loss = pg
            .f_add(&vloss.f_mul_scalar(cfg.vf_coef as f64)?)?
            .f_sub(&entropy.f_mul_scalar(cfg.ent_coef as f64)?)?;
        self.opt_quota.zero_grad();
        loss.f_backward()?;
        let norm = grad_norm(&self.quota_vs.trainable_variables())?;
        self.opt_quota.clip_grad_norm(cfg.max_grad_norm as f64);
        self.opt_quota.step();
        Ok(LossStats {
            policy_loss: scalar(&pg)?,
            value_loss: scalar(&vloss)?,
            entropy: scalar(&entropy)?,
            approx_kl: kl,
            clip_frac,
            grad_norm: norm,
        })
    }

    fn dispatch_logits(&self, obs: &[f32], nodes: usize) -> Result<Vec<f32>> {
        let x = t2(obs, nodes, NODE_FEATURES)?;
        let y = tch::no_grad(|| self.dispatch.forward(&x))?;
        Ok(Vec::<f32>::try_from(y.f_flatten(0, -1)?)?)
    }

    fn quota_logits(&self, obs: &[f32]) -> Result<Vec<f32>> {
        let x = t2(obs, 1, QUOTA_FEATURES)?;
        let y = tch::no_grad(|| self.quota.forward(&x))?;
        Ok(Vec::<f32>::try_from(y.f_flatten(0, -1)?)?)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::candle_backend::CandleBackend;
    use crate::features::{NodeFeatures, QuotaFeatures};
    use crate::ppo::{DispatchRollout, QuotaRollout, ppo_update};
    use crate::rng::Rng;

    fn obs(seed: u64, n: usize) -> Vec<NodeFeatures> {
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
    fn candle_tch_and_plain_rust_agree_on_the_same_weights() {
        let w = PolicyWeights::init(33).unwrap();
        let tb = TchBackend::new(&w, 1e-3).unwrap();
        let cb = CandleBackend::new(&w).unwrap();
        assert_eq!(
            tb.export().unwrap(),
            w,
            "weights move into tch and back bit-exactly"
        );
        for seed in 0..5 {
            let c = obs(seed, 16);
            let flat: Vec<f32> = c.iter().flat_map(|n| n.to_vector()).collect();
            let tl = tb.dispatch_logits(&flat, 16).unwrap();
            let cl = cb.dispatch_logits(&flat, 16).unwrap();
            for (i, n) in c.iter().enumerate() {
                let p = w.dispatch.forward(&n.to_vector()).unwrap()[0];
                assert!((p - tl[i]).abs() <= 1e-5, "plain {p} tch {}", tl[i]);
                assert!(
                    (cl[i] - tl[i]).abs() <= 1e-5,
                    "candle {} tch {}",
                    cl[i],
                    tl[i]
                );
            }
            let q = QuotaFeatures {
                latency_ms: 7.0 * seed as f32,
                arrival_rate: 3.0,
                mean_exec_ms: 20.0,
                ..QuotaFeatures::default()
            };
            let tq = tb.quota_logits(&q.to_vector()).unwrap();
            let pq = w.quota_logits(&q).unwrap();
            for (a, b) in tq.iter().zip(&pq) {
                assert!((a - b).abs() <= 1e-5, "quota tch {a} plain {b}");
            }
        }
    }

    #[test]
    fn one_update_moves_tch_and_candle_the_same_way() {
        // Same batch, same hyper-parameters: after one PPO update both backends' weights must
        // still agree closely (float summation order differs, so not bit-exactly).
        let w = PolicyWeights::init(8).unwrap();
        let mut ro = DispatchRollout::default();
        let mut r = Rng::new(1);
        for i in 0..256 {
            let c = obs(i, 6);
            let a = r.below(6);
            ro.push(&c, a, (1.0f32 / 6.0).ln(), 0.0, -r.next_f32(), i % 32 == 31)
                .unwrap();
        }
        let cfg = PpoConfig {
            epochs: 1,
            minibatch: 256,
            ..PpoConfig::default()
        };
        let mut tb = TchBackend::new(&w, cfg.lr).unwrap();
        let mut cb = CandleBackend::new(&w).unwrap();
        let st = ppo_update(
            &mut tb,
            &ro,
            &QuotaRollout::default(),
            &cfg,
            256,
            &mut Rng::new(2),
        )
        .unwrap();
        let sc = ppo_update(
            &mut cb,
            &ro,
            &QuotaRollout::default(),
            &cfg,
            256,
            &mut Rng::new(2),
        )
        .unwrap();
        assert!((st.dispatch.policy_loss - sc.dispatch.policy_loss).abs() < 1e-4);
        assert!((st.dispatch.value_loss - sc.dispatch.value_loss).abs() < 1e-3);
        let (wt, wc) = (tb.export().unwrap(), cb.export().unwrap());
        assert_ne!(wt, w, "the update changed the weights");
        for (lt, lc) in wt.dispatch.layers.iter().zip(&wc.dispatch.layers) {
            for (a, b) in lt.weight.iter().zip(&lc.weight) {
                assert!((a - b).abs() < 1e-4, "tch {a} candle {b}");
            }
        }
    }
}
