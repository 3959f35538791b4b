//! Plain HTTP deliveries (Pusher web hook batches, `/webs` posts, direct
//! web hook sends) and how any HTTP answer is sorted into an [`Outcome`].

use log::debug;

use super::Outcome;
use crate::outbound::UNREACHABLE;

/// One web hook request: Pusher batches, `/webs` posts and direct sends.
pub(super) fn send_web(
    agent: &ureq::Agent,
    url: &str,
    method: &str,
    headers: &[(String, String)],
    body: Option<&str>,
) -> Outcome {
    let result = match method {
        "GET" | "DELETE" => {
            let mut r = if method == "GET" { agent.get(url) } else { agent.delete(url) };
            for (k, v) in headers {
                r = r.header(k, v);
            }
            r.call()
        }
        _ => {
            let mut r = if method == "PUT" { agent.put(url) } else { agent.post(url) };
            r = r.header("Content-Type", "application/json");
            for (k, v) in headers {
                r = r.header(k, v);
            }
            r.send(body.unwrap_or(""))
        }
    };
    classify_ureq(result.map(|r| r.status().as_u16()))
}

/// Sorts a ureq result (the status of the answer): 2xx sent; 3xx failed (redirects
/// are not followed); 429/5xx and connection failures retried; other statuses failed.
/// Every connection failure reads [`UNREACHABLE`], whatever its cause.
pub fn classify_ureq(result: Result<u16, ureq::Error>) -> Outcome {
    match result {
        Ok(code) if (300..400).contains(&code) => Outcome::Failed(format!("HTTP {code}: redirects are not followed")),
        Ok(_) => Outcome::Sent,
        Err(ureq::Error::StatusCode(code)) if code == 429 || code >= 500 => Outcome::Retry(format!("HTTP {code}")),
        Err(ureq::Error::StatusCode(code)) => Outcome::Failed(format!("HTTP {code}")),
        Err(e) => {
            debug!("outbound request failed: {e}");
            Outcome::Retry(UNREACHABLE.to_string())
        }
    }
}
