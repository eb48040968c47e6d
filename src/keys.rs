//! Configuration keys, their families, and the limits each family imposes.
//!
//! A key is `<family prefix><path>`: `tenant_config_payment-gateway`,
//! `param_config_db/primary/url`. The path is one or more segments separated by `/`,
//! each made of `[A-Za-z0-9_.-]`, never `.`/`..`, never empty. That keeps every key a
//! valid DynamoDB sort key and a valid Parameter Store name below the tenant's root, so
//! no key can name a path outside its tenant.
//!
//! The limits are those AWS imposes on the backends the families map to, applied in
//! every mode so a configuration that works locally also works on AWS.

use std::fmt;

/// Longest accepted key, in bytes (prefix included).
pub const MAX_KEY_BYTES: usize = 512;
/// Most `/`-separated segments in a key's path (Parameter Store allows 15 levels,
/// of which the root, tenant and service take up to three).
pub const MAX_PATH_SEGMENTS: usize = 12;

/// What kind of value a key family stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueShape {
    /// Any JSON value (a DynamoDB attribute can hold each JSON type).
    AnyJson,
    /// A JSON string (a Parameter Store `String`/`SecureString`) or an array of
    /// strings without commas (a `StringList`).
    StringOrStringList,
}

/// A family of keys sharing a prefix, a backend and limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFamily {
    pub prefix: &'static str,
    /// Largest value, in bytes of JSON text.
    pub max_value_bytes: usize,
    pub shape: ValueShape,
    /// Whether keys of this family may hold secrets (SecureString).
    pub secrets: bool,
}

/// `tenant_config_*`: per-tenant configuration, DynamoDB on AWS. DynamoDB items are
/// at most 400 KB including the other attributes; 400,000 bytes of value leaves room.
pub const TENANT_CONFIG: KeyFamily = KeyFamily {
    prefix: "tenant_config_",
    max_value_bytes: 400_000,
    shape: ValueShape::AnyJson,
    secrets: false,
};

/// `param_config_*`: hierarchical parameters, SSM Parameter Store on AWS, whose
/// advanced tier holds values of at most 8 KB.
pub const PARAM_CONFIG: KeyFamily = KeyFamily {
    prefix: "param_config_",
    max_value_bytes: 8_192,
    shape: ValueShape::StringOrStringList,
    secrets: true,
};

/// Every family the server knows, in routing order.
pub const FAMILIES: [&KeyFamily; 2] = [&TENANT_CONFIG, &PARAM_CONFIG];

/// Why a key, prefix or value was refused. The message says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("key is empty; keys look like tenant_config_<name> or param_config_<path>")]
    Empty,
    #[error("key '{key}' has no accepted prefix; keys must start with {accepted}")]
    UnknownPrefix { key: String, accepted: String },
    #[error("key '{0}' names nothing after its prefix")]
    NoPath(String),
    #[error("key is {len} bytes; the limit is {MAX_KEY_BYTES}")]
    TooLong { len: usize },
    #[error("key '{key}' contains '..'; path segments may not climb")]
    DotDot { key: String },
    #[error("key '{key}' has an empty path segment (leading, trailing or double '/')")]
    EmptySegment { key: String },
    #[error("key '{key}' has the segment '.', which is not allowed")]
    DotSegment { key: String },
    #[error(
        "key '{key}' contains {ch:?}; path segments may contain only letters, digits, '_', '-' and '.'"
    )]
    BadChar { key: String, ch: char },
    #[error("key '{key}' has {count} path segments; the limit is {MAX_PATH_SEGMENTS}")]
    TooDeep { key: String, count: usize },
    #[error(
        "prefix '{prefix}' matches no key; prefixes must start with {accepted} (or be empty for all keys)"
    )]
    BadPrefix { prefix: String, accepted: String },
}

fn accepted_prefixes() -> String {
    FAMILIES
        .iter()
        .map(|f| format!("'{}'", f.prefix))
        .collect::<Vec<_>>()
        .join(" or ")
}

