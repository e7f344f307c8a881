//! `exit-code`: writes `partial` (no newline) to stdout, then exits with
//! code 3. Used to test how the host reports a non-zero exit and what it
//! does with output written before it.

use std::io::Write;

fn main() {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(b"partial");
    let _ = out.flush();
    std::process::exit(3);
}
