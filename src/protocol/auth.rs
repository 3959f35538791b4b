//! Pusher signatures: channel authorization (`<key>:<hex HMAC-SHA256>`),
//! user sign-in, and HTTP API request signing. Comparisons run in constant
//! time so a signature cannot be guessed byte by byte.

pub use crate::support::crypto::{constant_time_eq, hmac_hex, md5_hex};

/// Seconds a signed API request stays valid around the server's clock.
pub const API_TIMESTAMP_WINDOW_SECS: u64 = 600;

/// Checks `auth` = `<key>:<hex HMAC(secret, message)>` for this app.
pub fn verify_token(key: &str, secret: &str, auth: &str, message: &str) -> bool {
    let Some((given_key, signature)) = auth.split_once(':') else { return false };
    let expected = hmac_hex(secret, message);
    constant_time_eq(given_key.as_bytes(), key.as_bytes())
        & constant_time_eq(signature.to_ascii_lowercase().as_bytes(), expected.as_bytes())
}

/// The string signed for a channel subscription: `socket_id:channel[:channel_data]`.
pub fn channel_message(socket_id: &str, channel: &str, channel_data: Option<&str>) -> String {
    match channel_data {
        Some(data) => format!("{socket_id}:{channel}:{data}"),
        None => format!("{socket_id}:{channel}"),
    }
}

/// The string signed for `pusher:signin`.
pub fn signin_message(socket_id: &str, user_data: &str) -> String {
    format!("{socket_id}::user::{user_data}")
}

/// Why a signed API request was refused (all answered with 401).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiAuthError {
    /// A required `auth_*` parameter is absent.
    Missing(&'static str),
    /// `auth_key` is not this app's key.
    WrongKey,
    /// `auth_timestamp` is outside the window.
    Stale,
    /// `body_md5` does not match the body.
    BodyMismatch,
    /// The signature does not match.
    BadSignature,
}

impl ApiAuthError {
    /// A sentence for the error body.
    pub fn message(&self) -> String {
        match self {
            ApiAuthError::Missing(p) => format!("missing {p}"),
            ApiAuthError::WrongKey => "auth_key does not belong to this app".into(),
            ApiAuthError::Stale => {
                format!("auth_timestamp is more than {API_TIMESTAMP_WINDOW_SECS} s from server time")
            }
            ApiAuthError::BodyMismatch => "body_md5 does not match the body".into(),
            ApiAuthError::BadSignature => "invalid signature".into(),
        }
    }
}

