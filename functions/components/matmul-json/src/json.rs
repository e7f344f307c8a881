//! Just enough JSON for `matmul-json`, without serde: a reader and a writer that accept, build
//! and print exactly what the preview-1 command's `serde_json` 1.0 does (its default features:
//! no `float_roundtrip`, `preserve_order` or `arbitrary_precision`), so the two give the same
//! bytes for the same input.
//!
//! What that means in detail:
//! * Objects keep the last of duplicate keys and print their keys sorted bytewise (a
//!   `BTreeMap`).
//! * A number without fraction or exponent is a `u64` (non-negative) or an `i64` (negative);
//!   `-0`, a larger integer or anything with a fraction or exponent is an `f64`, computed as
//!   serde_json does without `float_roundtrip` (the first 19 significant digits times a power of
//!   ten, which can be one ulp away from the nearest double). A magnitude past `f64::MAX` is an
//!   error.
//! * Strings must be valid UTF-8 with no raw control characters; `\u` escapes must pair
//!   surrogates. They print with `\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t`, other control
//!   characters as `\u00xx` and everything else as is.
//! * Floats print as the shortest digits that read back to the same value, in fixed notation
//!   (`0.001`, `12.5`, `100.0`) for decimal exponents -5..=15 (-6..=12 for `f32`), else as
//!   `1.5e+20` / `1e-7`; non-finite floats print as `null`.
//! * Nesting deeper than 127 arrays/objects is an error.
//!
//! Error messages follow serde_json's wording and `at line L column C` form; they are not
//! promised to be byte-identical to it.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::RangeInclusive;

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Number(Number),
    String(String),
    Array(Vec<Value>),
    Object(BTreeMap<String, Value>),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Number {
    PosInt(u64),
    /// Always negative.
    NegInt(i64),
    /// Always finite.
    Float(f64),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::Number(Number::PosInt(n)) => Some(*n),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Number(Number::PosInt(n)) => i64::try_from(*n).ok(),
            Value::Number(Number::NegInt(n)) => Some(*n),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Number(Number::PosInt(n)) => Some(*n as f64),
            Value::Number(Number::NegInt(n)) => Some(*n as f64),
            Value::Number(Number::Float(f)) => Some(*f),
            _ => None,
        }
    }
}

/// Compact JSON, as `serde_json::to_string` prints it.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        push_value(&mut out, self);
        f.write_str(&out)
    }
}

// ---------------------------------------------------------------------------------------------
// Writing

pub fn push_value(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(Number::PosInt(n)) => out.push_str(&n.to_string()),
        Value::Number(Number::NegInt(n)) => out.push_str(&n.to_string()),
        Value::Number(Number::Float(x)) => push_f64(out, *x),
        Value::String(s) => push_str(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_str(out, key);
                out.push(':');
                push_value(out, item);
            }
            out.push('}');
        }
    }
}

/// `s` as a JSON string literal.
pub fn push_str(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{0}'..='\u{1f}' => {
                let byte = c as u8;
                out.push_str("\\u00");
                out.push(char::from(HEX[usize::from(byte >> 4)]));
                out.push(char::from(HEX[usize::from(byte & 0xf)]));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `x` as serde_json prints an `f64` (`null` if not finite).
pub fn push_f64(out: &mut String, x: f64) {
    if !x.is_finite() {
        out.push_str("null");
    } else if x == 0.0 {
        out.push_str(if x.is_sign_negative() { "-0.0" } else { "0.0" });
    } else {
        let decimal = shortest(
            &format!("{x:e}"),
            || format!("{:.800e}", x.abs()),
            |s| s.parse::<f64>() == Ok(x.abs()),
        );
        push_decimal(out, &decimal, -5..=15);
    }
}

/// `x` as serde_json prints an `f32` (`null` if not finite).
pub fn push_f32(out: &mut String, x: f32) {
    if !x.is_finite() {
        out.push_str("null");
    } else if x == 0.0 {
        out.push_str(if x.is_sign_negative() { "-0.0" } else { "0.0" });
    } else {
        let decimal = shortest(
            &format!("{x:e}"),
            || format!("{:.800e}", x.abs()),
            |s| s.parse::<f32>() == Ok(x.abs()),
        );
        push_decimal(out, &decimal, -6..=12);
    }
}

/// A non-zero float as `d.ddd` × 10^`exp`, where `digits` has no trailing zeros.
struct Decimal {
    negative: bool,
    digits: String,
    exp: i32,
}

impl Decimal {
    /// From Rust's `{:e}` rendering (`-1.2345e-7`).
    fn from_sci(sci: &str) -> Decimal {
        let (negative, sci) = match sci.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, sci),
        };
        let (mantissa, exp) = sci.split_once('e').unwrap_or((sci, "0"));
        Decimal {
            negative,
            digits: mantissa.chars().filter(|&c| c != '.').collect(),
            exp: exp.parse().unwrap_or(0),
        }
    }
}

