//! Configuration: every setting has one row in [`SETTINGS`] (environment name,
//! default, meaning), read from the environment and overridden by command-line
//! flags. `conf/pushi.env` mirrors the table; a unit test keeps them in step.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

/// One configurable value: its environment name (Pushi's names where Pushi has
/// one), its default and a one-line meaning used by `--help` and the docs.
pub struct Setting {
    /// Environment variable; the flag is derived from it (`SERVER_PORT` → `--server-port`).
    pub env: &'static str,
    /// Value used when neither the environment nor a flag gives one.
    pub default: &'static str,
    /// What it controls and why one would change it.
    pub help: &'static str,
}

/// Every setting the server reads, in the order `--help` prints them.
pub const SETTINGS: &[Setting] = &[
    Setting {
        env: "SERVER_HOST",
        default: "127.0.0.1",
        help: "WebSocket listener address (0.0.0.0 for all interfaces)",
    },
    Setting { env: "SERVER_PORT", default: "9090", help: "WebSocket listener port; also answers REST requests" },
    Setting { env: "SERVER_SSL", default: "0", help: "1: the WebSocket listener speaks TLS (wss://)" },
    Setting { env: "SERVER_SSL_KEY", default: "", help: "PEM private key of the WebSocket listener" },
    Setting { env: "SERVER_SSL_CER", default: "", help: "PEM certificate chain of the WebSocket listener (reloaded on SIGHUP)" },
    Setting { env: "APP_HOST", default: "127.0.0.1", help: "REST listener address" },
    Setting {
        env: "APP_PORT",
        default: "8080",
        help: "REST listener port; also accepts WebSocket upgrades (same as SERVER_PORT: one listener)",
    },
    Setting { env: "APP_SSL", default: "0", help: "1: the REST listener speaks TLS (https://)" },
    Setting { env: "APP_SSL_KEY", default: "", help: "PEM private key of the REST listener" },
    Setting { env: "APP_SSL_CER", default: "", help: "PEM certificate chain of the REST listener (reloaded on SIGHUP)" },
    Setting {
        env: "PUSHI_APPS_FILE",
        default: "",
        help: "JSON file with a list of apps (id, key, secret, name, client_events, ...)",
    },
    Setting { env: "PUSHI_APP_ID", default: "", help: "id of a single app (with PUSHI_APP_KEY and PUSHI_APP_SECRET)" },
    Setting { env: "PUSHI_APP_KEY", default: "", help: "key of that app (clients connect with it)" },
    Setting { env: "PUSHI_APP_SECRET", default: "", help: "secret of that app (signs auth and API calls)" },
    Setting { env: "PUSHI_DATA_DIR", default: "data", help: "directory of the embedded store" },
    Setting {
        env: "PUSHI_MONGO_URL",
        default: "",
        help: "MongoDB URL (mongodb://host/db); set, it replaces the embedded store (MONGO_URL, MONGOLAB_URI, MONGOHQ_URL also read)",
    },
    Setting {
        env: "PUSHI_APP_CREATION",
        default: "auto",
        help: "who may POST /apps without the admin token: open, closed, or auto (open only when every listener is on a loopback address)",
    },
    Setting {
        env: "PUSHI_ADMIN_TOKEN",
        default: "",
        help: "operator token (Authorization: Bearer <token>): creates apps in any PUSHI_APP_CREATION mode, reads /health details; empty = none",
    },
    Setting { env: "PUSHI_MAX_APPS", default: "1000", help: "apps on this server; POST /apps beyond it: 403" },
    Setting {
        env: "PUSHI_LOGIN_RATE",
        default: "1",
        help: "/login attempts per client address per second (bursts of 30; per app id 5 times that); above it: 429; 0 = no limit",
    },
    Setting {
        env: "PUSHI_APP_CREATION_RATE",
        default: "10",
        help: "apps created per minute without the admin token (whole server); above it: 429",
    },
    Setting { env: "PUSHI_STORE_WORKERS", default: "2", help: "store worker threads (each app's operations stay on one)" },
    Setting {
        env: "PUSHI_STORE_QUEUE",
        default: "10000",
        help: "operations queued per store worker; when full, persisted publishes get 503",
    },
    Setting {
        env: "PUSHI_STORE_QUEUE_BYTES",
        default: "67108864",
        help: "bytes of operations queued for the store (all workers); when full, persisted publishes get 503",
    },
    Setting {
        env: "PUSHI_HISTORY_MAX_EVENTS",
        default: "10000",
        help: "events kept per app (oldest pruned); an app's history_max_events wins",
    },
    Setting {
        env: "PUSHI_HISTORY_MAX_AGE",
        default: "2592000",
        help: "seconds an event is kept (0: no limit); an app's history_max_age wins",
    },
    Setting {
        env: "PUSHI_CACHE_TTL",
        default: "1800",
        help: "seconds a cache- channel keeps its last event; vacant ones are freed after it",
    },
    Setting {
        env: "PUSHI_MAX_CACHE_CHANNELS",
        default: "1000",
        help: "cache- channels with a stored event per app; beyond it the oldest vacant one is forgotten",
    },
    Setting {
        env: "PUSHI_PUSHER_PERSIST",
        default: "0",
        help: "1: also store events published through the Pusher HTTP API (Pushi's API always stores unless persist=false)",
    },
    Setting {
        env: "PUSHI_MAX_HEAD_BYTES",
        default: "16384",
        help: "largest HTTP request head (request line + headers); above it: 431",
    },
    Setting { env: "PUSHI_MAX_BODY_BYTES", default: "1048576", help: "largest HTTP request body; above it: 413" },
    Setting {
        env: "PUSHI_MAX_MESSAGE_BYTES",
        default: "65536",
        help: "largest WebSocket frame or reassembled message; above it: close 1009",
    },
    Setting {
        env: "PUSHI_WRITE_HIGH_WATER",
        default: "1048576",
        help: "bytes queued to one connection before it is cut as a slow consumer",
    },
    Setting {
        env: "PUSHI_INPUT_BUDGET",
        default: "268435456",
        help: "bytes of unfinished input (partial request heads and bodies, WebSocket fragments) held across all connections; above it the connection adding more gets 503 / close 1013",
    },
    Setting {
        env: "PUSHI_INPUT_STALL_TIMEOUT",
        default: "5",
        help: "seconds an unfinished request or WebSocket message may go without new bytes; then 408 / close 1008",
    },
    Setting {
        env: "PUSHI_MAX_CONNECTIONS",
        default: "100000",
        help: "open connections per process; further connections are refused (503)",
    },
    Setting {
        env: "PUSHI_MAX_PRESENCE_MEMBERS",
        default: "100",
        help: "distinct users in one presence channel; more are refused (subscription_error 4100)",
    },
    Setting {
        env: "PUSHI_MAX_CHANNELS_PER_CONNECTION",
        default: "1000",
        help: "channels one connection may subscribe to; more are refused (subscription_error 429)",
    },
    Setting {
        env: "PUSHI_API_RATE",
        default: "0",
        help: "REST calls per app per second (Pusher and Pushi APIs, bursts of one second); above it: 429; 0 = no limit",
    },
    Setting {
        env: "PUSHI_CLIENT_EVENT_RATE",
        default: "10",
        help: "client events per connection per second; more close the connection (4301)",
    },
    Setting {
        env: "PUSHI_HANDSHAKE_TIMEOUT",
        default: "10",
        help: "seconds to receive a complete HTTP request head; then 408",
    },
    Setting {
        env: "PUSHI_KEEPALIVE_TIMEOUT",
        default: "60",
        help: "seconds an idle keep-alive HTTP connection is kept",
    },
    Setting {
        env: "PUSHI_ACTIVITY_TIMEOUT",
        default: "120",
        help: "seconds of WebSocket silence before the server pings (sent to Pusher clients)",
    },
    Setting { env: "PUSHI_PONG_TIMEOUT", default: "30", help: "seconds to wait for a pong before closing (4201)" },
    Setting {
        env: "PUSHI_CLOSE_TIMEOUT",
        default: "5",
        help: "seconds to wait for the peer's close frame or FIN before dropping the socket",
    },
    Setting {
        env: "PUSHI_STORE_TIMEOUT",
        default: "30",
        help: "seconds a REST call waits for the store before answering 504 (the write stays queued)",
    },
    Setting {
        env: "PUSHI_SHUTDOWN_GRACE",
        default: "10",
        help: "seconds to flush and close connections on SIGINT/SIGTERM",
    },
    Setting {
        env: "PUSHI_HANDLERS",
        default: "1",
        help: "1: deliver published events to /webs, /smtps, /apns and /web_pushes subscribers; 0: off",
    },
    Setting {
        env: "PUSHI_HANDLER_WORKERS",
        default: "4",
        help: "threads sending e-mail, Web Push and APNs deliveries and direct /messaging sends",
    },
    Setting {
        env: "PUSHI_HANDLER_QUEUE",
        default: "10000",
        help: "deliveries queued, running or waiting to retry; beyond it new ones are dropped (counted in /metrics)",
    },
    Setting {
        env: "PUSHI_HANDLER_TIMEOUT",
        default: "5",
        help: "seconds one delivery attempt (SMTP, Web Push, APNs, web hook) may take",
    },
    Setting {
        env: "PUSHI_DELIVERY_APP_WORKERS",
        default: "2",
        help: "delivery workers one app may hold at once (targets that never answer tie up only these)",
    },
    Setting {
        env: "PUSHI_DELIVERY_APP_QUEUE",
        default: "1000",
        help: "deliveries of one app queued, running or waiting to retry; beyond it that app's new ones are dropped",
    },
    Setting {
        env: "PUSHI_OUTBOUND_ALLOW",
        default: "",
        help: "CIDRs and host names tenants' web hooks, /webs, Web Push and SMTP may reach although private (e.g. 10.0.0.0/8,hooks.internal)",
    },
    Setting {
        env: "SMTP_URL",
        default: "",
        help: "default SMTP server as smtp://[user:pass@]host[:port][?sender=addr] (smtps:// or smtp+tls://: STARTTLS); an app's smtp_url wins",
    },
    Setting { env: "SMTP_HOST", default: "", help: "default SMTP host, when SMTP_URL is unset" },
    Setting { env: "SMTP_PORT", default: "25", help: "port of SMTP_HOST" },
    Setting { env: "SMTP_USER", default: "", help: "login on SMTP_HOST (empty: none)" },
    Setting { env: "SMTP_PASSWORD", default: "", help: "password of SMTP_USER" },
    Setting { env: "SMTP_STARTTLS", default: "0", help: "1: require STARTTLS on SMTP_HOST" },
    Setting {
        env: "SMTP_SENDER",
        default: "",
        help: "From address of e-mails (also used when an SMTP URL has no ?sender=)",
    },
    Setting { env: "WEB_PUSH_TTL", default: "86400", help: "seconds a push service keeps an undelivered Web Push message (TTL header)" },
    Setting {
        env: "PUSHI_APNS_URL",
        default: "",
        help: "APNs base URL replacing Apple's hosts (https://, or http:// for HTTP/2 without TLS); empty: api.push.apple.com or the sandbox per app",
    },
    Setting {
        env: "PUSHI_CORS_ORIGINS",
        default: "",
        help: "comma-separated origins (https://tool.example) whose browser pages may call the REST API (CORS, with cookies); * for any other origin, without cookies; empty: none",
    },
    Setting {
        env: "PUSHI_ECHO_PATH",
        default: "",
        help: "testing aid: a WebSocket path that echoes every message (e.g. /echo); empty = off",
    },
];

