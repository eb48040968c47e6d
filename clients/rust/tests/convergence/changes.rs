//! The changes of the moto tests (`spread`, `origins`), by four paths: instance A's
//! API, instance B's API (the suite's `Writer`, compare-and-set), DynamoDB directly and Parameter Store
//! directly (with the "Parameter Store Change" event EventBridge fans out to both
//! queues), as other tools make them; and the tenant's state read back from
//! DynamoDB and Parameter Store, not from an instance.
//!
//! Boundary: knows the item layout and parameter names of the AWS backend (README,
//! "Running on AWS") and how it serves a parameter's version; nothing of the
//! instances but their addresses.

use super::*;

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_ssm::types::ParameterType;
use configwatch_test_support::moto::{Moto, ROOT, Resources};
use tokio_util::sync::CancellationToken;

/// Keys written through the instances' API (DynamoDB behind it).
pub(crate) const API_PREFIX: &str = "tenant_config_api";
/// Keys written in DynamoDB directly.
pub(crate) const DDB_PREFIX: &str = "tenant_config_ddb";
/// Keys written in Parameter Store directly.
pub(crate) const SSM_PREFIX: &str = "param_config_ext";
const API_KEYS: usize = 8;
const DDB_KEYS: usize = 6;
const SSM_KEYS: usize = 6;
/// Pause between changes (workload shape, not synchronization).
const PACE: Duration = Duration::from_millis(5);

pub(crate) struct Changes<'m> {
    moto: &'m Moto,
    table: String,
    ddb: aws_sdk_dynamodb::Client,
    ssm: aws_sdk_ssm::Client,
    /// Writes through the API, to whichever instance `api_target` names.
    pub(crate) api: Writer,
    api_target: watch::Sender<SocketAddr>,
    a: SocketAddr,
    rng: StdRng,
    /// The last version given to each DynamoDB item, deletes included.
    ddb_versions: BTreeMap<usize, u64>,
    ddb_live: BTreeSet<usize>,
    ssm_live: BTreeSet<usize>,
    stats: ChangeStats,
}

#[derive(Debug, Default)]
pub(crate) struct ChangeStats {
    api_a: u64,
    api_b: u64,
    ddb_puts: u64,
    ddb_soft_deletes: u64,
    ddb_deletes: u64,
    ssm_puts: u64,
    ssm_deletes: u64,
}

impl std::fmt::Display for ChangeStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "changes: {} through A's API, {} through B's, {} DynamoDB puts, {} soft and {} hard \
             deletes, {} parameter puts, {} parameter deletes",
            self.api_a,
            self.api_b,
            self.ddb_puts,
            self.ddb_soft_deletes,
            self.ddb_deletes,
            self.ssm_puts,
            self.ssm_deletes
        )
    }
}

/// What watcher `i` of a language watches: every other one the keys of other tools
/// only (DynamoDB and Parameter Store), the others the whole tenant.
pub(crate) fn watches(i: usize) -> Vec<String> {
    if i % 2 == 1 {
        vec![DDB_PREFIX.into(), SSM_PREFIX.into()]
    } else {
        Vec::new()
    }
}

fn ddb_key(i: usize) -> String {
    format!("{DDB_PREFIX}{i}")
}

fn ssm_key(i: usize) -> String {
    format!("{SSM_PREFIX}/p{i}")
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.into())
}

