//! E-mail delivery over SMTP (lettre's blocking transport, on handler
//! workers). Settings come from, first hit wins: explicit parameters (direct
//! sends), the app's `smtp_url`, `SMTP_URL`, then `SMTP_HOST`/`SMTP_PORT`/
//! `SMTP_USER`/`SMTP_PASSWORD`/`SMTP_STARTTLS`; the sender falls back to
//! `SMTP_SENDER` when the chosen source has none (Pushi did not merge it).

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{Address, Message, SmtpTransport, Transport};
use serde_json::Value;

use super::Outcome;
pub use crate::config::SmtpDefaults;
use crate::outbound::{Policy, UNREACHABLE};
use crate::support::percent::{percent_decode, query_pairs};

/// How the connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// Clear text (port 25).
    Plain,
    /// STARTTLS required (Pushi's `smtps://` and `smtp+tls://`, port 587).
    StartTls,
    /// TLS from the first byte (`smtps://` on port 465).
    Wrapper,
}

/// A complete SMTP configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpSettings {
    /// Server host.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// Login, when the server wants one.
    pub user: Option<String>,
    /// Password of that login.
    pub password: Option<String>,
    /// Connection security.
    pub security: Security,
    /// `From` and envelope sender.
    pub sender: String,
    /// The operator chose the server (`SMTP_*`): not subject to the outbound policy.
    pub trusted: bool,
}

/// Settings without the sender check (one source of [`resolve`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partial {
    /// Host (may be empty: not configured).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Login.
    pub user: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// Security.
    pub security: Security,
    /// Sender, when the source names one.
    pub sender: Option<String>,
}

/// Parses `smtp://[user:pass@]host[:port][?sender=addr]` (`smtps`/`smtp+tls`: STARTTLS,
/// default port 587; `smtps` on port 465: implicit TLS).
pub fn parse_url(url: &str) -> Result<Partial, String> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| format!("not an SMTP URL: {url}"))?;
    let security = match scheme.to_ascii_lowercase().as_str() {
        "smtp" => Security::Plain,
        "smtps" | "smtp+tls" | "smtp+starttls" => Security::StartTls,
        other => return Err(format!("unknown SMTP URL scheme {other:?}")),
    };
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let rest = rest.split('/').next().unwrap_or("");
    let (userinfo, hostport) = match rest.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, rest),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || p.is_empty() => {
            (h, Some(p.parse::<u16>().map_err(|_| format!("bad port in SMTP URL: {p:?}"))?))
        }
        _ => (hostport, None),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    let port = port.unwrap_or(if security == Security::Plain { 25 } else { 587 });
    let security = if security == Security::StartTls && port == 465 { Security::Wrapper } else { security };
    let (user, password) = match userinfo {
        Some(u) => match u.split_once(':') {
            Some((a, b)) => (Some(percent_decode(a)), Some(percent_decode(b))),
            None => (Some(percent_decode(u)), None),
        },
        None => (None, None),
    };
    let sender = query_pairs(query).find(|(k, _)| k == "sender").map(|(_, v)| v);
    Ok(Partial { host, port, user, password, security, sender })
}

/// The settings in force: `explicit`, else the app's URL, else the server's.
pub fn resolve(explicit: Option<Partial>, app_url: Option<&str>, d: &SmtpDefaults) -> Result<SmtpSettings, String> {
    let trusted = explicit.is_none() && app_url.is_none();
    let chosen = match (explicit, app_url) {
        (Some(p), _) => p,
        (None, Some(url)) => parse_url(url)?,
        (None, None) if !d.url.is_empty() => parse_url(&d.url)?,
        (None, None) => Partial {
            host: d.host.clone(),
            port: d.port,
            user: Some(d.user.clone()).filter(|u| !u.is_empty()),
            password: Some(d.password.clone()).filter(|p| !p.is_empty()),
            security: if d.starttls { Security::StartTls } else { Security::Plain },
            sender: None,
        },
    };
    if chosen.host.is_empty() {
        return Err("SMTP host not configured".into());
    }
    let sender = chosen
        .sender
        .filter(|s| !s.is_empty())
        .or_else(|| Some(d.sender.clone()).filter(|s| !s.is_empty()))
        .ok_or_else(|| "SMTP sender not configured".to_string())?;
    Ok(SmtpSettings {
        host: chosen.host,
        port: chosen.port,
        user: chosen.user,
        password: chosen.password,
        security: chosen.security,
        sender,
        trusted,
    })
}

/// Whether an e-mail address is usable as a recipient.
pub fn valid_address(s: &str) -> bool {
    s.len() <= 254 && s.parse::<Address>().is_ok()
}

/// Subject and body of an event's e-mail: the message's `subject`/`body`
/// when set, else `[Pushi] <event>` and the notification text.
pub fn subject_and_body(message: &Value) -> (String, String) {
    let text = |k: &str| message.get(k).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string);
    let event = text("event").unwrap_or_default();
    let subject = text("subject").unwrap_or_else(|| format!("[Pushi] {event}"));
    let body = text("body").unwrap_or_else(|| {
        let data = match message.get("data") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            None | Some(Value::Null) | Some(Value::String(_)) => "(no data)".into(),
            Some(other) => serde_json::to_string_pretty(other).unwrap_or_default(),
        };
        format!(
            "Event Notification\n==================\n\nChannel: {}\nEvent: {event}\n\nData:\n{data}\n",
            text("channel").unwrap_or_default()
        )
    });
    (subject, body)
}

