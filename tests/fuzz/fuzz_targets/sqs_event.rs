//! SQS message bodies: whatever EventBridge (or anyone with access to the queue) puts
//! there is read as a Parameter Store change or refused, never a panic.
#![no_main]

use configwatch::source::sqs_events::parse_event;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = std::str::from_utf8(data) else {
        return;
    };
    match parse_event(body) {
        Ok(change) => assert!(!change.name.is_empty()),
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
