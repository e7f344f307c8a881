//! The rolling-reward guard: serves each decision with the learned policy or the best
//! heuristic, whichever has the better rolling reward, probing the other now and then. Pure and
//! deterministic (counter-based); the agent passes rewards in.

use std::collections::VecDeque;

/// Which policy serves a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arm {
    /// The learned policy.
    Learned,
    /// The best heuristic (e.g. warm affinity).
    Heuristic,
}

/// Rolling-reward guard. One decision in every block of `probe_every` goes to the arm *not*
/// currently in charge, so both arms keep fresh reward estimates; its position in the block is
/// pseudo-random, so probes do not alias with a workload that cycles through functions.
///
/// The learned policy loses charge when its rolling mean reward falls more than `margin` below
/// the heuristic's, and takes it back only once it is at least as good (hysteresis: no flapping
/// inside the margin band); after a switch, the next one waits for a quarter window of new
/// rewards. Deterministic (counter-based).
#[derive(Debug, Clone)]
pub struct Guard {
    window: usize,
    margin: f32,
    probe_every: u64,
    learned: Window,
    heuristic: Window,
    n: u64,
    in_charge: Arm,
    /// Rewards recorded since the last switch.
    since_switch: usize,
}

/// The last rewards of one arm with their running sum, so a record is O(1).
#[derive(Debug, Clone, Default)]
struct Window {
    rewards: VecDeque<f32>,
    sum: f64,
}

impl Window {
    fn push(&mut self, reward: f32, cap: usize) {
        self.rewards.push_back(reward);
        self.sum += f64::from(reward);
        if self.rewards.len() > cap
            && let Some(old) = self.rewards.pop_front()
        {
            self.sum -= f64::from(old);
        }
    }

    fn mean(&self) -> f64 {
        self.sum / self.rewards.len().max(1) as f64
    }
}

impl Guard {
    /// New guard; the learned policy starts in charge.
    pub fn new(window: usize, margin: f32, probe_every: u64) -> Self {
        Guard {
            window: window.max(1),
            margin,
            probe_every: probe_every.max(2),
            learned: Window::default(),
            heuristic: Window::default(),
            n: 0,
            in_charge: Arm::Learned,
            since_switch: 0,
        }
    }

    /// Arm for the next decision.
    pub fn next_arm(&mut self) -> Arm {
        let (block, pos) = (self.n / self.probe_every, self.n % self.probe_every);
        self.n += 1;
        if pos == splitmix(block) % self.probe_every {
            match self.in_charge {
                Arm::Learned => Arm::Heuristic,
                Arm::Heuristic => Arm::Learned,
            }
        } else {
            self.in_charge
        }
    }

    /// Record the reward of a decision served by `arm`. Non-finite rewards are ignored.
    pub fn record(&mut self, arm: Arm, reward: f32) {
        if !reward.is_finite() {
            return;
        }
        match arm {
            Arm::Learned => self.learned.push(reward, self.window),
            Arm::Heuristic => self.heuristic.push(reward, self.window),
        }
        self.since_switch = self.since_switch.saturating_add(1);
        // Decide only once both arms have a meaningful sample, and not again right after a
        // switch.
        let min = self.min_between_switches();
        if self.learned.rewards.len() < min
            || self.heuristic.rewards.len() < min
            || self.since_switch < min
        {
            return;
        }
        let (learned, heuristic) = (self.learned.mean(), self.heuristic.mean());
        let next = match self.in_charge {
            Arm::Learned if learned + f64::from(self.margin) < heuristic => Arm::Heuristic,
            Arm::Heuristic if learned >= heuristic => Arm::Learned,
            keep => keep,
        };
        if next != self.in_charge {
            self.in_charge = next;
            self.since_switch = 0;
        }
    }

    /// Arm currently in charge.
    pub fn in_charge(&self) -> Arm {
        self.in_charge
    }

    /// Rewards kept per arm.
    pub fn window(&self) -> usize {
        self.window
    }

    /// How far the learned arm's rolling mean may fall below the heuristic's before it loses
    /// charge.
    pub fn margin(&self) -> f32 {
        self.margin
    }

    /// Block length: one decision in every block probes the arm not in charge.
    pub fn probe_every(&self) -> u64 {
        self.probe_every
    }

    /// Rewards each arm needs before the first decision, and rewards recorded after a switch
    /// before the next one: a quarter window.
    pub fn min_between_switches(&self) -> usize {
        (self.window / 4).max(1)
    }
}

/// splitmix64's finaliser: the probe position of a block.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_are_one_per_block_and_do_not_alias_with_a_cycle() {
        let mut g = Guard::new(40, 0.01, 5);
        let arms: Vec<Arm> = (0..1000).map(|_| g.next_arm()).collect();
        for block in arms.chunks(5) {
            assert_eq!(block.iter().filter(|a| **a == Arm::Heuristic).count(), 1);
        }
        // A workload cycling through 5 functions: every function gets probed, not just one.
        let mut probed = [0usize; 5];
        for (i, a) in arms.iter().enumerate() {
            probed[i % 5] += usize::from(*a == Arm::Heuristic);
        }
        assert!(probed.iter().all(|&p| p >= 20), "{probed:?}");
    }

    #[test]
    fn hysteresis_keeps_the_arm_in_charge_inside_the_margin() {
        let mut g = Guard::new(40, 0.1, 5);
        // `n` decisions, each rewarded `learned` or -0.2 (the heuristic) by the arm it went to.
        let mut run = |n: usize, learned: f32| {
            for _ in 0..n {
                let arm = g.next_arm();
                g.record(arm, if arm == Arm::Learned { learned } else { -0.2 });
            }
            g.in_charge()
        };
        // Learned slightly worse (inside the margin): it stays in charge.
        assert_eq!(run(400, -0.25), Arm::Learned);
        // Clearly worse: the heuristic takes over.
        assert_eq!(run(400, -0.5), Arm::Heuristic);
        // Back inside the margin but still worse: the heuristic keeps charge (no flapping).
        assert_eq!(run(400, -0.25), Arm::Heuristic);
        // At least as good: the learned policy is back.
        assert_eq!(run(1000, -0.19), Arm::Learned);
    }

    #[test]
    fn guard_falls_back_and_recovers() {
        let mut g = Guard::new(40, 0.01, 5);
        assert_eq!(g.in_charge(), Arm::Learned);
        // Learned policy does badly, heuristic well.
        for _ in 0..400 {
            let arm = g.next_arm();
            g.record(arm, if arm == Arm::Learned { -1.0 } else { -0.2 });
        }
        assert_eq!(g.in_charge(), Arm::Heuristic);
        // Probing continues: the learned arm still gets ~1 in 5 decisions.
        let probes = (0..100).filter(|_| g.next_arm() == Arm::Learned).count();
        assert_eq!(probes, 20);
        // Learned policy improves past the heuristic → back in charge.
        for _ in 0..1000 {
            let arm = g.next_arm();
            g.record(arm, if arm == Arm::Learned { -0.1 } else { -0.2 });
        }
        assert_eq!(g.in_charge(), Arm::Learned);
        g.record(Arm::Learned, f32::NAN);
        assert_eq!(g.in_charge(), Arm::Learned);
    }
}
