//! The `zeoraid` command line: `serve`, `ctl`, `bench`, `completions` and `man`. Everything else lives in the library.

use clap::{CommandFactory, Parser, Subcommand};
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
    /// Translate a runzeo / gocept.zeoraid ZConfig file (zeo.conf) into
    /// the equivalent zeoraid.toml; settings without an equivalent become
    /// comments saying so.
    ImportConfig {
        /// The ZConfig file (`runzeo -C FILE`).
        file: PathBuf,
        /// Write here instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Print a shell completion script (e.g. `zeoraid completions bash >
    /// /etc/bash_completion.d/zeoraid`).
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff; `zeoraid man | man -l -`).
    Man,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve { config, listen } => serve(config, listen),
        Cmd::ImportConfig { file, output } => {
            match zeoraid::config::import::import_file(&file, output.as_deref()) {
                Ok(toml) => {
                    let written = match &output {
                        Some(o) => {
                            std::fs::write(o, toml).map_err(|e| format!("{}: {e}", o.display()))
                        }
                        None => std::io::stdout()
                            .write_all(toml.as_bytes())
                            .map_err(|e| e.to_string()),
                    };
                    match written {
                        Ok(()) => ExitCode::SUCCESS,
                        Err(e) => {
                            eprintln!("zeoraid import-config: {e}");
                            ExitCode::from(1)
                        }
                    }
                }
                Err(e) => {
                    eprintln!("zeoraid import-config: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Cmd::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "zeoraid",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Cmd::Man => match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("zeoraid man: {e}");
                ExitCode::from(1)
            }
        },
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
    // Under systemd (Type=notify): ready now, a watchdog while we turn.
    let notifier = zeoraid::notify::Notifier::from_env().map(std::sync::Arc::new);
    let status = zeoraid.status_source();
    let status_line = || zeoraid::notify::status_line(&status.document());
    let watch = notifier.as_ref().and_then(|n| {
        n.send(&format!("READY=1\nSTATUS={}", status_line()));
        let interval = zeoraid::notify::watchdog_interval(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        );
        let status = status.clone();
        match zeoraid::notify::Watch::start(
            n.clone(),
            interval,
            zeoraid.liveness(),
            Box::new(move || status.document()),
        ) {
            Ok(w) => Some(w),
            Err(e) => {
                log::error!("cannot start the systemd notification thread: {e}");
                None
            }
        }
    });
    let mut signals = signals;
    for sig in signals.forever() {
        if sig == signal_hook::consts::SIGHUP {
            // SIGHUP: apply the config file to the running arrays.
            if let Some(n) = &notifier {
                n.send(&zeoraid::notify::reloading(
                    zeoraid::notify::monotonic_usec(),
                ));
            }
            let outcome = zeoraid.reload();
            if let Err(e) = &outcome {
                log::error!("reload of {} (SIGHUP): {e}", path.display());
            }
            if let Some(n) = &notifier {
                let line = match &outcome {
                    Ok(_) => status_line(),
                    Err(e) => format!("reload failed: {e}; {}", status_line()),
                };
                n.send(&format!("READY=1\nSTATUS={}", line.replace('\n', " ")));
            }
            continue;
        }
        log::info!("received signal {sig}; shutting down");
        break;
    }
    if let Some(n) = &notifier {
        n.send("STOPPING=1\nSTATUS=shutting down");
    }
    if let Some(w) = watch {
        w.stop();
    }
    zeoraid.shutdown();
    ExitCode::SUCCESS
}
