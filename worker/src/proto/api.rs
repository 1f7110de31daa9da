//! The JSON API under `/api/`: a request's method, path and body become an [`ApiCall`] (a push
//! or a whole-server query), or an [`ApiError`] to answer at once.
//!
//! Pure routing: the event loop runs the call and renders its outcome (see `query::render_http`
//! for queries, `{"delivered": N}` for pushes). The endpoints are listed in the README and in
//! `scripts/openapi.yaml`.

use herald_ipc::Query;
use serde_json::{json, Map, Value};

use super::http::path_segments;
use super::push::{self, uid_of, PushRequest};
use super::text::kick_data;

/// What an API request asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum ApiCall {
    /// `POST /api/push`: answered `{"delivered": N}` once every worker answered.
    Push(PushRequest),
    /// Everything else: a query of every worker.
    Query(Query),
}

/// A request answered at once with an error.
#[derive(Debug, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: u16,
    /// `{"error": "…"}`.
    pub body: Value,
    /// The methods the path allows, for a 405's `Allow` header.
    pub allow: Option<&'static str>,
}

/// An error answer with `msg`.
fn error(status: u16, msg: &str) -> ApiError {
    ApiError {
        status,
        body: json!({ "error": msg }),
        allow: None,
    }
}

/// A 405 naming the method the path allows.
fn not_allowed(method: &str, path: &str, allow: &'static str) -> ApiError {
    ApiError {
        status: 405,
        body: json!({ "error": format!("{method} is not allowed on {path}") }),
        allow: Some(allow),
    }
}

/// The path's segments after `/api/`, each decoded as a path segment (see
/// [`path_segments`]: an encoded `/` stays inside its segment, `+` and `&` are themselves).
pub fn segments(path: &str) -> Vec<String> {
    path_segments(path.trim_end_matches('/').trim_start_matches("/api/"))
}

/// The body as a JSON object (an empty body is an empty object).
fn object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if body.is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(error(400, "body must be a JSON object")),
    }
}

/// Routes one API request. `path` is the request path (starting with `/api/`), `query` its
/// raw query string; a push may name at most `max_targets` uids, groups and excluded uids.
pub fn route(
    method: &str,
    path: &str,
    query: &str,
    body: &[u8],
    max_targets: usize,
) -> Result<ApiCall, ApiError> {
    let shown = path.trim_end_matches('/');
    let parts = segments(path);
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    let param = |k: &str| {
        form_urlencoded::parse(query.as_bytes())
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.into_owned())
            .filter(|v| !v.is_empty())
    };
    let q = |q: Query| Ok(ApiCall::Query(q));
    match (method, parts.as_slice()) {
        ("POST", ["push"]) => push::parse_api(&object(body)?, max_targets)
            .map(ApiCall::Push)
            .map_err(|e| error(400, &e)),
        ("POST", ["groups", g, "members"]) => {
            let uid = object(body)?
                .get("uid")
                .and_then(uid_of)
                .ok_or_else(|| error(400, "`uid` must be a non-empty string"))?;
            q(Query::Join {
                uid,
                group: g.to_string(),
            })
        }
        ("DELETE", ["groups", g, "members", uid]) => q(Query::Leave {
            uid: uid.to_string(),
            group: g.to_string(),
        }),
        ("DELETE", ["groups", g]) => q(Query::Ungroup {
            group: g.to_string(),
        }),
        ("GET", ["online", uid]) => q(Query::Online {
            uid: uid.to_string(),
        }),
        ("GET", ["uids"]) => q(Query::Uids {
            group: param("group"),
        }),
        ("GET", ["groups"]) => q(Query::Groups),
        ("GET", ["stats"]) => q(Query::Stats),
        ("GET", ["history", uid]) => q(Query::History {
            uid: uid.to_string(),
        }),
        ("POST", ["kick", uid]) => {
            let b = object(body)?;
            q(Query::Kick {
                uid: uid.to_string(),
                data: kick_data(b.get("data")),
            })
        }
        (_, ["push"] | ["groups", _, "members"] | ["kick", _]) => {
            Err(not_allowed(method, shown, "POST"))
        }
        (_, ["groups", _, "members", _] | ["groups", _]) => {
            Err(not_allowed(method, shown, "DELETE"))
        }
        (_, ["online", _] | ["uids"] | ["groups"] | ["stats"] | ["history", _]) => {
            Err(not_allowed(method, shown, "GET"))
        }
        _ => Err(error(404, &format!("no such endpoint: {shown}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_decoded_as_path_segments() {
        assert_eq!(segments("/api/online/a%2Fb/"), vec!["online", "a/b"]);
        assert_eq!(segments("/api/online/a&b"), vec!["online", "a&b"]);
        assert_eq!(segments("/api/online/a+b%26c"), vec!["online", "a+b&c"]);
        assert_eq!(segments("/api/online/%E4%B8%AD"), vec!["online", "中"]);
    }

    #[test]
    fn routes() {
        assert_eq!(
            route("GET", "/api/online/a&b", "", b"", 100),
            Ok(ApiCall::Query(Query::Online { uid: "a&b".into() }))
        );
        assert_eq!(
            route("GET", "/api/uids", "group=g%201", b"", 100),
            Ok(ApiCall::Query(Query::Uids {
                group: Some("g 1".into())
            }))
        );
        assert_eq!(
            route("POST", "/api/groups/g/members", "", br#"{"uid":5}"#, 100),
            Ok(ApiCall::Query(Query::Join {
                uid: "5".into(),
                group: "g".into()
            }))
        );
        let e = route("GET", "/api/push", "", b"", 100);
        assert_eq!(e.map_err(|e| (e.status, e.allow)), Err((405, Some("POST"))));
        let e = route("GET", "/api/nope", "", b"", 100);
        assert_eq!(e.map_err(|e| e.status), Err(404));
        let e = route("POST", "/api/push", "", b"[1]", 100);
        assert_eq!(
            e.map_err(|e| e.body),
            Err(json!({"error": "body must be a JSON object"}))
        );
        let e = route("POST", "/api/kick/u", "", br#"{"data":{"a":1}}"#, 100);
        assert_eq!(
            e,
            Ok(ApiCall::Query(Query::Kick {
                uid: "u".into(),
                data: Some(r#"{"a":1}"#.into())
            }))
        );
    }
}
