//! The client commands `token`, `get`, `put` and `delete`: one call each, one JSON
//! object per printed line. Talks to a server only through its gRPC API (and, for
//! `token`, to the data directory's signing key).

use std::time::Duration;

use serde_json::{Value, json};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use super::{ClientArgs, DeleteArgs, Failure, GetArgs, PutArgs, TokenArgs, open_key};
use crate::auth::Role;
use crate::model::Scope;
use crate::proto;
use crate::proto::config_service_client::ConfigServiceClient;
use crate::store::embedded::EmbeddedStore;

pub(super) fn run_token(args: TokenArgs) -> Result<(), Failure> {
    let scope = match (&args.tenant, args.role) {
        (Some(tenant), _) => Some(
            Scope::new(tenant, args.service.as_deref())
                .map_err(|e| Failure::usage(e.to_string()))?,
        ),
        (None, Role::Relay) if args.service.is_none() => None,
        (None, _) => {
            return Err(Failure::usage(
                "--tenant is required (only a relay token may name none; --service needs --tenant)",
            ));
        }
    };
    let fresh = !args.data_dir.join(crate::auth::local::KEY_FILE).exists()
        && !args.data_dir.join(crate::store::embedded::DB_FILE).exists();
    let key = open_key(&args.data_dir)?;
    if fresh {
        // A new data directory: create its store with the key, so that a later
        // `serve` does not take the key for the remains of a lost database.
        EmbeddedStore::open(&args.data_dir)
            .map_err(|e| Failure::error(format!("cannot create the store: {e}")))?;
    }
    let token = match &scope {
        Some(scope) => key.issue(scope, args.role, args.ttl, &args.subject),
        None => key.issue_relay(args.ttl, &args.subject),
    }
    .map_err(|e| Failure::error(format!("cannot sign the token: {e}")))?;
    println!("{token}");
    Ok(())
}

/// Adds the bearer token to every call.
type AuthInterceptor =
    Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>;
pub(super) type Client = ConfigServiceClient<InterceptedService<Channel, AuthInterceptor>>;

/// The bearer token the flags give, and its `authorization` header value; a
/// missing or unusable token is a usage error.
pub(super) fn bearer(args: &ClientArgs) -> Result<(&str, MetadataValue<Ascii>), Failure> {
    let token = args.token.as_deref().filter(|t| !t.is_empty()).ok_or_else(|| {
        Failure::usage(
            "no token: pass --token or set CONFIGWATCH_TOKEN (`configwatch token --tenant T` prints one)",
        )
    })?;
    let header = format!("Bearer {token}")
        .parse()
        .map_err(|_| Failure::usage("the token contains characters not allowed in a header"))?;
    Ok((token, header))
}

pub(super) async fn connect(args: &ClientArgs) -> Result<Client, Failure> {
    let (_, header) = bearer(args)?;
    // Several servers (comma-separated): the first that answers.
    let mut endpoints = Vec::new();
    for server in args
        .server
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let endpoint = Endpoint::from_shared(server.to_owned())
            .map_err(|e| Failure::usage(format!("--server '{server}' is not a URL: {e}")))?
            .connect_timeout(Duration::from_secs(5));
        endpoints.push((server, endpoint));
    }
    let mut failures = Vec::new();
    let mut connected = None;
    for (server, endpoint) in endpoints {
        match endpoint.connect().await {
            Ok(channel) => {
                connected = Some(channel);
                break;
            }
            Err(e) => failures.push(format!("cannot connect to {server}: {e}")),
        }
    }
    let channel = match connected {
        Some(channel) => channel,
        None if failures.is_empty() => {
            return Err(Failure::usage("--server names no server"));
        }
        None => return Err(Failure::error(failures.join("; "))),
    };
    let interceptor: AuthInterceptor = Box::new(move |mut req: tonic::Request<()>| {
        req.metadata_mut().insert("authorization", header.clone());
        Ok(req)
    });
    Ok(ConfigServiceClient::with_interceptor(channel, interceptor)
        .max_decoding_message_size(usize::MAX))
}