/// Sizes and timeouts that protect the server from its peers. Each default is
/// the row of the same name in [`SETTINGS`].
#[derive(Clone, Debug)]
pub struct Limits {
    /// Request line plus headers; bounded because httparse leaves it to us.
    pub max_head_bytes: usize,
    /// Content-Length bodies only; chunked bodies are refused with 411.
    pub max_body_bytes: usize,
    /// Applies to one frame and to a reassembled fragmented message alike.
    pub max_message_bytes: usize,
    /// A reader this far behind is cut so it cannot grow memory or slow others.
    pub write_high_water: usize,
    /// Unfinished input buffered across all connections (bodies, fragments).
    pub input_budget: usize,
    /// Time an unfinished request or message may make no progress.
    pub input_stall_timeout: Duration,
    /// Connections per process (file descriptors are the real bound).
    pub max_connections: usize,
    /// Distinct users per presence channel (Pusher documents 100).
    pub max_presence_members: usize,
    /// Client events per connection per second (Pusher documents 10).
    pub client_event_rate: u32,
    /// Channels per connection (each costs a slot in two tables).
    pub max_channels_per_connection: usize,
    /// REST calls per app per second; 0: unlimited.
    pub api_rate: u32,
    /// Time to send a complete request head (slow-drip defence).
    pub handshake_timeout: Duration,
    /// Idle time of a keep-alive HTTP connection between requests.
    pub keepalive_timeout: Duration,
    /// WebSocket silence before the server checks the peer with a ping.
    pub activity_timeout: Duration,
    /// Time allowed for the answer to that ping.
    pub pong_timeout: Duration,
    /// Time allowed for the closing handshake or the peer's FIN.
    pub close_timeout: Duration,
    /// Time a REST call waits for the store's answer.
    pub store_timeout: Duration,
}

