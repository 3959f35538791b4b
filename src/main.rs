//! The `pushi` binary: configuration, listeners, then the reactor until a signal.

use std::process::ExitCode;
use std::rc::Rc;

use log::{error, info};
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
    let listeners = Listeners::bind(&config)
        .map_err(|e| format!("cannot listen on {} / {}: {e}", config.server_addr, config.app_addr))?;
    let (ws_addr, api_addr) = listeners.addrs()?;
    info!("WebSocket listener on ws://{ws_addr} (also answers REST)");
    info!("REST listener on http://{api_addr} (also accepts WebSocket upgrades)");
    if let Some(path) = &config.echo_path {
        info!("echo endpoint enabled at ws://{ws_addr}{path} (testing aid)");
    }
    let metrics = Rc::new(Metrics::default());
    let hub = Hub::new(config, metrics.clone());
    Reactor::new(listeners, hub, metrics)?.run()?;
    Ok(())
}
