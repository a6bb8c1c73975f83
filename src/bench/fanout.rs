//! `zeoraid bench fanout`: what parallel fan-out buys over sequential
//! fan-out on your own network.
//!
//! For each mode (parallel, then sequential) it opens a RAID array in this
//! process over the given ZEO servers, serves it with an in-process server
//! on `127.0.0.1:0`, and drives it with the commit phase of the load
//! generator ([`super::commit_phase`], `--clients` connections). It prints
//! commits/s and commit p50/p99 per mode, and parallel/sequential ratios;
//! `--plot` also writes them as an SVG bar chart.
//!
//! It writes new objects to every backend, so it refuses a backend whose
//! last transaction is not zero (not empty) unless `--allow-nonempty`.
//!
//! The pure parts — parsing `HOST:PORT[/STORAGE]`, the report text, the
//! chart — are functions with table tests; [`run`] does the IO.

use super::{commit_phase, plot, CommitPhase, PhaseResult};
use crate::config::ServerConfig;
use crate::raid::fanout::Mode;
use crate::raid::{BackendSource, BackendSpec, RaidOptions, RaidStorage};
use crate::server::{Options, Server};
use crate::storage::{Storage, Tid};
use crate::zeo::client::{Client, ClientOptions};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Command-line arguments of `zeoraid bench fanout`.
#[derive(clap::Args, Debug, Clone)]
pub struct FanoutArgs {
    /// A ZEO server to mirror onto, HOST:PORT or HOST:PORT/STORAGE
    /// (storage "1" by default); give it once per backend.
    #[arg(long = "backend", required = true, value_name = "HOST:PORT[/STORAGE]")]
    pub backends: Vec<String>,
    /// Concurrent clients committing through the array.
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    /// Seconds of commits per mode.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Objects stored per transaction.
    #[arg(long, default_value_t = 1)]
    pub objects_per_txn: usize,
    /// Bytes per object.
    #[arg(long, default_value_t = 128)]
    pub size: usize,
    /// The array's backend-timeout, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub backend_timeout: f64,
    /// Also write the latencies as an SVG chart to this file.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Write test objects even to backends that already hold transactions.
    #[arg(long)]
    pub allow_nonempty: bool,
}

/// One backend as given on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendAddr {
    /// `HOST:PORT`.
    pub addr: String,
    /// The storage name to register with.
    pub storage: String,
}

/// Parse `HOST:PORT` or `HOST:PORT/STORAGE` (storage `"1"` when left out;
/// an IPv6 host in brackets, `[::1]:8100`).
pub fn parse_backend(s: &str) -> Result<BackendAddr, String> {
    let bad =
        |why: &str| format!("--backend {s:?}: {why} (expected HOST:PORT or HOST:PORT/STORAGE)");
    let (addr, storage) = match s.split_once('/') {
        Some((a, st)) => (a, st),
        None => (s, "1"),
    };
    if storage.is_empty() {
        return Err(bad("empty storage name after '/'"));
    }
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    if host.is_empty() || host == "[]" {
        return Err(bad("no host"));
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(bad("an IPv6 host must be in brackets"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(bad("the port must be a number from 1 to 65535")),
    }
    Ok(BackendAddr {
        addr: addr.to_string(),
        storage: storage.to_string(),
    })
}

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Parallel => "parallel",
        Mode::Sequential => "sequential",
    }
}

/// `a / b`, or NaN when `b` is not positive.
pub fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        f64::NAN
    }
}

/// The report: a line per mode, then the ratios.
pub fn report(
    backends: &[BackendAddr],
    args: &FanoutArgs,
    results: &[(Mode, PhaseResult)],
) -> String {
    let names: Vec<String> = backends
        .iter()
        .map(|b| format!("{}/{}", b.addr, b.storage))
        .collect();
    let mut out = format!(
        "fan-out over {} backend(s) ({}), {} client(s), {} s per mode, {} object(s)/txn of {} bytes\n\
         {:<10} {:>10} {:>10} {:>10} {:>8}\n",
        backends.len(),
        names.join(", "),
        args.clients,
        args.duration,
        args.objects_per_txn,
        args.size,
        "mode",
        "commits/s",
        "p50 ms",
        "p99 ms",
        "commits"
    );
    for (m, r) in results {
        out.push_str(&format!(
            "{:<10} {:>10.1} {:>10.3} {:>10.3} {:>8}\n",
            mode_name(*m),
            r.per_second,
            r.p50_ms,
            r.p99_ms,
            r.ops
        ));
    }
    let find = |m: Mode| results.iter().find(|(x, _)| *x == m).map(|(_, r)| r);
    if let (Some(p), Some(s)) = (find(Mode::Parallel), find(Mode::Sequential)) {
        out.push_str(&format!(
            "parallel/sequential: commits/s {:.2}x, p50 {:.2}x, p99 {:.2}x\n",
            ratio(p.per_second, s.per_second),
            ratio(p.p50_ms, s.p50_ms),
            ratio(p.p99_ms, s.p99_ms)
        ));
    }
    out
}

