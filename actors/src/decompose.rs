//! Task decomposition into minimum execution units (MEUs). Pure: no I/O, no clock.
//!
//! A plain call is one MEU. A `map` call takes a JSON array, splits it into chunks whose size
//! is chosen from the function's measured cost (per-item time and per-MEU overhead), runs the
//! chunks in parallel, and joins the per-chunk JSON arrays back in order.

use serde_json::value::RawValue;

use crate::Error;

/// Measured cost of a function, in microseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ItemCost {
    /// Fixed cost of one MEU (instantiation and start-up).
    pub overhead_us: f64,
    /// Execution time per input item.
    pub per_item_us: f64,
}

impl ItemCost {
    /// Assumed until a function has history: overhead-dominated, like a small request.
    pub const UNKNOWN: ItemCost = ItemCost {
        overhead_us: 50.0,
        per_item_us: 10.0,
    };

    /// Folds in one finished MEU (exponentially weighted; weight of the new sample 0.2).
    pub fn observe(&mut self, items: usize, inst_us: u64, exec_us: u64) {
        const W: f64 = 0.2;
        let items = items.max(1) as f64;
        self.overhead_us = (1.0 - W) * self.overhead_us + W * inst_us as f64;
        self.per_item_us = (1.0 - W) * self.per_item_us + W * (exec_us as f64 / items);
    }

    /// Predicted wall time to run `items` items in chunks of `chunk` on `parallelism` workers.
    pub fn makespan_us(&self, items: usize, chunk: usize, parallelism: usize) -> f64 {
        let chunk = chunk.max(1);
        let chunks = items.div_ceil(chunk);
        let rounds = chunks.div_ceil(parallelism.max(1));
        rounds as f64 * (self.overhead_us + chunk as f64 * self.per_item_us)
    }
}

/// Chooses the chunk size (items per MEU) minimising predicted wall time; on a tie, the larger
/// chunk (fewer MEUs, less total overhead). Only chunk sizes that split the items into 1 to
/// `4 × parallelism` near-equal parts are considered.
pub fn chunk_size(items: usize, cost: ItemCost, parallelism: usize) -> usize {
    if items == 0 {
        return 1;
    }
    let max_parts = items.min(4 * parallelism.max(1));
    let mut best = (f64::INFINITY, items);
    for parts in 1..=max_parts {
        let chunk = items.div_ceil(parts);
        let t = cost.makespan_us(items, chunk, parallelism);
        if t < best.0 - 1e-9 {
            best = (t, chunk);
        }
    }
    best.1
}

/// A `map` input split into chunks, each a JSON array ready to be a MEU's stdin.
#[derive(Debug)]
pub struct MapPlan {
    pub chunks: Vec<Chunk>,
    pub total_items: usize,
}

#[derive(Debug, PartialEq)]
pub struct Chunk {
    pub items: usize,
    pub input: Vec<u8>,
}

/// Splits a JSON array into chunks of `chunk_size(...)` items. Anything but a JSON array is an
/// `InvalidRequest`; an empty array is a plan with no chunks.
pub fn plan_map(input: &[u8], cost: ItemCost, parallelism: usize) -> Result<MapPlan, Error> {
    let items: Vec<&RawValue> = serde_json::from_slice(input)
        .map_err(|e| Error::InvalidRequest(format!("map input must be a JSON array: {e}")))?;
    let size = chunk_size(items.len(), cost, parallelism);
    let chunks = items
        .chunks(size)
        .map(|part| Chunk {
            items: part.len(),
            input: json_array(part.iter().map(|v| v.get())),
        })
        .collect();
    Ok(MapPlan {
        chunks,
        total_items: items.len(),
    })
}

fn json_array<'a>(items: impl Iterator<Item = &'a str>) -> Vec<u8> {
    let mut out = Vec::from(*b"[");
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(item.as_bytes());
    }
    out.push(b']');
    out
}