/// The shortest digits that read back to the float, as serde_json's printer (zmij) picks them.
/// `sci` is Rust's `{:e}` rendering, which has them too, but for a tie: when two candidates of
/// that length are equally near, Rust takes the upper one and zmij the one ending in an even
/// digit. So when Rust's ends in an odd digit, `exact` (the value's full expansion, in `{:e}`
/// form) shows whether it was a tie, and the lower candidate replaces it if it `round_trips`.
fn shortest(
    sci: &str,
    exact: impl FnOnce() -> String,
    round_trips: impl Fn(&str) -> bool,
) -> Decimal {
    let mut decimal = Decimal::from_sci(sci);
    let odd = decimal
        .digits
        .bytes()
        .last()
        .is_some_and(|d| (d - b'0') % 2 == 1);
    if !odd {
        return decimal;
    }
    let exact = Decimal::from_sci(&exact());
    let exact_digits = exact.digits.trim_end_matches('0');
    let len = decimal.digits.len();
    if exact.exp != decimal.exp || exact_digits.len() != len + 1 || !exact_digits.ends_with('5') {
        return decimal;
    }
    let lower = &exact_digits[..len];
    if lower == decimal.digits {
        return decimal;
    }
    let (first, rest) = lower.split_at(1);
    if round_trips(&format!("{first}.{rest}0e{}", decimal.exp)) {
        decimal.digits = lower.trim_end_matches('0').to_string();
    }
    decimal
}

/// Lays out `decimal` the way serde_json's float printer does: fixed notation when the decimal
/// exponent is in `fixed`, else `d.ddde±x`.
fn push_decimal(out: &mut String, decimal: &Decimal, fixed: RangeInclusive<i32>) {
    let Decimal {
        negative,
        digits,
        exp,
    } = decimal;
    let (negative, exp) = (*negative, *exp);
    let len = digits.len() as i32;
    if negative {
        out.push('-');
    }
    if fixed.contains(&exp) {
        if len - 1 <= exp {
            // 1234e7 -> 12340000000.0
            out.push_str(digits);
            out.extend(std::iter::repeat_n('0', (exp - (len - 1)) as usize));
            out.push_str(".0");
        } else if exp >= 0 {
            // 1234e-2 -> 12.34
            let (int, frac) = digits.split_at(exp as usize + 1);
            out.push_str(int);
            out.push('.');
            out.push_str(frac);
        } else {
            // 1234e-6 -> 0.001234
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-exp - 1) as usize));
            out.push_str(digits);
        }
    } else {
        // 1234e30 -> 1.234e+33
        let (first, rest) = digits.split_at(1);
        out.push_str(first);
        if !rest.is_empty() {
            out.push('.');
            out.push_str(rest);
        }
        out.push('e');
        out.push(if exp < 0 { '-' } else { '+' });
        out.push_str(&exp.unsigned_abs().to_string());
    }
}

