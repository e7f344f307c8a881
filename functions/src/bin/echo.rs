//! `echo`: copies stdin to stdout byte for byte.
//!
//! Works for any bytes. Map-capable by construction: a JSON array in gives
//! the same JSON array out (one result per item, in order).

use std::io::{self, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    // `io::copy` streams through a buffer it never zeroes (8 KiB on the stack): zeroing a
    // large buffer on every call is work that copying bytes through does not need.
    let mut output = io::stdout().lock();
    match io::copy(&mut io::stdin().lock(), &mut output).and_then(|_| output.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}
