//! `zeoraid bench`: a load generator for any ZEO 5 (msgpack) server.
//!
//! (Being written.)

/// Command-line arguments of `zeoraid bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// The ZEO server to measure, HOST:PORT.
    #[arg(long)]
    pub address: String,
}

pub fn run(args: &BenchArgs) -> Result<String, String> {
    Err(format!("bench against {} is not implemented yet", args.address))
}
