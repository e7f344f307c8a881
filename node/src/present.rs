//! How the `tern` CLI shows the node's answers to a person: aligned tables, ages and sizes in
//! words, one-line errors with a hint. Pure (answers and the time in, text out); `--output
//! json` prints the node's JSON instead, for scripts.

use serde_json::Value;

/// Left-aligned columns two spaces apart, a header row first.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| -> String {
        let mut out = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i + 1 == widths.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(&mut headers.iter().copied());
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

/// How long ago `then_ms` was at `now_ms`, roughly: `12s`, `5m`, `3h`, `2d`.
pub fn age(then_ms: u64, now_ms: u64) -> String {
    let s = now_ms.saturating_sub(then_ms) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// Bytes as `512 B`, `33 KiB`, `1.2 MiB`.
pub fn size(bytes: u64) -> String {
    match bytes {
        0..1024 => format!("{bytes} B"),
        1024..1_048_576 => format!("{} KiB", bytes / 1024),
        _ => format!("{:.1} MiB", bytes as f64 / 1_048_576.0),
    }
}

/// The line shown while a long operation runs: what, a spinner and the seconds elapsed.
pub fn waiting_line(what: &str, elapsed: std::time::Duration) -> String {
    const SPIN: [char; 4] = ['|', '/', '-', '\\'];
    let quarter = (elapsed.as_millis() / 250) as usize;
    format!(
        "{} {what} {:.1} s ",
        SPIN[quarter % SPIN.len()],
        elapsed.as_secs_f64()
    )
}

/// The elements of a JSON array (none for anything else).
fn items(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `GET /v1/functions`.
pub fn functions(list: &Value, now_ms: u64) -> String {
    let rows: Vec<Vec<String>> = items(list)
        .iter()
        .map(|f| {
            vec![
                text(&f["name"]),
                text(&f["version"]),
                format!("{} MiB", text(&f["memory_mb"])),
                format!("{} ms", text(&f["timeout_ms"])),
                f["size_bytes"].as_u64().map_or("-".into(), size),
                text(&f["max_instances"]),
                f["deployed_at_ms"]
                    .as_u64()
                    .map_or("-".into(), |t| age(t, now_ms)),
                text(&f["kind"]),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "VERSION",
            "MEMORY",
            "TIMEOUT",
            "SIZE",
            "MAX INSTANCES",
            "DEPLOYED",
            "KIND",
        ],
        &rows,
    )
}

/// Whether a quota value means no limit: absent, or the largest value of its width.
fn unlimited(v: &Value) -> bool {
    matches!(v.as_u64(), None | Some(u64::MAX) | Some(4_294_967_295))
}

/// `GET /v1/tenants`: the quotas people look at first (`tern tenant show` has them all);
/// `-` for no limit.
pub fn tenants(list: &Value) -> String {
    let limit = |v: &Value, show: &dyn Fn(u64) -> String| match v.as_u64() {
        Some(n) if !unlimited(v) => show(n),
        _ => "-".to_owned(),
    };
    let rows: Vec<Vec<String>> = items(list)
        .iter()
        .map(|t| {
            let q = &t["spec"]["quotas"];
            vec![
                text(&t["name"]),
                text(&t["spec"]["weight"]),
                text(&t["spec"]["sla"]),
                limit(&q["max_functions"], &|n| n.to_string()),
                limit(&q["max_concurrent"], &|n| n.to_string()),
                limit(&q["max_rate_per_s"], &|n| n.to_string()),
                limit(&q["memory_budget_bytes"], &size),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "WEIGHT",
            "SLA",
            "FUNCTIONS",
            "CONCURRENT",
            "RATE/S",
            "MEMORY",
        ],
        &rows,
    )
}

/// `PUT /v1/functions/{name}`: one line, what was deployed and with which limits.
pub fn deployed(info: &Value) -> String {
    let hash = info["hash"].as_str().unwrap_or("-");
    format!(
        "deployed {} version {}: {}, {} MiB, {} ms, max instances {}, sha256 {}\n",
        text(&info["name"]),
        text(&info["version"]),
        info["size_bytes"].as_u64().map_or("-".into(), size),
        text(&info["memory_mb"]),
        text(&info["timeout_ms"]),
        text(&info["max_instances"]),
        hash.get(..12).unwrap_or(hash),
    )
}

/// `POST /v1/functions/{name}/invoke?mode=async` (202): the id, and how to read the result.
pub fn accepted(answer: &Value) -> String {
    let id = text(&answer["id"]);
    format!("accepted: {id}\n(`tern result {id} --wait` waits for its result)\n")
}

/// `GET /v1/tenants/{name}` (and what create and update answer): its settings, then each
/// quota with what the tenant uses of it (`-`: no limit, or not counted).
pub fn tenant(t: &Value) -> String {
    let spec = &t["spec"];
    let mut out = format!(
        "tenant {} (version {}), weight {}, sla {}\n",
        text(&t["name"]),
        text(&t["version"]),
        text(&spec["weight"]),
        text(&spec["sla"]),
    );
    // Quota, whether it counts bytes, and the usage field it limits.
    const QUOTAS: [(&str, bool, Option<&str>); 10] = [
        ("max_functions", false, Some("functions")),
        ("max_module_bytes", true, Some("module_bytes")),
        ("max_concurrent", false, None),
        ("max_queued", false, None),
        ("max_rate_per_s", false, None),
        ("rate_burst", false, None),
        ("max_timeout_ms", false, None),
        ("memory_budget_bytes", true, None),
        ("max_stored_results", false, Some("stored_results")),
        ("max_stored_result_bytes", true, Some("stored_result_bytes")),
    ];
    let show = |v: &Value, bytes: bool| match v.as_u64() {
        Some(n) if bytes => size(n),
        Some(n) => n.to_string(),
        None => "-".into(),
    };
    let rows: Vec<Vec<String>> = QUOTAS
        .iter()
        .map(|&(quota, bytes, used)| {
            let limit = &spec["quotas"][quota];
            vec![
                quota.to_owned(),
                if unlimited(limit) {
                    "-".into()
                } else {
                    show(limit, bytes)
                },
                used.map_or("-".into(), |u| show(&t["usage"][u], bytes)),
            ]
        })
        .collect();
    out.push_str(&table(&["QUOTA", "LIMIT", "USED"], &rows));
    out
}

/// `GET /v1/tokens`.
pub fn tokens(list: &Value, now_ms: u64) -> String {
    let rows: Vec<Vec<String>> = items(list)
        .iter()
        .map(|t| {
            vec![
                text(&t["id"]),
                text(&t["tenant"]),
                text(&t["role"]),
                t["created_at_ms"]
                    .as_u64()
                    .map_or("-".into(), |c| age(c, now_ms)),
                t["revoked_at_ms"]
                    .as_u64()
                    .map_or("-".into(), |r| format!("revoked {} ago", age(r, now_ms))),
            ]
        })
        .collect();
    table(&["ID", "TENANT", "ROLE", "CREATED", "REVOKED"], &rows)
}

/// `GET /v1/invocations/{id}`: the record's fields, then its output (or error).
pub fn invocation(record: &Value, now_ms: u64) -> String {
    let mut out = String::new();
    let took = match (
        record["accepted_at_ms"].as_u64(),
        record["finished_at_ms"].as_u64(),
    ) {
        (Some(a), Some(f)) => format!("{} ms", f.saturating_sub(a)),
        (Some(a), None) => format!("running for {}", age(a, now_ms)),
        _ => "-".into(),
    };
    for (k, v) in [
        ("id", text(&record["id"])),
        ("function", text(&record["function"])),
        ("status", text(&record["status"])),
        ("took", took),
        ("attempts", text(&record["attempts"])),
    ] {
        out.push_str(&format!("{k:<9} {v}\n"));
    }
    if let Some(e) = record["error"].as_object() {
        out.push_str(&format!(
            "{:<9} {} ({})\n",
            "error",
            text(&e.get("message").cloned().unwrap_or_default()),
            text(&e.get("code").cloned().unwrap_or_default())
        ));
    }
    match (&record["result"], &record["result_base64"]) {
        (Value::String(s), _) => out.push_str(&format!("{:<9} {s}\n", "output")),
        (_, Value::String(b)) => out.push_str(&format!("{:<9} (binary, base64) {b}\n", "output")),
        _ => {}
    }
    out
}

/// `GET /v1/cluster`: this node, then a row per member as this node sees it.
pub fn status(view: &Value) -> String {
    let mut out = format!(
        "node {} ({}), tern {}, isolation {}, {} functions\n",
        text(&view["node"]),
        text(&view["class"]),
        text(&view["version"]),
        text(&view["isolation"]),
        text(&view["functions"]),
    );
    let members = items(&view["members"]);
    if members.is_empty() {
        out.push_str("not in a cluster\n");
        return out;
    }
    let ms = |v: &Value| v.as_u64().map_or("-".into(), |ms| age(0, ms));
    let rows: Vec<Vec<String>> = members
        .iter()
        .map(|m| {
            vec![
                text(&m["node"]),
                text(&m["state"]),
                ms(&m["state_age_ms"]),
                text(&m["class"]),
                text(&m["queue_depth"]),
                m["cpu_percent"]
                    .as_u64()
                    .map_or("-".into(), |p| format!("{p}%")),
                text(&m["ready"]),
                ms(&m["status_age_ms"]),
                match m["session"].as_bool() {
                    Some(true) => "ready".into(),
                    Some(false) => "down".into(),
                    None => "-".into(),
                },
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "MEMBER",
            "STATE",
            "FOR",
            "CLASS",
            "QUEUED",
            "CPU",
            "READY",
            "LAST STATUS",
            "SESSION",
        ],
        &rows,
    ));
    out
}

/// What to try after an error with `code`, for the one-line message the CLI prints.
pub fn hint(code: &str) -> Option<&'static str> {
    Some(match code {
        "unauthorized" => {
            "pass --token or set TERN_TOKEN (a node writes its admin token to <data dir>/admin.token)"
        }
        "forbidden" => "this token's role or tenant may not do that: ask an admin for one that may",
        "not_found" => "`tern list` shows the functions this token can see",
        "invalid_module" => {
            "deploy a WASI preview 1 command (.wasm exporting _start), built for wasm32-wasip1"
        }
        "quota_exceeded" => "`tern tenant show <tenant>` shows the tenant's quotas and usage",
        "overloaded" | "unavailable" => "try again shortly (a Retry-After header says when)",
        "timeout" => "raise the function's --timeout-ms when deploying, or send less work",
        "output_too_large" => "the node caps a call's output (max_output_bytes)",
        "payload_too_large" => "the node caps request bodies (max_body_bytes)",
        "isolation_fault" => "the tenant's cell died under the call; the next call gets a new cell",
        _ => return None,
    })
}

/// An API error as one line: `code (status): message; hint: ...` (line breaks in the
/// message, such as a trap's backtrace, become spaces).
pub fn error_line(code: &str, status: u16, message: &str) -> String {
    let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
    match hint(code) {
        Some(h) => format!("{code} ({status}): {message}; hint: {h}"),
        None => format!("{code} ({status}): {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_deploy_an_async_accept_and_a_tenant_read_as_lines_and_a_table() {
        let info = json!({"name":"e2","hash":"aa19818a9ebe898c04bdae968e8bca45","version":3,
            "timeout_ms":500,"memory_mb":64,"size_bytes":33637,"max_instances":null});
        assert_eq!(
            deployed(&info),
            "deployed e2 version 3: 32 KiB, 64 MiB, 500 ms, max instances -, sha256 aa19818a9ebe\n"
        );
        assert_eq!(
            accepted(&json!({"id":"e75d"})),
            "accepted: e75d\n(`tern result e75d --wait` waits for its result)\n"
        );
        let t = json!({"name":"acme","version":2,"spec":{"weight":3,"sla":"premium","quotas":{
            "max_functions":10,"max_module_bytes":18446744073709551615u64,"max_concurrent":7,
            "max_queued":4294967295u64,"max_rate_per_s":4294967295u64,"rate_burst":4294967295u64,
            "max_timeout_ms":4294967295u64,"memory_budget_bytes":268435456,
            "max_stored_results":4294967295u64,"max_stored_result_bytes":18446744073709551615u64}},
            "usage":{"functions":4,"module_bytes":2097152,"stored_results":0,"stored_result_bytes":0}});
        let shown = tenant(&t);
        let lines: Vec<Vec<&str>> = shown
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            shown.lines().next(),
            Some("tenant acme (version 2), weight 3, sla premium")
        );
        assert_eq!(lines[1], ["QUOTA", "LIMIT", "USED"]);
        assert_eq!(lines[2], ["max_functions", "10", "4"]);
        assert_eq!(lines[3], ["max_module_bytes", "-", "2.0", "MiB"]);
        assert_eq!(lines[4], ["max_concurrent", "7", "-"]);
        assert_eq!(lines[9], ["memory_budget_bytes", "256.0", "MiB", "-"]);
        assert_eq!(lines[11], ["max_stored_result_bytes", "-", "0", "B"]);
        assert_eq!(lines.len(), 12);
    }

    #[test]
    fn a_table_aligns_its_columns_under_the_headers() {
        let t = table(
            &["NAME", "N"],
            &[
                vec!["echo".into(), "1".into()],
                vec!["x".into(), "22".into()],
            ],
        );
        assert_eq!(t, "NAME  N\necho  1\nx     22\n");
    }

    #[test]
    fn ages_and_sizes_read_like_words() {
        assert_eq!(age(0, 59_000), "59s");
        assert_eq!(age(0, 61_000), "1m");
        assert_eq!(age(0, 7_200_000), "2h");
        assert_eq!(age(0, 3 * 86_400_000), "3d");
        assert_eq!(age(10, 5), "0s");
        assert_eq!(size(512), "512 B");
        assert_eq!(size(33_637), "32 KiB");
        assert_eq!(size(3 << 20), "3.0 MiB");
    }

    #[test]
    fn the_waiting_line_names_the_operation_and_turns_its_spinner_each_quarter_second() {
        let at = |ms| waiting_line("deploying big", std::time::Duration::from_millis(ms));
        assert_eq!(at(500), "- deploying big 0.5 s ");
        assert_eq!(at(750), "\\ deploying big 0.8 s ");
        assert_ne!(at(1000).chars().next(), at(1250).chars().next());
    }

    #[test]
    fn functions_tenants_and_tokens_become_tables() {
        let now = 1_000_000;
        let f = json!([{"name":"echo","version":2,"memory_mb":128,"timeout_ms":10000,
            "size_bytes":33637,"deployed_at_ms":now - 120_000,"max_instances":null,
            "kind":"module"}]);
        let t = functions(&f, now);
        assert!(
            t.starts_with(
                "NAME  VERSION  MEMORY   TIMEOUT   SIZE    MAX INSTANCES  DEPLOYED  KIND\n"
            ),
            "{t}"
        );
        assert!(
            t.contains("echo  2        128 MiB  10000 ms  32 KiB  -              2m        module"),
            "{t}"
        );
        let tenants_list = json!([{"name":"acme","spec":{"weight":3,"sla":"batch",
            "quotas":{"max_functions":20,"max_concurrent":4_294_967_295_u64,
            "max_rate_per_s":50,"memory_budget_bytes":1_073_741_824}}}]);
        let t = tenants(&tenants_list);
        assert!(
            t.contains("acme  3       batch  20         -           50      1024.0 MiB"),
            "{t}"
        );
        let tok = json!([{"id":"ab","tenant":"acme","role":"developer","created_at_ms":now - 5000,
            "revoked_at_ms":null}]);
        assert!(tokens(&tok, now).contains("ab  acme    developer  5s       -"));
    }

    #[test]
    fn an_invocation_shows_its_status_time_and_output_or_error() {
        let ok = json!({"id":"i1","function":"echo","status":"succeeded","result":"hi",
            "result_base64":null,"error":null,"accepted_at_ms":10,"finished_at_ms":13,"attempts":1});
        let text = invocation(&ok, 20);
        assert!(text.contains("status    succeeded\n") && text.contains("took      3 ms\n"));
        assert!(text.ends_with("output    hi\n"), "{text}");
        let failed = json!({"id":"i2","function":"trap","status":"failed","result":null,
            "error":{"code":"guest_trap","message":"unreachable"},"accepted_at_ms":10,
            "finished_at_ms":null,"attempts":2});
        let text = invocation(&failed, 70_010);
        assert!(
            text.contains("running for 1m") && text.contains("error     unreachable (guest_trap)")
        );
    }

    #[test]
    fn status_lists_the_members_or_says_the_node_is_alone() {
        let alone = json!({"node":"local","class":"standard","version":"0.1.0",
            "isolation":"lci","functions":2,"members":[]});
        assert_eq!(
            status(&alone),
            "node local (standard), tern 0.1.0, isolation lci, 2 functions\nnot in a cluster\n"
        );
        let three = json!({"node":"a","class":"standard","version":"0.1.0","isolation":"lci",
            "functions":2,"members":[{"node":"b","state":"up","state_age_ms":65000,
            "status_age_ms":300,"queue_depth":4,"cpu_percent":37,"ready":2,
            "class":"edge-small","session":true}]});
        let s = status(&three);
        let row: Vec<&str> = s
            .lines()
            .nth(2)
            .expect("a row for b")
            .split_whitespace()
            .collect();
        assert_eq!(
            row,
            [
                "b",
                "up",
                "1m",
                "edge-small",
                "4",
                "37%",
                "2",
                "0s",
                "ready"
            ],
            "{s}"
        );
        assert!(
            s.lines()
                .nth(1)
                .is_some_and(|h| h.starts_with("MEMBER  STATE  FOR  CLASS")),
            "{s}"
        );
    }

    #[test]
    fn errors_are_one_line_with_a_hint_where_one_helps() {
        assert_eq!(
            error_line("not_found", 404, "no function nope"),
            "not_found (404): no function nope; hint: `tern list` shows the functions this token can see"
        );
        assert_eq!(error_line("internal", 500, "boom"), "internal (500): boom");
        assert!(!error_line("unauthorized", 401, "no token").contains('\n'));
        assert_eq!(
            error_line("guest_trap", 500, "wasm trap:\n  0: f\n  1: g"),
            "guest_trap (500): wasm trap: 0: f 1: g"
        );
    }
}
