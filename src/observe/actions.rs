//! Operator actions on servers, from the admin server: `POST /stats/action`
//! with `pool`, `server`, `action` (`drain`, `disable`, `enable`, `weight`)
//! and, for `weight`, `weight` (0-256), as a form or a JSON object.
//!
//! Authentication is a bearer token (`admin.actions_token_file` or
//! `admin.actions_token_env`): `Authorization: Bearer TOKEN`, compared in
//! constant time (SHA-256 of both sides, then `subtle`). Without a token
//! configured every action is refused. The admin `access` rules apply first.

use std::net::SocketAddr;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Config;
use crate::upstream::backend::AdminState;

/// Bytes a token must have at least.
pub const MIN_TOKEN: usize = 16;
/// The largest request body an action may have.
pub const MAX_BODY: usize = 8 * 1024;

/// The actions token, kept as its SHA-256 (the clear text is not kept).
#[derive(Clone)]
pub struct Token([u8; 32]);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// A token from its text; `Err` says what is wrong with it.
    pub fn new(text: &[u8]) -> Result<Token, String> {
        if text.len() < MIN_TOKEN {
            return Err(format!("the actions token must be at least {MIN_TOKEN} bytes"));
        }
        if !text.iter().all(u8::is_ascii_graphic) {
            return Err("the actions token must be printable ASCII without spaces".into());
        }
        Ok(Token(Sha256::digest(text).into()))
    }

    /// Whether `presented` is the token, in time independent of where they differ.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let h: [u8; 32] = Sha256::digest(presented).into();
        bool::from(h.ct_eq(&self.0))
    }
}

/// What an operator asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Drain,
    Disable,
    Enable,
    Weight(u32),
}

/// A parsed action request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub pool: String,
    pub server: String,
    pub action: Action,
}

/// Why an action was not done: the HTTP status and a message for the operator.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

fn bad(message: impl Into<String>) -> Refusal {
    Refusal {
        status: 400,
        message: message.into(),
    }
}

/// Decodes `application/x-www-form-urlencoded` (`+` is a space, `%XX` a byte).
fn form_decode(s: &str) -> Result<String, Refusal> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
                let v = hex
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| bad("the form has a bad %-escape"))?;
                out.push(v);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| bad("the form is not UTF-8"))
}

/// Parses an action body: JSON when `content_type` says so, else a form.
pub fn parse(content_type: Option<&str>, body: &[u8]) -> Result<Request, Refusal> {
    let json = content_type.is_some_and(|c| {
        c.split(';')
            .next()
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
    });
    let mut pool = None;
    let mut server = None;
    let mut action = None;
    let mut weight: Option<String> = None;
    if json {
        let v: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| bad(format!("the body is not JSON: {e}")))?;
        let obj = v.as_object().ok_or_else(|| bad("the JSON body must be an object"))?;
        let text = |k: &str| -> Result<Option<String>, Refusal> {
            match obj.get(k) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                Some(serde_json::Value::Number(n)) if k == "weight" => Ok(Some(n.to_string())),
                Some(_) => Err(bad(format!("`{k}` must be a string"))),
            }
        };
        pool = text("pool")?;
        server = text("server")?;
        action = text("action")?;
        weight = text("weight")?;
    } else {
        let text = std::str::from_utf8(body).map_err(|_| bad("the form is not UTF-8"))?;
        for pair in text.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = form_decode(v)?;
            match form_decode(k)?.as_str() {
                "pool" => pool = Some(v),
                "server" => server = Some(v),
                "action" => action = Some(v),
                "weight" => weight = Some(v),
                _ => {}
            }
        }
    }
    let need = |v: Option<String>, k: &str| {
        v.filter(|s| !s.is_empty())
            .ok_or_else(|| bad(format!("`{k}` is missing")))
    };
    let pool = need(pool, "pool")?;
    let server = need(server, "server")?;
    let action = match need(action, "action")?.as_str() {
        "drain" => Action::Drain,
        "disable" => Action::Disable,
        "enable" => Action::Enable,
        "weight" => {
            let w = need(weight, "weight")?;
            match w.trim().parse::<u32>() {
                Ok(n) if n <= 256 => Action::Weight(n),
                _ => return Err(bad(format!("`weight` must be an integer from 0 to 256, not `{w}`"))),
            }
        }
        other => {
            return Err(bad(format!(
                "unknown action `{other}`; use drain, disable, enable or weight"
            )));
        }
    };
    Ok(Request { pool, server, action })
}

/// Checks the request's `Authorization` header against the configured token.
pub fn authorize(token: Option<&Token>, authorization: Option<&[u8]>) -> Result<(), Refusal> {
    let Some(token) = token else {
        return Err(Refusal {
            status: 403,
            message: "operator actions are disabled: set admin.actions_token_file or admin.actions_token_env".into(),
        });
    };
    let presented = authorization.and_then(|h| {
        let (scheme, rest) = h.split_at(h.iter().position(|&b| b == b' ').unwrap_or(h.len()));
        scheme.eq_ignore_ascii_case(b"bearer").then(|| rest.trim_ascii())
    });
    match presented {
        Some(t) if token.matches(t) => Ok(()),
        Some(_) => Err(Refusal {
            status: 401,
            message: "the actions token is wrong".into(),
        }),
        None => Err(Refusal {
            status: 401,
            message: "an action needs `Authorization: Bearer TOKEN` (admin.actions_token_file or _env)".into(),
        }),
    }
}