/// Joins per-chunk outputs (each must be a JSON array with one result per input item) into
/// one JSON array, in order. A chunk that breaks this contract is a `MapContract` error: the
/// function, not the caller, is at fault.
pub fn join_map(plan_items: &[usize], outputs: &[impl AsRef<[u8]>]) -> Result<Vec<u8>, Error> {
    let mut parts: Vec<Box<RawValue>> = Vec::with_capacity(plan_items.iter().sum());
    for (i, (expected, out)) in plan_items.iter().zip(outputs).enumerate() {
        let items: Vec<Box<RawValue>> = serde_json::from_slice(out.as_ref()).map_err(|e| {
            Error::MapContract(format!("chunk {i} output is not a JSON array: {e}"))
        })?;
        if items.len() != *expected {
            return Err(Error::MapContract(format!(
                "chunk {i} returned {} results for {expected} items",
                items.len()
            )));
        }
        parts.extend(items);
    }
    Ok(json_array(parts.iter().map(|v| v.get())))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn overhead_dominated_work_uses_one_chunk_per_worker() {
        let cheap = ItemCost {
            overhead_us: 50.0,
            per_item_us: 1.0,
        };
        // 100 items on 2 workers: two chunks of 50 beat one of 100 and beat 8 small ones.
        assert_eq!(chunk_size(100, cheap, 2), 50);
    }

    #[test]
    fn expensive_items_still_use_all_workers_and_no_more_rounds() {
        let heavy = ItemCost {
            overhead_us: 50.0,
            per_item_us: 10_000.0,
        };
        assert_eq!(chunk_size(8, heavy, 2), 4);
        assert_eq!(chunk_size(3, heavy, 4), 1);
        assert_eq!(chunk_size(1, heavy, 4), 1);
        assert_eq!(chunk_size(0, heavy, 4), 1);
    }

    #[test]
    fn huge_overhead_prefers_a_single_meu() {
        let c = ItemCost {
            overhead_us: 1e6,
            per_item_us: 1.0,
        };
        // Two rounds of overhead never pay off; one chunk per worker ties with fewer chunks
        // only when it is strictly faster.
        assert_eq!(chunk_size(10, c, 2), 5);
        assert!(c.makespan_us(10, 5, 2) < c.makespan_us(10, 10, 2));
    }

    #[test]
    fn cost_model_learns_from_observations() {
        let mut c = ItemCost::UNKNOWN;
        for _ in 0..50 {
            c.observe(10, 40, 1000);
        }
        assert!((c.per_item_us - 100.0).abs() < 1.0, "{c:?}");
        assert!((c.overhead_us - 40.0).abs() < 1.0, "{c:?}");
    }

    #[test]
    fn split_and_join_preserve_order_and_bytes() {
        let input = br#"[1, {"a": [2,3]}, "x", null, 5.5]"#;
        let plan = plan_map(
            input,
            ItemCost {
                overhead_us: 1.0,
                per_item_us: 1000.0,
            },
            2,
        )
        .unwrap();
        assert_eq!(plan.total_items, 5);
        let sizes: Vec<usize> = plan.chunks.iter().map(|c| c.items).collect();
        assert_eq!(sizes.iter().sum::<usize>(), 5);
        assert!(sizes.len() >= 2);
        // An echo function returns each chunk unchanged.
        let outputs: Vec<&[u8]> = plan.chunks.iter().map(|c| c.input.as_slice()).collect();
        let joined = join_map(&sizes, &outputs).unwrap();
        assert_eq!(joined, br#"[1,{"a": [2,3]},"x",null,5.5]"#);
    }

    #[test]
    fn bad_inputs_and_contract_violations_are_typed() {
        assert!(matches!(
            plan_map(b"{\"a\":1}", ItemCost::UNKNOWN, 2),
            Err(Error::InvalidRequest(_))
        ));
        assert!(matches!(
            plan_map(b"[1,2", ItemCost::UNKNOWN, 2),
            Err(Error::InvalidRequest(_))
        ));
        let empty = plan_map(b"[]", ItemCost::UNKNOWN, 2).unwrap();
        assert!(empty.chunks.is_empty());
        assert_eq!(join_map(&[], &[] as &[&[u8]]).unwrap(), b"[]");
        assert!(matches!(
            join_map(&[2], &[b"[1]"]),
            Err(Error::MapContract(m)) if m.contains("1 results for 2 items")
        ));
        assert!(join_map(&[1], &[b"not json"]).is_err());
    }
}
