//! The SchedulerAgent's seam: which node runs a MEU. Pure: the cluster view and the MEU are
//! arguments, there is no I/O and no clock, so policies are tested deterministically. The
//! learned PPO policy (tern-policy) and the cluster's heuristics plug in here.

use crate::Error;

/// A node as the scheduler sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeView {
    pub name: String,
    pub alive: bool,
    /// Invocations admitted and unanswered on that node.
    pub queue_depth: usize,
    /// Whether the MEU's module is loaded there (no cold start).
    pub warm: bool,
}

/// What the scheduler knows about the MEU being placed.
#[derive(Clone, Debug)]
pub struct MeuView<'a> {
    pub function: &'a str,
    pub items: usize,
}

pub trait Placement: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// Index into `nodes` of the node that should run the MEU.
    fn place(&self, meu: &MeuView<'_>, nodes: &[NodeView]) -> Result<usize, Error>;
}

/// Single-node placement: the first live node (a one-node cluster has only itself). Prefers a
/// warm live node when there are several, so it is also a sane fallback in a cluster.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalFirst;

impl Placement for LocalFirst {
    fn name(&self) -> &'static str {
        "local-first"
    }

    fn place(&self, _meu: &MeuView<'_>, nodes: &[NodeView]) -> Result<usize, Error> {
        nodes
            .iter()
            .position(|n| n.alive && n.warm)
            .or_else(|| nodes.iter().position(|n| n.alive))
            .ok_or_else(|| Error::Unavailable("no live node to run the work".into()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn node(name: &str, alive: bool, warm: bool) -> NodeView {
        NodeView {
            name: name.into(),
            alive,
            queue_depth: 0,
            warm,
        }
    }

    #[test]
    fn picks_a_live_node_preferring_warm_and_fails_typed_when_none() {
        let meu = MeuView {
            function: "f",
            items: 1,
        };
        let p = LocalFirst;
        assert_eq!(p.place(&meu, &[node("a", true, false)]).unwrap(), 0);
        assert_eq!(
            p.place(&meu, &[node("a", true, false), node("b", true, true)])
                .unwrap(),
            1
        );
        assert_eq!(
            p.place(&meu, &[node("a", false, true), node("b", true, false)])
                .unwrap(),
            1
        );
        assert!(matches!(
            p.place(&meu, &[node("a", false, true)]),
            Err(Error::Unavailable(_))
        ));
        assert!(p.place(&meu, &[]).is_err());
    }
}
