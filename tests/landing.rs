//! `GET /` on both listeners: an HTML page for browsers (with this server's
//! host and ports in the client snippets, the Host header escaped, a
//! script-free Content-Security-Policy), JSON for clients that ask for it.

mod common;

use common::*;

#[test]
fn browsers_get_a_landing_page_json_clients_get_json() {
    let server = Server::start(&[]);
    for addr in [server.ws, server.api] {
        let raw = format!("GET / HTTP/1.1\r\nHost: example.test:{}\r\nAccept: text/html\r\n\r\n", addr.port());
        let r = http_raw(addr, raw.as_bytes());
        assert_eq!(r.status, 200);
        assert_eq!(r.header("Content-Type"), Some("text/html; charset=utf-8"));
        let csp = r.header("Content-Security-Policy").expect("a CSP");
        assert!(csp.contains("default-src 'none'") && !csp.contains("script-src"), "{csp}");
        let page = String::from_utf8_lossy(&r.body).to_string();
        assert!(page.contains(&format!("pushi {}", env!("CARGO_PKG_VERSION"))), "{page}");
        assert!(page.contains("wsHost: 'example.test'"), "the snippet uses the host the browser used");
        // (The test server listens on port 0, so the port the browser used is shown.)
        assert!(page.contains(&format!("wsPort: {}", addr.port())), "{page}");
        assert!(page.contains(&format!("port: '{}'", addr.port())), "{page}");
        assert!(page.contains("href=\"/health\"") && page.contains("href=\"/metrics\""));

        let raw = "GET / HTTP/1.1\r\nHost: a\r\nAccept: application/json\r\n\r\n";
        let r = http_raw(addr, raw.as_bytes());
        assert_eq!(r.status, 200);
        assert_eq!(r.header("Content-Type"), Some("application/json"));
        let body = r.json();
        assert_eq!(body["service"], "pushi");
        assert_eq!(body["status"], "ok");
    }
}

#[test]
fn a_hostile_host_header_is_not_echoed_into_the_page() {
    let server = Server::start(&[]);
    let raw = "GET / HTTP/1.1\r\nHost: <script>x</script>\r\n\r\n";
    let r = http_raw(server.api, raw.as_bytes());
    assert_eq!(r.status, 200);
    let page = String::from_utf8_lossy(&r.body).to_string();
    assert!(!page.contains("<script>"), "{page}");
}
