//! Which node runs a call with an idempotency key.
//!
//! A caller retries a keyed call on whichever node it reaches, so deduplication on the node
//! that first got it is not enough: every node sends the calls of one key to that key's
//! **home**, which runs the call once and answers every retry with that run. The home is the
//! function's warm-affinity owner among the members a node sees up, itself included: the member
//! with the highest rendezvous weight for the function (the hash placement uses, identical on
//! every node), so the home usually runs the call where the function is warm instead of
//! sending it on, and a keyed call costs the entry one mesh round trip as an unkeyed call
//! placed on the owner does. Two nodes that see the same members up pick the same home; a
//! member that joins or leaves moves only the functions whose owner it is or becomes. Every
//! key of one function has the same home (the keys themselves tell calls apart there).

use tern_cluster::NodeName;
use tern_placement::WarmAffinity;

/// The name a key is kept under: the key together with its function, as keys are scoped.
pub fn scope(function: &str, key: &str) -> String {
    format!("{function}\0{key}")
}

/// The function of a [`scope`] (all of it, if it has no key).
pub fn function_of(scope: &str) -> &str {
    scope.split('\0').next().unwrap_or(scope)
}

/// The home of `scope` among `members` (the members up, this node included): its function's
/// warm-affinity owner among them; `None` for no members.
pub fn home_among<'a>(
    scope: &str,
    members: impl IntoIterator<Item = &'a NodeName>,
) -> Option<&'a NodeName> {
    let function = function_of(scope);
    members
        .into_iter()
        // Ties (astronomically rare) go to the greater name, so every node breaks them alike.
        .max_by_key(|name| (WarmAffinity::weight(function, name.as_str()), *name))
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
            let s = scope(&format!("fn-{i}"), "key");
            assert_eq!(home_among(&s, &abc), home_among(&s, &cab));
        }
        assert_eq!(home_among("x", &[]), None);
    }

    #[test]
    fn a_keys_home_is_its_functions_warm_owner_and_functions_spread_over_the_members() {
        let abc = names(&["a", "b", "c"]);
        let views: Vec<tern_placement::NodeView> = abc
            .iter()
            .map(|n| tern_placement::NodeView {
                name: n.to_string(),
                alive: true,
                fits: true,
                queue_cap: 1,
                ..Default::default()
            })
            .collect();
        let mut count = [0usize; 3];
        for i in 0..3_000 {
            let function = format!("fn-{i}");
            let owner = WarmAffinity::owner(&function, &views).unwrap();
            for key in ["order-1", "order-2", ""] {
                let home = home_among(&scope(&function, key), &abc).unwrap();
                assert_eq!(home, &abc[owner], "{function} {key:?}");
            }
            count[owner] += 1;
        }
        assert!(count.iter().all(|&c| c > 800), "{count:?}");
    }

    #[test]
    fn a_member_leaving_moves_only_the_functions_it_was_home_of() {
        let abc = names(&["a", "b", "c"]);
        let ab = names(&["a", "b"]);
        let mut moved = 0;
        for i in 0..1_000 {
            let s = scope(&format!("fn-{i}"), "k");
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
    fn the_scope_keeps_the_key_but_only_the_function_picks_the_home() {
        assert_eq!(function_of(&scope("acme.echo", "k\0x")), "acme.echo");
        assert_eq!(function_of("echo"), "echo");
        let abc = names(&["a", "b", "c"]);
        for i in 0..100 {
            let key = format!("k{i}");
            assert_eq!(
                home_among(&scope("echo", &key), &abc),
                home_among(&scope("echo", "other"), &abc)
            );
        }
    }
}
