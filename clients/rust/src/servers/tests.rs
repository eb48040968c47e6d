use std::time::Duration;

use super::*;
use crate::error::{Error, next_step};

/// No jitter, so delays are exact: 100 ms doubling to 800 ms.
fn backoff() -> Backoff {
    Backoff {
        jitter: 0.0,
        ..Backoff::doubling(Duration::from_millis(100), Duration::from_millis(800))
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn status(code: tonic::Code) -> Error {
    Error::Status {
        code,
        message: String::new(),
    }
}

/// What follows a failed attempt with `error` (after the stream was in sync or
/// not): the wait, and the server tried next.
fn fail(r: &mut Rotation, error: &Error, synced: bool) -> (Option<Duration>, usize) {
    if synced {
        r.synced();
    }
    let wait = r.after(next_step(error, true, synced));
    (wait, r.current())
}

#[test]
fn a_list_is_one_url_or_several_separated_by_commas() {
    assert_eq!(split_list("http://a:1"), ["http://a:1"]);
    assert_eq!(
        split_list(" http://a:1 , b:2,,https://c:3, "),
        ["http://a:1", "b:2", "https://c:3"]
    );
    assert!(split_list(" , ").is_empty());
}

#[test]
fn moves_round_robin_at_once_and_backs_off_after_a_full_round() {
    let unavailable = status(tonic::Code::Unavailable);
    let mut r = Rotation::new(3, 1, backoff());
    assert_eq!(r.current(), 1);
    // The first two failures move on at once; the third completes the round.
    assert_eq!(fail(&mut r, &unavailable, false), (Some(Duration::ZERO), 2));
    assert_eq!(fail(&mut r, &unavailable, false), (Some(Duration::ZERO), 0));
    assert_eq!(fail(&mut r, &unavailable, false), (Some(ms(100)), 1));
    // The next round again tries each at once, then waits longer.
    assert_eq!(fail(&mut r, &unavailable, false), (Some(Duration::ZERO), 2));
    assert_eq!(fail(&mut r, &unavailable, false), (Some(Duration::ZERO), 0));
    assert_eq!(fail(&mut r, &unavailable, false), (Some(ms(200)), 1));
    // A server that works starts the count over: its stream's end moves on within
    // the first step (spread), the next failure at once.
    let (wait, next) = fail(&mut r, &unavailable, true);
    assert!(next == 2 && wait <= Some(ms(100)), "{wait:?} {next}");
    assert_eq!(fail(&mut r, &unavailable, false), (Some(Duration::ZERO), 0));
    assert_eq!(fail(&mut r, &unavailable, false), (Some(ms(100)), 1));
}

#[test]
fn one_url_backs_off_after_each_failure_as_a_single_server_client_does() {
    let unavailable = status(tonic::Code::Unavailable);
    let mut r = Rotation::new(1, 0, backoff());
    assert_eq!(fail(&mut r, &unavailable, true), (Some(ms(100)), 0));
    assert_eq!(fail(&mut r, &unavailable, false), (Some(ms(200)), 0));
    assert_eq!(fail(&mut r, &unavailable, false), (Some(ms(400)), 0));
    assert_eq!(fail(&mut r, &unavailable, false), (Some(ms(800)), 0));
    assert_eq!(fail(&mut r, &unavailable, false), (Some(ms(800)), 0));
    assert_eq!(fail(&mut r, &unavailable, true), (Some(ms(100)), 0));
}

#[test]
fn the_start_is_taken_modulo_the_list() {
    assert_eq!(Rotation::new(2, 5, backoff()).current(), 1);
    // An empty list cannot be built; the rotation still never divides by zero.
    assert_eq!(Rotation::new(0, 3, backoff()).current(), 0);
}

#[test]
fn every_server_error_moves_on() {
    let server_errors = [
        status(tonic::Code::Unavailable),
        status(tonic::Code::Unknown),
        status(tonic::Code::Internal),
        status(tonic::Code::ResourceExhausted),
        status(tonic::Code::DeadlineExceeded),
        Error::Protocol("an initial message after the initial state".into()),
    ];
    for e in &server_errors {
        let mut r = Rotation::new(2, 0, backoff());
        let (wait, next) = fail(&mut r, e, true);
        assert!(next == 1 && wait <= Some(ms(100)), "{e}: {wait:?} {next}");
    }
}

#[test]
fn refused_tokens_and_permissions_never_move_on() {
    let mut r = Rotation::new(3, 0, backoff());
    let expired = status(tonic::Code::Unauthenticated);
    // A fresh token at once, then with backoff while fresh ones keep being refused;
    // always on the same server, since every server would refuse it alike.
    assert_eq!(fail(&mut r, &expired, true), (Some(Duration::ZERO), 0));
    assert_eq!(fail(&mut r, &expired, false), (Some(ms(100)), 0));
    assert_eq!(fail(&mut r, &expired, false), (Some(ms(200)), 0));
    // The token source failing is not the server's doing either.
    let source = Error::token_source("down");
    assert_eq!(fail(&mut r, &source, false), (Some(ms(400)), 0));
    // Permission denied (and every error the application must fix) stops the watch
    // where it is.
    for code in [
        tonic::Code::PermissionDenied,
        tonic::Code::FailedPrecondition,
        tonic::Code::OutOfRange,
    ] {
        let mut r = Rotation::new(3, 2, backoff());
        assert_eq!(fail(&mut r, &status(code), true), (None, 2), "{code:?}");
    }
}

#[test]
fn an_unreadable_resume_token_is_dropped_on_the_same_server() {
    let mut r = Rotation::new(2, 0, backoff());
    let refused = status(tonic::Code::InvalidArgument);
    assert_eq!(fail(&mut r, &refused, false), (Some(Duration::ZERO), 0));
}

#[test]
fn the_first_move_after_an_established_stream_broke_is_spread_over_the_first_step() {
    let unavailable = status(tonic::Code::Unavailable);
    let mut waits = std::collections::BTreeSet::new();
    for _ in 0..200 {
        let mut r = Rotation::new(3, 0, backoff());
        let (wait, next) = fail(&mut r, &unavailable, true);
        assert_eq!(next, 1);
        let wait = wait.unwrap();
        assert!(wait <= ms(100), "{wait:?}");
        waits.insert(wait);
        // The rest of the round goes at once, then the backoff as before.
        assert_eq!(fail(&mut r, &unavailable, false), (Some(Duration::ZERO), 2));
        assert_eq!(fail(&mut r, &unavailable, false), (Some(ms(100)), 0));
    }
    assert!(waits.len() > 100, "{} distinct waits", waits.len());
    // A stream that never reached its initial state is no break: at once.
    let mut r = Rotation::new(2, 0, backoff());
    assert_eq!(fail(&mut r, &unavailable, false), (Some(Duration::ZERO), 1));
}
