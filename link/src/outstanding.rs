//! MEUs this node has forwarded to each peer and not yet had answered.
//!
//! Two uses. A forwarded MEU holds its admission permit on this node (the caller waits here),
//! so this node's admitted count includes work running elsewhere: the total is taken off this
//! node's own queue depth, in its status and in its own placement view, so a queue depth says
//! what runs or waits on that node.
//!
//! A peer's published queue depth is up to one status interval old, so during a burst every
//! placement that reads it (warm affinity's spill, least loaded, the learned policy's features)
//! would keep choosing the peer that looked idlest at its last status. Counting this node's own
//! outstanding forwards bounds that: a peer is seen at least as busy as what this node alone
//! has sent it and not had back. (It is a floor, not a sum: the peer's status already counts
//! the forwards it had received when it was sent.)

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, RwLock};

use tern_placement::NodeView;
use tern_sync::poison::{read, write};

/// Outstanding forwards per peer. One counter per peer ever forwarded to: bounded by the
/// membership.
#[derive(Debug, Default)]
pub struct Outstanding {
    counts: RwLock<HashMap<String, Arc<AtomicUsize>>>,
    total: Arc<AtomicUsize>,
}

/// One forward in flight; dropping it (answered, failed or cancelled) ends it.
#[derive(Debug)]
pub struct InFlight {
    peer: Arc<AtomicUsize>,
    total: Arc<AtomicUsize>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.peer.fetch_sub(1, Relaxed);
        self.total.fetch_sub(1, Relaxed);
    }
}

impl Outstanding {
    /// A forward to `peer` starts.
    pub fn begin(&self, peer: &str) -> InFlight {
        let counter = read(&self.counts).get(peer).cloned();
        let counter = match counter {
            Some(c) => c,
            None => write(&self.counts)
                .entry(peer.to_owned())
                .or_default()
                .clone(),
        };
        counter.fetch_add(1, Relaxed);
        self.total.fetch_add(1, Relaxed);
        InFlight {
            peer: counter,
            total: self.total.clone(),
        }
    }

    /// Forwards to any peer in flight now.
    pub fn total(&self) -> usize {
        self.total.load(Relaxed)
    }

    /// Forwards to `peer` in flight now.
    pub fn count(&self, peer: &str) -> usize {
        read(&self.counts).get(peer).map_or(0, |c| c.load(Relaxed))
    }

    /// Raises each peer view's queue depth to at least this node's outstanding forwards to it.
    pub fn apply(&self, views: &mut [NodeView]) {
        let counts = read(&self.counts);
        for view in views {
            if let Some(c) = counts.get(&view.name) {
                view.queue_depth = view.queue_depth.max(c.load(Relaxed));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(name: &str, queue_depth: usize) -> NodeView {
        NodeView {
            name: name.into(),
            alive: true,
            fits: true,
            queue_depth,
            queue_cap: 100,
            ..NodeView::default()
        }
    }

    #[test]
    fn forwards_count_while_in_flight_and_raise_a_stale_queue_depth_but_never_lower_it() {
        let o = Outstanding::default();
        assert_eq!(o.count("b"), 0);
        let first = o.begin("b");
        let second = o.begin("b");
        let other = o.begin("c");
        assert_eq!((o.count("b"), o.count("c"), o.total()), (2, 1, 3));
        let mut views = vec![view("b", 0), view("c", 5), view("d", 1)];
        o.apply(&mut views);
        let depths: Vec<usize> = views.iter().map(|v| v.queue_depth).collect();
        assert_eq!(depths, [2, 5, 1], "b raised to 2, c kept at 5, d untouched");
        drop(first);
        drop(other);
        assert_eq!((o.count("b"), o.count("c"), o.total()), (1, 0, 1));
        drop(second);
        assert_eq!(o.total(), 0);
        let mut views = vec![view("b", 0)];
        o.apply(&mut views);
        assert_eq!(views[0].queue_depth, 0);
    }

    #[test]
    fn a_cancelled_forward_ends_when_its_future_is_dropped() {
        let o = Arc::new(Outstanding::default());
        let guard = o.begin("b");
        let fut = async move {
            let _held = guard;
            std::future::pending::<()>().await;
        };
        assert_eq!(o.count("b"), 1);
        drop(fut);
        assert_eq!(o.count("b"), 0);
    }
}