/// The family a key belongs to, if any (no validation of the path).
pub fn family_of(key: &str) -> Option<&'static KeyFamily> {
    FAMILIES.iter().copied().find(|f| key.starts_with(f.prefix))
}

/// Validates a full key and returns its family.
pub fn validate_key(key: &str) -> Result<&'static KeyFamily, KeyError> {
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(KeyError::TooLong { len: key.len() });
    }
    let family = family_of(key).ok_or_else(|| KeyError::UnknownPrefix {
        key: key.to_owned(),
        accepted: accepted_prefixes(),
    })?;
    let path = &key[family.prefix.len()..];
    if path.is_empty() {
        return Err(KeyError::NoPath(key.to_owned()));
    }
    validate_path(key, path, false)?;
    Ok(family)
}

/// Checks path characters and segments. A watch prefix may end in `/` or in the middle
/// of a segment (`partial`), a key may not.
fn validate_path(key: &str, path: &str, partial: bool) -> Result<(), KeyError> {
    if path.contains("..") {
        return Err(KeyError::DotDot {
            key: key.to_owned(),
        });
    }
    if let Some(ch) = path
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/')))
    {
        return Err(KeyError::BadChar {
            key: key.to_owned(),
            ch,
        });
    }
    let segments: Vec<&str> = path.split('/').collect();
    let last = segments.len() - 1;
    for (i, seg) in segments.iter().enumerate() {
        let may_be_open = partial && i == last;
        if seg.is_empty() && !may_be_open {
            return Err(KeyError::EmptySegment {
                key: key.to_owned(),
            });
        }
        if *seg == "." && !may_be_open {
            return Err(KeyError::DotSegment {
                key: key.to_owned(),
            });
        }
    }
    if segments.len() > MAX_PATH_SEGMENTS {
        return Err(KeyError::TooDeep {
            key: key.to_owned(),
            count: segments.len(),
        });
    }
    Ok(())
}

/// Validates a watch or get prefix. Accepted: the empty prefix (everything), any
/// beginning of a family prefix (`tenant_`, `param_config`), or a family prefix
/// followed by a partial path (`param_config_db/`).
pub fn validate_prefix(prefix: &str) -> Result<(), KeyError> {
    if prefix.len() > MAX_KEY_BYTES {
        return Err(KeyError::TooLong { len: prefix.len() });
    }
    if FAMILIES.iter().any(|f| f.prefix.starts_with(prefix)) {
        return Ok(());
    }
    match family_of(prefix) {
        Some(family) => validate_path(prefix, &prefix[family.prefix.len()..], true),
        None => Err(KeyError::BadPrefix {
            prefix: prefix.to_owned(),
            accepted: accepted_prefixes(),
        }),
    }
}

/// A normalized set of prefixes: sorted, deduplicated, with prefixes covered by a
/// shorter one removed. Empty input means "everything" and becomes `[""]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PrefixSet(Vec<String>);

impl PrefixSet {
    pub fn new<I: IntoIterator<Item = String>>(prefixes: I) -> Self {
        let mut all: Vec<String> = prefixes.into_iter().collect();
        if all.is_empty() {
            all.push(String::new());
        }
        all.sort();
        let mut kept: Vec<String> = Vec::with_capacity(all.len());
        for p in all {
            if !kept.iter().any(|k| p.starts_with(k.as_str())) {
                kept.push(p);
            }
        }
        PrefixSet(kept)
    }

    pub fn everything() -> Self {
        PrefixSet(vec![String::new()])
    }

