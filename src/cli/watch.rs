//! `configwatch watch`: prints the initial state and then every change under the
//! prefixes, one JSON object per line, across server restarts.

use std::collections::HashMap;
use std::time::Duration;

use super::commands::{connect, entry_json};
use super::{Failure, WatchArgs};
use crate::proto;

/// Watches and prints changes. When the server goes away (UNAVAILABLE, or the
/// connection drops) it reconnects with backoff and resumes, so a server restart
/// costs no lines; any other error ends the command.
pub(super) async fn run_watch(args: WatchArgs) -> Result<(), Failure> {
    let mut resume = args.resume_token.clone().unwrap_or_default();
    let mut known: HashMap<String, u64> = HashMap::new();
    let mut backoff = Duration::from_millis(200);
    loop {
        let outcome = watch_once(&args, &mut resume, &mut known, &mut backoff).await;
        match outcome {
            Ok(()) => return Ok(()),
            Err(Retry::No(f)) => return Err(f),
            Err(Retry::After(why)) => {
                eprintln!("watch interrupted ({why}); reconnecting in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

enum Retry {
    No(Failure),
    After(String),
}

async fn watch_once(
    args: &WatchArgs,
    resume: &mut String,
    known: &mut HashMap<String, u64>,
    backoff: &mut Duration,
) -> Result<(), Retry> {
    let mut client = match connect(&args.client).await {
        Ok(c) => c,
        Err(f) if f.code == 1 => return Err(Retry::After(f.message)),
        Err(f) => return Err(Retry::No(f)),
    };
    let request = proto::WatchRequest {
        prefixes: args.prefixes.clone(),
        tenant: String::new(),
        resume_token: resume.clone(),
        known_versions: known.clone(),
        known_digest: Vec::new(),
        known_store_id: String::new(),
    };
    let retry_or_fail = |s: tonic::Status| match s.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled => {
            Retry::After(format!("{:?}: {}", s.code(), s.message()))
        }
        _ => Retry::No(s.into()),
    };
    let mut stream = client
        .watch(request)
        .await
        .map_err(retry_or_fail)?
        .into_inner();
    loop {
        match stream.message().await {
            Ok(Some(msg)) => {
                *backoff = Duration::from_millis(200);
                for c in &msg.changes {
                    if c.deleted {
                        known.remove(&c.key);
                    } else {
                        known.insert(c.key.clone(), c.version);
                    }
                    println!("{}", entry_json(c));
                }
                if !msg.resume_token.is_empty() {
                    *resume = msg.resume_token;
                }
            }
            Ok(None) => return Ok(()),
            Err(s) => return Err(retry_or_fail(s)),
        }
    }
}
