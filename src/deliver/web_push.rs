//! Web Push: RFC 8291 message encryption (`aes128gcm`, RFC 8188 with one
//! record) and RFC 8292 VAPID (an ES256 JWT per request), sent with ureq from
//! handler workers. Keys are P-256: an app's `vapid_key` is PEM (PKCS#8 or
//! SEC1) or the base64url private scalar; one is generated when missing.

use aes_gcm::aead::Aead;
use aes_gcm::{Aes128Gcm, KeyInit, Nonce};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hkdf::Hkdf;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::DecodePrivateKey;
use p256::{PublicKey, SecretKey};
use serde_json::{json, Value};
use sha2::Sha256;

use super::{b64_decode, classify_ureq, es256_jwt, now_secs, Creds, Outcome};

/// Record size announced in the header; one record carries the whole payload.
const RECORD_SIZE: u32 = 4096;
/// Largest clear-text payload that fits one record (4096 − 16 tag − 1 delimiter).
pub const MAX_PAYLOAD: usize = RECORD_SIZE as usize - 17;

/// A fresh random P-256 private key.
pub fn generate_secret() -> SecretKey {
    loop {
        if let Ok(k) = SecretKey::from_slice(&crate::apps::random_bytes(32)) {
            return k;
        }
    }
}

/// A new VAPID key as stored in an app's `vapid_key` (base64url private scalar).
pub fn generate_key() -> String {
    URL_SAFE_NO_PAD.encode(generate_secret().to_bytes())
}

/// Reads a VAPID (or any P-256) private key: PEM (PKCS#8 or SEC1), or
/// base64url of the 32-byte scalar or of its DER.
pub fn parse_secret(text: &str) -> Result<SecretKey, String> {
    let text = text.trim();
    if text.starts_with("-----BEGIN") {
        return SecretKey::from_pkcs8_pem(text)
            .or_else(|_| SecretKey::from_sec1_pem(text))
            .map_err(|e| format!("not a P-256 private key in PEM: {e}"));
    }
    let bytes = b64_decode(text).ok_or("not base64 or PEM")?;
    if bytes.len() == 32 {
        return SecretKey::from_slice(&bytes).map_err(|e| format!("not a P-256 private key: {e}"));
    }
    SecretKey::from_pkcs8_der(&bytes)
        .or_else(|_| SecretKey::from_sec1_der(&bytes))
        .map_err(|e| format!("not a P-256 private key: {e}"))
}

/// base64url (no padding) of the uncompressed public point (65 bytes), as browsers want it.
pub fn public_key_b64(secret: &SecretKey) -> String {
    URL_SAFE_NO_PAD.encode(secret.public_key().to_encoded_point(false).as_bytes())
}

/// Checks a subscription's keys; `Err((field, why))`.
pub fn validate_keys(p256dh: &str, auth: &str) -> Result<(), (&'static str, String)> {
    let point = b64_decode(p256dh).ok_or(("p256dh", "not base64url".to_string()))?;
    PublicKey::from_sec1_bytes(&point).map_err(|_| ("p256dh", "not a P-256 public key".to_string()))?;
    let secret = b64_decode(auth).ok_or(("auth", "not base64url".to_string()))?;
    if secret.len() != 16 {
        return Err(("auth", "must be 16 bytes (base64url)".into()));
    }
    Ok(())
}

/// The payload of an event: `web_push`, else `data`, else `push`, else `message`
/// (first key present); strings as they are, null as `{}`, other values as JSON.
pub fn payload_of(message: &Value) -> Vec<u8> {
    let value = ["web_push", "data", "push", "message"].iter().find_map(|k| message.get(*k));
    payload_bytes(value.unwrap_or(&Value::Null))
}

/// The bytes sent for one value (direct sends: `message`).
pub fn payload_bytes(value: &Value) -> Vec<u8> {
    match value {
        Value::Null => b"{}".to_vec(),
        Value::String(s) => s.clone().into_bytes(),
        Value::Object(_) | Value::Array(_) => value.to_string().into_bytes(),
        other => json!({ "message": other.to_string() }).to_string().into_bytes(),
    }
}

/// RFC 8291: encrypts `payload` for the subscription's `p256dh` and `auth`,
/// with a fresh sender key and salt; returns the `aes128gcm` body.
pub fn encrypt(payload: &[u8], p256dh: &str, auth: &str) -> Result<Vec<u8>, String> {
    encrypt_with(payload, p256dh, auth, &generate_secret(), &crate::apps::random_bytes(16))
}