/// The chart `--plot` writes: p50 and p99 commit latency per mode.
pub fn chart(backends: usize, clients: usize, results: &[(Mode, PhaseResult)]) -> String {
    plot::bar_chart(
        &format!("Commit latency through the array: {backends} backend(s), {clients} client(s)"),
        "commit latency, ms",
        &["p50".to_string(), "p99".to_string()],
        &results
            .iter()
            .map(|(m, r)| (mode_name(*m).to_string(), vec![r.p50_ms, r.p99_ms]))
            .collect::<Vec<_>>(),
    )
}

/// Refuse a backend that is not empty, unless allowed.
fn check_backend(b: &BackendAddr, allow_nonempty: bool, timeout: Duration) -> Result<(), String> {
    let c = Client::connect(ClientOptions {
        addr: b.addr.clone(),
        storage: b.storage.clone(),
        call_timeout: timeout,
        connect_timeout: timeout,
        ..ClientOptions::default()
    })
    .map_err(|e| format!("cannot connect to backend {}/{}: {e}", b.addr, b.storage))?;
    let last = c.last_transaction();
    c.close();
    let last = last.map_err(|e| {
        format!(
            "backend {}/{}: lastTransaction failed: {e}",
            b.addr, b.storage
        )
    })?;
    if last != Tid::ZERO && !allow_nonempty {
        return Err(format!(
            "backend {}/{} is not empty (last transaction {last}); this benchmark writes test \
             objects to it: use empty storages, or pass --allow-nonempty",
            b.addr, b.storage
        ));
    }
    Ok(())
}

/// Settings for an in-process server on a free local port: the config's
/// defaults, with `workers` worker threads (`None`: the default).
pub fn local_server_options(workers: Option<usize>) -> Options {
    let d = ServerConfig::default();
    Options {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)).into(),
        workers: workers.unwrap_or_else(crate::config::default_workers),
        max_frame: d.max_frame_size,
        invalidation_queue_size: d.invalidation_queue_size,
        transaction_timeout: None,
        conflict_resolver: None,
        tls: None,
        socket_mode: None,
        max_blob_size: None,
    }
}

/// Open an array over `backends` in `mode`, serve it, run the commit phase.
fn measure(mode: Mode, backends: &[BackendAddr], args: &FanoutArgs) -> Result<CommitPhase, String> {
    let timeout = Duration::from_secs_f64(args.backend_timeout);
    let specs = backends
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let mut o = ClientOptions::new(b.addr.clone());
            o.storage = b.storage.clone();
            BackendSpec {
                name: format!("b{i}"),
                kind: "zeo",
                source: BackendSource::Zeo(o),
                reopen: None,
            }
        })
        .collect();
    let raid = RaidStorage::open(
        RaidOptions {
            fanout: mode,
            backend_timeout: timeout,
            auto_recover: false,
            ..RaidOptions::new("1")
        },
        specs,
    )?;
    let raid = Arc::new(raid);
    let degraded = |raid: &RaidStorage| -> Option<String> {
        let st = raid.status();
        let bad: Vec<String> = st
            .backends
            .iter()
            .filter(|b| b.state != crate::status::Role::Optimal)
            .map(|b| format!("{}: {}", b.name, b.reason.as_deref().unwrap_or("?")))
            .collect();
        (!bad.is_empty()).then(|| bad.join("; "))
    };
    if let Some(why) = degraded(&raid) {
        raid.close();
        return Err(format!(
            "the {} array does not start with every backend optimal: {why}",
            mode_name(mode)
        ));
    }
    let server = Server::start(
        local_server_options(None),
        vec![("1".into(), raid.clone() as Arc<dyn Storage>, false)],
    )
    .map_err(|e| format!("cannot start the in-process server: {e}"))?;
    let addr = server.local_addr().to_string();
    let phase = commit_phase(
        &addr,
        "1",
        args.clients,
        Duration::from_secs_f64(args.duration),
        args.objects_per_txn,
        args.size,
    );
    let after = degraded(&raid);
    server.shutdown();
    let phase = phase?;
    if let Some(why) = after {
        return Err(format!(
            "a backend was degraded during the {} run, so its figures are not comparable: {why}",
            mode_name(mode)
        ));
    }
    Ok(phase)
}

