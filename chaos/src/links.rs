//! What the network between two nodes does to their datagrams while a `partition` or `link`
//! fault holds. The runner puts a UDP relay on every mesh link (each node dials its peers at
//! a relay's address, and the relay sends on to the peer); each relay asks
//! [`Impairment::fate`] what becomes of each datagram, with draws from its own seeded
//! generator, so a scenario and a seed give the same decisions on every run.
//!
//! Pure: no sockets, no clock. Delays are milliseconds the relay waits.

/// A reordered datagram is held back by one more delay, and by at least this much when the
/// link has no delay of its own, so the datagrams behind it overtake it.
pub const REORDER_HOLD_MS: u32 = 5;

/// The draws are uniform in `0..PPM` (parts per million).
pub const PPM: u32 = 1_000_000;

/// What happens to the datagrams from one node to another.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Impairment {
    /// Every datagram dropped (a partition).
    pub cut: bool,
    /// Datagrams dropped, parts per million.
    pub loss_ppm: u32,
    /// Every datagram sent on this much later.
    pub delay_ms: u32,
    /// Datagrams held back for the ones behind them to overtake, parts per million.
    pub reorder_ppm: u32,
    /// Datagrams sent twice, parts per million.
    pub duplicate_ppm: u32,
}

/// What becomes of one datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    Dropped,
    /// Sent `copies` times, `delay_ms` from now.
    Sent {
        delay_ms: u32,
        copies: u8,
    },
}

impl Impairment {
    /// A link cut (every datagram dropped).
    pub const CUT: Impairment = Impairment {
        cut: true,
        loss_ppm: 0,
        delay_ms: 0,
        reorder_ppm: 0,
        duplicate_ppm: 0,
    };

    /// A `link` fault's impairment from its percentages (clamped to 0–100).
    pub fn link(
        loss_percent: f64,
        delay_ms: u32,
        reorder_percent: f64,
        duplicate_percent: f64,
    ) -> Self {
        let ppm = |percent: f64| (percent.clamp(0.0, 100.0) * 10_000.0).round() as u32;
        Impairment {
            cut: false,
            loss_ppm: ppm(loss_percent),
            delay_ms,
            reorder_ppm: ppm(reorder_percent),
            duplicate_ppm: ppm(duplicate_percent),
        }
    }

    /// Whether datagrams pass untouched.
    pub fn is_clear(&self) -> bool {
        *self == Impairment::default()
    }

    /// The fate of the next datagram. `draw` gives uniform numbers in `0..PPM`; exactly three
    /// are taken per datagram whatever the fate, so one fault's decisions do not shift the
    /// sequence of the next.
    pub fn fate(&self, mut draw: impl FnMut() -> u32) -> Fate {
        let (lost, reordered, doubled) = (draw(), draw(), draw());
        if self.cut || lost < self.loss_ppm {
            return Fate::Dropped;
        }
        let held = if reordered < self.reorder_ppm {
            self.delay_ms.max(REORDER_HOLD_MS)
        } else {
            0
        };
        Fate::Sent {
            delay_ms: self.delay_ms.saturating_add(held),
            copies: if doubled < self.duplicate_ppm { 2 } else { 1 },
        }
    }
}

