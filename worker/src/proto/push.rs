//! One push request, whoever asks for it: the text port's `{"cmd":"push"|"group"|"all"}`, the
//! JSON API's `POST /api/push` and a relaying client all end as a [`PushRequest`], read by
//! the same functions, so a uid, a list or a payload means the same on every port.
//!
//! Uids are strings, or integers written as their digits (PHP's `json_encode` writes numeric
//! ids as numbers, and Workerman's uid map matched them to the same digits sent by a browser).
//! Any other JSON value (`1.5`, `true`, an object) is refused with an error naming the field.
//!
//! A push names at most `max_targets` uids, groups and excluded uids in all: delivering to a
//! list, or leaving a list out, costs the event loop time in proportion to its length, so one
//! request may not hold the loop (and every other backend and client of the worker) for long.
//! The lengths are checked before any list is built.

use base64::Engine;
use herald_ipc::Target;
use serde_json::{Map, Value};

/// A push, parsed and checked: what the event loop hands to the registry and the siblings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushRequest {
    /// Whom it is for.
    pub target: Target,
    /// Uids left out (GatewayWorker's `exclude`).
    pub exclude: Vec<String>,
    /// The frame's body.
    pub payload: Vec<u8>,
    /// Sent as a binary frame (`"binary":true`, `data` given as base64).
    pub binary: bool,
}

/// A uid from JSON: a non-empty string, or an integer as its digits.
pub fn uid_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

/// How many entries field value `v` names: an array's length, else one.
fn entries(v: Option<&Value>) -> usize {
    match v {
        None | Some(Value::Null) => 0,
        Some(Value::Array(a)) => a.len(),
        Some(_) => 1,
    }
}

/// The error for a push naming `n` targets, over `max_targets`.
fn too_many(n: usize, max_targets: usize) -> String {
    format!(
        "a push may name at most {max_targets} uids, groups and excluded uids in all \
         (max_targets); this one names {n}"
    )
}

/// Refuses a push whose fields `keys` (its target and `exclude`) name more than
/// `max_targets` entries together, before any list is built from them.
pub fn check_targets(
    obj: &Map<String, Value>,
    keys: &[&str],
    max_targets: usize,
) -> Result<(), String> {
    let n = keys
        .iter()
        .map(|k| entries(obj.get(*k)))
        .fold(0usize, usize::saturating_add);
    if n > max_targets {
        return Err(too_many(n, max_targets));
    }
    Ok(())
}

/// One uid or a list of them, from field `key` (for the error's wording).
pub fn uid_list(v: &Value, key: &str) -> Result<Vec<String>, String> {
    match v {
        Value::Array(a) => a
            .iter()
            .map(|x| uid_of(x).ok_or_else(|| format!("`{key}` must hold strings")))
            .collect(),
        other => uid_of(other)
            .map(|u| vec![u])
            .ok_or_else(|| format!("`{key}` must be a string or an array of strings")),
    }
}

/// `data` as the frame body: a JSON string as is, anything else as compact JSON.
pub fn data_bytes(v: &Value) -> Vec<u8> {
    match v {
        Value::String(s) => s.clone().into_bytes(),
        other => other.to_string().into_bytes(),
    }
}

/// The parts every push request shares (`exclude`, `binary`, `data`), around `target`, which
/// with `exclude` may name at most `max_targets` entries.
pub fn parse(
    obj: &Map<String, Value>,
    target: Target,
    max_targets: usize,
) -> Result<PushRequest, String> {
    let named = match &target {
        Target::Uids(l) | Target::Groups(l) => l.len(),
        Target::All => 0,
    };
    let n = named.saturating_add(entries(obj.get("exclude")));
    if n > max_targets {
        return Err(too_many(n, max_targets));
    }
    let exclude = match obj.get("exclude") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => uid_list(v, "exclude")?,
    };
    let binary = obj.get("binary").and_then(Value::as_bool).unwrap_or(false);
    let data = obj.get("data").ok_or("missing `data`")?;
    let payload = if binary {
        let b64 = data
            .as_str()
            .ok_or("binary `data` must be a base64 string")?;
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| "binary `data` is not valid base64".to_string())?
    } else {
        data_bytes(data)
    };
    Ok(PushRequest {
        target,
        exclude,
        payload,
        binary,
    })
}

/// The JSON API's body: exactly one of `to`, `group` or `"all": true`, then [`parse`].
pub fn parse_api(obj: &Map<String, Value>, max_targets: usize) -> Result<PushRequest, String> {
    check_targets(obj, &["to", "group", "exclude"], max_targets)?;
    let target = match (obj.get("to"), obj.get("group"), obj.get("all")) {
        (Some(to), None, None) => Target::Uids(uid_list(to, "to")?),
        (None, Some(g), None) => Target::Groups(uid_list(g, "group")?),
        (None, None, Some(Value::Bool(true))) => Target::All,
        _ => return Err("give exactly one of `to`, `group` or `\"all\": true`".into()),
    };
    parse(obj, target, max_targets)
}