/// A value as JSON for output: the parsed value, or the raw text if it is not JSON.
/// A value's JSON text as it goes into a printed line: verbatim (every digit of every
/// number as the server holds it), or as a JSON string if it is not JSON.
pub(super) fn json_value(text: &str) -> String {
    match serde_json::from_str::<&serde_json::value::RawValue>(text) {
        Ok(raw) => raw.get().to_owned(),
        Err(_) => Value::String(text.to_owned()).to_string(),
    }
}

/// The line printed for an entry: key, version, then value, deleted or secret. The
/// value is copied as the server sent it, never through a float.
pub fn entry_json(e: &proto::Entry) -> String {
    let mut out = format!(
        "{{\"key\":{},\"version\":{}",
        Value::String(e.key.clone()),
        e.version
    );
    if e.deleted {
        out.push_str(",\"deleted\":true");
    } else if e.secret && e.value.is_empty() {
        out.push_str(",\"secret\":true");
    } else {
        out.push_str(",\"value\":");
        out.push_str(&json_value(&e.value));
        if e.secret {
            out.push_str(",\"secret\":true");
        }
    }
    out.push('}');
    out
}

/// The line printed for a write's result: key and new version, and `deleted` for a
/// delete.
pub(super) fn written_json(e: &proto::Entry) -> String {
    if e.deleted {
        json!({ "key": e.key, "version": e.version, "deleted": true }).to_string()
    } else {
        json!({ "key": e.key, "version": e.version }).to_string()
    }
}

/// Times a paged Get starts again when the tenant changes while it pages.
const GET_ATTEMPTS: usize = 5;

pub(super) async fn run_get(args: GetArgs) -> Result<(), Failure> {
    let mut client = connect(&args.client).await?;
    let mut attempt = 0;
    let (entries, missing) = loop {
        attempt += 1;
        match get_all_pages(&mut client, &args).await {
            Ok(done) => break done,
            Err(s) if s.code() == tonic::Code::Aborted && attempt < GET_ATTEMPTS => {
                // The tenant changed between two pages: read it again from the start.
                continue;
            }
            Err(s) => return Err(s.into()),
        }
    };
    for e in &entries {
        println!("{}", entry_json(e));
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Failure::error(format!("not found: {}", missing.join(", "))))
    }
}

/// Every page of a Get, all of the first page's revision.
async fn get_all_pages(
    client: &mut Client,
    args: &GetArgs,
) -> Result<(Vec<proto::Entry>, Vec<String>), tonic::Status> {
    let mut entries = Vec::new();
    let mut missing = Vec::new();
    let mut page_token = String::new();
    loop {
        let resp = client
            .get(proto::GetRequest {
                keys: args.keys.clone(),
                prefixes: args.prefixes.clone(),
                tenant: String::new(),
                limit: args.page_size,
                page_token,
                ..Default::default()
            })
            .await?
            .into_inner();
        entries.extend(resp.entries);
        missing.extend(resp.missing_keys);
        if resp.next_page_token.is_empty() {
            return Ok((entries, missing));
        }
        page_token = resp.next_page_token;
    }
}

pub(super) async fn run_put(args: PutArgs) -> Result<(), Failure> {
    let mut client = connect(&args.client).await?;
    let resp = client
        .put(proto::PutRequest {
            key: args.key,
            value: args.value,
            expected_version: args.expect_version,
            secret: args.secret,
            tenant: String::new(),
            reason: args.reason,
        })
        .await?
        .into_inner();
    if let Some(e) = resp.entry {
        println!("{}", written_json(&e));
    }
    Ok(())
}

pub(super) async fn run_delete(args: DeleteArgs) -> Result<(), Failure> {
    let mut client = connect(&args.client).await?;
    let resp = client
        .delete(proto::DeleteRequest {
            key: args.key,
            expected_version: args.expect_version,
            tenant: String::new(),
            reason: args.reason,
        })
        .await?
        .into_inner();
    if let Some(e) = resp.entry {
        println!("{}", written_json(&e));
    }
    Ok(())
}