/// Run `zeoraid bench fanout` and return the report.
pub fn run(args: &FanoutArgs) -> Result<String, String> {
    if args.clients == 0
        || args.objects_per_txn == 0
        || args.duration <= 0.0
        || args.backend_timeout <= 0.0
    {
        return Err(
            "--clients, --objects-per-txn, --duration and --backend-timeout must be positive"
                .into(),
        );
    }
    let backends = args
        .backends
        .iter()
        .map(|b| parse_backend(b))
        .collect::<Result<Vec<_>, _>>()?;
    let timeout = Duration::from_secs_f64(args.backend_timeout);
    for b in &backends {
        check_backend(b, args.allow_nonempty, timeout)?;
    }
    let mut results = Vec::new();
    for mode in [Mode::Parallel, Mode::Sequential] {
        let phase = measure(mode, &backends, args)?;
        if phase.result.ops == 0 {
            return Err(format!("no commit completed in {} mode", mode_name(mode)));
        }
        results.push((mode, phase.result));
    }
    let mut out = report(&backends, args, &results);
    if let Some(path) = &args.plot {
        std::fs::write(path, chart(backends.len(), args.clients, &results))
            .map_err(|e| format!("cannot write the plot to {}: {e}", path.display()))?;
        out.push_str(&format!("plot written to {}\n", path.display()));
    }
    Ok(out.trim_end().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_backend_table() {
        let ok = |addr: &str, storage: &str| {
            Ok(BackendAddr {
                addr: addr.into(),
                storage: storage.into(),
            })
        };
        let cases: Vec<(&str, Result<BackendAddr, &str>)> = vec![
            ("127.0.0.1:8100", ok("127.0.0.1:8100", "1")),
            ("db1:8100/main", ok("db1:8100", "main")),
            ("localhost:1/1", ok("localhost:1", "1")),
            ("[::1]:8100", ok("[::1]:8100", "1")),
            ("[::1]:8100/2", ok("[::1]:8100", "2")),
            ("db1", Err("no port")),
            ("db1:8100/", Err("empty storage name")),
            (":8100", Err("no host")),
            ("db1:port", Err("the port must be a number")),
            ("db1:0", Err("the port must be a number")),
            ("db1:70000", Err("the port must be a number")),
            ("::1:8100", Err("IPv6 host must be in brackets")),
        ];
        for (input, want) in cases {
            match (parse_backend(input), want) {
                (Ok(got), Ok(w)) => assert_eq!(got, w, "{input}"),
                (Err(got), Err(w)) => {
                    assert!(got.contains(w), "{input}: {got:?} should say {w:?}");
                    assert!(got.contains(input), "{got:?} names the argument");
                }
                (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
            }
        }
    }

    fn args(clients: usize) -> FanoutArgs {
        FanoutArgs {
            backends: vec![],
            clients,
            duration: 5.0,
            objects_per_txn: 1,
            size: 128,
            backend_timeout: 10.0,
            plot: None,
            allow_nonempty: false,
        }
    }

    fn result(per_second: f64, p50_ms: f64, p99_ms: f64) -> PhaseResult {
        PhaseResult {
            ops: 100,
            per_second,
            p50_ms,
            p99_ms,
        }
    }

    #[test]
    fn ratio_table() {
        for (a, b, want) in [(1.0, 2.0, 0.5), (3.0, 1.0, 3.0), (0.0, 1.0, 0.0)] {
            assert_eq!(ratio(a, b), want);
        }
        assert!(ratio(1.0, 0.0).is_nan());
        assert!(ratio(1.0, -1.0).is_nan());
    }

    #[test]
    fn report_has_a_line_per_mode_and_the_ratios() {
        let backends = vec![
            parse_backend("a:1").unwrap(),
            parse_backend("b:2/x").unwrap(),
        ];
        let text = report(
            &backends,
            &args(2),
            &[
                (Mode::Parallel, result(250.0, 4.0, 6.0)),
                (Mode::Sequential, result(125.0, 8.0, 12.0)),
            ],
        );
        assert!(
            text.contains("2 backend(s) (a:1/1, b:2/x), 2 client(s)"),
            "{text}"
        );
        assert!(
            text.contains("parallel        250.0      4.000      6.000"),
            "{text}"
        );
        assert!(
            text.contains("sequential      125.0      8.000     12.000"),
            "{text}"
        );
        assert!(
            text.contains("parallel/sequential: commits/s 2.00x, p50 0.50x, p99 0.50x"),
            "{text}"
        );
        // Without both modes there is no ratio line.
        let one = report(
            &backends,
            &args(1),
            &[(Mode::Parallel, result(1.0, 1.0, 1.0))],
        );
        assert!(!one.contains("parallel/sequential"), "{one}");
    }

    #[test]
    fn chart_has_a_bar_per_mode_and_percentile() {
        let svg = chart(
            3,
            1,
            &[
                (Mode::Parallel, result(250.0, 4.0, 6.0)),
                (Mode::Sequential, result(125.0, 8.0, 12.0)),
            ],
        );
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("3 backend(s), 1 client(s)"));
        assert!(svg.contains(">parallel<") && svg.contains(">sequential<"));
        // Four bars, the background, two legend swatches.
        assert_eq!(svg.matches("<rect").count(), 4 + 1 + 2);
    }
}