    pub fn matches(&self, key: &str) -> bool {
        self.0.iter().any(|p| key.starts_with(p.as_str()))
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

impl fmt::Display for PrefixSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// Why a value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("value for '{key}' is {len} bytes; {family}* values are limited to {max} bytes")]
    TooLarge {
        key: String,
        family: &'static str,
        len: usize,
        max: usize,
    },
    #[error(
        "value for '{key}' is not valid JSON ({reason}); send JSON text, e.g. '\"text\"', '42' or '{{\"a\":1}}'"
    )]
    NotJson { key: String, reason: String },
    #[error(
        "value for '{key}' must be a JSON string or an array of strings ({family}* keys live in Parameter Store)"
    )]
    NotStringOrList { key: String, family: &'static str },
    #[error("value for '{key}' has a list item containing ',', which a StringList cannot hold")]
    CommaInList { key: String },
    #[error("'{key}' cannot be a secret: only {allowed} keys hold secrets")]
    SecretNotAllowed { key: String, allowed: &'static str },
    #[error("secret value for '{key}' must be a JSON string")]
    SecretNotString { key: String },
    #[error(
        "value for '{key}' has the number {number}, which cannot be kept exactly (integers must fit in 64 bits, other numbers in a double); send it as a JSON string"
    )]
    InexactNumber { key: String, number: String },
}

/// Validates a value for a key of `family` and returns it in canonical (compact) JSON.
pub fn validate_value(
    family: &KeyFamily,
    key: &str,
    value: &str,
    secret: bool,
) -> Result<String, ValueError> {
    if value.len() > family.max_value_bytes {
        return Err(ValueError::TooLarge {
            key: key.to_owned(),
            family: family.prefix,
            len: value.len(),
            max: family.max_value_bytes,
        });
    }
    let parsed: serde_json::Value =
        serde_json::from_str(value).map_err(|e| ValueError::NotJson {
            key: key.to_owned(),
            reason: e.to_string(),
        })?;
    if secret && !family.secrets {
        return Err(ValueError::SecretNotAllowed {
            key: key.to_owned(),
            allowed: PARAM_CONFIG.prefix,
        });
    }
    if secret && !parsed.is_string() {
        return Err(ValueError::SecretNotString {
            key: key.to_owned(),
        });
    }
    if family.shape == ValueShape::StringOrStringList {
        match &parsed {
            serde_json::Value::String(_) => {}
            serde_json::Value::Array(items) if items.iter().all(|v| v.is_string()) => {
                if items
                    .iter()
                    .any(|v| v.as_str().is_some_and(|s| s.contains(',')))
                {
                    return Err(ValueError::CommaInList {
                        key: key.to_owned(),
                    });
                }
            }
            _ => {
                return Err(ValueError::NotStringOrList {
                    key: key.to_owned(),
                    family: family.prefix,
                });
            }
        }
    }
    // Values come back exactly as written: a number the parsed value would round is
    // refused rather than stored rounded.
    if let Some(number) = inexact_number(value) {
        return Err(ValueError::InexactNumber {
            key: key.to_owned(),
            number: quote_number(number),
        });
    }
    // Compact form: what is stored and pushed does not depend on the writer's spacing.
    let compact = parsed.to_string();
    if compact.len() > family.max_value_bytes {
        return Err(ValueError::TooLarge {
            key: key.to_owned(),
            family: family.prefix,
            len: compact.len(),
            max: family.max_value_bytes,
        });
    }
    Ok(compact)
}

/// Longest number quoted back in a refusal.
const QUOTED_NUMBER_CHARS: usize = 40;

/// Whether a JSON number comes back with the value written: integers within 64 bits
/// do; other numbers when the double they read as prints back as the same decimal
/// value (`0.1`, `1.5e3`, not `123456789012345678901` or `0.10000000000000000001`).
/// The spelling may change (`1.5e3` comes back as `1500.0`), the value may not.
pub fn number_is_exact(text: &str) -> bool {
    match serde_json::from_str::<serde_json::Number>(text) {
        Ok(n) => decimal(text).is_some_and(|d| Some(d) == decimal(&n.to_string())),
        Err(_) => false,
    }
}

