//! JSON values as wandb writes them: `value_json` strings that may hold the
//! bare tokens `NaN`, `Infinity` and `-Infinity`, which strict JSON (and
//! `serde_json`) rejects.
//!
//! This module owns the [`Value`] type, a tolerant parser for that extended
//! JSON and a writer that produces it again. It knows nothing of records or
//! runs. Integers and floats stay distinct (`1` vs `1.0`), as wandb keeps them.

use std::collections::BTreeMap;
use std::fmt;
use std::fmt::Write as _;

/// Nesting deeper than this is rejected, so hostile input cannot exhaust the
/// stack. wandb values are nested a handful of levels at most.
pub const MAX_DEPTH: usize = 256;

/// A JSON value that may also be a non-finite float.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Value {
    /// `null` (Python `None`).
    #[default]
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// A number written without fraction or exponent that fits an `i64`.
    Int(i64),
    /// Any other number, including `NaN` and `±Infinity`.
    Float(f64),
    /// A string.
    String(String),
    /// An array.
    Array(Vec<Value>),
    /// An object (keys sorted).
    Object(BTreeMap<String, Value>),
}

/// Why a `value_json` string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid JSON at byte {offset}: {reason}")]
pub struct ParseError {
    /// Byte offset into the text where parsing stopped.
    pub offset: usize,
    /// What was wrong there.
    pub reason: &'static str,
}

impl Value {
    /// Parses extended JSON: strict JSON plus the bare tokens `NaN`,
    /// `Infinity`, `+Infinity` and `-Infinity` (and `-NaN`) as numbers.
    /// Surrounding whitespace is allowed; anything else after the value is an error.
    pub fn parse(text: &str) -> Result<Value, ParseError> {
        let mut p = Parser {
            text,
            s: text.as_bytes(),
            pos: 0,
        };
        let v = p.value(0)?;
        p.skip_ws();
        if p.pos != p.s.len() {
            return Err(p.err("trailing characters after the value"));
        }
        Ok(v)
    }

    /// The value as `f64` if it is a number (`Int` converted, may round).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// The value as `i64` if it is an `Int`.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The string if the value is a `String`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The map if the value is an `Object`.
    pub fn as_object(&self) -> Option<&BTreeMap<String, Value>> {
        match self {
            Value::Object(m) => Some(m),
            _ => None,
        }
    }

    /// The elements if the value is an `Array`.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// Follows a key path through nested objects.
    pub fn pointer<S: AsRef<str>>(&self, path: &[S]) -> Option<&Value> {
        let mut cur = self;
        for key in path {
            cur = cur.as_object()?.get(key.as_ref())?;
        }
        Some(cur)
    }

    /// Writes the value as extended JSON (what wandb writes: non-finite
    /// floats as bare `NaN` / `Infinity` / `-Infinity`), compact.
    pub fn to_extended_json(&self) -> String {
        let mut out = String::new();
        self.write_extended_json(&mut out);
        out
    }

    /// Appends [`Value::to_extended_json`]'s text to `out`.
    pub fn write_extended_json(&self, out: &mut String) {
        match self {
            Value::Null => out.push_str("null"),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Value::Float(x) => write_float(out, *x),
            Value::String(s) => write_string(out, s),
            Value::Array(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    v.write_extended_json(out);
                }
                out.push(']');
            }
            Value::Object(map) => write_object(out, map.iter()),
        }
    }
}

/// Writes `{"k":v,…}` from key/value pairs (in the order given).
pub fn write_object<'a, K: AsRef<str> + 'a>(
    out: &mut String,
    entries: impl Iterator<Item = (K, &'a Value)>,
) {
    out.push('{');
    for (i, (k, v)) in entries.enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_string(out, k.as_ref());
        out.push(':');
        v.write_extended_json(out);
    }
    out.push('}');
}

impl fmt::Display for Value {
    /// Extended JSON, compact (see [`Value::to_extended_json`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_extended_json())
    }
}

fn write_float(out: &mut String, x: f64) {
    if x.is_nan() {
        out.push_str("NaN");
    } else if x.is_infinite() {
        out.push_str(if x > 0.0 { "Infinity" } else { "-Infinity" });
    } else if x.fract() == 0.0 && x.abs() < 1e16 {
        // keep it a float when read back: `2.0`, not `2`
        let _ = write!(out, "{x:.1}");
    } else {
        let _ = write!(out, "{x:?}");
    }
}

