//! The `zeoraid` command line: `serve`, `ctl` and `bench`. Everything else lives in the library.

use clap::{Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use zeoraid::config::Config;
use zeoraid::server::{Options, Served, Server};
use zeoraid::storage::resolve::{PythonOptions, PythonResolver};

#[derive(Parser)]
#[command(
    name = "zeoraid",
    version,
    about = "RAID-1 controller and ZEO 5 server for ZODB"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the storages of a TOML config over the ZEO 5 protocol.
    Serve {
        /// The TOML config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Override `server.listen` (e.g. 127.0.0.1:0 for a free port).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Operate a running zeoraid through its admin listener: status (Nagios
    /// exit codes), details, recover, disable, verify.
    Ctl(zeoraid::admin::ctl::CtlArgs),
    /// Measure a ZEO server (ours or Python's): commits/s, loads/s, latency;
    /// `bench fanout`: parallel vs sequential fan-out of an array over ZEO servers.
    Bench(zeoraid::bench::BenchCommand),
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve { config, listen } => serve(config, listen),
        Cmd::Ctl(args) => ExitCode::from(zeoraid::admin::ctl::run(&args)),
        Cmd::Bench(args) => match zeoraid::bench::run_command(&args) {
            Ok(report) => {
                println!("{report}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("zeoraid bench: {e}");
                ExitCode::from(2)
            }
        },
    }
}

fn serve(path: PathBuf, listen: Option<String>) -> ExitCode {
    // A write past the file-size limit (RLIMIT_FSIZE) must fail that commit
    // with EFBIG, like a full disk, instead of killing the server.
    if let Err(e) = signal_hook::flag::register(
        signal_hook::consts::SIGXFSZ,
        Arc::new(std::sync::atomic::AtomicBool::new(false)),
    ) {
        eprintln!("zeoraid: cannot install the SIGXFSZ handler: {e}");
        return ExitCode::from(1);
    }
    let mut cfg = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("zeoraid: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(l) = listen {
        cfg.server.listen = l;
    }
    let listen = match zeoraid::config::parse_listen(&cfg.server.listen, None) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("zeoraid: listen address {e}");
            return ExitCode::from(2);
        }
    };
    let socket_mode = cfg
        .server
        .socket_mode
        .as_deref()
        .and_then(|m| zeoraid::net::unix::parse_mode(m).ok());
    let tls = match &cfg.server.tls {
        None => None,
        Some(t) => match zeoraid::net::tls::load_server(&t.files()) {
            Ok(loaded) => Some(zeoraid::server::TlsOptions {
                info: zeoraid::server::TlsInfo::of(&loaded),
                config: loaded.config,
                handshake_timeout: std::time::Duration::from_secs_f64(t.handshake_timeout),
            }),
            Err(e) => {
                eprintln!("zeoraid: {e} (set in [server.tls] of {})", path.display());
                return ExitCode::from(2);
            }
        },
    };
    let admin_token = match cfg.admin.as_ref().map(|a| a.token()).transpose() {
        Ok(t) => t.flatten(),
        Err(e) => {
            eprintln!("zeoraid: {e} (set in {})", path.display());
            return ExitCode::from(2);
        }
    };
    let mut served: Vec<Served> = Vec::new();
    for s in &cfg.storage {
        match zeoraid::open::open_storage(s) {
            Ok(storage) => served.push((s.name.clone(), storage, s.read_only)),
            Err(e) => {
                eprintln!(
                    "zeoraid: cannot open storage {:?} from {}: {e}",
                    s.name,
                    path.display()
                );
                return ExitCode::from(2);
            }
        }
    }
    // Kept until the server is shut down (its thread and helper end then).
    let _resolver = match &cfg.conflict_resolution {
        None => None,
        Some(r) => {
            let opts = PythonOptions {
                python: r.python.clone(),
                path: r.path.clone(),
                timeout: std::time::Duration::from_secs_f64(r.timeout),
            };
            match PythonResolver::start(opts) {
                Ok(resolver) => {
                    let resolver = Arc::new(resolver);
                    for (_, storage, _) in &served {
                        storage.set_conflict_resolver(resolver.clone());
                    }
                    log::info!(
                        "conflict resolution on the server (store conflicts and undo) through {}",
                        r.python.display()
                    );
                    Some(resolver)
                }
                Err(e) => {
                    eprintln!("zeoraid: {e} (set in {})", path.display());
                    return ExitCode::from(2);
                }
            }
        }
    };
    let opts = Options {
        listen: listen.clone(),
        tls,
        socket_mode,
        workers: cfg.workers(),
        max_frame: cfg.server.max_frame_size,
        invalidation_queue_size: cfg.server.invalidation_queue_size,
        transaction_timeout: cfg
            .server
            .transaction_timeout
            .map(std::time::Duration::from_secs_f64),
        conflict_resolver: _resolver
            .clone()
            .map(|r| r as Arc<dyn zeoraid::storage::resolve::ConflictResolver>),
    };
    let signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("zeoraid: cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    let storages: Vec<(String, Arc<dyn zeoraid::storage::Storage>)> = served
        .iter()
        .map(|(n, s, _)| (n.clone(), s.clone()))
        .collect();
    let server = match Server::start(opts, served) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "zeoraid: cannot listen on {listen}: {e} (is another server using it? set server.listen in {})",
                path.display()
            );
            return ExitCode::from(1);
        }
    };
    let admin = match &cfg.admin {
        None => None,
        Some(a) => match zeoraid::admin::Admin::start(
            &a.listen,
            admin_token,
            server.status_source(),
            storages.clone(),
            Some(path.clone()),
            server.tls_switch(),
        ) {
            Ok(admin) => Some(admin),
            Err(e) => {
                eprintln!("zeoraid: {e} (in {})", path.display());
                server.shutdown();
                return ExitCode::from(1);
            }
        },
    };
    let mut out = std::io::stdout();
    let _ = writeln!(out, "zeoraid: listening on {}", server.listening());
    if let Some(a) = &admin {
        let _ = writeln!(out, "zeoraid: admin on {}", a.local_addr());
    }
    let _ = out.flush();
    let mut signals = signals;
    let tls_switch = server.tls_switch();
    let running: std::collections::HashMap<String, Arc<dyn zeoraid::storage::Storage>> =
        storages.into_iter().collect();
    for sig in signals.forever() {
        if sig == signal_hook::consts::SIGHUP {
            // SIGHUP: apply the config file to the running arrays.
            if let Err(e) = zeoraid::admin::reload(Some(&path), &running, tls_switch.as_ref()) {
                log::error!("reload of {} (SIGHUP): {e}", path.display());
            }
            continue;
        }
        log::info!("received signal {sig}; shutting down");
        break;
    }
    if let Some(a) = admin {
        a.shutdown();
    }
    server.shutdown();
    ExitCode::SUCCESS
}