/// A JSON number's exact value: (negative, significant digits, power of ten), zero
/// as (false, "", 0). `None` for text that is not a JSON number.
fn decimal(text: &str) -> Option<(bool, String, i64)> {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, "0"),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let exponent = exponent.strip_prefix('+').unwrap_or(exponent);
    let (exp_negative, exp_digits) = match exponent.strip_prefix('-') {
        Some(digits) => (true, digits),
        None => (false, exponent),
    };
    let digits_only = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits_only(int) || !(frac.is_empty() || digits_only(frac)) || !digits_only(exp_digits) {
        return None;
    }
    // Exponents beyond any double saturate: such numbers are never exact anyway.
    let mut power = exp_digits.bytes().fold(0i64, |p, b| {
        p.saturating_mul(10).saturating_add(i64::from(b - b'0'))
    });
    if exp_negative {
        power = -power;
    }
    power = power.saturating_sub(i64::try_from(frac.len()).unwrap_or(i64::MAX));
    let mut digits: String = int
        .chars()
        .chain(frac.chars())
        .skip_while(|&c| c == '0')
        .collect();
    while digits.ends_with('0') {
        digits.pop();
        power = power.saturating_add(1);
    }
    if digits.is_empty() {
        return Some((false, String::new(), 0));
    }
    Some((negative, digits, power))
}

