//! `membomb`: tries to use all the memory the host allows.
//!
//! * stdin `alloc` (whitespace ignored): allocate 1 MiB `Vec<u8>` chunks,
//!   write every byte, keep them all alive, forever. When the allocator can
//!   no longer grow memory the process aborts, which is a wasm trap.
//! * anything else (default): call `memory.grow` by 16 pages (1 MiB) until it
//!   fails, then print `{"grown_pages":N,"total_pages":M}` and exit 0, where
//!   N is the number of 64 KiB pages added and M is `memory.size` at the end.

use core::arch::wasm32::{memory_grow, memory_size};
use std::hint::black_box;
use std::io::{self, Read, Write};

const STEP_PAGES: usize = 16;
const MIB: usize = 1024 * 1024;

fn main() {
    let mut input = String::new();
    let _ = io::stdin().read_to_string(&mut input);
    if input.trim() == "alloc" {
        alloc_forever();
    }

    let mut grown_pages: usize = 0;
    while memory_grow::<0>(STEP_PAGES) != usize::MAX {
        grown_pages += STEP_PAGES;
    }
    let total_pages = memory_size::<0>();
    let mut out = io::stdout().lock();
    let _ = write!(
        out,
        "{{\"grown_pages\":{grown_pages},\"total_pages\":{total_pages}}}"
    );
    let _ = out.flush();
}

fn alloc_forever() -> ! {
    let mut kept: Vec<Vec<u8>> = Vec::new();
    let mut i: usize = 0;
    loop {
        let mut chunk = Vec::with_capacity(MIB);
        chunk.resize(MIB, (i % 251) as u8 + 1);
        kept.push(black_box(chunk));
        black_box(&kept);
        i = i.wrapping_add(1);
    }
}
