//! Key and prefix validation. A key that passes names exactly one family, stays
//! within the limits and cannot climb out of its tenant's path; a prefix that passes
//! can be normalised and matched against keys.
#![no_main]

use configwatch::keys::{self, MAX_KEY_BYTES, MAX_PATH_SEGMENTS, PrefixSet};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // One input is a key and, split at the first newline, also a prefix and a key.
    let (a, b) = text.split_once('\n').unwrap_or((text, ""));
    for s in [text, a, b] {
        check_key(s);
        check_prefix(s);
    }
    if keys::validate_prefix(a).is_ok() && keys::validate_key(b).is_ok() {
        let set = PrefixSet::new([a.to_owned()]);
        assert_eq!(set.matches(b), b.starts_with(a), "prefix {a:?} key {b:?}");
    }
});

fn check_key(key: &str) {
    match keys::validate_key(key) {
        Ok(family) => {
            assert!(key.starts_with(family.prefix));
            assert_eq!(keys::family_of(key), Some(family));
            assert!(key.len() <= MAX_KEY_BYTES);
            let path = &key[family.prefix.len()..];
            let segments: Vec<&str> = path.split('/').collect();
            assert!(segments.len() <= MAX_PATH_SEGMENTS);
            for seg in segments {
                assert!(!seg.is_empty() && seg != "." && seg != "..", "{key:?}");
                assert!(
                    seg.bytes()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
                );
            }
            // Every key is also a prefix (of itself).
            assert!(keys::validate_prefix(key).is_ok(), "{key:?}");
        }
        Err(e) => assert!(e.to_string().len() <= 2 * MAX_KEY_BYTES + 256),
    }
}

fn check_prefix(prefix: &str) {
    match keys::validate_prefix(prefix) {
        Ok(()) => {
            let set = PrefixSet::new([prefix.to_owned()]);
            assert!(set.matches(prefix));
        }
        Err(e) => assert!(e.to_string().len() <= 2 * MAX_KEY_BYTES + 256),
    }
}
