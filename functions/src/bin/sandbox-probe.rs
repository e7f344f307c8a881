//! `sandbox-probe`: tries to reach outside the sandbox and reports, as one
//! JSON object on stdout, what happened. Always exits 0.
//!
//! ```json
//! {"open_etc_passwd":{"ok":false,"detail":"..."},
//!  "read_dir_root":{"ok":false,"detail":"..."},
//!  "read_dir_cwd":{"ok":false,"detail":"..."},
//!  "tcp_connect":{"ok":false,"detail":"..."},
//!  "env":{"K":"V",...}}
//! ```
//!
//! `ok` is true if the operation succeeded (a sandbox hole); `detail` is then
//! the first 32 bytes of the file (lossy UTF-8), the entry names joined by
//! `,`, or the peer address. On failure it is the error's `Display` text.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};

fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn outcome(out: &mut String, key: &str, result: Result<String, String>) {
    json_str(out, key);
    let (ok, detail) = match result {
        Ok(d) => (true, d),
        Err(e) => (false, e),
    };
    let _ = write!(out, ":{{\"ok\":{ok},\"detail\":");
    json_str(out, &detail);
    out.push_str("},");
}

fn open_etc_passwd() -> Result<String, String> {
    let file = std::fs::File::open("/etc/passwd").map_err(|e| e.to_string())?;
    let mut head = Vec::with_capacity(32);
    file.take(32)
        .read_to_end(&mut head)
        .map_err(|e| format!("opened, but read failed: {e}"))?;
    Ok(String::from_utf8_lossy(&head).into_owned())
}

fn read_dir(path: &str) -> Result<String, String> {
    let entries = std::fs::read_dir(path).map_err(|e| e.to_string())?;
    let names: Vec<String> = entries
        .map(|e| match e {
            Ok(e) => e.file_name().to_string_lossy().into_owned(),
            Err(err) => format!("<error: {err}>"),
        })
        .collect();
    Ok(names.join(","))
}

fn tcp_connect() -> Result<String, String> {
    let stream = std::net::TcpStream::connect("127.0.0.1:80").map_err(|e| e.to_string())?;
    Ok(stream
        .peer_addr()
        .map(|a| format!("connected to {a}"))
        .unwrap_or_else(|_| "connected".to_string()))
}

fn main() {
    let mut out = String::from("{");
    outcome(&mut out, "open_etc_passwd", open_etc_passwd());
    outcome(&mut out, "read_dir_root", read_dir("/"));
    outcome(&mut out, "read_dir_cwd", read_dir("."));
    outcome(&mut out, "tcp_connect", tcp_connect());

    let env: BTreeMap<String, String> = std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect();
    out.push_str("\"env\":{");
    for (i, (k, v)) in env.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        json_str(&mut out, k);
        out.push(':');
        json_str(&mut out, v);
    }
    out.push_str("}}");

    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.as_bytes());
    let _ = stdout.flush();
}
