//! JSON values kept exactly as written.
//!
//! Configuration carries ids and amounts, so a number must come back with the digits
//! it was written with: `123456789012345678901` may not turn into
//! `1.2345678901234568e+20`. serde_json's `Value` reads numbers through 64-bit
//! integers or floats, so values are never parsed into it here. Instead:
//!
//! - [`compact`] drops the whitespace between tokens of valid JSON text and changes
//!   nothing else (escapes and numbers stay as written);
//! - [`Json`] is a tree whose numbers are their text, read with serde_json's
//!   `RawValue` (no float in between), for the DynamoDB attribute mapping and for
//!   comparing two values ([`Json::same`]: map order aside, numbers by exact value).

use std::collections::BTreeMap;

use serde_json::value::RawValue;

/// Deepest nesting [`Json::parse`] reads, whatever the caller's own limit.
pub const MAX_DEPTH: usize = 128;

/// A JSON value whose numbers keep their text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Json {
    Null,
    Bool(bool),
    /// The number's text, as written.
    Number(String),
    String(String),
    Array(Vec<Json>),
    /// Members by name (a name appears once: text that repeats one is refused).
    Object(BTreeMap<String, Json>),
}

/// Why text is not a JSON value this module reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    #[error("{0}")]
    Syntax(String),
    #[error("arrays and objects nest {0} deep; the limit is {1}")]
    TooDeep(usize, usize),
}

impl Json {
    /// Reads JSON text, nesting at most `max_depth` arrays and objects (and never
    /// more than [`MAX_DEPTH`]).
    pub fn parse(text: &str, max_depth: usize) -> Result<Json, JsonError> {
        let raw: &RawValue =
            serde_json::from_str(text).map_err(|e| JsonError::Syntax(e.to_string()))?;
        from_raw(raw.get(), 0, max_depth.min(MAX_DEPTH))
    }

    /// The value as compact JSON text: members in name order, numbers as held.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut String) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Number(n) => out.push_str(n),
            Json::String(s) => write_string(s, out),
            Json::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write(out);
                }
                out.push(']');
            }
            Json::Object(members) => {
                out.push('{');
                for (i, (name, value)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_string(name, out);
                    out.push(':');
                    value.write(out);
                }
                out.push('}');
            }
        }
    }

    /// Whether two values hold the same content: member order is ignored and
    /// numbers compare by exact decimal value (`1.50` and `1.5` are the same,
    /// `123456789012345678901` and `123456789012345678902` are not).
    pub fn same(&self, other: &Json) -> bool {
        match (self, other) {
            (Json::Number(x), Json::Number(y)) => same_number(x, y),
            (Json::Array(x), Json::Array(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(x, y)| x.same(y))
            }
            (Json::Object(x), Json::Object(y)) => {
                x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| v.same(w)))
            }
            _ => self == other,
        }
    }

    /// Every number's text, depth first.
    pub fn numbers<'a>(&'a self, out: &mut Vec<&'a str>) {
        match self {
            Json::Number(n) => out.push(n),
            Json::Array(items) => items.iter().for_each(|i| i.numbers(out)),
            Json::Object(members) => members.values().for_each(|v| v.numbers(out)),
            _ => {}
        }
    }
}

fn write_string(s: &str, out: &mut String) {
    // Serializing a str cannot fail; the fallback keeps the output valid JSON.
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned()));
}

fn from_raw(text: &str, depth: usize, max_depth: usize) -> Result<Json, JsonError> {
    let syntax = |e: serde_json::Error| JsonError::Syntax(e.to_string());
    let nested = || {
        if depth + 1 > max_depth {
            Err(JsonError::TooDeep(depth + 1, max_depth))
        } else {
            Ok(())
        }
    };
    Ok(match text.as_bytes().first() {
        Some(b'{') => {
            nested()?;
            let Members(members) = serde_json::from_str(text).map_err(syntax)?;
            let mut out = BTreeMap::new();
            for (name, value) in members {
                let value = from_raw(value.get(), depth + 1, max_depth)?;
                if out.contains_key(&name) {
                    // A repeated name would mean one thing to one reader and another
                    // to the next (and DynamoDB keeps one): refused, not guessed.
                    let mut shown: String = name.chars().take(64).collect();
                    if shown.len() < name.len() {
                        shown.push_str("...");
                    }
                    return Err(JsonError::Syntax(format!(
                        "the member name {shown:?} appears twice in one object"
                    )));
                }
                out.insert(name, value);
            }
            Json::Object(out)
        }
        Some(b'[') => {
            nested()?;
            let items: Vec<&RawValue> = serde_json::from_str(text).map_err(syntax)?;
            Json::Array(
                items
                    .into_iter()
                    .map(|i| from_raw(i.get(), depth + 1, max_depth))
                    .collect::<Result<_, _>>()?,
            )
        }
        Some(b'"') => Json::String(serde_json::from_str(text).map_err(syntax)?),
        Some(b't') => Json::Bool(true),
        Some(b'f') => Json::Bool(false),
        Some(b'n') => Json::Null,
        // RawValue has checked the grammar: anything else is a number.
        Some(_) => Json::Number(text.to_owned()),
        None => return Err(JsonError::Syntax("empty value".into())),
    })
}

