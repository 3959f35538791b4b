//! Configuration: every setting has one row in [`SETTINGS`] (environment name,
//! default, meaning), read from the environment and overridden by command-line
//! flags. `conf/pushi.env` mirrors the table; a unit test keeps them in step.
//!
//! A leaf: the plain settings of every module ([`StoreConfig`],
//! [`Retention`], [`DeliveryConfig`], [`SmtpDefaults`], [`OutboundAllow`])
//! are defined here and imported by the modules they start; this module
//! imports nothing from the crate.

mod sections;
mod settings;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

pub use sections::{AllowRule, DeliveryConfig, OutboundAllow, Retention, SmtpDefaults, StoreConfig};
pub use settings::{Setting, SETTINGS};

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
    pub store: StoreConfig,
    /// Store worker threads.
    pub store_workers: usize,
    /// Queue capacity per store worker.
    pub store_queue: usize,
    /// Store Pusher HTTP API events too.
    pub pusher_persist: bool,
    /// Bytes of ops queued for the store.
    pub store_queue_bytes: u64,
    /// History kept per app unless the app says otherwise.
    pub retention: Retention,
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
    /// Delivery pool settings (web hooks, e-mail, Web Push, APNs).
    pub deliveries: DeliveryConfig,
    /// App settings as given (`PUSHI_APPS_FILE`, `PUSHI_APP_ID`/`_KEY`/`_SECRET`); empty ones are absent.
    pub app_settings: Vec<(&'static str, String)>,
    /// Origins whose browser pages may call the REST API (`PUSHI_CORS_ORIGINS`; `*`: any).
    pub cors_origins: Vec<String>,
    /// The cluster this node joins (`PUSHI_CLUSTER_URL`), if any.
    pub cluster: Option<ClusterConfig>,
    /// Bind the listeners with SO_REUSEPORT (`PUSHI_REUSE_PORT`).
    pub reuse_port: bool,
}

/// A cluster of nodes joined by Redis (and NATS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `redis://host:port/db`: the registry (and the bus, without NATS).
    pub url: String,
    /// `nats://host:port`: the bus, when `PUSHI_CLUSTER_URL` is a NATS URL.
    pub nats: Option<String>,
    /// Key and channel prefix.
    pub prefix: String,
    /// This node's name.
    pub node: String,
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
            Some(url) if url.starts_with("mongodb://") || url.starts_with("mongodb+srv://") => StoreConfig::Mongo(url),
            Some(url) => return Err(ConfigError(format!("PUSHI_MONGO_URL={url:?} is not a mongodb:// URL"))),
            None => StoreConfig::Embedded(data_dir.clone()),
        };
        let (bus_url, nats) = match get("PUSHI_CLUSTER_URL").trim() {
            url if url.starts_with("nats://") => {
                let host_port = url["nats://".len()..].trim_end_matches('/');
                if host_port.is_empty() || host_port.contains('/') {
                    return Err(ConfigError(format!("PUSHI_CLUSTER_URL={url:?} is not nats://host:port")));
                }
                let registry = get("PUSHI_CLUSTER_REDIS").trim().to_string();
                if !registry.starts_with("redis://") {
                    return Err(ConfigError(
                        "PUSHI_CLUSTER_URL=nats://... needs PUSHI_CLUSTER_REDIS=redis://host:port/db: the \
                         cluster's shared state (presence, occupancy, quotas) lives in Redis"
                            .into(),
                    ));
                }
                (registry, Some(url.to_string()))
            }
            url => (url.to_string(), None),
        };
        let cluster = match bus_url.as_str() {
            "" => None,
            url if url.starts_with("redis://") => {
                if !matches!(store, StoreConfig::Mongo(_)) {
                    return Err(ConfigError(
                        "PUSHI_CLUSTER_URL needs a store every node shares: set PUSHI_MONGO_URL \
                         (the embedded SQLite store belongs to one process)"
                            .into(),
                    ));
                }
                let node = match get("PUSHI_NODE_ID").trim() {
                    "" => format!("{}-{}", env("HOSTNAME").unwrap_or_else(|| "node".into()), std::process::id()),
                    name => name.to_string(),
                };
                let prefix = get("PUSHI_CLUSTER_PREFIX").trim().to_string();
                Some(ClusterConfig { url: url.to_string(), nats, prefix, node })
            }
            url => {
                return Err(ConfigError(format!("PUSHI_CLUSTER_URL={url:?}: redis://host:port/db or nats://host:port")))
            }
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
        let deliveries = DeliveryConfig {
            enabled: flag("PUSHI_HANDLERS")?,
            workers: size("PUSHI_HANDLER_WORKERS")?,
            queue: size("PUSHI_HANDLER_QUEUE")?,
            timeout: Duration::from_secs(size("PUSHI_HANDLER_TIMEOUT")? as u64),
            app_workers: size("PUSHI_DELIVERY_APP_WORKERS")?,
            app_queue: size("PUSHI_DELIVERY_APP_QUEUE")?,
            outbound: OutboundAllow::parse(&get("PUSHI_OUTBOUND_ALLOW")).map_err(ConfigError)?,
            smtp: SmtpDefaults {
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
        // The syntax of SMTP_URL is the delivery module's: `deliver::check_config`, called by main.
        let apns = &deliveries.apns_url;
        if !apns.is_empty() && !apns.starts_with("https://") && !apns.starts_with("http://") {
            return Err(ConfigError(format!("PUSHI_APNS_URL={apns:?} is not an http(s):// URL")));
        }
        Ok(Config {
            deliveries,
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
            retention: Retention {
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
            cluster,
            reuse_port: flag("PUSHI_REUSE_PORT")?,
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
    fn a_cluster_needs_redis_and_a_shared_store() {
        let err = Config::load(env_of(&[("PUSHI_CLUSTER_URL", "redis://127.0.0.1:6379/0")]), &[]).unwrap_err();
        assert!(err.0.contains("PUSHI_MONGO_URL"), "{err}");
        let nats = env_of(&[("PUSHI_CLUSTER_URL", "nats://127.0.0.1:4222"), ("PUSHI_MONGO_URL", "mongodb://h/db")]);
        let err = Config::load(nats, &[]).unwrap_err();
        assert!(err.0.contains("PUSHI_CLUSTER_REDIS"), "{err}");
        let nats = env_of(&[
            ("PUSHI_CLUSTER_URL", "nats://127.0.0.1:4222"),
            ("PUSHI_CLUSTER_REDIS", "redis://127.0.0.1:6379/0"),
            ("PUSHI_MONGO_URL", "mongodb://h/db"),
        ]);
        let c = Config::load(nats, &[]).unwrap().cluster.unwrap();
        assert_eq!((c.url.as_str(), c.nats.as_deref()), ("redis://127.0.0.1:6379/0", Some("nats://127.0.0.1:4222")));
        let bad = env_of(&[("PUSHI_CLUSTER_URL", "amqp://h"), ("PUSHI_MONGO_URL", "mongodb://h/db")]);
        assert!(Config::load(bad, &[]).is_err());
        let redis = env_of(&[
            ("PUSHI_CLUSTER_URL", "redis://127.0.0.1:6379/0"),
            ("PUSHI_MONGO_URL", "mongodb://h/db"),
            ("PUSHI_NODE_ID", "n1"),
        ]);
        let c = Config::load(redis, &[]).unwrap();
        let cluster = c.cluster.unwrap();
        assert_eq!((cluster.prefix.as_str(), cluster.node.as_str()), ("pushi", "n1"));
        assert!(Config::defaults().cluster.is_none());
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
