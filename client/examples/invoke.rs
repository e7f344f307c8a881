//! Invokes a function through `tern-client`, failing over between seed nodes.
//!
//! ```sh
//! cargo run -p tern-client --example invoke -- \
//!     --ca DIR/ca.pem --seed a=127.0.0.1:7901 --seed b=127.0.0.1:7902 echo hello
//! ```
//!
//! Flags: `--ca FILE` (required), `--seed NAME=HOST:PORT` (repeatable, at least one),
//! `--token TOKEN` (or `TERN_TOKEN`), `--cert FILE --cert-key FILE` (a client certificate from
//! the cluster's client CA, `tern cluster client-cert`), `--async` (start it and poll for the result), `--map`, `--timeout-ms N`,
//! `--idempotency-key KEY`. Then the function name and its input: text, `@FILE`,
//! or `-` for stdin. The guest's stdout goes to stdout; details go to stderr.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use tern_client::{Client, ClientConfig, InvocationStatus, InvokeOptions, parse_seed};

const USAGE: &str = "usage: invoke --ca FILE --seed NAME=HOST:PORT [--seed ...] [--token T] \
[--cert FILE --cert-key FILE] [--async] [--map] [--timeout-ms N] [--idempotency-key KEY] \
FUNCTION [INPUT|@FILE|-]";

struct Args {
    config: ClientConfig,
    asynchronous: bool,
    options: InvokeOptions,
    function: String,
    input: Vec<u8>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let (mut ca, mut seeds, mut token) = (None, Vec::new(), std::env::var("TERN_TOKEN").ok());
    let (mut cert, mut key) = (None, None);
    let mut asynchronous = false;
    let mut options = InvokeOptions::default();
    let mut positional = Vec::new();
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| args.next().ok_or(format!("{flag} needs a value"));
        match arg.as_str() {
            "--ca" => ca = Some(PathBuf::from(value("--ca")?)),
            "--seed" => seeds.push(parse_seed(&value("--seed")?).map_err(|e| e.to_string())?),
            "--token" => token = Some(value("--token")?),
            "--cert" => cert = Some(PathBuf::from(value("--cert")?)),
            "--cert-key" => key = Some(PathBuf::from(value("--cert-key")?)),
            "--idempotency-key" => options.idempotency_key = Some(value("--idempotency-key")?),
            "--async" => asynchronous = true,
            "--map" => options.map = true,
            "--timeout-ms" => {
                let ms: u64 = value("--timeout-ms")?
                    .parse()
                    .map_err(|_| "--timeout-ms needs a number".to_string())?;
                options.timeout = Some(Duration::from_millis(ms));
            }
            "-h" | "--help" => return Err(USAGE.into()),
            flag if flag.starts_with("--") => return Err(format!("unknown flag {flag}\n{USAGE}")),
            _ => positional.push(arg),
        }
    }
    let ca = ca.ok_or(format!("--ca is required\n{USAGE}"))?;
    if seeds.is_empty() {
        return Err(format!("at least one --seed is required\n{USAGE}"));
    }
    let mut positional = positional.into_iter();
    let function = positional.next().ok_or(USAGE.to_string())?;
    let input = match positional.next().as_deref() {
        None => Vec::new(),
        Some("-") => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .map_err(|e| format!("stdin: {e}"))?;
            buf
        }
        Some(file) if file.starts_with('@') => {
            std::fs::read(&file[1..]).map_err(|e| format!("{}: {e}", &file[1..]))?
        }
        Some(text) => text.as_bytes().to_vec(),
    };
    let mut config = ClientConfig::new(seeds, ca);
    config.token = token;
    match (cert, key) {
        (Some(c), Some(k)) => config = config.with_client_cert(c, k),
        (None, None) => {}
        _ => return Err("--cert and --cert-key go together".into()),
    }
    Ok(Args {
        config,
        asynchronous,
        options,
        function,
        input,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), tern_client::ClientError> {
    let client = Client::connect(args.config).await?;
    let mut stdout = std::io::stdout();
    if args.asynchronous {
        let id = client
            .invoke_async_with(&args.function, args.input, args.options)
            .await?;
        eprintln!("accepted as {id}");
        let record = client
            .wait_result(&id, Duration::from_millis(50), Duration::from_secs(600))
            .await?;
        match (record.status, record.output, record.error) {
            (InvocationStatus::Succeeded, Some(out), _) => {
                let _ = stdout.write_all(&out);
            }
            (_, _, Some(e)) => return Err(tern_client::ClientError::Api(e)),
            (status, _, _) => eprintln!("finished as {status:?} without output"),
        }
    } else {
        let out = client
            .invoke_with(&args.function, args.input, args.options)
            .await?;
        let _ = stdout.write_all(&out.output);
        eprintln!(
            "\n(node {}, {} µs on the node, cold start: {}{})",
            out.node,
            out.duration_us,
            out.cold_start,
            if out.replayed { ", replayed" } else { "" }
        );
    }
    let _ = stdout.flush();
    client.close();
    Ok(())
}