/// Sends one message; SMTP 4xx and connection problems are retried, 5xx are not.
/// A tenant's server (app `smtp_url`, `/messaging/email` `smtp_host`) is
/// resolved once under the outbound policy and connected to by address; its
/// connection failures all read [`UNREACHABLE`].
pub fn send(
    s: &SmtpSettings,
    to: &str,
    subject: &str,
    body: &str,
    html: bool,
    timeout: Duration,
    policy: &Policy,
) -> Outcome {
    let (from, to_addr) = match (s.sender.parse::<lettre::message::Mailbox>(), to.parse::<lettre::message::Mailbox>()) {
        (Ok(f), Ok(t)) => (f, t),
        (Err(e), _) => return Outcome::Failed(format!("bad SMTP sender {:?}: {e}", s.sender)),
        (_, Err(e)) => return Outcome::Failed(format!("bad recipient {to:?}: {e}")),
    };
    let content_type = if html { ContentType::TEXT_HTML } else { ContentType::TEXT_PLAIN };
    let message =
        match Message::builder().from(from).to(to_addr).subject(subject).header(content_type).body(body.to_string()) {
            Ok(m) => m,
            Err(e) => return Outcome::Failed(format!("cannot build the e-mail: {e}")),
        };
    let connect_to = if s.trusted {
        s.host.clone()
    } else {
        match policy.resolve(&s.host, s.port) {
            Ok(addrs) => addrs[0].ip().to_string(),
            Err(e) => return Outcome::Retry(e),
        }
    };
    // TLS still checks the certificate against the host name, whatever address we connect to.
    let mut builder = SmtpTransport::builder_dangerous(connect_to.as_str()).port(s.port).timeout(Some(timeout));
    if s.security != Security::Plain {
        let params = match TlsParameters::new(s.host.clone()) {
            Ok(p) => p,
            Err(e) => return Outcome::Failed(format!("TLS settings for {}: {e}", s.host)),
        };
        builder =
            builder.tls(if s.security == Security::Wrapper { Tls::Wrapper(params) } else { Tls::Required(params) });
    }
    if let Some(user) = &s.user {
        builder = builder.credentials(Credentials::new(user.clone(), s.password.clone().unwrap_or_default()));
    }
    match builder.build().send(&message) {
        Ok(_) => Outcome::Sent,
        Err(e) if e.is_permanent() => Outcome::Failed(format!("SMTP {}:{} refused: {e}", s.host, s.port)),
        Err(e) if s.trusted || e.is_transient() => Outcome::Retry(format!("SMTP {}:{}: {e}", s.host, s.port)),
        Err(e) => {
            log::debug!("SMTP {}:{}: {e}", s.host, s.port);
            Outcome::Retry(UNREACHABLE.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn urls() {
        let p = parse_url("smtp://u%40x:p%3Aw@mail.example:2525?sender=a@b.c").unwrap();
        assert_eq!((p.host.as_str(), p.port, p.security), ("mail.example", 2525, Security::Plain));
        assert_eq!((p.user.as_deref(), p.password.as_deref()), (Some("u@x"), Some("p:w")));
        assert_eq!(p.sender.as_deref(), Some("a@b.c"));
        let p = parse_url("smtps://mail.example").unwrap();
        assert_eq!((p.port, p.security, p.sender), (587, Security::StartTls, None));
        assert_eq!(parse_url("smtps://h:465").unwrap().security, Security::Wrapper);
        assert_eq!(parse_url("smtp://h").unwrap().port, 25);
        assert!(parse_url("http://h").is_err());
    }

    #[test]
    fn resolution_order() {
        let d = SmtpDefaults { host: "envhost".into(), port: 25, sender: "s@x.y".into(), ..Default::default() };
        let r = resolve(None, Some("smtp://apphost:26"), &d).unwrap();
        assert_eq!((r.host.as_str(), r.port, r.sender.as_str()), ("apphost", 26, "s@x.y"));
        assert_eq!(resolve(None, None, &d).unwrap().host, "envhost");
        assert_eq!(resolve(None, None, &SmtpDefaults::default()).unwrap_err(), "SMTP host not configured");
        let no_sender = SmtpDefaults { host: "h".into(), ..Default::default() };
        assert_eq!(resolve(None, None, &no_sender).unwrap_err(), "SMTP sender not configured");
    }

    #[test]
    fn template_and_overrides() {
        let m = json!({"channel": "news", "event": "update", "data": "hello"});
        let (s, b) = subject_and_body(&m);
        assert_eq!(s, "[Pushi] update");
        assert_eq!(b, "Event Notification\n==================\n\nChannel: news\nEvent: update\n\nData:\nhello\n");
        let m = json!({"event": "e", "data": "", "subject": "Hi", "body": "Text"});
        assert_eq!(subject_and_body(&m), ("Hi".to_string(), "Text".to_string()));
        assert!(subject_and_body(&json!({"event": "e"})).1.contains("(no data)"));
        assert!(valid_address("a@b.co") && !valid_address("not an address"));
    }
}
