//! `recurse`: unbounded, non-tail recursion with a local array on every
//! frame, so the call stack overflows and the host sees a trap.
//!
//! `black_box` hides the (never-true) base case and the array from the
//! optimiser, so it can neither turn the recursion into a loop nor prove it
//! infinite.

use std::hint::black_box;

#[inline(never)]
fn dive(depth: u64) -> u64 {
    if black_box(depth) == u64::MAX {
        return 0;
    }
    // Small on purpose: the array lives on the shadow stack in linear memory
    // (1 MiB by default), and a small frame there means the engine's native
    // call-stack limit is what runs out first, i.e. a genuine "call stack
    // exhausted" trap rather than an out-of-bounds memory access.
    let mut frame = [0u32; 4];
    frame[(depth % 4) as usize] = depth as u32;
    black_box(&mut frame);
    let below = dive(black_box(depth + 1));
    // Use the array after the call so the frame must outlive it.
    below.wrapping_add(u64::from(frame[(depth % 3) as usize]))
}

fn main() {
    let r = dive(black_box(0));
    // Unreachable in practice; keeps the result observable.
    println!("{r}");
}