impl<'m> Changes<'m> {
    pub(crate) async fn new(
        moto: &'m Moto,
        res: &Resources,
        writer_token: &str,
        a: SocketAddr,
        seed: u64,
    ) -> Changes<'m> {
        let api_keys: Vec<String> = (0..API_KEYS).map(|i| format!("{API_PREFIX}{i}")).collect();
        let (api_target, target_rx) = watch::channel(a);
        Changes {
            moto,
            table: res.table.clone(),
            ddb: aws_sdk_dynamodb::Client::new(&moto.sdk_config().await),
            ssm: aws_sdk_ssm::Client::new(&moto.sdk_config().await),
            api: Writer::new(target_rx, writer_token, &api_keys),
            api_target,
            a,
            rng: StdRng::seed_from_u64(seed),
            ddb_versions: BTreeMap::new(),
            ddb_live: BTreeSet::new(),
            ssm_live: BTreeSet::new(),
            stats: ChangeStats::default(),
        }
    }

    /// Every key any path writes.
    pub(crate) fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.api.keys.clone();
        keys.extend((0..DDB_KEYS).map(ddb_key));
        keys.extend((0..SSM_KEYS).map(ssm_key));
        keys
    }

    /// The keys no path ever deletes (`DDB_PREFIX`0 and `SSM_PREFIX`/p0), so that every
    /// watcher holds something from the start: a client that holds nothing has no
    /// versions to resume by, and a full state would be its only answer.
    pub(crate) async fn anchors(&mut self) -> Result<Vec<String>, String> {
        self.ddb_change(0, 0).await?;
        self.ssm_change(0, 0).await?;
        Ok(vec![ddb_key(0), ssm_key(0)])
    }

    /// Changes by each path in turn until `stop`; API changes alternate between A
    /// and B once `b` names B. `progress` counts the changes made.
    pub(crate) async fn run(
        &mut self,
        b: watch::Receiver<Option<SocketAddr>>,
        stop: CancellationToken,
        progress: watch::Sender<usize>,
    ) -> Result<(), String> {
        let mut step = 0usize;
        while !stop.is_cancelled() {
            match step % 4 {
                0 | 2 => {
                    let to_b = step % 4 == 2;
                    let target = match *b.borrow() {
                        Some(b_addr) if to_b => b_addr,
                        _ => self.a,
                    };
                    self.api_target.send_replace(target);
                    let key = self.api.keys[self.rng.random_range(0..API_KEYS)].clone();
                    let op = self.api.choose(&mut self.rng, &key);
                    self.api.write(&key, op).await?;
                    if target == self.a {
                        self.stats.api_a += 1;
                    } else {
                        self.stats.api_b += 1;
                    }
                }
                1 => {
                    let i = self.rng.random_range(0..DDB_KEYS);
                    self.ddb_change(i, step).await?;
                }
                _ => {
                    let i = self.rng.random_range(0..SSM_KEYS);
                    self.ssm_change(i, step).await?;
                }
            }
            step += 1;
            progress.send_replace(step);
            tokio::time::sleep(PACE).await;
        }
        Ok(())
    }

    pub(crate) fn stats(&self) -> &ChangeStats {
        &self.stats
    }

    /// A put, soft delete (`isActive` false) or delete of item `i`, as another tool
    /// would make it: each a version above the last (a delete's tombstone is served
    /// one above the item's).
    async fn ddb_change(&mut self, i: usize, step: usize) -> Result<(), String> {
        let version = {
            let v = self.ddb_versions.entry(i).or_insert(0);
            *v += 1;
            *v
        };
        let pk = s(&format!("TENANT#{TENANT}"));
        let sk = s(&format!("CONFIG#{}", &ddb_key(i)["tenant_config_".len()..]));
        let delete = i != 0 && self.ddb_live.contains(&i) && self.rng.random_bool(0.3);
        if delete && self.rng.random_bool(0.5) {
            self.ddb
                .delete_item()
                .table_name(&self.table)
                .key("pk", pk)
                .key("sk", sk)
                .send()
                .await
                .map_err(|e| format!("DeleteItem: {e:?}"))?;
            self.ddb_live.remove(&i);
            self.stats.ddb_deletes += 1;
            return Ok(());
        }
        let config = HashMap::from([
            ("n".to_owned(), AttributeValue::N(step.to_string())),
            ("by".to_owned(), s("ddb")),
        ]);
        self.ddb
            .put_item()
            .table_name(&self.table)
            .item("pk", pk)
            .item("sk", sk)
            .item("config", AttributeValue::M(config))
            .item("isActive", AttributeValue::Bool(!delete))
            .item("version", AttributeValue::N(version.to_string()))
            .send()
            .await
            .map_err(|e| format!("PutItem: {e:?}"))?;
        if delete {
            self.ddb_live.remove(&i);
            self.stats.ddb_soft_deletes += 1;
        } else {
            self.ddb_live.insert(i);
            self.stats.ddb_puts += 1;
        }
        Ok(())
    }

    /// A put or delete of parameter `i` (even ones are `String`s, odd ones
    /// `StringList`s), then its event through EventBridge to both queues.
    async fn ssm_change(&mut self, i: usize, step: usize) -> Result<(), String> {
        let name = format!("{ROOT}/{TENANT}/{}", &ssm_key(i)["param_config_".len()..]);
        let kind = if i.is_multiple_of(2) {
            ParameterType::String
        } else {
            ParameterType::StringList
        };
        let live = self.ssm_live.contains(&i);
        if i != 0 && live && self.rng.random_bool(0.25) {
            self.ssm
                .delete_parameter()
                .name(&name)
                .send()
                .await
                .map_err(|e| format!("DeleteParameter: {e:?}"))?;
            self.ssm_live.remove(&i);
            self.stats.ssm_deletes += 1;
            self.moto
                .ssm_change_event(&name, "Delete", kind.as_str())
                .await;
            return Ok(());
        }
        let value = match kind {
            ParameterType::StringList => format!("a{step},b{step}"),
            _ => format!("v{step}"),
        };
        self.ssm
            .put_parameter()
            .name(&name)
            .value(value)
            .r#type(kind.clone())
            .overwrite(true)
            .send()
            .await
            .map_err(|e| format!("PutParameter: {e:?}"))?;
        self.ssm_live.insert(i);
        self.stats.ssm_puts += 1;
        let operation = if live { "Update" } else { "Create" };
        self.moto
            .ssm_change_event(&name, operation, kind.as_str())
            .await;
        Ok(())
    }

    /// The tenant as DynamoDB and Parameter Store hold it now.
    pub(crate) async fn store_state(&self) -> Truth {
        let mut truth = Truth::new();
        let mut start = None;
        loop {
            let page = self
                .ddb
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", s(&format!("TENANT#{TENANT}")))
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .expect("Query");
            for item in page.items() {
                if let Some((key, entry)) = item_entry(item) {
                    truth.insert(key, entry);
                }
            }
            start = page.last_evaluated_key().cloned();
            if start.is_none() {
                break;
            }
        }
        let root = format!("{ROOT}/{TENANT}/");
        let mut next = None;
        loop {
            let page = self
                .ssm
                .get_parameters_by_path()
                .path(&root)
                .recursive(true)
                .max_results(10)
                .set_next_token(next)
                .send()
                .await
                .expect("GetParametersByPath");
            for p in page.parameters() {
                let name = p.name().unwrap_or_default();
                let key = format!("param_config_{}", name.strip_prefix(&root).unwrap_or(name));
                let text = p.value().unwrap_or_default();
                let value = match p.r#type() {
                    Some(ParameterType::StringList) => json!(text.split(',').collect::<Vec<_>>()),
                    _ => json!(text),
                };
                let modified = p
                    .last_modified_date()
                    .and_then(|d| d.to_millis().ok())
                    .unwrap_or(0);
                let entry = TruthEntry {
                    version: served_version(modified, p.version()),
                    value,
                    secret: p.r#type() == Some(&ParameterType::SecureString),
                };
                truth.insert(key, entry);
            }
            next = page.next_token().map(str::to_owned);
            if next.is_none() {
                break;
            }
        }
        truth
    }
}