/// The directions `(from, to)` a partition into `groups` (node indices) cuts: between every
/// two nodes that share no group both ways (a node in two groups bridges them), or with
/// `one_way` only from the first group to the others (their datagrams still reach it).
pub fn cuts(groups: &[Vec<usize>], one_way: bool) -> Vec<(usize, usize)> {
    let share = |a: usize, b: usize| groups.iter().any(|g| g.contains(&a) && g.contains(&b));
    let mut out = Vec::new();
    for (g, group) in groups.iter().enumerate() {
        if one_way && g > 0 {
            break;
        }
        for (h, other) in groups.iter().enumerate() {
            if h == g {
                continue;
            }
            for &from in group {
                for &to in other {
                    if !share(from, to) {
                        out.push((from, to));
                    }
                }
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// The most a relay holds a datagram back for a link's delay: a minute (more is not a link
/// any mesh keeps up on: its peers would be declared down long before).
pub const MAX_LINK_DELAY_MS: u32 = 60_000;

/// One link's delay as `tern chaos relay --link a-b=MS` gives it: every datagram between nodes
/// `a` and `b`, both ways, held `delay_ms` before it is sent on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkDelay {
    pub a: String,
    pub b: String,
    pub delay_ms: u32,
}

impl std::str::FromStr for LinkDelay {
    type Err = crate::ChaosError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| crate::ChaosError::Invalid {
            field: format!("--link {text}"),
            reason: reason.into(),
        };
        let (pair, ms) = text
            .split_once('=')
            .ok_or_else(|| bad("not NODE-NODE=MS"))?;
        let (a, b) = pair
            .split_once('-')
            .ok_or_else(|| bad("not NODE-NODE=MS"))?;
        if a.is_empty() || b.is_empty() {
            return Err(bad("a node name is empty"));
        }
        let delay_ms = ms
            .parse()
            .map_err(|_| bad("the delay is not a whole number of milliseconds"))?;
        if delay_ms > MAX_LINK_DELAY_MS {
            return Err(bad("the delay is over a minute"));
        }
        Ok(LinkDelay {
            a: a.into(),
            b: b.into(),
            delay_ms,
        })
    }
}

/// A direction between two nodes: `(from, to)`, indices into the nodes' names.
pub type Direction = (usize, usize);

/// The delay of every direction `(from, to)` between the nodes `names`: `default_ms` unless
/// one of `links` names the pair (in either order; a later one wins). Refuses fewer than two
/// nodes, an empty or repeated name, and a link that names a node not in `names` or a node
/// and itself.
pub fn link_delays(
    names: &[String],
    default_ms: u32,
    links: &[LinkDelay],
) -> Result<Vec<(Direction, u32)>, crate::ChaosError> {
    let invalid = |field: String, reason: &str| crate::ChaosError::Invalid {
        field,
        reason: reason.into(),
    };
    if names.len() < 2 {
        return Err(invalid("--node".into(), "a relay needs two nodes or more"));
    }
    for (i, name) in names.iter().enumerate() {
        if name.is_empty() {
            return Err(invalid(format!("--node {name}"), "a node's name is empty"));
        }
        if names[..i].contains(name) {
            return Err(invalid(format!("--node {name}"), "given twice"));
        }
    }
    if default_ms > MAX_LINK_DELAY_MS {
        return Err(invalid("--delay-ms".into(), "the delay is over a minute"));
    }
    let index = |name: &str, link: &LinkDelay| {
        names
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| crate::ChaosError::Invalid {
                field: format!("--link {}-{}={}", link.a, link.b, link.delay_ms),
                reason: format!("{name} is not one of the nodes"),
            })
    };
    let mut delays = std::collections::BTreeMap::new();
    for from in 0..names.len() {
        for to in 0..names.len() {
            if from != to {
                delays.insert((from, to), default_ms);
            }
        }
    }
    for link in links {
        let (a, b) = (index(&link.a, link)?, index(&link.b, link)?);
        if a == b {
            return Err(crate::ChaosError::Invalid {
                field: format!("--link {}-{}={}", link.a, link.b, link.delay_ms),
                reason: "a link joins two different nodes".into(),
            });
        }
        delays.insert((a, b), link.delay_ms);
        delays.insert((b, a), link.delay_ms);
    }
    Ok(delays.into_iter().collect())
}

/// A seeded generator of draws in `0..PPM` (splitmix64), one per relay direction.
#[derive(Clone, Debug)]
pub struct Draws(u64);

impl Draws {
    pub fn seeded(seed: u64) -> Self {
        Draws(seed)
    }

    pub fn next_ppm(&mut self) -> u32 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) % u64::from(PPM)) as u32
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn fates(imp: Impairment, n: usize, seed: u64) -> Vec<Fate> {
        let mut d = Draws::seeded(seed);
        (0..n).map(|_| imp.fate(|| d.next_ppm())).collect()
    }

    #[test]
    fn a_clear_link_sends_everything_once_at_once_and_a_cut_one_nothing() {
        let sent = Fate::Sent {
            delay_ms: 0,
            copies: 1,
        };
        assert!(Impairment::default().is_clear());
        assert!(
            fates(Impairment::default(), 1000, 1)
                .iter()
                .all(|f| *f == sent)
        );
        assert!(!Impairment::CUT.is_clear());
        assert!(
            fates(Impairment::CUT, 1000, 1)
                .iter()
                .all(|f| *f == Fate::Dropped)
        );
    }

    #[test]
    fn loss_delay_reorder_and_duplication_happen_at_their_rates_and_the_same_seed_repeats_them() {
        let imp = Impairment::link(5.0, 30, 5.0, 1.0);
        assert_eq!(
            (imp.loss_ppm, imp.reorder_ppm, imp.duplicate_ppm),
            (50_000, 50_000, 10_000)
        );
        let n = 100_000;
        let got = fates(imp, n, 7);
        assert_eq!(got, fates(imp, n, 7), "seeded");
        assert_ne!(got, fates(imp, n, 8), "another seed, other decisions");
        let dropped = got.iter().filter(|f| **f == Fate::Dropped).count();
        let held = got
            .iter()
            .filter(|f| matches!(f, Fate::Sent { delay_ms: 60, .. }))
            .count();
        let on_time = got
            .iter()
            .filter(|f| matches!(f, Fate::Sent { delay_ms: 30, .. }))
            .count();
        let doubled = got
            .iter()
            .filter(|f| matches!(f, Fate::Sent { copies: 2, .. }))
            .count();
        assert_eq!(
            dropped + held + on_time,
            n,
            "every datagram delayed or dropped"
        );
        // Within 10 % of the expected counts (5,000; 4,750; 950).
        let near = |got: usize, want: f64| (got as f64 - want).abs() < want * 0.1;
        assert!(near(dropped, 5_000.0), "{dropped}");
        assert!(near(held, 4_750.0), "{held}");
        assert!(near(doubled, 950.0), "{doubled}");
    }

    #[test]
    fn reordering_without_a_delay_still_holds_a_datagram_back() {
        let imp = Impairment::link(0.0, 0, 100.0, 0.0);
        assert!(fates(imp, 100, 3).iter().all(|f| *f
            == Fate::Sent {
                delay_ms: REORDER_HOLD_MS,
                copies: 1
            }));
    }

    #[test]
    fn percentages_outside_0_to_100_are_clamped() {
        let imp = Impairment::link(150.0, 0, -3.0, f64::NAN);
        assert_eq!((imp.loss_ppm, imp.reorder_ppm), (PPM, 0));
        assert!(fates(imp, 100, 1).iter().all(|f| *f == Fate::Dropped));
    }

    #[test]
    fn a_partition_cuts_every_direction_between_groups_or_only_those_from_the_first() {
        let groups = vec![vec![0], vec![1, 2]];
        assert_eq!(
            cuts(&groups, false),
            [(0, 1), (0, 2), (1, 0), (2, 0)],
            "both ways, never within a group"
        );
        assert_eq!(cuts(&groups, true), [(0, 1), (0, 2)]);
        let three = vec![vec![0], vec![1], vec![2, 3]];
        assert_eq!(
            cuts(&three, false).len(),
            4 * 3 - 2,
            "every ordered pair but the two within the last group"
        );
        assert_eq!(cuts(&three, true), [(0, 1), (0, 2), (0, 3)]);
    }

    #[test]
    fn a_bridge_in_two_groups_keeps_its_links_and_only_nodes_sharing_no_group_are_cut() {
        // a and c cut off from each other; b, in both groups, reaches both.
        assert_eq!(cuts(&[vec![0, 1], vec![1, 2]], false), [(0, 2), (2, 0)]);
        // Two bridges between three groups.
        let chain = vec![vec![0, 1], vec![1, 2], vec![2, 3]];
        assert_eq!(
            cuts(&chain, false),
            [(0, 2), (0, 3), (1, 3), (2, 0), (3, 0), (3, 1)]
        );
        assert!(cuts(&[vec![0, 1], vec![0, 1]], false).is_empty());
    }

    #[test]
    fn link_delays_default_every_direction_and_a_named_link_sets_both_of_its_ways() {
        let names: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let link: LinkDelay = "c-a=20".parse().unwrap();
        assert_eq!(
            link,
            LinkDelay {
                a: "c".into(),
                b: "a".into(),
                delay_ms: 20
            }
        );
        let delays = link_delays(&names, 5, &[link]).unwrap();
        assert_eq!(
            delays,
            vec![
                ((0, 1), 5),
                ((0, 2), 20),
                ((1, 0), 5),
                ((1, 2), 5),
                ((2, 0), 20),
                ((2, 1), 5),
            ]
        );
    }

    #[test]
    fn a_link_delay_that_is_malformed_too_long_or_names_an_unknown_node_is_refused() {
        let names: Vec<String> = ["a", "b"].map(String::from).to_vec();
        for text in [
            "a-b",
            "ab=5",
            "-b=5",
            "a-=5",
            "a-b=-1",
            "a-b=5ms",
            "a-b=60001",
        ] {
            assert!(
                matches!(text.parse::<LinkDelay>(), Err(crate::ChaosError::Invalid { field, .. }) if field.contains(text)),
                "{text}"
            );
        }
        let unknown: LinkDelay = "a-x=5".parse().unwrap();
        assert!(matches!(
            link_delays(&names, 0, &[unknown]),
            Err(crate::ChaosError::Invalid { reason, .. }) if reason.contains("x is not one of the nodes")
        ));
        let itself: LinkDelay = "a-a=5".parse().unwrap();
        assert!(link_delays(&names, 0, &[itself]).is_err());
        assert!(link_delays(&names, MAX_LINK_DELAY_MS + 1, &[]).is_err());
        // The nodes themselves: two or more, each named once.
        let refused = |names: &[&str], reason: &str| {
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            matches!(link_delays(&names, 0, &[]), Err(crate::ChaosError::Invalid { reason: r, .. }) if r.contains(reason))
        };
        assert!(refused(&["a"], "two nodes or more"));
        assert!(refused(&["a", ""], "name is empty"));
        assert!(refused(&["a", "b", "a"], "given twice"));
    }
}