/// Verifies a signed HTTP API request: key, timestamp window, body MD5 and
/// the HMAC of `METHOD\npath\nsorted query`. The query is accepted with
/// values raw (Node and Python SDKs) or percent-encoded (PHP SDK).
pub fn verify_api_request(
    key: &str,
    secret: &str,
    method: &str,
    path: &str,
    raw_query: &str,
    body: &[u8],
    now_secs: u64,
) -> Result<(), ApiAuthError> {
    let raw_pairs: Vec<(String, &str)> = raw_query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (crate::http::percent_decode(k).to_ascii_lowercase(), v)
        })
        .collect();
    let get = |name: &str| raw_pairs.iter().find(|(k, _)| k == name).map(|(_, v)| crate::http::percent_decode(v));
    let auth_key = get("auth_key").ok_or(ApiAuthError::Missing("auth_key"))?;
    let timestamp = get("auth_timestamp").ok_or(ApiAuthError::Missing("auth_timestamp"))?;
    let signature = get("auth_signature").ok_or(ApiAuthError::Missing("auth_signature"))?;
    if !constant_time_eq(auth_key.as_bytes(), key.as_bytes()) {
        return Err(ApiAuthError::WrongKey);
    }
    let ts: u64 = timestamp.parse().map_err(|_| ApiAuthError::Stale)?;
    if ts.abs_diff(now_secs) > API_TIMESTAMP_WINDOW_SECS {
        return Err(ApiAuthError::Stale);
    }
    match get("body_md5") {
        Some(md5) if md5 != md5_hex(body) => return Err(ApiAuthError::BodyMismatch),
        None if !body.is_empty() => return Err(ApiAuthError::Missing("body_md5")),
        _ => {}
    }
    // The canonical form the SDKs sign: decoded values, sorted by key, each key
    // once. Only that form is accepted, so `%41` and `%2541` sign different requests.
    let mut signed: Vec<(&str, String)> = raw_pairs
        .iter()
        .filter(|(k, _)| k != "auth_signature")
        .map(|(k, v)| (k.as_str(), crate::http::percent_decode(v)))
        .collect();
    signed.sort();
    if signed.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err(ApiAuthError::BadSignature);
    }
    let q = signed.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
    let signature = signature.to_ascii_lowercase();
    let expected = hmac_hex(secret, &format!("{method}\n{path}\n{q}"));
    if constant_time_eq(expected.as_bytes(), signature.as_bytes()) {
        Ok(())
    } else {
        Err(ApiAuthError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pusher_documented_vectors() {
        // Pusher's auth-signatures docs: key 278d425bdf160c739803, secret 7ad3773142a6692b25b8.
        let sig = hmac_hex("7ad3773142a6692b25b8", "1234.1234:private-foobar");
        assert_eq!(sig, "58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4");
        assert!(verify_token(
            "278d425bdf160c739803",
            "7ad3773142a6692b25b8",
            &format!("278d425bdf160c739803:{sig}"),
            &channel_message("1234.1234", "private-foobar", None)
        ));
        assert!(!verify_token(
            "278d425bdf160c739803",
            "wrong",
            &format!("278d425bdf160c739803:{sig}"),
            "1234.1234:private-foobar"
        ));
        let presence = channel_message(
            "1234.1234",
            "presence-foobar",
            Some("{\"user_id\":10,\"user_info\":{\"name\":\"Mr. Channels\"}}"),
        );
        assert_eq!(
            hmac_hex("7ad3773142a6692b25b8", &presence),
            "31935e7d86dba64c2a90aed31fdc61869f9b22ba9d8863bba239c03ca481bc80"
        );
    }

    #[test]
    fn api_request_signature() {
        // Pusher's HTTP API docs example (auth_timestamp 1353088179).
        let body = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        assert_eq!(md5_hex(body), "ec365a775a4cd0599faeb73354201b6f");
        let query = "auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0\
                     &body_md5=ec365a775a4cd0599faeb73354201b6f\
                     &auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c";
        let check = |q: &str, now| {
            verify_api_request("278d425bdf160c739803", "7ad3773142a6692b25b8", "POST", "/apps/3/events", q, body, now)
        };
        assert_eq!(check(query, 1353088179), Ok(()));
        assert_eq!(check(query, 1353088179 + 601), Err(ApiAuthError::Stale));
        assert_eq!(check(&query.replace("da4548", "da4549"), 1353088179), Err(ApiAuthError::BadSignature));
        assert_eq!(check(&query.replace("ec365a", "ec365b"), 1353088179), Err(ApiAuthError::BodyMismatch));
        assert_eq!(check(&query.replace("auth_key=278d", "auth_key=999d"), 1353088179), Err(ApiAuthError::WrongKey));
    }

    #[test]
    fn only_the_decoded_sorted_query_is_signed() {
        let now = 1_700_000_000u64;
        let signed = |params: &str| {
            let q = format!("auth_key=k&auth_timestamp={now}&auth_version=1.0&{params}");
            hmac_hex("s", &format!("GET\n/apps/1/channels\n{q}"))
        };
        let check = |raw_params: &str, sig: &str| {
            let q = format!("auth_key=k&auth_timestamp={now}&auth_version=1.0&{raw_params}&auth_signature={sig}");
            verify_api_request("k", "s", "GET", "/apps/1/channels", &q, b"", now)
        };
        // A signature over the value "%41" is good for the request that means "%41"...
        let sig = signed("x=%41");
        assert_eq!(check("x=%2541", &sig), Ok(()));
        // ...and not for the one whose raw text happens to read "%41" (it means "A").
        assert_eq!(check("x=%41", &sig), Err(ApiAuthError::BadSignature));
        assert_eq!(check("x=%41", &signed("x=A")), Ok(()));
        // A repeated parameter is ambiguous: refused.
        assert_eq!(check("x=A&x=A", &signed("x=A&x=A")), Err(ApiAuthError::BadSignature));
    }
}