/// The version the AWS backend serves for a parameter: Parameter Store's `Version`
/// restarts at 1 after a delete, so the served one also counts the modification
/// time (`src/store/ssm/value.rs`, `served_version`).
fn served_version(last_modified_ms: i64, version: i64) -> u64 {
    let ms = u64::try_from(last_modified_ms).unwrap_or(0);
    let version = u64::try_from(version).unwrap_or(0);
    ms * 1024 + version % 1024
}

/// A live item as a key and its entry; `None` for a soft-deleted item.
fn item_entry(item: &HashMap<String, AttributeValue>) -> Option<(String, TruthEntry)> {
    let sk = item.get("sk")?.as_s().ok()?;
    let key = format!("tenant_config_{}", sk.strip_prefix("CONFIG#")?);
    if item.get("isActive").and_then(|a| a.as_bool().ok()) == Some(&false) {
        return None;
    }
    let version = item.get("version")?.as_n().ok()?.parse().ok()?;
    let value = item.get("config").map_or(Value::Null, attribute_json);
    Some((
        key,
        TruthEntry {
            version,
            value,
            secret: false,
        },
    ))
}

/// An attribute as the JSON it holds (the backend's item layout).
fn attribute_json(a: &AttributeValue) -> Value {
    match a {
        AttributeValue::Null(_) => Value::Null,
        AttributeValue::Bool(b) => Value::Bool(*b),
        AttributeValue::N(n) => {
            serde_json::from_str(n).unwrap_or_else(|_| json!({ "<not a number>": n }))
        }
        AttributeValue::S(text) => Value::String(text.clone()),
        AttributeValue::L(items) => Value::Array(items.iter().map(attribute_json).collect()),
        AttributeValue::M(members) => Value::Object(
            members
                .iter()
                .map(|(k, v)| (k.clone(), attribute_json(v)))
                .collect(),
        ),
        other => json!({ "<unexpected attribute>": format!("{other:?}") }),
    }
}