/// The PEM files of a TLS listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
}

/// Everything the binary needs to start.
#[derive(Clone, Debug)]
pub struct Config {
    /// The WebSocket listener (Pushi's SERVER_HOST/SERVER_PORT).
    pub server_addr: SocketAddr,
    /// The REST listener (Pushi's APP_HOST/APP_PORT); may equal `server_addr`.
    pub app_addr: SocketAddr,
    /// TLS of the WebSocket listener (SERVER_SSL); also of the REST one when they are one socket.
    pub server_tls: Option<TlsFiles>,
    /// TLS of the REST listener (APP_SSL).
    pub app_tls: Option<TlsFiles>,
    /// Where the embedded store keeps its files.
    pub data_dir: PathBuf,
    /// Which store backend to use.
    pub store: crate::store::StoreConfig,
    /// Store worker threads.
    pub store_workers: usize,
    /// Queue capacity per store worker.
    pub store_queue: usize,
    /// Store Pusher HTTP API events too.
    pub pusher_persist: bool,
    /// Bytes of ops queued for the store.
    pub store_queue_bytes: u64,
    /// History kept per app unless the app says otherwise.
    pub retention: crate::store::Retention,
    /// Cached channels (with a last event) per app.
    pub max_cache_channels: usize,
    /// How long a cache channel keeps its last event.
    pub cache_ttl: Duration,
    /// Anyone reaching a listener may create apps (Pushi's `POST /apps`) without the admin token.
    pub app_creation_open: bool,
    /// The operator's bearer token (`PUSHI_ADMIN_TOKEN`), when set.
    pub admin_token: Option<String>,
    /// Most apps the server holds (`PUSHI_MAX_APPS`).
    pub max_apps: usize,
    /// Apps created per minute without the admin token.
    pub app_creation_rate: u32,
    /// `/login` attempts per client address per second (0: unlimited).
    pub login_rate: u32,
    /// Protection limits.
    pub limits: Limits,
    /// Grace period for draining on SIGINT/SIGTERM.
    pub shutdown_grace: Duration,
    /// Path of the conformance echo endpoint, when enabled.
    pub echo_path: Option<String>,
    /// Delivery handler settings.
    pub handlers: crate::handlers::HandlerConfig,
    /// App settings as given (`PUSHI_APPS_FILE`, `PUSHI_APP_ID`/`_KEY`/`_SECRET`); empty ones are absent.
    pub app_settings: Vec<(&'static str, String)>,
    /// Origins whose browser pages may call the REST API (`PUSHI_CORS_ORIGINS`; `*`: any).
    pub cors_origins: Vec<String>,
}

/// A configuration value that could not be used; the message names the setting.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// The flag that sets a setting: `SERVER_PORT` → `--server-port`,
/// `PUSHI_ECHO_PATH` → `--echo-path`.
pub fn flag_name(env: &str) -> String {
    let bare = env.strip_prefix("PUSHI_").unwrap_or(env);
    format!("--{}", bare.to_ascii_lowercase().replace('_', "-"))
}

/// Text printed by `--help`.
pub fn usage() -> String {
    let mut out = String::from(
        "pushi: WebSocket push server (Pusher protocol 7 and Pushi API)\n\n\
         usage: pushi [--flag value]...   (each flag also reads from its environment variable)\n\n",
    );
    for s in SETTINGS {
        out.push_str(&format!(
            "  {:<28} {:<24} {} (default: {})\n",
            flag_name(s.env),
            s.env,
            s.help,
            if s.default.is_empty() { "unset" } else { s.default }
        ));
    }
    out.push_str("\nRUST_LOG sets the log level (error, warn, info, debug, trace).\n");
    out
}

impl Config {
    /// Reads the settings: flags win over the environment, which wins over defaults.
    pub fn load(env: impl Fn(&str) -> Option<String>, args: &[String]) -> Result<Config, ConfigError> {
        let mut overrides: Vec<(&'static str, String)> = Vec::new();
        let mut i = 0;
        while i < args.len() {
            let arg = &args[i];
            let (name, inline) = match arg.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (arg.as_str(), None),
            };
            let setting = SETTINGS
                .iter()
                .find(|s| flag_name(s.env) == name)
                .ok_or_else(|| ConfigError(format!("unknown flag {name} (see --help)")))?;
            let value = match inline {
                Some(v) => v,
                None => {
                    i += 1;
                    args.get(i).cloned().ok_or_else(|| ConfigError(format!("{name} needs a value")))?
                }
            };
            overrides.push((setting.env, value));
            i += 1;
        }
        let get = |name: &str| -> String {
            if let Some((_, v)) = overrides.iter().rev().find(|(n, _)| *n == name) {
                return v.clone();
            }
            env(name)
                .unwrap_or_else(|| SETTINGS.iter().find(|s| s.env == name).map(|s| s.default).unwrap_or("").to_string())
        };
        let number = |name: &str| -> Result<u64, ConfigError> {
            let raw = get(name);
            raw.trim().parse::<u64>().map_err(|_| ConfigError(format!("{name}={raw:?} is not a whole number")))
        };
        let size = |name: &str| -> Result<usize, ConfigError> {
            let n = number(name)?;
            if n == 0 {
                return Err(ConfigError(format!("{name} must be above 0")));
            }
            Ok(n as usize)
        };
        let seconds = |name: &str| -> Result<Duration, ConfigError> { Ok(Duration::from_secs(number(name)?)) };
        let addr = |host: &str, port: &str| -> Result<SocketAddr, ConfigError> {
            let (h, p) = (get(host), number(port)?);
            if p > u16::MAX as u64 {
                return Err(ConfigError(format!("{port}={p} is not a port")));
            }
            (h.as_str(), p as u16)
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| ConfigError(format!("{host}={h:?} is not an address")))
        };
        let limits = Limits {
            max_head_bytes: size("PUSHI_MAX_HEAD_BYTES")?,
            max_body_bytes: size("PUSHI_MAX_BODY_BYTES")?,
            max_message_bytes: size("PUSHI_MAX_MESSAGE_BYTES")?,
            write_high_water: size("PUSHI_WRITE_HIGH_WATER")?,
            input_budget: size("PUSHI_INPUT_BUDGET")?,
            input_stall_timeout: seconds("PUSHI_INPUT_STALL_TIMEOUT")?,
            max_connections: size("PUSHI_MAX_CONNECTIONS")?,
            max_presence_members: size("PUSHI_MAX_PRESENCE_MEMBERS")?,
            client_event_rate: size("PUSHI_CLIENT_EVENT_RATE")? as u32,
            max_channels_per_connection: size("PUSHI_MAX_CHANNELS_PER_CONNECTION")?,
            api_rate: number("PUSHI_API_RATE")? as u32,
            handshake_timeout: seconds("PUSHI_HANDSHAKE_TIMEOUT")?,
            keepalive_timeout: seconds("PUSHI_KEEPALIVE_TIMEOUT")?,
            activity_timeout: seconds("PUSHI_ACTIVITY_TIMEOUT")?,
            pong_timeout: seconds("PUSHI_PONG_TIMEOUT")?,
            close_timeout: seconds("PUSHI_CLOSE_TIMEOUT")?,
            store_timeout: seconds("PUSHI_STORE_TIMEOUT")?,
        };
        if limits.write_high_water < limits.max_message_bytes {
            return Err(ConfigError(
                "PUSHI_WRITE_HIGH_WATER must be at least PUSHI_MAX_MESSAGE_BYTES (one message must fit)".into(),
            ));
        }
        let echo = get("PUSHI_ECHO_PATH");
        let app_settings = ["PUSHI_APPS_FILE", "PUSHI_APP_ID", "PUSHI_APP_KEY", "PUSHI_APP_SECRET"]
            .into_iter()
            .map(|name| (name, get(name)))
            .filter(|(_, v)| !v.is_empty())
            .collect();
        let data_dir = PathBuf::from(get("PUSHI_DATA_DIR"));
        // Pushi's names for the MongoDB URL, in its order of priority, after ours.
        let mongo = ["MONGO_URL", "MONGOLAB_URI", "MONGOHQ_URL"]
            .into_iter()
            .fold(Some(get("PUSHI_MONGO_URL")).filter(|u| !u.is_empty()), |found, name| {
                found.or_else(|| env(name).filter(|u| !u.is_empty()))
            });
        let store = match mongo {
            Some(url) if url.starts_with("mongodb://") || url.starts_with("mongodb+srv://") => {
                crate::store::StoreConfig::Mongo(url)
            }
            Some(url) => return Err(ConfigError(format!("PUSHI_MONGO_URL={url:?} is not a mongodb:// URL"))),
            None => crate::store::StoreConfig::Embedded(data_dir.clone()),
        };
        let flag = |name: &str| -> Result<bool, ConfigError> {
            match get(name).trim() {
                "1" | "true" | "True" | "yes" => Ok(true),
                "0" | "false" | "False" | "no" | "" => Ok(false),
                other => Err(ConfigError(format!("{name}={other:?} is not 0 or 1"))),
            }
        };
        let app_addr = addr("APP_HOST", "APP_PORT")?;
        let server_addr = addr("SERVER_HOST", "SERVER_PORT")?;
        let app_creation_open = match get("PUSHI_APP_CREATION").as_str() {
            "open" => true,
            "closed" => false,
            // Both listeners answer every REST route, so both must be private.
            "auto" => app_addr.ip().is_loopback() && server_addr.ip().is_loopback(),
            other => return Err(ConfigError(format!("PUSHI_APP_CREATION={other:?} is not open, closed or auto"))),
        };
        let tls = |prefix: &str| -> Result<Option<TlsFiles>, ConfigError> {
            if !flag(&format!("{prefix}_SSL"))? {
                return Ok(None);
            }
            let (cert, key) = (get(&format!("{prefix}_SSL_CER")), get(&format!("{prefix}_SSL_KEY")));
            if cert.is_empty() || key.is_empty() {
                return Err(ConfigError(format!("{prefix}_SSL=1 needs {prefix}_SSL_CER and {prefix}_SSL_KEY")));
            }
            Ok(Some(TlsFiles { cert: PathBuf::from(cert), key: PathBuf::from(key) }))
        };
        let smtp_port = number("SMTP_PORT")?;
        if smtp_port == 0 || smtp_port > u16::MAX as u64 {
            return Err(ConfigError(format!("SMTP_PORT={smtp_port} is not a port")));
        }
        let handlers = crate::handlers::HandlerConfig {
            enabled: flag("PUSHI_HANDLERS")?,
            workers: size("PUSHI_HANDLER_WORKERS")?,
            queue: size("PUSHI_HANDLER_QUEUE")?,
            timeout: Duration::from_secs(size("PUSHI_HANDLER_TIMEOUT")? as u64),
            app_workers: size("PUSHI_DELIVERY_APP_WORKERS")?,
            app_queue: size("PUSHI_DELIVERY_APP_QUEUE")?,
            outbound: std::sync::Arc::new(
                crate::outbound::Policy::parse(&get("PUSHI_OUTBOUND_ALLOW")).map_err(ConfigError)?,
            ),
            smtp: crate::handlers::smtp::SmtpDefaults {
                url: get("SMTP_URL"),
                host: get("SMTP_HOST"),
                port: smtp_port as u16,
                user: get("SMTP_USER"),
                password: get("SMTP_PASSWORD"),
                starttls: flag("SMTP_STARTTLS")?,
                sender: get("SMTP_SENDER"),
            },
            web_push_ttl: number("WEB_PUSH_TTL")?,
            apns_url: get("PUSHI_APNS_URL"),
        };
        if !handlers.smtp.url.is_empty() {
            crate::handlers::smtp::parse_url(&handlers.smtp.url).map_err(|e| ConfigError(format!("SMTP_URL: {e}")))?;
        }
        let apns = &handlers.apns_url;
        if !apns.is_empty() && !apns.starts_with("https://") && !apns.starts_with("http://") {
            return Err(ConfigError(format!("PUSHI_APNS_URL={apns:?} is not an http(s):// URL")));
        }
        Ok(Config {
            handlers,
            server_addr,
            server_tls: tls("SERVER")?,
            app_tls: tls("APP")?,
            app_addr,
            app_creation_open,
            admin_token: Some(get("PUSHI_ADMIN_TOKEN")).filter(|t| !t.is_empty()),
            max_apps: size("PUSHI_MAX_APPS")?,
            app_creation_rate: number("PUSHI_APP_CREATION_RATE")? as u32,
            login_rate: number("PUSHI_LOGIN_RATE")? as u32,
            data_dir,
            store,
            store_workers: size("PUSHI_STORE_WORKERS")?,
            store_queue: size("PUSHI_STORE_QUEUE")?,
            pusher_persist: flag("PUSHI_PUSHER_PERSIST")?,
            store_queue_bytes: size("PUSHI_STORE_QUEUE_BYTES")? as u64,
            retention: crate::store::Retention {
                max_events: size("PUSHI_HISTORY_MAX_EVENTS")? as u64,
                max_age_secs: number("PUSHI_HISTORY_MAX_AGE")?,
            },
            max_cache_channels: size("PUSHI_MAX_CACHE_CHANNELS")?,
            cache_ttl: seconds("PUSHI_CACHE_TTL")?,
            limits,
            shutdown_grace: seconds("PUSHI_SHUTDOWN_GRACE")?,
            echo_path: if echo.is_empty() {
                None
            } else if echo.starts_with('/') {
                Some(echo)
            } else {
                return Err(ConfigError(format!("PUSHI_ECHO_PATH={echo:?} must start with /")));
            },
            app_settings,
            cors_origins: get("PUSHI_CORS_ORIGINS")
                .split(',')
                .map(|o| o.trim().trim_end_matches('/').to_string())
                .filter(|o| !o.is_empty())
                .collect(),
        })
    }

