//! `echo`: copies stdin to stdout byte for byte.
//!
//! Works for any bytes. Map-capable by construction: a JSON array in gives
//! the same JSON array out (one result per item, in order).

use std::io::{self, Read, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut input = io::stdin().lock();
    let mut output = io::stdout().lock();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return ExitCode::FAILURE,
        };
        if output.write_all(&buf[..n]).is_err() {
            return ExitCode::FAILURE;
        }
    }
    if output.flush().is_err() {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
