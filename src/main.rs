//! The `zeoraid` command line: `serve`, `ctl` and `bench`. Everything else lives in the library.

use clap::{Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use zeoraid::Zeoraid;

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

// Parsed once per process: the size of its variants does not matter.
#[allow(clippy::large_enum_variant)]
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
    #[cfg(feature = "bench")]
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
        #[cfg(feature = "bench")]
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
    // Installed before anything starts, so a signal during start-up is
    // not lost (it stops the server right after).
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
    let zeoraid = match Zeoraid::start_file(&path, listen.as_deref()) {
        Ok(z) => z,
        Err(e) => {
            eprintln!("zeoraid: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    let mut out = std::io::stdout();
    let _ = writeln!(out, "zeoraid: listening on {}", zeoraid.listening());
    if let Some(a) = zeoraid.admin_addr() {
        let _ = writeln!(out, "zeoraid: admin on {a}");
    }
    let _ = out.flush();
    let mut signals = signals;
    for sig in signals.forever() {
        if sig == signal_hook::consts::SIGHUP {
            // SIGHUP: apply the config file to the running arrays.
            if let Err(e) = zeoraid.reload() {
                log::error!("reload of {} (SIGHUP): {e}", path.display());
            }
            continue;
        }
        log::info!("received signal {sig}; shutting down");
        break;
    }
    zeoraid.shutdown();
    ExitCode::SUCCESS
}