    /// The defaults alone; what tests and embedders start from.
    pub fn defaults() -> Config {
        Config::load(|_| None, &[]).expect("defaults are valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn defaults_match_pushi() {
        let c = Config::defaults();
        assert_eq!(c.server_addr.to_string(), "127.0.0.1:9090");
        assert_eq!(c.app_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(c.limits.max_message_bytes, 65536);
        assert_eq!(c.echo_path, None);
    }

    #[test]
    fn flags_override_environment() {
        let args: Vec<String> = ["--server-port", "7000", "--echo-path=/echo"].iter().map(|s| s.to_string()).collect();
        let c = Config::load(env_of(&[("SERVER_PORT", "6000"), ("APP_PORT", "6001")]), &args).unwrap();
        assert_eq!(c.server_addr.port(), 7000);
        assert_eq!(c.app_addr.port(), 6001);
        assert_eq!(c.echo_path.as_deref(), Some("/echo"));
    }

    #[test]
    fn bad_values_name_the_setting() {
        let err = Config::load(env_of(&[("SERVER_PORT", "x")]), &[]).unwrap_err();
        assert!(err.0.contains("SERVER_PORT"), "{err}");
        let err = Config::load(|_| None, &["--nope".to_string()]).unwrap_err();
        assert!(err.0.contains("--nope"));
        let err = Config::load(env_of(&[("PUSHI_WRITE_HIGH_WATER", "10")]), &[]).unwrap_err();
        assert!(err.0.contains("HIGH_WATER"));
    }

    #[test]
    fn env_file_lists_every_setting() {
        let file = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/pushi.env")).unwrap();
        for s in SETTINGS {
            let line = format!("{}={}", s.env, s.default);
            assert!(file.lines().any(|l| l.trim_start_matches("# ").trim() == line), "conf/pushi.env lacks {line}");
        }
    }
}
