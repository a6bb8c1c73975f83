//! zeoraid inside a program: a ZEO server over an array of two `Data.fs`
//! mirrors, configured in code (no TOML file), serving ZEO clients until
//! the program says stop.
//!
//! ```text
//! cargo run --release --example embed_server                  # a Rust ZEO client commits and loads
//! cargo run --release --example embed_server -- --python .venv/bin/python
//!                                                             # and a stock ZODB client (ZEO.ClientStorage) too
//! cargo run --release --example embed_server -- --serve       # serve until Ctrl-C
//! ```

use std::error::Error;
use std::time::Duration;
use zeoraid::config::{BackendConfig, Config, StorageConfig};
use zeoraid::storage::{commit, load, Op, Storage, Tid, Txn};
use zeoraid::zeo::client::{Client, ClientOptions};
use zeoraid::Zeoraid;

fn main() -> Result<(), Box<dyn Error>> {
    // Logs go where the embedder says; here, warnings and errors to stderr.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let python = args
        .iter()
        .position(|a| a == "--python")
        .and_then(|i| args.get(i + 1).cloned());
    let serve = args.iter().any(|a| a == "--serve");

    let dir = std::env::temp_dir().join(format!("zeoraid-embed-server-{}", std::process::id()));
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".into(); // a free port
    config.server.workers = Some(2);
    config.storage.push(StorageConfig::raid(
        "1",
        vec![
            BackendConfig::file("left", dir.join("left.fs")),
            BackendConfig::file("right", dir.join("right.fs")),
        ],
    ));
    let zeoraid = Zeoraid::start(&config)?;
    let addr = zeoraid.local_addr();
    println!("serving storage \"1\" (an array of 2 file mirrors) on {addr}");

    let stopper = zeoraid.stopper();
    if serve {
        // Ctrl-C stops it (an embedder wires its own signals or UI here).
        let mut signals = signal_hook::iterator::Signals::new([
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGTERM,
        ])?;
        std::thread::spawn(move || {
            if signals.forever().next().is_some() {
                stopper.stop();
            }
        });
    } else {
        let clients = std::thread::spawn(move || {
            let outcome = use_it(&addr.to_string(), python.as_deref());
            stopper.stop();
            outcome
        });
        // The program's own work would go here; join returns once a
        // stop is asked for.
        zeoraid.join();
        println!("server stopped");
        std::fs::remove_dir_all(&dir)?;
        return match clients.join() {
            Ok(r) => r.map_err(|e| e.into()),
            Err(_) => Err("the client thread panicked".into()),
        };
    }
    zeoraid.join();
    println!("server stopped");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// What a client does with the embedded server.
fn use_it(addr: &str, python: Option<&str>) -> Result<(), String> {
    // zeoraid's own ZEO client is a `Storage` too.
    let client = Client::connect(ClientOptions {
        call_timeout: Duration::from_secs(10),
        ..ClientOptions::new(addr)
    })
    .map_err(|e| format!("connect: {e}"))?;
    let oid = client.new_oids(1).map_err(|e| e.to_string())?[0];
    let store = Op::Store {
        oid,
        serial: Tid::ZERO,
        data: b"stored by the Rust client".to_vec().into(),
    };
    let tid = commit(&client, &Txn::new(vec![store])).map_err(|e| e.to_string())?;
    let loaded = load(&client, oid).map_err(|e| e.to_string())?;
    println!(
        "Rust client: committed {tid}, loaded {oid}: {:?}",
        String::from_utf8_lossy(&loaded.data)
    );
    client.close();

    if let Some(python) = python {
        // A stock ZODB application: ZEO.ClientStorage, unchanged.
        let script = format!(
            r#"
import ZODB, transaction
from ZEO.ClientStorage import ClientStorage
from persistent.mapping import PersistentMapping
db = ZODB.DB(ClientStorage(("127.0.0.1", {port}), wait_timeout=10))
with db.transaction() as conn:
    conn.root()["greeting"] = PersistentMapping(text="hello from ZODB")
with db.transaction() as conn:
    print("stock ZODB client: committed and read back", repr(conn.root()["greeting"]["text"]))
db.close()
"#,
            port = addr.rsplit(':').next().unwrap_or("0")
        );
        let out = std::process::Command::new(python)
            .args(["-c", &script])
            .output()
            .map_err(|e| format!("cannot run {python}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "the ZODB client failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
    Ok(())
}
