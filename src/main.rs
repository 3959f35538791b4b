//! The `pushi` binary: configuration, apps, listeners, then the event loop until a signal.

use std::process::ExitCode;
use std::rc::Rc;

use log::{error, info, warn};
use pushi::apps::{configured_apps, demo_app, App, Apps};
use pushi::bus::redis::{reserve_socket_prefix, RedisBus, RedisSettings};
use pushi::bus::{Bus, Local};
use pushi::config::{self, Config};
use pushi::metrics::Metrics;
use pushi::net::{Listeners, Reactor};
use pushi::server::{net_config, Boot, Server};
use pushi::store::pool::Store;
use pushi::store::{Backend, OpenBackend, StoreConfig};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{}", config::usage());
        return ExitCode::SUCCESS;
    }
    let config = match Config::load(|k| std::env::var(k).ok(), &args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pushi: {e}");
            return ExitCode::from(2);
        }
    };
    // What only the delivery module can check (the SMTP_URL syntax), refused the same way.
    if let Err(e) = pushi::deliver::check_config(&config.deliveries) {
        eprintln!("pushi: {e}");
        return ExitCode::from(2);
    }
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    // Ids, tokens and secrets come from the OS CSPRNG; without one, do not run.
    pushi::support::rand::check()?;
    let settings = config.app_settings.clone();
    let configured = configured_apps(|k| settings.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()))?;
    // Configured web hooks obey the same rules as those written through the API.
    for app in &configured {
        pushi::outbound::check_webhooks(&app.webhooks).map_err(|e| format!("app {}: webhooks: {e}", app.id))?;
    }
    info!("store: {}", config.store.describe());
    let mut backend = open_store(&config.store)?;
    let (apps, demo) = merge_apps(backend.as_mut(), configured)?;
    let boot =
        Boot { seq: backend.max_seq()?, subscriptions: backend.all_subscriptions()?, targets: backend.all_targets()? };
    drop(backend);
    let net = net_config(&config);
    let listeners = Listeners::bind(&net)
        .map_err(|e| format!("cannot listen on {} / {}: {e}", config.server_addr, config.app_addr))?;
    let (ws_addr, api_addr) = listeners.addrs()?;
    let tls = listeners.tls_enabled();
    let secure = |i: usize| tls.get(i).or(tls.first()).copied().unwrap_or(false);
    let (ws_scheme, api_scheme) = if secure(0) { ("wss", "https") } else { ("ws", "http") };
    let (api_rest, api_ws) = if secure(1) { ("https", "wss") } else { ("http", "ws") };
    info!("WebSocket listener on {ws_scheme}://{ws_addr} (also answers REST on {api_scheme}://)");
    info!("REST listener on {api_rest}://{api_addr} (also accepts WebSocket upgrades on {api_ws}://)");
    if let Some(path) = &config.echo_path {
        info!("echo endpoint enabled at ws://{ws_addr}{path} (testing aid)");
    }
    info!("{} app(s) loaded, {} user subscription(s), last event #{}", apps.len(), boot.subscriptions.len(), boot.seq);
    for app in apps.iter().filter(|a| a.pusher_id() != a.id) {
        info!("app {}: numeric id for Pusher SDKs (pusher_id): {}", app.id, app.pusher_id());
    }
    if let Some(app) = demo {
        println!("{}", demo_banner(&app, ws_addr, api_addr));
    }
    let metrics = Rc::new(Metrics::default());
    let grace = net.shutdown_grace;
    let (store_config, workers, queue) = (config.store.clone(), config.store_workers, config.store_queue);
    let queue_bytes = config.store_queue_bytes;
    let server_metrics = metrics.clone();
    // A cluster node reserves a socket-id prefix before it serves anyone.
    let cluster = config.cluster.as_ref().map(|c| RedisSettings {
        url: c.url.clone(),
        nats: c.nats.clone(),
        prefix: c.prefix.clone(),
        node: c.node.clone(),
    });
    let socket_prefix = match &cluster {
        Some(settings) => {
            let prefix = reserve_socket_prefix(settings)?;
            info!("cluster: node {} joined {} (socket-id prefix {prefix})", settings.node, settings.url);
            prefix
        }
        None => 0,
    };
    let mut reactor = Reactor::new(listeners, net, metrics, move |waker| {
        let store = Store::start(store_config, workers, queue, waker.clone()).with_max_bytes(queue_bytes);
        let bus: Box<dyn Bus> = match cluster {
            Some(settings) => match RedisBus::start(settings, socket_prefix, waker) {
                Ok(bus) => Box::new(bus),
                Err(e) => {
                    error!("{e}; running as a single node");
                    Box::new(Local)
                }
            },
            None => Box::new(Local),
        };
        Server::with_bus(config, apps, server_metrics, store, boot, bus, socket_prefix)
    })?;
    reactor.run()?;
    // Every acknowledged write is already committed; finish the rest (client publishes).
    reactor.into_service().close_store(grace);
    Ok(())
}