// ---------------------------------------------------------------------------------------------
// Reading

/// A syntax error, with serde_json's wording and position.
#[derive(Debug, PartialEq, Eq)]
pub struct Error {
    reason: &'static str,
    line: usize,
    column: usize,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at line {} column {}",
            self.reason, self.line, self.column
        )
    }
}

const EOF_LIST: &str = "EOF while parsing a list";
const EOF_OBJECT: &str = "EOF while parsing an object";
const EOF_STRING: &str = "EOF while parsing a string";
const EOF_VALUE: &str = "EOF while parsing a value";
const EXPECTED_COLON: &str = "expected `:`";
const EXPECTED_LIST_COMMA_OR_END: &str = "expected `,` or `]`";
const EXPECTED_OBJECT_COMMA_OR_END: &str = "expected `,` or `}`";
const EXPECTED_IDENT: &str = "expected ident";
const EXPECTED_VALUE: &str = "expected value";
const INVALID_ESCAPE: &str = "invalid escape";
const INVALID_NUMBER: &str = "invalid number";
const NUMBER_OUT_OF_RANGE: &str = "number out of range";
const INVALID_UNICODE: &str = "invalid unicode code point";
const CONTROL_CHARACTER: &str = "control character (\\u0000-\\u001F) found while parsing a string";
const KEY_MUST_BE_A_STRING: &str = "key must be a string";
const LONE_SURROGATE: &str = "lone leading surrogate in hex escape";
const TRAILING_COMMA: &str = "trailing comma";
const TRAILING_CHARACTERS: &str = "trailing characters";
const UNEXPECTED_END_OF_HEX_ESCAPE: &str = "unexpected end of hex escape";
const RECURSION_LIMIT: &str = "recursion limit exceeded";

/// `input` as one JSON value, surrounded by nothing but whitespace: `serde_json::from_slice`.
pub fn from_slice(input: &[u8]) -> Result<Value, Error> {
    let mut parser = Parser {
        input,
        index: 0,
        remaining_depth: 128,
    };
    let value = parser.value()?;
    match parser.whitespace() {
        Some(_) => Err(parser.peek_error(TRAILING_CHARACTERS)),
        None => Ok(value),
    }
}

struct Parser<'a> {
    input: &'a [u8],
    index: usize,
    remaining_depth: u8,
}

