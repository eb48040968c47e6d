//! Resume tokens as a client sends them: any text must decode to a token, to "another
//! format", or to an error, and a token that decodes must encode back to itself.
#![no_main]

use configwatch::hub::ResumeToken;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(Some(token)) = ResumeToken::decode(text) {
        let again = token.encode();
        assert_eq!(ResumeToken::decode(&again), Ok(Some(token)));
    }
});