/// The first number in valid JSON text that would not keep its exact value.
fn inexact_number(json: &str) -> Option<&str> {
    let bytes = json.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                // Past the string, skipping escaped characters.
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < bytes.len()
                    && matches!(bytes[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                let number = &json[start..i];
                if !number_is_exact(number) {
                    return Some(number);
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// A number as a refusal quotes it: at most [`QUOTED_NUMBER_CHARS`] characters.
fn quote_number(number: &str) -> String {
    if number.len() <= QUOTED_NUMBER_CHARS {
        number.to_owned()
    } else {
        // Numbers are ASCII: any byte index is a character boundary.
        format!(
            "{}... ({} characters)",
            &number[..QUOTED_NUMBER_CHARS],
            number.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_well_formed_keys() {
        assert_eq!(
            validate_key("tenant_config_payment-gateway"),
            Ok(&TENANT_CONFIG)
        );
        assert_eq!(
            validate_key("param_config_db/primary/url"),
            Ok(&PARAM_CONFIG)
        );
        assert_eq!(validate_key("param_config_v1.2/x_y"), Ok(&PARAM_CONFIG));
    }

    #[test]
    fn refuses_bad_keys_with_a_reason() {
        assert_eq!(validate_key(""), Err(KeyError::Empty));
        assert!(matches!(
            validate_key("feature_flags"),
            Err(KeyError::UnknownPrefix { .. })
        ));
        let msg = validate_key("feature_flags").unwrap_err().to_string();
        assert!(
            msg.contains("tenant_config_") && msg.contains("param_config_"),
            "{msg}"
        );
        assert!(matches!(
            validate_key("param_config_"),
            Err(KeyError::NoPath(_))
        ));
        assert!(matches!(
            validate_key("param_config_a/../b"),
            Err(KeyError::DotDot { .. })
        ));
        assert!(matches!(
            validate_key("param_config_..other-tenant"),
            Err(KeyError::DotDot { .. })
        ));
        assert!(matches!(
            validate_key("param_config_/a"),
            Err(KeyError::EmptySegment { .. })
        ));
        assert!(matches!(
            validate_key("param_config_a//b"),
            Err(KeyError::EmptySegment { .. })
        ));
        assert!(matches!(
            validate_key("param_config_a/"),
            Err(KeyError::EmptySegment { .. })
        ));
        assert!(matches!(
            validate_key("param_config_a/./b"),
            Err(KeyError::DotSegment { .. })
        ));
        assert!(matches!(
            validate_key("param_config_a%2Fb"),
            Err(KeyError::BadChar { ch: '%', .. })
        ));
        assert!(matches!(
            validate_key("tenant_config_a b"),
            Err(KeyError::BadChar { ch: ' ', .. })
        ));
        let long = format!("tenant_config_{}", "a".repeat(600));
        assert!(matches!(validate_key(&long), Err(KeyError::TooLong { .. })));
        let deep = format!("param_config_{}", vec!["a"; 13].join("/"));
        assert!(matches!(validate_key(&deep), Err(KeyError::TooDeep { .. })));
    }

    #[test]
    fn prefixes() {
        for ok in [
            "",
            "tenant",
            "tenant_config_",
            "param_config_db/",
            "param_config_db/pri",
        ] {
            assert_eq!(validate_prefix(ok), Ok(()), "{ok}");
        }
        assert!(matches!(
            validate_prefix("foo"),
            Err(KeyError::BadPrefix { .. })
        ));
        assert!(matches!(
            validate_prefix("param_config_../"),
            Err(KeyError::DotDot { .. })
        ));
        assert!(matches!(
            validate_prefix("param_config_a//"),
            Err(KeyError::EmptySegment { .. })
        ));
    }

    #[test]
    fn prefix_set_normalizes() {
        let s = PrefixSet::new(vec!["param_config_db/".into(), "param_config_".into()]);
        assert_eq!(s.as_slice(), ["param_config_"]);
        assert_eq!(PrefixSet::new(Vec::new()), PrefixSet::everything());
        assert!(s.matches("param_config_x") && !s.matches("tenant_config_x"));
    }

    #[test]
    fn values() {
        assert_eq!(
            validate_value(&TENANT_CONFIG, "k", "{ \"a\" : 1 }", false),
            Ok("{\"a\":1}".to_owned())
        );
        assert!(matches!(
            validate_value(&TENANT_CONFIG, "k", "{nope", false),
            Err(ValueError::NotJson { .. })
        ));
        assert!(matches!(
            validate_value(&PARAM_CONFIG, "k", "42", false),
            Err(ValueError::NotStringOrList { .. })
        ));
        assert_eq!(
            validate_value(&PARAM_CONFIG, "k", "[\"a\",\"b\"]", false),
            Ok("[\"a\",\"b\"]".to_owned())
        );
        assert!(matches!(
            validate_value(&PARAM_CONFIG, "k", "[\"a,b\"]", false),
            Err(ValueError::CommaInList { .. })
        ));
        assert!(matches!(
            validate_value(&TENANT_CONFIG, "k", "\"s\"", true),
            Err(ValueError::SecretNotAllowed { .. })
        ));
        assert!(matches!(
            validate_value(&PARAM_CONFIG, "k", "[\"s\"]", true),
            Err(ValueError::SecretNotString { .. })
        ));
        let big = format!("\"{}\"", "x".repeat(9000));
        assert!(matches!(
            validate_value(&PARAM_CONFIG, "k", &big, false),
            Err(ValueError::TooLarge { max: 8192, .. })
        ));
    }
    /// Found by the json_value fuzz target: `333333333333333333333` was accepted and
    /// stored as `3.333333333333334e+20`.
    #[test]
    fn numbers_that_would_not_come_back_exactly_are_refused() {
        let key = "tenant_config_ids";
        let fuzz_input = std::str::from_utf8(&[0x33; 21]).unwrap_or_default();
        for value in [
            fuzz_input,
            r#"{"id":123456789012345678901}"#,
            "[1, 18446744073709551616]",
            "-9223372036854775809",
            "0.10000000000000000001",
            "1e-400",
        ] {
            match validate_value(&TENANT_CONFIG, key, value, false) {
                Err(ValueError::InexactNumber { key: k, number }) => {
                    assert_eq!(k, key);
                    assert!(value.contains(&number), "{number} not in {value}");
                }
                other => panic!("{value}: {other:?}"),
            }
        }
        // A long number is quoted shortened.
        let long = "1".repeat(300);
        let message = validate_value(&TENANT_CONFIG, key, &long, false)
            .map_err(|e| e.to_string())
            .err()
            .unwrap_or_default();
        assert!(
            message.contains("(300 characters)") && message.len() < 300,
            "{message}"
        );
        // Exact numbers pass; compaction may respell them, never change their value.
        assert_eq!(
            validate_value(
                &TENANT_CONFIG,
                key,
                r#"[18446744073709551615, -9223372036854775808, 0.1, 1.5e3, 2.50, 1e300, -0, "1e999"]"#,
                false
            ),
            Ok(
                r#"[18446744073709551615,-9223372036854775808,0.1,1500.0,2.5,1e+300,-0.0,"1e999"]"#
                    .into()
            )
        );
        assert!(number_is_exact("-6.7596900525965135e-155"));
    }
}
