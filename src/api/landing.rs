//! `GET /` on either listener: a small HTML page for a person who opens the
//! server in a browser (name, version, uptime, health, links, and client
//! snippets with this server's host and ports filled in), or JSON for a
//! client that asks for it (`Accept: application/json`). Nothing secret is
//! shown: no app keys, only placeholders.

use std::sync::atomic::Ordering::Relaxed;

use serde_json::json;

use super::Call;
use crate::effects::Effects;
use crate::http::Response;
use crate::state::State;

/// The page's Content-Security-Policy: no scripts at all, its own inline style.
pub const LANDING_CSP: &str =
    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Escapes text for HTML (the Host header is the client's to choose).
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The host name and port the client used (from the Host header), else the listener's address.
fn host_of(call: &Call, fx: &Effects) -> (String, Option<u16>) {
    let host = call.req.header("host").unwrap_or("");
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => (name, port.parse().ok()),
        _ => (host, None),
    };
    let valid = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b".-[]:".contains(&b));
    if valid {
        (name.to_string(), port)
    } else {
        (fx.config.server_addr.ip().to_string(), None)
    }
}

/// `GET /`.
pub fn landing(st: &mut State, fx: &mut Effects, call: &mut Call) -> Option<Response> {
    let degraded = fx.store.health.degraded.load(Relaxed);
    let status = if degraded { "degraded" } else { "ok" };
    let uptime = st.started.elapsed().as_secs();
    let version = env!("CARGO_PKG_VERSION");
    let wants_json =
        call.req.header("accept").is_some_and(|a| a.contains("application/json") && !a.contains("text/html"));
    if wants_json {
        return Some(Response::json(
            200,
            &json!({
                "service": "pushi", "version": version, "status": status, "uptime_seconds": uptime,
                "links": { "console": "/console", "health": "/health", "metrics": "/metrics" },
            }),
        ));
    }
    let (host, port) = host_of(call, fx);
    let host = escape(&host);
    // (A listener configured on port 0 took a free port: the one the browser used.)
    let port_or = |configured: u16| if configured == 0 { port.unwrap_or(0) } else { configured };
    let (ws_port, api_port) = (port_or(fx.config.server_addr.port()), port_or(fx.config.app_addr.port()));
    let tls = fx.config.server_tls.is_some();
    let api_tls = fx.config.app_tls.is_some() || (tls && fx.config.app_addr == fx.config.server_addr);
    let page = format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pushi</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font:15px/1.5 system-ui,sans-serif;max-width:48rem;margin:2rem auto;padding:0 1rem;color:#222}}
pre{{background:#f4f4f4;padding:.75rem;overflow:auto}}.ok{{color:#070}}.degraded{{color:#a00}}</style></head>
<body><h1>pushi {version}</h1>
<p>A WebSocket push server speaking the Pusher Channels protocol and Pushi's API.</p>
<p>Status: <b class="{status}">{status}</b> &middot; up {uptime} s &middot;
<a href="/console">console</a> &middot; <a href="/health">/health</a> &middot; <a href="/metrics">/metrics</a></p>
<h2>Browser (pusher-js)</h2>
<pre>const pusher = new Pusher('APP_KEY', {{
  wsHost: '{host}', wsPort: {ws_port}, wssPort: {ws_port},
  forceTLS: {tls}, enabledTransports: ['ws', 'wss'], cluster: 'mt1',
}});
pusher.subscribe('my-channel').bind('my-event', (data) =&gt; console.log(data));</pre>
<h2>Server (pusher for Node.js)</h2>
<pre>const pusher = new Pusher({{
  appId: 'APP_ID', key: 'APP_KEY', secret: 'APP_SECRET',
  host: '{host}', port: '{api_port}', useTLS: {api_tls},
}});
await pusher.trigger('my-channel', 'my-event', {{ message: 'hello' }});</pre>
<h2>Server (pusher for Python)</h2>
<pre>client = pusher.Pusher(app_id='APP_ID', key='APP_KEY', secret='APP_SECRET',
                       host='{host}', port={api_port}, ssl={py_tls})
client.trigger('my-channel', 'my-event', {{'message': 'hello'}})</pre>
</body></html>
"#,
        py_tls = if api_tls { "True" } else { "False" },
    );
    let mut r = Response::text(200, "text/html; charset=utf-8", page);
    r.headers.push(("Content-Security-Policy", LANDING_CSP.to_string()));
    r.headers.push(("X-Content-Type-Options", "nosniff".to_string()));
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn html_is_escaped() {
        assert_eq!(escape(r#"<a href="x">&'"#), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    }
}