/// An object's members in the order written, repeated names included.
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for Members<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = Members<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Members<'a>, A::Error> {
                let mut out = Vec::new();
                while let Some(member) = map.next_entry::<String, &'de RawValue>()? {
                    out.push(member);
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(Visit(std::marker::PhantomData))
    }
}

/// Valid JSON text without the whitespace between its tokens; everything else
/// (escapes, numbers, member order) stays as written. `text` must be valid JSON.
pub fn compact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            out.push(c);
        }
    }
    out
}

/// Whether `text` is one JSON number (as a DynamoDB `N` must be to be served).
pub fn is_number(text: &str) -> bool {
    matches!(text.as_bytes().first(), Some(b'-' | b'0'..=b'9'))
        && serde_json::from_str::<&RawValue>(text).is_ok()
}

/// A JSON number's exact decimal value: sign, significant digits without leading or
/// trailing zeros, and the power of ten of the first of them. Zero is
/// `(false, [], 0)`. `None` when the exponent does not fit 64 bits.
pub fn decimal(text: &str) -> Option<(bool, Vec<u8>, i64)> {
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(i) => (&text[..i], &text[i + 1..]),
        None => (text, "0"),
    };
    let exponent = exponent.parse::<i64>().ok()?;
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits: Vec<u8> = int.bytes().chain(frac.bytes()).collect();
    let Some(first) = digits.iter().position(|d| *d != b'0') else {
        return Some((false, Vec::new(), 0));
    };
    let last = digits.iter().rposition(|d| *d != b'0').unwrap_or(first);
    let magnitude = exponent
        .checked_add(i64::try_from(int.len()).ok()?)?
        .checked_sub(1)?
        .checked_sub(i64::try_from(first).ok()?)?;
    Some((negative, digits[first..=last].to_vec(), magnitude))
}

/// Whether two JSON numbers (as text) are the same number: `1`, `1.0`, `1e0` and
/// `10E-1` are; `123456789012345678901` and `123456789012345678902` are not, though
/// they are the same 64-bit float.
pub fn same_number(a: &str, b: &str) -> bool {
    match (decimal(a), decimal(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_drops_only_whitespace_between_tokens() {
        assert_eq!(
            compact("{ \"a b\" : [ 1 , 2.50 ,\n\t1E2 ] , \"c\\\" d\" : \"x \\\\\" }"),
            "{\"a b\":[1,2.50,1E2],\"c\\\" d\":\"x \\\\\"}"
        );
        assert_eq!(compact(" 123456789012345678901 "), "123456789012345678901");
    }

    #[test]
    fn numbers_keep_their_digits() -> Result<(), JsonError> {
        let text =
            r#"{"id":123456789012345678901,"a":[0.1000000000000000055511151231257827,-0,1E400]}"#;
        let json = Json::parse(text, 32)?;
        assert_eq!(
            json.to_text(),
            r#"{"a":[0.1000000000000000055511151231257827,-0,1E400],"id":123456789012345678901}"#
        );
        let mut numbers = Vec::new();
        json.numbers(&mut numbers);
        assert_eq!(numbers.len(), 4);
        Ok(())
    }

    #[test]
    fn sameness_ignores_member_order_and_number_spelling_only() -> Result<(), JsonError> {
        let a = Json::parse(r#"{"x":1.0,"y":[1,2]}"#, 32)?;
        let b = Json::parse(r#"{"y":[1,2],"x":1}"#, 32)?;
        let c = Json::parse(r#"{"y":[2,1],"x":1}"#, 32)?;
        assert!(a.same(&b));
        assert!(!a.same(&c));
        let big = Json::parse("123456789012345678901", 32)?;
        let next = Json::parse("123456789012345678902", 32)?;
        assert!(!big.same(&next));
        assert!(!Json::parse("1", 32)?.same(&Json::parse("\"1\"", 32)?));
        Ok(())
    }

    #[test]
    fn numbers_compare_by_exact_value() {
        assert!(same_number("1", "1.0"));
        assert!(same_number("1e0", "10E-1"));
        assert!(same_number("-0", "0.000"));
        assert!(same_number("1.50", "1.5"));
        assert!(!same_number(
            "123456789012345678901",
            "123456789012345678902"
        ));
        assert!(!same_number("-1", "1"));
        assert!(!same_number("1e2", "1e3"));
    }

    #[test]
    fn a_repeated_member_name_is_refused() {
        // Found by the json_value fuzz target: the first of two "" members held a
        // number out of range that only the last one's value was checked against.
        let text = r#"{"":[12333133333333.133333e3456789,7],"":null}"#;
        let refused = Json::parse(text, 32);
        assert!(
            matches!(&refused, Err(JsonError::Syntax(why)) if why.contains("appears twice")),
            "{refused:?}"
        );
        assert!(Json::parse(r#"{"a":{"x":1},"b":{"x":2}}"#, 32).is_ok());
    }

    #[test]
    fn depth_is_limited_and_bad_text_refused() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(Json::parse(&deep(32), 32).is_ok());
        assert_eq!(Json::parse(&deep(33), 32), Err(JsonError::TooDeep(33, 32)));
        assert!(Json::parse(&deep(5000), 32).is_err());
        assert!(matches!(
            Json::parse("{nope", 32),
            Err(JsonError::Syntax(_))
        ));
        assert!(matches!(Json::parse("", 32), Err(JsonError::Syntax(_))));
        assert!(is_number("-1.5e3") && !is_number("+1") && !is_number("1 2") && !is_number(""));
    }
}