/// A JSON string literal; runs of characters that need no escape are
/// copied in one piece.
fn write_string(out: &mut String, s: &str) {
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let esc = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if esc.is_empty() {
            let _ = write!(out, "\\u{:04x}", b);
        } else {
            out.push_str(esc);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

impl serde::Serialize for Value {
    /// Serializes as ordinary serde data. Non-finite floats become whatever
    /// the serializer makes of them (`serde_json` writes `null`); use
    /// [`Value::to_extended_json`] to keep them.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self {
            Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(i) => s.serialize_i64(*i),
            Value::Float(x) => s.serialize_f64(*x),
            Value::String(v) => s.serialize_str(v),
            Value::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for v in items {
                    seq.serialize_element(v)?;
                }
                seq.end()
            }
            Value::Object(map) => {
                let mut m = s.serialize_map(Some(map.len()))?;
                for (k, v) in map {
                    m.serialize_entry(k, v)?;
                }
                m.end()
            }
        }
    }
}

impl<'de> serde::Deserialize<'de> for Value {
    /// Reads ordinary serde data (integers stay [`Value::Int`]). Non-finite
    /// floats cannot arrive this way; keep them with
    /// [`Value::to_extended_json`] and [`Value::parse`].
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Value;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_unit<E>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_none<E>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
                serde::Deserialize::deserialize(d)
            }
            fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
                Ok(Value::Bool(b))
            }
            fn visit_i64<E>(self, i: i64) -> Result<Value, E> {
                Ok(Value::Int(i))
            }
            fn visit_u64<E>(self, u: u64) -> Result<Value, E> {
                Ok(i64::try_from(u).map_or(Value::Float(u as f64), Value::Int))
            }
            fn visit_f64<E>(self, x: f64) -> Result<Value, E> {
                Ok(Value::Float(x))
            }
            fn visit_str<E>(self, s: &str) -> Result<Value, E> {
                Ok(Value::String(s.to_owned()))
            }
            fn visit_string<E>(self, s: String) -> Result<Value, E> {
                Ok(Value::String(s))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Value, A::Error> {
                let mut v = Vec::new();
                while let Some(x) = a.next_element()? {
                    v.push(x);
                }
                Ok(Value::Array(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Value, A::Error> {
                let mut m = BTreeMap::new();
                while let Some((k, v)) = a.next_entry()? {
                    m.insert(k, v);
                }
                Ok(Value::Object(m))
            }
        }
        d.deserialize_any(V)
    }
}

struct Parser<'a> {
    /// The text, and `s` its bytes.
    text: &'a str,
    s: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn err(&self, reason: &'static str) -> ParseError {
        ParseError {
            offset: self.pos,
            reason,
        }
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.s.get(self.pos) {
            self.pos += 1;
        }
    }

    fn eat_literal(&mut self, lit: &[u8]) -> bool {
        if self.s[self.pos..].starts_with(lit) {
            self.pos += lit.len();
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, ParseError> {
        if depth > MAX_DEPTH {
            return Err(self.err("nested too deeply"));
        }
        self.skip_ws();
        let Some(&b) = self.s.get(self.pos) else {
            return Err(self.err("unexpected end of input"));
        };
        match b {
            b'n' if self.eat_literal(b"null") => Ok(Value::Null),
            b't' if self.eat_literal(b"true") => Ok(Value::Bool(true)),
            b'f' if self.eat_literal(b"false") => Ok(Value::Bool(false)),
            b'N' if self.eat_literal(b"NaN") => Ok(Value::Float(f64::NAN)),
            b'I' if self.eat_literal(b"Infinity") => Ok(Value::Float(f64::INFINITY)),
            b'+' if self.eat_literal(b"+Infinity") => Ok(Value::Float(f64::INFINITY)),
            b'-' if self.eat_literal(b"-Infinity") => Ok(Value::Float(f64::NEG_INFINITY)),
            b'-' if self.eat_literal(b"-NaN") => Ok(Value::Float(f64::NAN)),
            b'"' => self.string().map(Value::String),
            b'[' => self.array(depth),
            b'{' => self.object(depth),
            b'-' | b'0'..=b'9' => self.number(),
            _ => Err(self.err("expected a JSON value")),
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value, ParseError> {
        self.pos += 1; // '['
        let mut items = Vec::new();
        self.skip_ws();
        if self.s.get(self.pos) == Some(&b']') {
            self.pos += 1;
            return Ok(Value::Array(items));
        }
        loop {
            items.push(self.value(depth + 1)?);
            self.skip_ws();
            match self.s.get(self.pos) {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Value::Array(items));
                }
                _ => return Err(self.err("expected `,` or `]` in array")),
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, ParseError> {
        self.pos += 1; // '{'
        let mut map = BTreeMap::new();
        self.skip_ws();
        if self.s.get(self.pos) == Some(&b'}') {
            self.pos += 1;
            return Ok(Value::Object(map));
        }
        loop {
            self.skip_ws();
            if self.s.get(self.pos) != Some(&b'"') {
                return Err(self.err("expected a string key in object"));
            }
            let key = self.string()?;
            self.skip_ws();
            if self.s.get(self.pos) != Some(&b':') {
                return Err(self.err("expected `:` after object key"));
            }
            self.pos += 1;
            let v = self.value(depth + 1)?;
            map.insert(key, v);
            self.skip_ws();
            match self.s.get(self.pos) {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Value::Object(map));
                }
                _ => return Err(self.err("expected `,` or `}` in object")),
            }
        }
    }

    fn number(&mut self) -> Result<Value, ParseError> {
        let start = self.pos;
        let mut is_float = false;
        if self.s.get(self.pos) == Some(&b'-') {
            self.pos += 1;
        }
        let digits = |p: &mut Self| {
            let from = p.pos;
            while let Some(b'0'..=b'9') = p.s.get(p.pos) {
                p.pos += 1;
            }
            p.pos - from
        };
        if digits(self) == 0 {
            return Err(self.err("expected digits in number"));
        }
        if self.s.get(self.pos) == Some(&b'.') {
            is_float = true;
            self.pos += 1;
            if digits(self) == 0 {
                return Err(self.err("expected digits after `.`"));
            }
        }
        if let Some(b'e' | b'E') = self.s.get(self.pos) {
            is_float = true;
            self.pos += 1;
            if let Some(b'+' | b'-') = self.s.get(self.pos) {
                self.pos += 1;
            }
            if digits(self) == 0 {
                return Err(self.err("expected digits in exponent"));
            }
        }
        // The slice holds only ASCII digits, sign, `.` and `e`.
        let text = self
            .text
            .get(start..self.pos)
            .ok_or_else(|| self.err("number is not ASCII"))?;
        if !is_float {
            if let Ok(i) = text.parse::<i64>() {
                return Ok(Value::Int(i));
            }
        }
        text.parse::<f64>()
            .map(Value::Float)
            .map_err(|_| self.err("unparsable number"))
    }

    fn hex4(&mut self) -> Result<u32, ParseError> {
        let Some(h) = self.s.get(self.pos..self.pos + 4) else {
            return Err(self.err("truncated \\u escape"));
        };
        let mut n = 0u32;
        for &c in h {
            let d = (c as char)
                .to_digit(16)
                .ok_or_else(|| self.err("bad hex digit in \\u escape"))?;
            n = n * 16 + d;
        }
        self.pos += 4;
        Ok(n)
    }

    fn string(&mut self) -> Result<String, ParseError> {
        self.pos += 1; // opening quote
                       // the common case: no escapes, copied in one piece
        let start = self.pos;
        let plain = self.s[start..]
            .iter()
            .position(|&b| b == b'"' || b == b'\\');
        if let Some(n) = plain {
            if self.s[start + n] == b'"' {
                if let Some(t) = self.text.get(start..start + n) {
                    self.pos = start + n + 1;
                    return Ok(t.to_owned());
                }
            }
        }
        let mut out: Vec<u8> = Vec::new();
        loop {
            let Some(&b) = self.s.get(self.pos) else {
                return Err(self.err("unterminated string"));
            };
            self.pos += 1;
            match b {
                b'"' => break,
                b'\\' => {
                    let Some(&e) = self.s.get(self.pos) else {
                        return Err(self.err("unterminated escape"));
                    };
                    self.pos += 1;
                    let c = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hi = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&hi)
                                && self.s.get(self.pos..self.pos + 2) == Some(b"\\u")
                            {
                                let save = self.pos;
                                self.pos += 2;
                                let lo = self.hex4()?;
                                if (0xDC00..0xE000).contains(&lo) {
                                    0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                                } else {
                                    self.pos = save;
                                    hi
                                }
                            } else {
                                hi
                            };
                            // lone surrogates become U+FFFD, as Python's
                            // decoder would refuse them anyway
                            char::from_u32(code).unwrap_or('\u{FFFD}')
                        }
                        _ => return Err(self.err("unknown escape")),
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                _ => out.push(b),
            }
        }
        // The input is a &str and escapes were encoded as UTF-8, so this only
        // fails if a string boundary split a character, which cannot happen
        // because `"` and `\` are ASCII.
        String::from_utf8(out).map_err(|_| self.err("string is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_extended_tokens() {
        assert!(Value::parse("NaN").unwrap().as_f64().unwrap().is_nan());
        assert_eq!(
            Value::parse("Infinity").unwrap(),
            Value::Float(f64::INFINITY)
        );
        assert_eq!(
            Value::parse(" -Infinity ").unwrap(),
            Value::Float(f64::NEG_INFINITY)
        );
        let v = Value::parse(r#"{"a":[1,2.5,NaN,"x\u00e9\ud83d\ude00"],"b":{"c":null}}"#).unwrap();
        assert_eq!(
            v.pointer(&["a"]).unwrap().as_array().unwrap()[0],
            Value::Int(1)
        );
        assert_eq!(
            v.pointer(&["a"]).unwrap().as_array().unwrap()[1],
            Value::Float(2.5)
        );
        assert_eq!(
            v.pointer(&["a"]).unwrap().as_array().unwrap()[3],
            Value::String("xé😀".into())
        );
        assert_eq!(v.pointer(&["b", "c"]), Some(&Value::Null));
    }

    #[test]
    fn keeps_ints_and_floats_apart() {
        assert_eq!(Value::parse("1").unwrap(), Value::Int(1));
        assert_eq!(Value::parse("1.0").unwrap(), Value::Float(1.0));
        assert_eq!(Value::parse("1e3").unwrap(), Value::Float(1000.0));
        assert_eq!(
            Value::parse("18446744073709551616").unwrap(),
            Value::Float(18446744073709551616.0)
        );
        assert_eq!(Value::Float(2.0).to_string(), "2.0");
        assert_eq!(Value::Float(0.1).to_string(), "0.1");
        assert_eq!(Value::Float(1e300).to_string(), "1e300");
    }

    #[test]
    fn round_trips_through_text() {
        let text = r#"{"a":[1,2.5,NaN,Infinity,-Infinity,"q\"\n"],"b":{"c":null,"d":true}}"#;
        let v = Value::parse(text).unwrap();
        let again = Value::parse(&v.to_extended_json()).unwrap();
        assert_eq!(v.to_extended_json(), again.to_extended_json());
        assert_eq!(v.to_extended_json(), text);
    }

    #[test]
    fn rejects_malformed_without_panicking() {
        for bad in [
            "",
            "[",
            "{",
            "{\"a\"",
            "{\"a\":",
            "[1,]",
            "nul",
            "\"abc",
            "\"\\u12",
            "\"\\x\"",
            "-",
            "1.",
            "1e",
            "01x",
            "NaNa",
            "{1:2}",
            "[1 2]",
            "\"\\ud800\\u",
        ] {
            assert!(Value::parse(bad).is_err(), "{bad:?} should fail");
        }
        let deep = "[".repeat(100_000);
        assert_eq!(Value::parse(&deep).unwrap_err().reason, "nested too deeply");
    }

    #[test]
    fn serde_writes_non_finite_as_null() {
        let v = Value::parse("[NaN,1,2.5]").unwrap();
        assert_eq!(serde_json::to_string(&v).unwrap(), "[null,1,2.5]");
    }
}
