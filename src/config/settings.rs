//! The table of every setting: environment name, default and meaning. `--help`
//! prints it, [`super::Config::load`] reads it, and `conf/pushi.env` mirrors it
//! (a unit test keeps them in step).

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
        env: "PUSHI_CLUSTER_URL",
        default: "",
        help: "redis://host:port/db or nats://host:port: join a cluster of pushi nodes over Redis pub/sub or NATS (needs a shared store: PUSHI_MONGO_URL); empty: one node",
    },
    Setting {
        env: "PUSHI_CLUSTER_REDIS",
        default: "",
        help: "redis://host:port/db: the cluster's shared state when PUSHI_CLUSTER_URL is nats:// (NATS carries the messages)",
    },
    Setting { env: "PUSHI_CLUSTER_PREFIX", default: "pushi", help: "prefix of the cluster's Redis keys and channels (several clusters on one Redis)" },
    Setting { env: "PUSHI_NODE_ID", default: "", help: "this node's name in the cluster (logs, Redis client name); empty: host name and process id" },
    Setting {
        env: "PUSHI_REUSE_PORT",
        default: "0",
        help: "1: bind the listeners with SO_REUSEPORT, so several pushi processes on one machine share the ports",
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
