//! DynamoDB Streams records and table items, built from fuzz bytes: the record
//! conversion, the item decoding (scope, key, version, liveness, value) and the
//! REMOVE rule. Whatever a table holds (other tools write to it too), each item is
//! read as an entry or skipped with a reason, never a panic.
#![no_main]

use std::collections::HashMap;

use arbitrary::Arbitrary;
use aws_sdk_dynamodbstreams::types as st;
use aws_smithy_types::Blob;
use configwatch::json::{self, Json};
use configwatch::keys;
use configwatch::source::ddb_streams::{ChangeKind, convert_record, removal};
use configwatch::store::dynamodb::{attr_to_json, json_to_attr, parse_item};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    event: Event,
    sequence: Option<String>,
    keys: Option<Vec<(Name, Attr)>>,
    new_image: Option<Vec<(Name, Attr)>>,
    old_image: Option<Vec<(Name, Attr)>>,
}

#[derive(Arbitrary, Debug)]
enum Event {
    Insert,
    Modify,
    Remove,
    Unknown(String),
    Missing,
}

/// Attribute names: the ones items carry, or any.
#[derive(Arbitrary, Debug)]
enum Name {
    Pk,
    Sk,
    Config,
    Version,
    IsActive,
    UpdatedAt,
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum Attr {
    S(Text),
    N(Number),
    B(Vec<u8>),
    Bool(bool),
    Null(bool),
    L(Vec<Attr>),
    M(Vec<(Name, Attr)>),
    Ss(Vec<String>),
    Ns(Vec<Number>),
    Bs(Vec<Vec<u8>>),
}

/// Strings: item keys in (nearly) the right shape, or any text.
#[derive(Arbitrary, Debug)]
enum Text {
    Partition(String, Option<String>),
    Sort(String),
    Time(String),
    Any(String),
}

#[derive(Arbitrary, Debug)]
enum Number {
    Int(i64),
    Uint(u64),
    Float(f64),
    Digits(u8, Vec<u8>),
    Any(String),
}

impl Name {
    fn text(&self) -> String {
        match self {
            Name::Pk => "pk".into(),
            Name::Sk => "sk".into(),
            Name::Config => "config".into(),
            Name::Version => "version".into(),
            Name::IsActive => "isActive".into(),
            Name::UpdatedAt => "updatedAt".into(),
            Name::Other(s) => s.clone(),
        }
    }
}

impl Number {
    fn text(&self) -> String {
        match self {
            Number::Int(i) => i.to_string(),
            Number::Uint(u) => u.to_string(),
            Number::Float(f) => f.to_string(),
            // Up to 255 digits, the shape DynamoDB's 38-digit numbers take.
            Number::Digits(lead, rest) => {
                let mut s = (lead % 10).to_string();
                s.extend(rest.iter().map(|d| char::from(b'0' + d % 10)));
                s
            }
            Number::Any(s) => s.clone(),
        }
    }
}

impl Attr {
    fn to_sdk(&self) -> st::AttributeValue {
        use st::AttributeValue as A;
        match self {
            Attr::S(Text::Partition(tenant, None)) => A::S(format!("TENANT#{tenant}")),
            Attr::S(Text::Partition(tenant, Some(service))) => {
                A::S(format!("TENANT#{tenant}|SERVICE#{service}"))
            }
            Attr::S(Text::Sort(name)) => A::S(format!("CONFIG#{name}")),
            Attr::S(Text::Time(t)) => A::S(format!("2026-11-26T{t}Z")),
            Attr::S(Text::Any(s)) => A::S(s.clone()),
            Attr::N(n) => A::N(n.text()),
            Attr::B(b) => A::B(Blob::new(b.clone())),
            Attr::Bool(b) => A::Bool(*b),
            Attr::Null(b) => A::Null(*b),
            Attr::L(items) => A::L(items.iter().map(Attr::to_sdk).collect()),
            Attr::M(members) => A::M(image(members)),
            Attr::Ss(set) => A::Ss(set.clone()),
            Attr::Ns(set) => A::Ns(set.iter().map(Number::text).collect()),
            Attr::Bs(set) => A::Bs(set.iter().map(|b| Blob::new(b.clone())).collect()),
        }
    }
}

fn image(members: &[(Name, Attr)]) -> HashMap<String, st::AttributeValue> {
    members
        .iter()
        .map(|(n, a)| (n.text(), a.to_sdk()))
        .collect()
}

fuzz_target!(|input: Input| {
    let mut data = st::StreamRecord::builder()
        .set_sequence_number(input.sequence.clone())
        .set_keys(input.keys.as_deref().map(image))
        .set_new_image(input.new_image.as_deref().map(image))
        .set_old_image(input.old_image.as_deref().map(image));
    if input.sequence.is_none() && input.keys.is_none() {
        data = data.sequence_number("1");
    }
    let event = match &input.event {
        Event::Insert => Some(st::OperationType::Insert),
        Event::Modify => Some(st::OperationType::Modify),
        Event::Remove => Some(st::OperationType::Remove),
        Event::Unknown(s) => Some(st::OperationType::from(s.as_str())),
        Event::Missing => None,
    };
    let record = st::Record::builder()
        .set_event_name(event)
        .dynamodb(data.build())
        .build();
    let Some(record) = convert_record(&record) else {
        return;
    };
    // Every image is decoded as an item would be from a table read.
    for item in [&record.new_image, &record.old_image].into_iter().flatten() {
        if let Ok(parsed) = parse_item(item) {
            assert!(keys::validate_key(&parsed.entry.key).is_ok());
            if let Some(value) = &parsed.entry.value {
                let json = match Json::parse(value, json::MAX_DEPTH) {
                    Ok(v) => v,
                    Err(e) => panic!("an item's value is not JSON: {e}: {value}"),
                };
                // Its text is the canonical form of what it holds.
                assert_eq!(json.to_text(), &**value);
                // Reading the value back as an attribute gives the same value.
                assert_eq!(attr_to_json(&json_to_attr(&json)).as_ref(), Ok(&json));
            }
        }
        for attr in item.values() {
            if let Ok(json) = attr_to_json(attr) {
                assert_eq!(attr_to_json(&json_to_attr(&json)).as_ref(), Ok(&json));
            }
        }
    }
    if record.kind == ChangeKind::Remove {
        let _ = removal(&record);
    }
});
