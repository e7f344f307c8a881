//! `bigoutput`: writes N bytes of `x` to stdout in 64 KiB writes.
//!
//! N is read from stdin as an optional decimal byte count (surrounding
//! whitespace ignored); empty or unparsable input means the default, 64 MiB.
//! A write error (e.g. the host closing or capping stdout) just stops the
//! writing; the function still exits 0.

use std::io::{self, Read, Write};

const DEFAULT_BYTES: u64 = 64 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;

fn main() {
    let mut input = String::new();
    let _ = io::stdin().read_to_string(&mut input);
    let total = input.trim().parse::<u64>().unwrap_or(DEFAULT_BYTES);

    let chunk = vec![b'x'; CHUNK];
    let mut out = io::stdout().lock();
    let mut left = total;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        if out.write_all(&chunk[..n]).is_err() {
            break;
        }
        left -= n as u64;
    }
    let _ = out.flush();
}
