//! The `pushi` binary: configuration, apps, listeners, then the reactor until a signal.

use std::process::ExitCode;
use std::rc::Rc;

use log::{error, info};
use pushi::apps::Apps;
use pushi::config::{self, Config};
use pushi::hub::Hub;
use pushi::metrics::Metrics;
use pushi::reactor::{Listeners, Reactor};

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
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let settings = config.app_settings.clone();
    let (apps, demo) = Apps::load(|k| settings.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()))?;
    let listeners = Listeners::bind(&config)
        .map_err(|e| format!("cannot listen on {} / {}: {e}", config.server_addr, config.app_addr))?;
    let (ws_addr, api_addr) = listeners.addrs()?;
    info!("WebSocket listener on ws://{ws_addr} (also answers REST)");
    info!("REST listener on http://{api_addr} (also accepts WebSocket upgrades)");
    if let Some(path) = &config.echo_path {
        info!("echo endpoint enabled at ws://{ws_addr}{path} (testing aid)");
    }
    info!("{} app(s) loaded", apps.len());
    if demo {
        let app = apps.iter().next().expect("a demo app");
        println!("{}", demo_banner(app, ws_addr, api_addr));
    }
    let metrics = Rc::new(Metrics::default());
    let hub = Hub::new(config, apps, metrics.clone());
    Reactor::new(listeners, hub, metrics)?.run()?;
    Ok(())
}

/// What a first-time user needs: the demo credentials and code to paste.
fn demo_banner(app: &pushi::apps::App, ws: std::net::SocketAddr, api: std::net::SocketAddr) -> String {
    format!(
        "\nNo apps configured: created a demo app (set PUSHI_APP_ID/KEY/SECRET or PUSHI_APPS_FILE to choose your own).\n\
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
