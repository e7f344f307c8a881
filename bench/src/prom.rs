//! A minimal parser for the Prometheus text exposition format (0.0.4), enough to read
//! counters: comments (`# HELP`, `# TYPE`, ...) are skipped, label sets are skipped
//! (honouring quoted values with `\"`, `\\` and `\n` escapes), values may be `+Inf`,
//! `-Inf` or `NaN`, and optional timestamps are ignored. Malformed lines are skipped.

/// One sample line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample<'a> {
    /// Metric name, e.g. `tern_meus_total`.
    pub name: &'a str,
    /// The raw text between `{` and `}` (empty when there are no labels).
    pub labels: &'a str,
    pub value: f64,
}

/// Parse one line; `None` for blank lines, comments and malformed lines.
pub fn parse_line(line: &str) -> Option<Sample<'_>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line
        .find(|c: char| c == '{' || c.is_ascii_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if !is_metric_name(name) {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = "";
    if let Some(after_brace) = rest.strip_prefix('{') {
        let close = find_label_end(after_brace)?;
        labels = &after_brace[..close];
        rest = &after_brace[close + 1..];
    }
    let mut fields = rest.split_ascii_whitespace();
    let value = parse_value(fields.next()?)?;
    // An optional integer timestamp may follow; anything more is malformed.
    if let Some(ts) = fields.next()
        && (ts.parse::<i64>().is_err() || fields.next().is_some())
    {
        return None;
    }
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// All samples of a text, in order.
pub fn samples(text: &str) -> impl Iterator<Item = Sample<'_>> {
    text.lines().filter_map(parse_line)
}

/// Sum of every sample called exactly `name`, whatever its labels;
/// `None` if there is no such sample.
pub fn sum(text: &str, name: &str) -> Option<f64> {
    samples(text)
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .reduce(|a, b| a + b)
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Index of the `}` closing a label set, skipping over quoted label values.
fn find_label_end(s: &str) -> Option<usize> {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, b) in s.bytes().enumerate() {
        if in_quotes {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_quotes = false;
            }
        } else if b == b'"' {
            in_quotes = true;
        } else if b == b'}' {
            return Some(i);
        }
    }
    None
}

fn parse_value(v: &str) -> Option<f64> {
    match v {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => v.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP tern_meus_total Metered execution units.
# TYPE tern_meus_total counter
tern_meus_total{function="a",node="n1"} 10
tern_meus_total{function="b \"quoted\" {x}",node="n1"} 2.5 1712345678000
tern_meus_total{function="c\\",path="/x}y"} 1e3

# a free comment mentioning tern_meus_total 1000000
tern_meus_total_created{function="a"} 1712345678
tern_meus 99
tern_cold_starts_total 3
# HELP tern_latency_seconds Latency.
# TYPE tern_latency_seconds histogram
tern_latency_seconds_bucket{le="0.1"} 4
tern_latency_seconds_bucket{le="+Inf"} 7
tern_latency_seconds_count 7
tern_weird{a="b"} +Inf
this line is garbage
tern_bad_value{a="b"} abc
"#;

    #[test]
    fn sums_all_label_sets_of_exactly_that_name() {
        assert_eq!(sum(TEXT, "tern_meus_total"), Some(10.0 + 2.5 + 1000.0));
        assert_eq!(sum(TEXT, "tern_meus"), Some(99.0));
        assert_eq!(sum(TEXT, "tern_cold_starts_total"), Some(3.0));
        assert_eq!(sum(TEXT, "tern_latency_seconds_bucket"), Some(11.0));
        assert_eq!(sum(TEXT, "tern_module_reuse_total"), None);
        assert_eq!(sum(TEXT, "tern_weird"), Some(f64::INFINITY));
        assert_eq!(sum(TEXT, "tern_bad_value"), None);
    }

    #[test]
    fn keeps_raw_labels_with_escapes() {
        let s: Vec<_> = samples(TEXT)
            .filter(|s| s.name == "tern_meus_total")
            .collect();
        assert_eq!(s.len(), 3);
        assert_eq!(s[1].labels, r#"function="b \"quoted\" {x}",node="n1""#);
        assert_eq!(s[2].labels, r#"function="c\\",path="/x}y""#);
        let inf = parse_line(r#"tern_latency_seconds_bucket{le="+Inf"} 7"#);
        assert_eq!(
            inf,
            Some(Sample {
                name: "tern_latency_seconds_bucket",
                labels: r#"le="+Inf""#,
                value: 7.0
            })
        );
    }

    #[test]
    fn rejects_malformed_lines() {
        assert_eq!(parse_line("# TYPE x counter"), None);
        assert_eq!(parse_line(""), None);
        assert_eq!(parse_line(r#"x{a="unterminated} 1"#), None);
        assert_eq!(parse_line("x"), None);
        assert_eq!(parse_line("x 1 notatimestamp"), None);
        assert_eq!(parse_line("1x 1"), None);
        assert!(parse_line("x NaN").is_some_and(|s| s.value.is_nan()));
        assert_eq!(
            parse_line("x -Inf").map(|s| s.value),
            Some(f64::NEG_INFINITY)
        );
    }
}
