//! `zeoraid bench`: a load generator for any ZEO 5 (msgpack) server.
//!
//! Each simulated client has its own connection (like separate ZODB
//! processes) and does what a ZODB client does on the wire: a commit is
//! `tpc_begin` + `storea` × M + `vote` + `tpc_finish`; a load is
//! `loadBefore(oid, maxtid)` of an object written earlier. The run has two
//! timed phases, commits then loads, each `duration / 2` long with all
//! clients busy; it reports throughput and p50/p99 latency of each.
//!
//! The phases are public ([`commit_phase`], [`load_phase`], [`fill`]) so
//! other measurements reuse them: [`fanout`] (`zeoraid bench fanout`,
//! parallel vs sequential fan-out of a RAID array over ZEO servers) and the
//! `raid` benchmark. [`proxy`] is a TCP proxy that adds delay or service
//! time, or never answers (tests and benchmarks); [`plot`] writes SVG
//! charts.

pub mod fanout;
pub mod plot;
pub mod proxy;

use crate::net::tls::ClientFiles;
use crate::storage::Oid;
use crate::zeo::client::wire::Wire;
use crate::zeo::client::{parse_oids, Client, ClientOptions};
use crate::zeo::flavour::Flavour;
use crate::zeo::frame;
use crate::zeo::message::{self, bin, oid_value};
use rand::Rng;
use rmpv::Value;
use std::io::{BufReader, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Command-line arguments of `zeoraid bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// The ZEO server to measure, HOST:PORT.
    #[arg(long)]
    pub address: String,
    /// Concurrent clients, each with its own connection.
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    /// Total run time in seconds (half commits, half loads).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Objects stored per transaction.
    #[arg(long, default_value_t = 1)]
    pub objects_per_txn: usize,
    /// Bytes per object.
    #[arg(long, default_value_t = 128)]
    pub size: usize,
    /// Loads each client keeps in flight on its connection (ZODB clients
    /// pipeline loads from many threads over one connection and prefetch).
    #[arg(long, default_value_t = 1)]
    pub pipeline: usize,
    /// Storage name to register with.
    #[arg(long, default_value = "1")]
    pub storage: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Connect over TLS, verifying the server with this CA file (PEM).
    #[arg(long)]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM), for a server that requires one.
    #[arg(long, requires = "tls_key")]
    pub tls_certificate: Option<std::path::PathBuf>,
    #[arg(long, requires = "tls_certificate")]
    pub tls_key: Option<std::path::PathBuf>,
    /// The name in the server's certificate (default: the address's host).
    #[arg(long)]
    pub tls_server_hostname: Option<String>,
}

impl BenchArgs {
    /// The server to measure, with TLS when a `--tls-ca` is given.
    pub fn target(&self) -> Target {
        Target {
            address: self.address.clone(),
            tls: self.tls_ca.as_ref().map(|ca| ClientFiles {
                ca: Some(ca.clone()),
                certificate: self.tls_certificate.clone(),
                key: self.tls_key.clone(),
                server_hostname: self.tls_server_hostname.clone(),
            }),
        }
    }
}

/// A server to load: HOST:PORT or a Unix socket path, plaintext or TLS.
#[derive(Debug, Clone, Default)]
pub struct Target {
    pub address: String,
    pub tls: Option<ClientFiles>,
}

impl From<&str> for Target {
    fn from(a: &str) -> Target {
        Target {
            address: a.to_string(),
            tls: None,
        }
    }
}

impl From<&String> for Target {
    fn from(a: &String) -> Target {
        Target::from(a.as_str())
    }
}

impl From<&Target> for Target {
    fn from(t: &Target) -> Target {
        t.clone()
    }
}

/// `zeoraid bench`: the load generator (`--address ...`), or a measurement
/// built on it (`zeoraid bench fanout ...`).
#[derive(clap::Args, Debug, Clone)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct BenchCommand {
    #[command(subcommand)]
    pub sub: Option<BenchSub>,
    #[command(flatten)]
    pub load: Option<BenchArgs>,
}

/// The measurements under `zeoraid bench`.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum BenchSub {
    /// Commit through an in-process RAID array over the given ZEO servers,
    /// with parallel and with sequential fan-out: commits/s, p50/p99, ratios.
    Fanout(fanout::FanoutArgs),
}

/// Run what `zeoraid bench ...` asked for; the report to print.
pub fn run_command(cmd: &BenchCommand) -> Result<String, String> {
    match (&cmd.sub, &cmd.load) {
        (Some(BenchSub::Fanout(a)), _) => fanout::run(a),
        (None, Some(a)) => run(a),
        (None, None) => Err("give --address HOST:PORT (see `zeoraid bench --help`)".into()),
    }
}

/// Throughput and latency of one phase.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PhaseResult {
    pub ops: u64,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// The percentile of sorted microsecond samples, in milliseconds.
pub fn percentile_ms(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted_us.len() as f64 - 1.0)).round() as usize;
    sorted_us[rank.min(sorted_us.len() - 1)] as f64 / 1000.0
}

/// The median of `values` (the mean of the middle two for an even count;
/// 0 for none). NaNs sort last.
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

fn summarize(mut samples: Vec<u32>, elapsed: Duration) -> PhaseResult {
    samples.sort_unstable();
    let secs = elapsed.as_secs_f64().max(1e-9);
    PhaseResult {
        ops: samples.len() as u64,
        per_second: samples.len() as f64 / secs,
        p50_ms: percentile_ms(&samples, 50.0),
        p99_ms: percentile_ms(&samples, 99.0),
    }
}

fn connect(target: &Target, storage: &str) -> Result<Client, String> {
    Client::connect(ClientOptions {
        addr: target.address.clone(),
        storage: storage.to_string(),
        call_timeout: Duration::from_secs(30),
        tls: target.tls.clone(),
        ..ClientOptions::default()
    })
    .map_err(|e| format!("cannot connect to {}: {e}", target.address))
}

/// One commit storing `oids` as new objects.
fn commit(client: &Client, txn_id: i64, oids: &[Oid], payload: &[u8]) -> Result<(), String> {
    let e = |e: crate::storage::Error| e.to_string();
    client
        .call_oneway(
            "tpc_begin",
            vec![
                Value::from(txn_id),
                bin(b"bench"),
                bin(b"zeoraid bench"),
                Value::Map(vec![]),
                Value::Nil,
                Value::from(" "),
            ],
        )
        .map_err(e)?;
    for oid in oids {
        client
            .call_oneway(
                "storea",
                vec![
                    oid_value(*oid),
                    bin(&[0u8; 8]),
                    bin(payload),
                    Value::from(txn_id),
                ],
            )
            .map_err(e)?;
    }
    client.call("vote", vec![Value::from(txn_id)]).map_err(e)?;
    client
        .call("tpc_finish", vec![Value::from(txn_id)])
        .map_err(e)?;
    Ok(())
}

fn new_oids(client: &Client, n: usize) -> Result<Vec<Oid>, String> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let v = client
            .call("new_oids", vec![Value::from(100)])
            .map_err(|e| e.to_string())?;
        out.extend(parse_oids(&v).map_err(|e| format!("new_oids answered {v}: {e}"))?);
    }
    out.truncate(n);
    Ok(out)
}

fn payload(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i % 251) as u8).collect()
}

/// What a commit phase measured and wrote.
#[derive(Debug, Clone, Default)]
pub struct CommitPhase {
    pub result: PhaseResult,
    /// The objects written (each once, `size` bytes).
    pub written: Vec<Oid>,
}

/// The commit phase: `clients` connections to storage `storage` at
/// `address`, each committing new objects (`objects_per_txn` of `size`
/// bytes per transaction) back to back for `phase`.
pub fn commit_phase(
    target: impl Into<Target>,
    storage: &str,
    clients: usize,
    phase: Duration,
    objects_per_txn: usize,
    size: usize,
) -> Result<CommitPhase, String> {
    if clients == 0 || objects_per_txn == 0 {
        return Err("the commit phase needs clients and objects per transaction".into());
    }
    let target = target.into();
    let conns: Vec<Client> = (0..clients)
        .map(|_| connect(&target, storage))
        .collect::<Result<_, _>>()?;
    let payload = payload(size);
    let (results, elapsed) = timed_phase(conns.iter().collect(), phase, "commit", |i, c, stop| {
        let mut lat = Vec::new();
        let mut written = Vec::new();
        let mut txn = (i as i64) << 32;
        while !stop.load(Ordering::Relaxed) {
            let oids = new_oids(c, objects_per_txn)?;
            txn += 1;
            let t0 = Instant::now();
            commit(c, txn, &oids, &payload)?;
            lat.push(micros(t0));
            written.extend(oids);
        }
        Ok((lat, written))
    });
    for c in &conns {
        c.close();
    }
    let mut lat = Vec::new();
    let mut written = Vec::new();
    for r in results {
        let (l, w) = r?;
        lat.extend(l);
        written.extend(w);
    }
    Ok(CommitPhase {
        result: summarize(lat, elapsed),
        written,
    })
}

/// Write `objects` new objects of `size` bytes, `per_txn` per transaction,
/// over one connection; returns their oids (to load them later).
pub fn fill(
    target: impl Into<Target>,
    storage: &str,
    objects: usize,
    per_txn: usize,
    size: usize,
) -> Result<Vec<Oid>, String> {
    let target = target.into();
    let c = connect(&target, storage)?;
    let payload = payload(size);
    let mut written = Vec::with_capacity(objects);
    let mut txn = 0i64;
    while written.len() < objects {
        let oids = new_oids(&c, per_txn.max(1).min(objects - written.len()))?;
        txn += 1;
        commit(&c, txn, &oids, &payload)?;
        written.extend(oids);
    }
    c.close();
    Ok(written)
}

/// The load phase: `clients` plain connections, each loading random
/// objects of `oids` (`loadBefore`), `pipeline` requests in flight, for
/// `phase`.
pub fn load_phase(
    target: impl Into<Target>,
    storage: &str,
    clients: usize,
    phase: Duration,
    pipeline: usize,
    oids: &[Oid],
) -> Result<PhaseResult, String> {
    if oids.is_empty() {
        return Err("no commit completed; nothing to load".into());
    }
    if clients == 0 {
        return Err("the load phase needs clients".into());
    }
    let target = target.into();
    let oids: Vec<Value> = oids.iter().map(|o| oid_value(*o)).collect();
    let oids = &oids;
    let mut raws: Vec<RawConn> = (0..clients)
        .map(|_| RawConn::connect(&target, storage))
        .collect::<Result<_, _>>()?;
    let depth = pipeline.max(1);
    let (results, elapsed) =
        timed_phase(raws.iter_mut().collect(), phase, "load", |_, raw, stop| {
            let mut rng = rand::thread_rng();
            let mut lat = Vec::new();
            let mut batch = Vec::with_capacity(depth);
            while !stop.load(Ordering::Relaxed) {
                batch.clear();
                for _ in 0..depth {
                    batch.push(oids[rng.gen_range(0..oids.len())].clone());
                }
                lat.extend(raw.load_batch(&batch)?);
            }
            Ok(lat)
        });
    let mut lat = Vec::new();
    for r in results {
        lat.extend(r?);
    }
    Ok(summarize(lat, elapsed))
}

/// A plain blocking ZEO connection for pipelined loads.
struct RawConn {
    stream: Wire,
    reader: BufReader<Wire>,
    // The server's flavour: msgpack, or pickle (a default-config runzeo).
    flavour: Flavour,
    next: i64,
    out: Vec<u8>,
}

impl RawConn {
    fn connect(target: &Target, storage: &str) -> Result<RawConn, String> {
        let addr = &target.address;
        let e = |what: &str, err: std::io::Error| format!("{what} {addr}: {err}");
        let stream = Wire::connect(addr, target.tls.as_ref(), Duration::from_secs(10))
            .map_err(|err| format!("cannot connect to {addr}: {err}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|err| e("cannot configure", err))?;
        let reader = BufReader::new(stream.try_clone().map_err(|err| e("cannot clone", err))?);
        let mut reader = reader;
        let hello =
            frame::read_frame(&mut reader, 1 << 20).map_err(|err| e("no handshake from", err))?;
        let flavour = Flavour::from_announcement(addr, &hello).map_err(|err| err.to_string())?;
        let mut c = RawConn {
            stream,
            reader,
            flavour,
            next: 1,
            out: Vec::new(),
        };
        frame::write_frame(&mut c.stream, flavour.protocol())
            .map_err(|err| e("cannot write to", err))?;
        c.send(
            "register",
            vec![Value::from(storage), Value::Boolean(false)],
        );
        c.flush().map_err(|err| e("cannot write to", err))?;
        c.reply()?;
        Ok(c)
    }

    fn send(&mut self, method: &str, args: Vec<Value>) {
        let payload = self
            .flavour
            .encode(self.next, 0, method, &Value::Array(args));
        self.next += 1;
        self.out
            .extend_from_slice(&(payload.len() as u32).to_be_bytes());
        self.out.extend_from_slice(&payload);
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.stream.write_all(&self.out)?;
        self.out.clear();
        Ok(())
    }

    /// The next reply, skipping server-initiated calls (invalidations, info).
    fn reply(&mut self) -> Result<Value, String> {
        loop {
            let f = frame::read_frame(&mut self.reader, 1 << 30)
                .map_err(|e| format!("reading a reply: {e}"))?;
            let m = self.flavour.decode(&f).map_err(|e| e.to_string())?;
            if m.method != message::REPLY {
                continue;
            }
            if m.flags == message::FLAG_ERROR {
                return Err(message::error_from_wire(&m.args).to_string());
            }
            return Ok(m.args);
        }
    }

    /// Pipeline one `loadBefore` per oid; latency of each in µs.
    fn load_batch(&mut self, oids: &[Value]) -> Result<Vec<u32>, String> {
        let max = bin(&[0xff; 8]);
        for oid in oids {
            self.send("loadBefore", vec![oid.clone(), max.clone()]);
        }
        let t0 = Instant::now();
        self.flush().map_err(|e| format!("sending loads: {e}"))?;
        let mut lat = Vec::with_capacity(oids.len());
        for _ in oids {
            match self.reply()? {
                Value::Array(_) => {}
                other => return Err(format!("loadBefore answered {other}")),
            }
            lat.push(micros(t0));
        }
        Ok(lat)
    }
}

fn micros(t0: Instant) -> u32 {
    t0.elapsed().as_micros().min(u32::MAX as u128) as u32
}

/// Run `work(i, item, stop)` on one named thread per item for `phase`, then
/// raise `stop` and collect every thread's result (a panic or a failed spawn
/// becomes that thread's error). Returns the results and the elapsed time.
fn timed_phase<I: Send, T: Send>(
    items: Vec<I>,
    phase: Duration,
    what: &str,
    work: impl Fn(usize, I, &AtomicBool) -> Result<T, String> + Sync,
) -> (Vec<Result<T, String>>, Duration) {
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = items
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                let (stop, work) = (&stop, &work);
                std::thread::Builder::new()
                    .name(format!("bench-{what}-{i}"))
                    .spawn_scoped(s, move || work(i, item, stop))
            })
            .collect();
        std::thread::sleep(phase);
        stop.store(true, Ordering::Relaxed);
        handles
            .into_iter()
            .map(|h| match h {
                Ok(h) => h
                    .join()
                    .unwrap_or_else(|_| Err("bench thread panicked".into())),
                Err(e) => Err(format!("cannot start bench thread: {e}")),
            })
            .collect()
    });
    (results, started.elapsed())
}

/// Run the benchmark and return the report (text or JSON).
pub fn run(args: &BenchArgs) -> Result<String, String> {
    if args.clients == 0 || args.objects_per_txn == 0 || args.duration <= 0.0 {
        return Err("--clients, --objects-per-txn and --duration must be positive".into());
    }
    let phase = Duration::from_secs_f64(args.duration / 2.0);
    // Phase 1: commits.
    let target = args.target();
    let written = commit_phase(
        &target,
        &args.storage,
        args.clients,
        phase,
        args.objects_per_txn,
        args.size,
    )?;
    let commits = written.result;
    // Phase 2: loads of random written objects, over plain blocking
    // connections (one per client) so the generator costs little: a batch of
    // `pipeline` loadBefore requests is written, then its replies are read.
    let loads = load_phase(
        &target,
        &args.storage,
        args.clients,
        phase,
        args.pipeline,
        &written.written,
    )?;
    Ok(if args.json {
        serde_json::json!({
            "address": args.address,
            "clients": args.clients,
            "objects_per_txn": args.objects_per_txn,
            "size": args.size,
            "pipeline": args.pipeline,
            "commits_per_s": commits.per_second,
            "commit_p50_ms": commits.p50_ms,
            "commit_p99_ms": commits.p99_ms,
            "loads_per_s": loads.per_second,
            "load_p50_ms": loads.p50_ms,
            "load_p99_ms": loads.p99_ms,
        })
        .to_string()
    } else {
        format!(
            "{} clients, {} object(s)/txn of {} bytes against {}\n\
             commits: {:>10.1}/s  p50 {:.3} ms  p99 {:.3} ms  ({} commits)\n\
             loads:   {:>10.1}/s  p50 {:.3} ms  p99 {:.3} ms  ({} loads, {} in flight per client)",
            args.clients,
            args.objects_per_txn,
            args.size,
            args.address,
            commits.per_second,
            commits.p50_ms,
            commits.p99_ms,
            commits.ops,
            loads.per_second,
            loads.p50_ms,
            loads.p99_ms,
            loads.ops,
            args.pipeline
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let s: Vec<u32> = (1..=100).map(|i| i * 1000).collect();
        for (p, want) in [(0.0, 1.0), (50.0, 51.0), (99.0, 99.0), (100.0, 100.0)] {
            assert_eq!(percentile_ms(&s, p), want, "p{p}");
        }
        assert_eq!(percentile_ms(&[], 50.0), 0.0);
    }

    #[test]
    fn bench_without_address_or_measurement_is_an_error() {
        let cmd = BenchCommand {
            sub: None,
            load: None,
        };
        assert!(run_command(&cmd).unwrap_err().contains("--address"));
    }

    #[test]
    fn medians() {
        let nan = f64::NAN;
        let cases: Vec<(Vec<f64>, f64)> = vec![
            (vec![], 0.0),
            (vec![3.0], 3.0),
            (vec![3.0, 1.0, 2.0], 2.0),
            (vec![4.0, 1.0, 3.0, 2.0], 2.5),
            (vec![5.0, 1.0, 100.0], 5.0),
            (vec![1.0, nan, 2.0], 2.0),
        ];
        for (v, want) in cases {
            assert_eq!(median(&v), want, "{v:?}");
        }
    }
}