/// Whether `a * 10 + b` would exceed `max`.
fn overflows<T>(a: T, b: T, max: T) -> bool
where
    T: Copy + PartialOrd + std::ops::Div<Output = T> + std::ops::Rem<Output = T> + From<u8>,
{
    let ten = T::from(10);
    a >= max / ten && (a > max / ten || b > max % ten)
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.input.get(self.index).copied()
    }

    fn peek_or_null(&self) -> u8 {
        self.peek().unwrap_or(0)
    }

    fn eat(&mut self) {
        self.index += 1;
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek();
        if c.is_some() {
            self.index += 1;
        }
        c
    }

    fn error_at(&self, index: usize, reason: &'static str) -> Error {
        let before = &self.input[..index];
        let start_of_line = before
            .iter()
            .rposition(|&c| c == b'\n')
            .map_or(0, |i| i + 1);
        Error {
            reason,
            line: 1 + before[..start_of_line]
                .iter()
                .filter(|&&c| c == b'\n')
                .count(),
            column: index - start_of_line,
        }
    }

    /// An error at the last byte consumed.
    fn error(&self, reason: &'static str) -> Error {
        self.error_at(self.index, reason)
    }

    /// An error at the next byte.
    fn peek_error(&self, reason: &'static str) -> Error {
        self.error_at((self.index + 1).min(self.input.len()), reason)
    }

    /// Skips whitespace and returns the next byte, unconsumed.
    fn whitespace(&mut self) -> Option<u8> {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
            self.eat();
        }
        self.peek()
    }

    fn value(&mut self) -> Result<Value, Error> {
        let Some(peek) = self.whitespace() else {
            return Err(self.peek_error(EOF_VALUE));
        };
        match peek {
            b'n' => {
                self.eat();
                self.ident(b"ull")?;
                Ok(Value::Null)
            }
            b't' => {
                self.eat();
                self.ident(b"rue")?;
                Ok(Value::Bool(true))
            }
            b'f' => {
                self.eat();
                self.ident(b"alse")?;
                Ok(Value::Bool(false))
            }
            b'-' => {
                self.eat();
                self.number(false).map(Value::Number)
            }
            b'0'..=b'9' => self.number(true).map(Value::Number),
            b'"' => {
                self.eat();
                self.string().map(Value::String)
            }
            b'[' | b'{' => {
                self.remaining_depth -= 1;
                if self.remaining_depth == 0 {
                    return Err(self.peek_error(RECURSION_LIMIT));
                }
                self.eat();
                let value = if peek == b'[' {
                    self.array()?
                } else {
                    self.object()?
                };
                self.remaining_depth += 1;
                // array() and object() stop at the closing bracket.
                self.eat();
                Ok(value)
            }
            _ => Err(self.peek_error(EXPECTED_VALUE)),
        }
    }

    fn ident(&mut self, rest: &[u8]) -> Result<(), Error> {
        for &expected in rest {
            match self.next() {
                None => return Err(self.error(EOF_VALUE)),
                Some(c) if c != expected => return Err(self.error(EXPECTED_IDENT)),
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// The items of an array whose `[` is consumed, up to its `]` (not consumed).
    fn array(&mut self) -> Result<Value, Error> {
        let mut items = Vec::new();
        let mut first = true;
        loop {
            let Some(peek) = self.whitespace() else {
                return Err(self.peek_error(EOF_LIST));
            };
            if peek == b']' {
                return Ok(Value::Array(items));
            } else if first {
                first = false;
            } else if peek == b',' {
                self.eat();
                match self.whitespace() {
                    Some(b']') => return Err(self.peek_error(TRAILING_COMMA)),
                    Some(_) => {}
                    None => return Err(self.peek_error(EOF_VALUE)),
                }
            } else {
                return Err(self.peek_error(EXPECTED_LIST_COMMA_OR_END));
            }
            items.push(self.value()?);
        }
    }

    /// The members of an object whose `{` is consumed, up to its `}` (not consumed).
    fn object(&mut self) -> Result<Value, Error> {
        let mut map = BTreeMap::new();
        let mut first = true;
        loop {
            let Some(peek) = self.whitespace() else {
                return Err(self.peek_error(EOF_OBJECT));
            };
            if peek == b'}' {
                return Ok(Value::Object(map));
            } else if first {
                first = false;
                if peek != b'"' {
                    return Err(self.peek_error(KEY_MUST_BE_A_STRING));
                }
            } else if peek == b',' {
                self.eat();
                match self.whitespace() {
                    Some(b'"') => {}
                    Some(b'}') => return Err(self.peek_error(TRAILING_COMMA)),
                    Some(_) => return Err(self.peek_error(KEY_MUST_BE_A_STRING)),
                    None => return Err(self.peek_error(EOF_VALUE)),
                }
            } else {
                return Err(self.peek_error(EXPECTED_OBJECT_COMMA_OR_END));
            }
            self.eat();
            let key = self.string()?;
            match self.whitespace() {
                Some(b':') => self.eat(),
                Some(_) => return Err(self.peek_error(EXPECTED_COLON)),
                None => return Err(self.peek_error(EOF_OBJECT)),
            }
            let value = self.value()?;
            map.insert(key, value);
        }
    }

    /// The rest of a string whose opening `"` is consumed, through its closing `"`.
    fn string(&mut self) -> Result<String, Error> {
        let mut bytes = Vec::new();
        loop {
            match self.next() {
                None => return Err(self.error(EOF_STRING)),
                Some(b'"') => break,
                Some(b'\\') => self.escape(&mut bytes)?,
                Some(0x00..=0x1f) => return Err(self.error(CONTROL_CHARACTER)),
                Some(c) => bytes.push(c),
            }
        }
        String::from_utf8(bytes).map_err(|e| {
            // Pointing at the first invalid byte (approximately, after escapes).
            let mut error = self.error(INVALID_UNICODE);
            let after_invalid = e.as_bytes().len() - e.utf8_error().valid_up_to();
            error.column = error.column.saturating_sub(after_invalid);
            error
        })
    }

    /// One escape whose `\` is consumed.
    fn escape(&mut self, out: &mut Vec<u8>) -> Result<(), Error> {
        let unescaped = match self.next() {
            None => return Err(self.error(EOF_STRING)),
            Some(b'"') => b'"',
            Some(b'\\') => b'\\',
            Some(b'/') => b'/',
            Some(b'b') => 0x08,
            Some(b'f') => 0x0c,
            Some(b'n') => b'\n',
            Some(b'r') => b'\r',
            Some(b't') => b'\t',
            Some(b'u') => return self.unicode_escape(out),
            Some(_) => return Err(self.error(INVALID_ESCAPE)),
        };
        out.push(unescaped);
        Ok(())
    }

    /// A `\u` escape whose `\u` is consumed; a leading surrogate must be followed by a `\u`
    /// trailing one.
    fn unicode_escape(&mut self, out: &mut Vec<u8>) -> Result<(), Error> {
        let n = self.hex4()?;
        if (0xDC00..=0xDFFF).contains(&n) {
            return Err(self.error(LONE_SURROGATE));
        }
        let code = if (0xD800..=0xDBFF).contains(&n) {
            for expected in [b'\\', b'u'] {
                match self.next() {
                    None => return Err(self.error(EOF_STRING)),
                    Some(c) if c != expected => {
                        return Err(self.error(UNEXPECTED_END_OF_HEX_ESCAPE));
                    }
                    Some(_) => {}
                }
            }
            let n2 = self.hex4()?;
            if !(0xDC00..=0xDFFF).contains(&n2) {
                return Err(self.error(LONE_SURROGATE));
            }
            (((u32::from(n) - 0xD800) << 10) | (u32::from(n2) - 0xDC00)) + 0x1_0000
        } else {
            u32::from(n)
        };
        let c = char::from_u32(code).ok_or_else(|| self.error(INVALID_UNICODE))?;
        out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
        Ok(())
    }

    fn hex4(&mut self) -> Result<u16, Error> {
        let Some(hex) = self.input.get(self.index..self.index + 4) else {
            self.index = self.input.len();
            return Err(self.error(EOF_STRING));
        };
        self.index += 4;
        hex.iter().try_fold(0u16, |n, &c| {
            let digit = (c as char)
                .to_digit(16)
                .ok_or_else(|| self.error(INVALID_ESCAPE))?;
            Ok(n * 16 + digit as u16)
        })
    }

    /// A number whose sign, if any, is consumed.
    fn number(&mut self, positive: bool) -> Result<Number, Error> {
        match self.next() {
            None => Err(self.error(EOF_VALUE)),
            Some(b'0') => {
                // There can be only one leading '0'.
                if self.peek_or_null().is_ascii_digit() {
                    Err(self.peek_error(INVALID_NUMBER))
                } else {
                    self.number_tail(positive, 0)
                }
            }
            Some(c @ b'1'..=b'9') => {
                let mut significand = u64::from(c - b'0');
                loop {
                    let c = self.peek_or_null();
                    if !c.is_ascii_digit() {
                        return self.number_tail(positive, significand);
                    }
                    let digit = u64::from(c - b'0');
                    if overflows(significand, digit, u64::MAX) {
                        // Too large for a u64: an f64 from the first digits.
                        return self.long_integer(positive, significand).map(Number::Float);
                    }
                    self.eat();
                    significand = significand * 10 + digit;
                }
            }
            Some(_) => Err(self.error(INVALID_NUMBER)),
        }
    }

    /// What follows an integer part that fits a u64.
    fn number_tail(&mut self, positive: bool, significand: u64) -> Result<Number, Error> {
        Ok(match self.peek_or_null() {
            b'.' => Number::Float(self.decimal(positive, significand, 0)?),
            b'e' | b'E' => Number::Float(self.exponent(positive, significand, 0)?),
            _ if positive => Number::PosInt(significand),
            _ => {
                let negated = (significand as i64).wrapping_neg();
                // An f64 if it does not fit an i64, or for `-0`.
                if negated >= 0 {
                    Number::Float(-(significand as f64))
                } else {
                    Number::NegInt(negated)
                }
            }
        })
    }

    /// The digits of an integer past u64's range count only as powers of ten.
    fn long_integer(&mut self, positive: bool, significand: u64) -> Result<f64, Error> {
        let mut exponent = 0i32;
        loop {
            match self.peek_or_null() {
                b'0'..=b'9' => {
                    self.eat();
                    exponent += 1;
                }
                b'.' => return self.decimal(positive, significand, exponent),
                b'e' | b'E' => return self.exponent(positive, significand, exponent),
                _ => return self.f64_from_parts(positive, significand, exponent),
            }
        }
    }

    /// A fraction whose `.` is next.
    fn decimal(
        &mut self,
        positive: bool,
        mut significand: u64,
        exponent_before: i32,
    ) -> Result<f64, Error> {
        self.eat();
        let mut exponent_after = 0i32;
        while let c @ b'0'..=b'9' = self.peek_or_null() {
            let digit = u64::from(c - b'0');
            if overflows(significand, digit, u64::MAX) {
                // Further fraction digits are ignored.
                while self.peek_or_null().is_ascii_digit() {
                    self.eat();
                }
                let exponent = exponent_before + exponent_after;
                return match self.peek_or_null() {
                    b'e' | b'E' => self.exponent(positive, significand, exponent),
                    _ => self.f64_from_parts(positive, significand, exponent),
                };
            }
            self.eat();
            significand = significand * 10 + digit;
            exponent_after -= 1;
        }
        // At least one digit after the decimal point.
        if exponent_after == 0 {
            return Err(match self.peek() {
                Some(_) => self.peek_error(INVALID_NUMBER),
                None => self.peek_error(EOF_VALUE),
            });
        }
        let exponent = exponent_before + exponent_after;
        match self.peek_or_null() {
            b'e' | b'E' => self.exponent(positive, significand, exponent),
            _ => self.f64_from_parts(positive, significand, exponent),
        }
    }

    /// An exponent whose `e` or `E` is next.
    fn exponent(&mut self, positive: bool, significand: u64, starting: i32) -> Result<f64, Error> {
        self.eat();
        let positive_exp = match self.peek_or_null() {
            b'+' => {
                self.eat();
                true
            }
            b'-' => {
                self.eat();
                false
            }
            _ => true,
        };
        let mut exp = match self.next() {
            None => return Err(self.error(EOF_VALUE)),
            Some(c @ b'0'..=b'9') => i32::from(c - b'0'),
            Some(_) => return Err(self.error(INVALID_NUMBER)),
        };
        while let c @ b'0'..=b'9' = self.peek_or_null() {
            self.eat();
            let digit = i32::from(c - b'0');
            if overflows(exp, digit, i32::MAX) {
                // An exponent past i32: zero, or out of range.
                if significand != 0 && positive_exp {
                    return Err(self.error(NUMBER_OUT_OF_RANGE));
                }
                while self.peek_or_null().is_ascii_digit() {
                    self.eat();
                }
                return Ok(if positive { 0.0 } else { -0.0 });
            }
            exp = exp * 10 + digit;
        }
        let exponent = if positive_exp {
            starting.saturating_add(exp)
        } else {
            starting.saturating_sub(exp)
        };
        self.f64_from_parts(positive, significand, exponent)
    }

    /// `significand` × 10^`exponent` the way serde_json computes it without `float_roundtrip`:
    /// one multiplication or division by a power of ten (dividing by 1e308 first while the
    /// power is past 1e308).
    fn f64_from_parts(
        &self,
        positive: bool,
        significand: u64,
        mut exponent: i32,
    ) -> Result<f64, Error> {
        let mut f = significand as f64;
        loop {
            match pow10(exponent.unsigned_abs()) {
                Some(pow) => {
                    if exponent >= 0 {
                        f *= pow;
                        if f.is_infinite() {
                            return Err(self.error(NUMBER_OUT_OF_RANGE));
                        }
                    } else {
                        f /= pow;
                    }
                    break;
                }
                None => {
                    if f == 0.0 {
                        break;
                    }
                    if exponent >= 0 {
                        return Err(self.error(NUMBER_OUT_OF_RANGE));
                    }
                    f /= 1e308;
                    exponent += 308;
                }
            }
        }
        Ok(if positive { f } else { -f })
    }
}

/// 10^`k` as the nearest f64 (what the literal `1e{k}` is), for `k` in 0..=308.
fn pow10(k: u32) -> Option<f64> {
    if k > 308 {
        return None;
    }
    format!("1e{k}").parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(input: &str) -> String {
        match from_slice(input.as_bytes()) {
            Ok(value) => value.to_string(),
            Err(e) => format!("error: {e}"),
        }
    }

    #[test]
    fn values() {
        assert_eq!(
            round_trip(r#" {"b":[1,-2,3.5,-0,1e2,true,null],"a":"x\u00e9\n","b":{}} "#),
            r#"{"a":"xé\n","b":{}}"#
        );
        assert_eq!(
            round_trip("[-0, 0.0, 1e-7, 1.5e20, 123456789012345678901]"),
            "[-0.0,0.0,1e-7,1.5e+20,1.2345678901234567e+20]"
        );
        assert_eq!(round_trip("18446744073709551615"), "18446744073709551615");
        assert_eq!(round_trip("-9223372036854775808"), "-9223372036854775808");
        assert_eq!(round_trip("-9223372036854775809"), "-9.223372036854776e+18");
        assert_eq!(round_trip(r#""\ud83d\ude00\u001f""#), "\"😀\\u001f\"");
        assert_eq!(
            round_trip("1e400"),
            "error: number out of range at line 1 column 5"
        );
        assert_eq!(
            round_trip("[1,]"),
            "error: trailing comma at line 1 column 4"
        );
        assert_eq!(
            round_trip(""),
            "error: EOF while parsing a value at line 1 column 0"
        );
    }

    #[test]
    // The literals are exact binary values, halfway between two shortest decimals.
    #[allow(clippy::excessive_precision)]
    fn floats() {
        let f = |x: f64| {
            let mut s = String::new();
            push_f64(&mut s, x);
            s
        };
        assert_eq!(f(1.0), "1.0");
        assert_eq!(f(-106.351134), "-106.351134");
        assert_eq!(f(1e15), "1000000000000000.0");
        assert_eq!(f(1e16), "1e+16");
        assert_eq!(f(0.00001), "0.00001");
        assert_eq!(f(0.000001), "1e-6");
        assert_eq!(f(f64::NAN), "null");
        let g = |x: f32| {
            let mut s = String::new();
            push_f32(&mut s, x);
            s
        };
        assert_eq!(g(4.2872515), "4.2872515");
        // Ties between two shortest candidates go to the even digit, as in serde_json.
        assert_eq!(g(2110883.25), "2110883.2");
        assert_eq!(g(2516573.75), "2516573.8");
        assert_eq!(f(-2103467310201789.25), "-2103467310201789.2");
    }
}
