//! The flags of a key's history: how much of it the store keeps
//! (`--retain-versions`, `--retain-for`) and the name this instance records on the
//! writes it accepts (`--instance-name`), checked before any port is bound; and the
//! client commands `history` and `rollback`.

use std::time::Duration;

use clap::Args;

use super::super::Failure;
use super::ClientArgs;
use crate::store::history::{DEFAULT_MAX_AGE, DEFAULT_MAX_VERSIONS, Retention};

/// The most bytes of an instance name.
pub const MAX_INSTANCE_NAME_BYTES: usize = 128;

/// Where the instance name comes from when `--instance-name` is not given.
const HOSTNAME_FILE: &str = "/proc/sys/kernel/hostname";

#[derive(Debug, Args)]
pub struct RetentionArgs {
    /// Versions of each key the store keeps, the current one included (at least 1).
    #[arg(long, env = "CONFIGWATCH_RETAIN_VERSIONS", default_value_t = DEFAULT_MAX_VERSIONS)]
    pub retain_versions: u32,
    /// How long a version that was replaced is kept (the current version is always
    /// kept). Applied each time the key is written.
    #[arg(long, env = "CONFIGWATCH_RETAIN_FOR", default_value_t = DEFAULT_MAX_AGE.into())]
    pub retain_for: humantime::Duration,
    /// The name this instance records with each write it accepts (default: the
    /// host name).
    #[arg(long, env = "CONFIGWATCH_INSTANCE_NAME")]
    pub instance_name: Option<String>,
}

impl RetentionArgs {
    /// The store's retention, checked.
    pub fn retention(&self) -> Result<Retention, Failure> {
        if self.retain_versions == 0 {
            return Err(Failure::usage(
                "--retain-versions must be at least 1 (the current version is always kept)",
            ));
        }
        Ok(Retention {
            max_versions: self.retain_versions,
            max_age: Duration::from(self.retain_for),
        })
    }

    /// The instance name: the flag, else the host name (never empty), checked.
    pub fn instance(&self) -> Result<String, Failure> {
        let name = match &self.instance_name {
            Some(name) => name.trim().to_owned(),
            None => host_name(),
        };
        if name.is_empty() {
            return Err(Failure::usage("--instance-name must not be empty"));
        }
        if name.len() > MAX_INSTANCE_NAME_BYTES || name.chars().any(char::is_control) {
            return Err(Failure::usage(format!(
                "--instance-name must be at most {MAX_INSTANCE_NAME_BYTES} bytes with no control characters"
            )));
        }
        Ok(name)
    }
}

/// The host name, from the kernel or `HOSTNAME`; `localhost` when neither says.
fn host_name() -> String {
    std::fs::read_to_string(HOSTNAME_FILE)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| {
            std::env::var("HOSTNAME")
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| "localhost".to_owned())
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// The key whose versions to print.
    pub key: String,
    /// Print at most this many versions (newest first); default every version kept.
    #[arg(long, env = "CONFIGWATCH_HISTORY_LIMIT")]
    pub limit: Option<usize>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The key to roll back.
    pub key: String,
    /// The version whose value to write again (a deleted version deletes the key).
    #[arg(long, env = "CONFIGWATCH_TO_VERSION")]
    pub to_version: u64,
    /// Write only if the key is at this version (default: its current version as
    /// the history read just before reported it).
    #[arg(long, env = "CONFIGWATCH_EXPECT_VERSION")]
    pub expect_version: Option<u64>,
    /// Why, kept in the key's history (default: "rollback to version N").
    #[arg(long, env = "CONFIGWATCH_REASON")]
    pub reason: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        keep: RetentionArgs,
    }

    fn parse(args: &[&str]) -> RetentionArgs {
        let argv = std::iter::once("serve").chain(args.iter().copied());
        match Flags::try_parse_from(argv) {
            Ok(flags) => flags.keep,
            Err(e) => panic!("{args:?}: {e}"),
        }
    }

    #[test]
    fn the_instance_is_named_by_the_flag_or_else_the_host() {
        let named = parse(&["--instance-name", " cw-7 "]).instance();
        assert_eq!(named.ok().as_deref(), Some("cw-7"));
        let host = parse(&[]).instance().ok().unwrap_or_default();
        assert!(!host.is_empty());
        assert!(parse(&["--instance-name", ""]).instance().is_err());
        assert!(
            parse(&["--instance-name", &"x".repeat(129)])
                .instance()
                .is_err()
        );
    }

    #[test]
    fn retention_defaults_to_the_stores_and_keeps_at_least_one_version() {
        assert_eq!(parse(&[]).retention().ok(), Some(Retention::default()));
        let short = parse(&["--retain-versions", "3", "--retain-for", "2h"]).retention();
        assert_eq!(
            short.ok(),
            Some(Retention {
                max_versions: 3,
                max_age: Duration::from_secs(7200)
            })
        );
        assert!(parse(&["--retain-versions", "0"]).retention().is_err());
    }
}