/// Opens the store, retrying for a while: after a reboot the database may start after us.
fn open_store(config: &StoreConfig) -> Result<Box<dyn Backend>, Box<dyn std::error::Error>> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match config.open().and_then(|mut b| b.ping().map(|()| b)) {
            Ok(b) => return Ok(b),
            Err(e) if attempt < 10 => {
                warn!("store not reachable ({e}); retrying");
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
            Err(e) => return Err(format!("cannot open the store ({}): {e}", config.describe()).into()),
        }
    }
}

/// Stored apps plus configured ones (configuration wins and is stored); a
/// demo app is created and stored when there is none at all. Returns the
/// demo app when the server runs on it alone (to print its credentials).
fn merge_apps(
    backend: &mut dyn Backend,
    configured: Vec<App>,
) -> Result<(Apps, Option<App>), Box<dyn std::error::Error>> {
    let mut apps = Apps::default();
    let stored = backend.load_apps()?;
    let configured_none = configured.is_empty();
    for app in &stored {
        if !configured.iter().any(|c| c.id == app.id) {
            apps.insert(app.clone())?;
        }
    }
    for app in configured {
        if !stored.contains(&app) {
            backend.put_app(&app)?;
        }
        apps.insert(app)?;
    }
    if apps.is_empty() {
        let app = demo_app();
        backend.put_app(&app)?;
        apps.insert(app)?;
    }
    let demo = match apps.iter().collect::<Vec<_>>().as_slice() {
        [only] if configured_none && only.name == "demo" => Some((*only).clone()),
        _ => None,
    };
    Ok((apps, demo))
}

/// What a first-time user needs: the demo credentials and code to paste.
fn demo_banner(app: &App, ws: std::net::SocketAddr, api: std::net::SocketAddr) -> String {
    format!(
        "\nNo apps configured: running on the demo app, kept in the store (set PUSHI_APP_ID/KEY/SECRET or PUSHI_APPS_FILE to choose your own).\n\
         \n  app_id:     {id}\n  app_key:    {key}\n  app_secret: {secret}\n\
         \nBrowser (pusher-js):\n\
         \n  const pusher = new Pusher('{key}', {{\n    cluster: 'mt1', wsHost: '{wh}', wsPort: {wp}, forceTLS: false,\n    enabledTransports: ['ws'],\n  }});\n  pusher.subscribe('my-channel').bind('my-event', (data) => console.log(data));\n\
         \nServer (Node `pusher` SDK):\n\
         \n  const Pusher = require('pusher');\n  const pusher = new Pusher({{ appId: '{id}', key: '{key}', secret: '{secret}', host: '{ah}', port: {ap}, useTLS: false }});\n  pusher.trigger('my-channel', 'my-event', {{ message: 'hello' }});\n",
        id = app.id,
        key = app.key,
        secret = app.secret,
        wh = ws.ip(),
        wp = ws.port(),
        ah = api.ip(),
        ap = api.port(),
    )
}
