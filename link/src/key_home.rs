//! Which node runs a call with an idempotency key.
//!
//! A caller retries a keyed call on whichever node it reaches, so deduplication on the node
//! that first got it is not enough: every node sends the calls of one key to that key's
//! **home**, which runs the call once and answers every retry with that run. The home is the
//! member with the highest rendezvous weight for the key (the hash placement uses for warm
//! affinity, identical on every node) among the members a node sees up, itself included. Two
//! nodes that see the same members up pick the same home; a member that joins or leaves moves
//! only the keys whose home it is or becomes.

use tern_cluster::NodeName;
use tern_placement::WarmAffinity;

/// The name keys are hashed under: the key together with its function, as keys are scoped.
pub fn scope(function: &str, key: &str) -> String {
    format!("{function}\0{key}")
}

/// The home of `scope` among `members` (the members up, this node included); `None` for no
/// members.
pub fn home_among<'a>(
    scope: &str,
    members: impl IntoIterator<Item = &'a NodeName>,
) -> Option<&'a NodeName> {
    members
        .into_iter()
        // Ties (astronomically rare) go to the greater name, so every node breaks them alike.
        .max_by_key(|name| (WarmAffinity::weight(scope, name.as_str()), *name))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn names(of: &[&str]) -> Vec<NodeName> {
        of.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn every_node_picks_the_same_home_whatever_order_it_lists_members_in() {
        let abc = names(&["a", "b", "c"]);
        let cab = names(&["c", "a", "b"]);
        for i in 0..200 {
            let s = scope("echo", &format!("key-{i}"));
            assert_eq!(home_among(&s, &abc), home_among(&s, &cab));
        }
        assert_eq!(home_among("x", &[]), None);
    }

    #[test]
    fn keys_spread_over_the_members() {
        let abc = names(&["a", "b", "c"]);
        let mut count = [0usize; 3];
        for i in 0..3_000 {
            let home = home_among(&scope("echo", &format!("order-{i}")), &abc).unwrap();
            count[abc.iter().position(|n| n == home).unwrap()] += 1;
        }
        assert!(count.iter().all(|&c| c > 800), "{count:?}");
    }

    #[test]
    fn a_member_leaving_moves_only_the_keys_it_was_home_of() {
        let abc = names(&["a", "b", "c"]);
        let ab = names(&["a", "b"]);
        let mut moved = 0;
        for i in 0..1_000 {
            let s = scope("echo", &format!("k{i}"));
            let before = home_among(&s, &abc).unwrap();
            let after = home_among(&s, &ab).unwrap();
            if before.as_str() == "c" {
                moved += 1;
            } else {
                assert_eq!(before, after, "{s:?} moved though its home stayed");
            }
        }
        assert!(moved > 0);
    }

    #[test]
    fn the_same_key_of_two_functions_has_its_own_home() {
        let abc = names(&["a", "b", "c"]);
        let differs = (0..100).any(|i| {
            let key = format!("k{i}");
            home_among(&scope("echo", &key), &abc) != home_among(&scope("loop", &key), &abc)
        });
        assert!(differs);
    }
}