/// Seed 002's relay by a logged-in client: `UID:message` to that uid, `all:message` to
/// everyone; `None` for a message without a colon.
pub fn parse_relay(msg: &str) -> Option<PushRequest> {
    let (to, body) = msg.split_once(':')?;
    let target = if to == "all" {
        Target::All
    } else {
        Target::Uids(vec![to.to_string()])
    };
    Some(PushRequest {
        target,
        exclude: Vec::new(),
        payload: body.as_bytes().to_vec(),
        binary: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A limit the tests' lists stay under.
    const MAX: usize = 100;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn uids_are_strings_or_integers_on_every_port() {
        assert_eq!(uid_of(&json!(123)), Some("123".into()));
        assert_eq!(uid_of(&json!("u")), Some("u".into()));
        for bad in [json!(1.5), json!(""), json!(true), json!({}), json!(null)] {
            assert_eq!(uid_of(&bad), None, "{bad}");
        }
        // The API and the text port give the same answer for the same list.
        let api = parse_api(&obj(json!({"to": [1.5], "data": 1})), MAX);
        assert_eq!(api, Err("`to` must hold strings".into()));
        assert_eq!(
            parse_api(&obj(json!({"to": [7, "a"], "data": {"x": 1}})), MAX),
            Ok(PushRequest {
                target: Target::Uids(vec!["7".into(), "a".into()]),
                exclude: vec![],
                payload: br#"{"x":1}"#.to_vec(),
                binary: false,
            })
        );
    }

    #[test]
    fn api_targets_and_payloads() {
        let one_of = Err("give exactly one of `to`, `group` or `\"all\": true`".to_string());
        assert_eq!(
            parse_api(&obj(json!({"all": false, "data": 1})), MAX),
            one_of
        );
        assert_eq!(
            parse_api(&obj(json!({"to": "a", "group": "g", "data": 1})), MAX),
            one_of
        );
        assert_eq!(
            parse_api(&obj(json!({"to": "h1"})), MAX),
            Err("missing `data`".into())
        );
        let r = parse_api(
            &obj(json!({"group": ["g"], "exclude": "u2", "data": "AAE=", "binary": true})),
            MAX,
        );
        assert_eq!(
            r,
            Ok(PushRequest {
                target: Target::Groups(vec!["g".into()]),
                exclude: vec!["u2".into()],
                payload: vec![0, 1],
                binary: true,
            })
        );
        assert_eq!(
            parse_api(
                &obj(json!({"all": true, "data": "!!", "binary": true})),
                MAX
            ),
            Err("binary `data` is not valid base64".into())
        );
    }

    #[test]
    fn targets_and_excluded_uids_count_together_against_max_targets() {
        let uids = |n: usize| Value::Array((0..n).map(|i| json!(format!("u{i}"))).collect());
        let api = |v: Value| parse_api(&obj(v), 3);
        assert!(api(json!({"to": uids(3), "data": 1})).is_ok());
        assert!(api(json!({"to": uids(2), "exclude": "x", "data": 1})).is_ok());
        assert!(api(json!({"all": true, "exclude": uids(3), "data": 1})).is_ok());
        let over = Err(too_many(4, 3));
        assert_eq!(api(json!({"to": uids(4), "data": 1})), over);
        assert_eq!(api(json!({"group": uids(4), "data": 1})), over);
        assert_eq!(
            api(json!({"all": true, "exclude": uids(4), "data": 1})),
            over
        );
        assert_eq!(
            api(json!({"to": uids(2), "exclude": uids(2), "data": 1})),
            over
        );
        // Counted before the lists are read: a long list of bad entries is refused for its
        // length, not walked.
        assert_eq!(
            api(json!({"to": Value::Array(vec![json!(1.5); 4]), "data": 1})),
            over
        );
        assert_eq!(
            parse(
                &obj(json!({"exclude": uids(3), "data": 1})),
                Target::Uids(vec!["a".into()]),
                3
            ),
            Err(too_many(4, 3))
        );
        assert!(err_names_the_option(&too_many(4, 3)));
    }

    fn err_names_the_option(e: &str) -> bool {
        e.contains("max_targets") && e.contains("at most 3") && e.contains("names 4")
    }

    #[test]
    fn relay() {
        let r = parse_relay("u2:hello:there");
        assert_eq!(
            r.map(|r| (r.target, r.payload)),
            Some((Target::Uids(vec!["u2".into()]), b"hello:there".to_vec()))
        );
        assert_eq!(parse_relay("all:x").map(|r| r.target), Some(Target::All));
        assert_eq!(parse_relay("no colon"), None);
    }
}
