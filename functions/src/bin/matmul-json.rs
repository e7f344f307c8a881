//! `matmul-json`: the paper's workload as a WASI command. The JSON task on stdin, the result
//! on stdout; a refused input is `{"error":"..."}` on stdout and exit code 2. The fields and
//! the output are described in `matmul-core`, shared with the component.

use matmul_core::{Meta, error_body, process};
use std::io::{self, Read, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    let meta = Meta {
        node: std::env::var("TERN_NODE").unwrap_or_default(),
        request_id: std::env::var("TERN_REQUEST_ID").unwrap_or_default(),
    };
    let mut input = Vec::new();
    let result = match io::stdin().read_to_end(&mut input) {
        Ok(_) => process(&input, &meta),
        Err(e) => Err(format!("reading stdin: {e}")),
    };
    let (body, code) = match result {
        Ok(body) => (body, ExitCode::SUCCESS),
        Err(msg) => (error_body(&msg), ExitCode::from(2)),
    };
    let mut stdout = io::stdout().lock();
    if stdout.write_all(body.as_bytes()).is_err() || stdout.flush().is_err() {
        return ExitCode::FAILURE;
    }
    code
}
