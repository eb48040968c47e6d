//! JSON values as writers send them, for both key families. A value that is accepted
//! comes back in canonical form: validating that form again gives the same text, it
//! stays within the family's limit, and every number in it means exactly what the
//! writer wrote (compaction keeps the spelling: only whitespace between tokens goes).
#![no_main]

use configwatch::keys::{self, PARAM_CONFIG, TENANT_CONFIG, ValueShape};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(value) = std::str::from_utf8(rest) else {
        return;
    };
    let (family, key) = if mode & 1 == 0 {
        (&TENANT_CONFIG, "tenant_config_fuzz")
    } else {
        (&PARAM_CONFIG, "param_config_fuzz/value")
    };
    let secret = mode & 2 != 0;
    let Ok(out) = keys::validate_value(family, key, value, secret) else {
        return;
    };
    assert!(out.len() <= family.max_value_bytes);
    assert_eq!(
        keys::validate_value(family, key, &out, secret).as_deref(),
        Ok(out.as_str()),
        "canonical form is not stable"
    );
    let parsed: serde_json::Value = match serde_json::from_str(&out) {
        Ok(v) => v,
        Err(e) => panic!("accepted value is not JSON: {e}: {out}"),
    };
    if family.shape == ValueShape::StringOrStringList {
        assert!(
            parsed.is_string()
                || parsed.as_array().is_some_and(|a| a
                    .iter()
                    .all(|v| v.as_str().is_some_and(|s| !s.contains(','))))
        );
    }
    // Numbers: the same values, in the same order (objects with a repeated name keep
    // one of its values, so they are compared only when no name repeats).
    if !has_repeated_name(value) {
        let before = numbers(value);
        let after = numbers(&out);
        assert_eq!(before.len(), after.len(), "numbers lost: {value} -> {out}");
        for (b, a) in before.iter().zip(&after) {
            assert_eq!(
                exact(b),
                exact(a),
                "number {b} came back as {a}: {value} -> {out}"
            );
        }
    }
});

/// The number tokens of JSON text, in order.
fn numbers(json: &str) -> Vec<&str> {
    let bytes = json.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => i = skip_string(bytes, i),
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < bytes.len()
                    && matches!(bytes[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                out.push(&json[start..i]);
            }
            _ => i += 1,
        }
    }
    out
}

/// The index just after the string starting at `i`.
fn skip_string(bytes: &[u8], mut i: usize) -> usize {
    i += 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    i
}

/// Whether any object in the (valid) JSON text has a name twice: the names the text
/// spells outnumber those the parsed value kept.
fn has_repeated_name(json: &str) -> bool {
    match serde_json::from_str::<serde_json::Value>(json) {
        Ok(v) => kept_names(&v) != count_names(json.as_bytes()),
        Err(_) => true,
    }
}

fn kept_names(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Array(items) => items.iter().map(kept_names).sum(),
        serde_json::Value::Object(map) => map.len() + map.values().map(kept_names).sum::<usize>(),
        _ => 0,
    }
}

/// Strings followed by ':' are object member names.
fn count_names(bytes: &[u8]) -> usize {
    let mut n = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'"' {
            i = skip_string(bytes, i);
            let mut j = i;
            while j < bytes.len() && bytes[j].is_ascii_whitespace() {
                j += 1;
            }
            if bytes.get(j) == Some(&b':') {
                n += 1;
            }
        } else {
            i += 1;
        }
    }
    n
}

/// A JSON number's exact value: (negative, significant digits, power of ten), with
/// zero as (false, "", 0).
fn exact(text: &str) -> (bool, String, i128) {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, "0"),
    };
    let exponent = exponent.strip_prefix('+').unwrap_or(exponent);
    let mut power: i128 = 0;
    let (exp_negative, exp_digits) = match exponent.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, exponent),
    };
    for c in exp_digits.bytes() {
        power = (power * 10 + i128::from(c - b'0')).min(1 << 80);
    }
    if exp_negative {
        power = -power;
    }
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    power -= frac.len() as i128;
    let mut digits: String = format!("{int}{frac}").trim_start_matches('0').to_owned();
    while digits.ends_with('0') {
        digits.pop();
        power += 1;
    }
    if digits.is_empty() {
        return (false, String::new(), 0);
    }
    (negative, digits, power)
}
