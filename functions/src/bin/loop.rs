//! `loop`: spins forever. The counter goes through `black_box` on every
//! iteration so the optimiser cannot prove the loop is dead or collapse it.
//! Used to test the host's fuel / epoch / wall-clock limits.

use std::hint::black_box;

fn main() {
    let mut counter: u64 = black_box(0);
    loop {
        counter = black_box(counter.wrapping_add(1));
    }
}