fn encrypt_with(payload: &[u8], p256dh: &str, auth: &str, sender: &SecretKey, salt: &[u8]) -> Result<Vec<u8>, String> {
    if payload.len() > MAX_PAYLOAD {
        return Err(format!("payload of {} bytes is above the {MAX_PAYLOAD} a push message holds", payload.len()));
    }
    let ua_bytes = b64_decode(p256dh).ok_or("p256dh is not base64url")?;
    let ua_public = PublicKey::from_sec1_bytes(&ua_bytes).map_err(|_| "p256dh is not a P-256 public key")?;
    let auth_secret = b64_decode(auth).ok_or("auth is not base64url")?;
    let ua_bytes = ua_public.to_encoded_point(false).as_bytes().to_vec();
    let as_bytes = sender.public_key().to_encoded_point(false).as_bytes().to_vec();
    let shared = p256::ecdh::diffie_hellman(sender.to_nonzero_scalar(), ua_public.as_affine());
    // IKM = HKDF(salt = auth secret, ikm = ECDH secret, info = "WebPush: info\0" ‖ ua ‖ as).
    let mut key_info = b"WebPush: info\0".to_vec();
    key_info.extend_from_slice(&ua_bytes);
    key_info.extend_from_slice(&as_bytes);
    let mut ikm = [0u8; 32];
    Hkdf::<Sha256>::new(Some(&auth_secret), shared.raw_secret_bytes())
        .expand(&key_info, &mut ikm)
        .map_err(|e| e.to_string())?;
    let prk = Hkdf::<Sha256>::new(Some(salt), &ikm);
    let (mut cek, mut nonce) = ([0u8; 16], [0u8; 12]);
    prk.expand(b"Content-Encoding: aes128gcm\0", &mut cek).map_err(|e| e.to_string())?;
    prk.expand(b"Content-Encoding: nonce\0", &mut nonce).map_err(|e| e.to_string())?;
    let mut plain = payload.to_vec();
    plain.push(2); // delimiter of the last (only) record, no padding
    let cipher = Aes128Gcm::new_from_slice(&cek).map_err(|e| e.to_string())?;
    let sealed = cipher.encrypt(Nonce::from_slice(&nonce), plain.as_ref()).map_err(|e| e.to_string())?;
    let mut body = Vec::with_capacity(16 + 4 + 1 + 65 + sealed.len());
    body.extend_from_slice(salt);
    body.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    body.push(as_bytes.len() as u8);
    body.extend_from_slice(&as_bytes);
    body.extend_from_slice(&sealed);
    Ok(body)
}

/// `scheme://host[:port]` of a URL (the VAPID audience).
pub fn origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let host = rest.split(['/', '?', '#']).next().filter(|h| !h.is_empty())?;
    Some(format!("{scheme}://{host}"))
}

/// RFC 8292 `Authorization: vapid t=<JWT>, k=<public key>` for this endpoint.
pub fn vapid_authorization(key: &SecretKey, endpoint: &str, email: Option<&str>) -> Result<String, String> {
    let aud = origin(endpoint).ok_or("the endpoint is not a URL")?;
    let sub = match email.filter(|e| !e.is_empty()) {
        Some(e) if e.starts_with("mailto:") || e.starts_with("https:") => e.to_string(),
        Some(e) => format!("mailto:{e}"),
        None => "mailto:noreply@pushi.io".to_string(),
    };
    let claims = json!({ "aud": aud, "exp": now_secs() + 12 * 3600, "sub": sub });
    let jwt = es256_jwt(&json!({ "typ": "JWT", "alg": "ES256" }), &claims, key);
    Ok(format!("vapid t={jwt}, k={}", public_key_b64(key)))
}

/// Sends one push message. 2xx: sent; 404/410: gone; 429/5xx/network: retry; else failed.
pub fn send(
    agent: &ureq::Agent,
    creds: &Creds,
    endpoint: &str,
    p256dh: &str,
    auth: &str,
    payload: &[u8],
    ttl: u64,
) -> Outcome {
    let key = match creds.vapid.as_deref().map_err(String::clone).and_then(parse_secret) {
        Ok(k) => k,
        Err(e) => return Outcome::Failed(e),
    };
    let authorization = match vapid_authorization(&key, endpoint, creds.vapid_email.as_deref()) {
        Ok(a) => a,
        Err(e) => return Outcome::Failed(e),
    };
    let body = match encrypt(payload, p256dh, auth) {
        Ok(b) => b,
        Err(e) => return Outcome::Failed(e),
    };
    let result = agent
        .post(endpoint)
        .header("Authorization", &authorization)
        .header("TTL", ttl.to_string())
        .header("Content-Encoding", "aes128gcm")
        .header("Content-Type", "application/octet-stream")
        .send(&body[..]);
    match result {
        Err(ureq::Error::StatusCode(code @ (404 | 410))) => {
            Outcome::Gone(format!("push service answered {code}: subscription expired"))
        }
        other => classify_ureq(other.map(|r| r.status().as_u16())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8291 section 5 example, with its fixed keys and salt.
    #[test]
    fn rfc8291_example() {
        let sender =
            SecretKey::from_slice(&b64_decode("yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw").unwrap()).unwrap();
        let salt = b64_decode("DGv6ra1nlYgDCS1FRnbzlw").unwrap();
        let body = encrypt_with(
            b"When I grow up, I want to be a watermelon",
            "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4",
            "BTBZMqHH6r4Tts7J_aSIgg",
            &sender,
            &salt,
        )
        .unwrap();
        let want = "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN";
        assert_eq!(URL_SAFE_NO_PAD.encode(&body), want);
    }

    #[test]
    fn keys_and_payloads() {
        let k = generate_key();
        let secret = parse_secret(&k).unwrap();
        assert_eq!(b64_decode(&public_key_b64(&secret)).unwrap().len(), 65);
        assert_eq!(payload_of(&json!({"data": "d", "push": "p"})), b"d");
        assert_eq!(payload_of(&json!({"web_push": {"a": 1}, "data": "d"})), br#"{"a":1}"#);
        assert_eq!(payload_of(&json!({})), b"{}");
        assert_eq!(origin("https://push.example:8443/a/b?c"), Some("https://push.example:8443".into()));
        let auth = vapid_authorization(&secret, "https://p.example/x", Some("me@x.y")).unwrap();
        assert!(auth.starts_with("vapid t=") && auth.contains(", k="));
    }
}