/// Applies an action to a server of `cfg`; returns the server's new state as JSON.
pub fn apply(cfg: &Config, req: &Request, peer: SocketAddr) -> Result<serde_json::Value, Refusal> {
    let not_found = |message: String| Refusal { status: 404, message };
    let b = cfg
        .live
        .backends
        .iter()
        .find(|b| *b.cfg.name == *req.pool)
        .ok_or_else(|| not_found(format!("no pool `{}`", req.pool)))?;
    let s = b
        .servers
        .iter()
        .find(|s| *s.cfg.name == *req.server)
        .ok_or_else(|| not_found(format!("no server `{}` in pool `{}`", req.server, req.pool)))?;
    use std::sync::atomic::Ordering::Relaxed;
    let what = match req.action {
        Action::Drain => {
            s.set_admin_state(AdminState::Drain);
            "drain".to_string()
        }
        Action::Disable => {
            s.set_admin_state(AdminState::Maint);
            "disable (maint)".to_string()
        }
        Action::Enable => {
            s.set_admin_state(AdminState::Ready);
            "enable (ready)".to_string()
        }
        Action::Weight(w) => {
            let old = s.weight.swap(w, Relaxed);
            format!("weight {old} -> {w}")
        }
    };
    tracing::info!(
        client = %peer,
        pool = %req.pool,
        server = %req.server,
        "operator action: {what}; the server is now {} (admin state {}, weight {})",
        s.shown_state(),
        s.admin_state().name(),
        s.weight.load(Relaxed)
    );
    Ok(serde_json::json!({
        "ok": true,
        "pool": &*b.cfg.name,
        "server": &*s.cfg.name,
        "state": s.shown_state(),
        "admin_state": s.admin_state().name(),
        "weight": s.weight.load(Relaxed),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_and_json_parse_to_the_same_request() {
        let want = Request {
            pool: "web pool".into(),
            server: "s/1".into(),
            action: Action::Weight(7),
        };
        let form = parse(
            Some("application/x-www-form-urlencoded"),
            b"pool=web+pool&server=s%2F1&action=weight&weight=7&extra=x",
        );
        assert_eq!(form, Ok(want.clone()));
        let json = parse(
            Some("application/json; charset=utf-8"),
            br#"{"pool":"web pool","server":"s/1","action":"weight","weight":7}"#,
        );
        assert_eq!(json, Ok(want.clone()));
        let json_text = parse(
            Some("application/json"),
            br#"{"pool":"web pool","server":"s/1","action":"weight","weight":"7"}"#,
        );
        assert_eq!(json_text, Ok(want));
        assert_eq!(
            parse(None, b"pool=p&server=s&action=drain").map(|r| r.action),
            Ok(Action::Drain)
        );
    }

    #[test]
    fn bad_bodies_are_400_with_a_message() {
        for (ct, body) in [
            (Some("application/json"), &b"{"[..]),
            (Some("application/json"), b"[1]"),
            (Some("application/json"), br#"{"pool":1,"server":"s","action":"drain"}"#),
            (None, b"pool=p&server=s"),
            (None, b"pool=p&server=s&action=explode"),
            (None, b"pool=p&server=s&action=weight"),
            (None, b"pool=p&server=s&action=weight&weight=257"),
            (None, b"pool=p&server=s&action=weight&weight=-1"),
            (None, b"pool=%zz&server=s&action=drain"),
            (None, b"pool=%f&server=s&action=drain"),
            (None, b"pool=%ff&server=s&action=drain"),
            (None, b"\xff\xfe"),
            (None, b""),
        ] {
            let r = parse(ct, body).unwrap_err();
            assert_eq!(r.status, 400, "{body:?}");
            assert!(!r.message.is_empty());
        }
    }

    #[test]
    fn the_token_is_checked() {
        assert!(Token::new(b"short").is_err());
        assert!(Token::new(b"has a space in the middle").is_err());
        let t = Token::new(b"0123456789abcdef-token").unwrap();
        assert!(t.matches(b"0123456789abcdef-token"));
        assert!(!t.matches(b"0123456789abcdef-tokem"));
        assert!(!t.matches(b""));
        assert_eq!(format!("{t:?}"), "Token(..)");
        assert_eq!(authorize(None, Some(b"Bearer x")).unwrap_err().status, 403);
        assert_eq!(authorize(Some(&t), None).unwrap_err().status, 401);
        assert_eq!(authorize(Some(&t), Some(b"Basic abc")).unwrap_err().status, 401);
        assert_eq!(authorize(Some(&t), Some(b"Bearer nope")).unwrap_err().status, 401);
        assert_eq!(authorize(Some(&t), Some(b"bearer  0123456789abcdef-token ")), Ok(()));
    }
}
