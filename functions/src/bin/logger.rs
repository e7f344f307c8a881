//! `logger`: writes to stderr, for the node's guest logs.
//!
//! * stdin `panic`: panics (the panic message goes to stderr, then the guest traps);
//! * stdin `flood`: writes 2,000 lines of 100 bytes to stderr, then `flooded` to stdout;
//! * anything else: writes `log: <line>` to stderr for each line of the input, then echoes
//!   the input to stdout.

use std::io::{self, Read, Write};

fn main() {
    let mut input = String::new();
    let _ = io::stdin().read_to_string(&mut input);
    match input.trim() {
        "panic" => panic!("asked to panic"),
        "flood" => {
            let mut err = io::stderr().lock();
            for i in 0..2_000 {
                let _ = writeln!(err, "flood {i:05} {}", "x".repeat(88));
            }
            let _ = io::stdout().write_all(b"flooded");
        }
        _ => {
            for line in input.lines() {
                eprintln!("log: {line}");
            }
            let _ = io::stdout().write_all(input.as_bytes());
        }
    }
}
