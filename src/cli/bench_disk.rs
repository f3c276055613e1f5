//! `drover bench disk`: the flags and the table of `drover_devcluster::bench::disk`, which
//! measures what one durable coord write costs on a disk (coord's own log: append + fdatasync,
//! by 1 and by 3 concurrent writers).

use super::{Context, Output};
use drover_devcluster::bench::disk::{self, DiskConfig, Round};
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct DiskBenchArgs {
    /// Directory on the disk to measure (put it where the masters' --data-dir is); the bench
    /// works in a new directory inside it and removes that at the end. Default: the system's
    /// temporary directory.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Concurrent writers to measure, comma-separated; each appends and syncs its own log.
    #[arg(long, value_delimiter = ',', default_value = "1,3")]
    pub writers: Vec<usize>,
    /// Bytes of each logged record (a 128-byte `set` is about 216 bytes in the log).
    #[arg(long, default_value_t = 216)]
    pub record_size: usize,
    /// How long each writer count runs: 5s, 500ms, 1m.
    #[arg(long, default_value = "5s", value_parser = drover_types::units::parse_duration)]
    pub duration: Duration,
}

pub async fn bench_disk(ctx: &Context, args: DiskBenchArgs) -> anyhow::Result<()> {
    let config = DiskConfig {
        dir: args.dir,
        writers: args.writers,
        record_size: args.record_size,
        duration: args.duration,
    };
    let header = std::cell::Cell::new(true);
    let rounds = disk::run(&config, &|line| eprintln!("{line}"), &|round| {
        if ctx.output == Output::Human {
            print_row(header.replace(false), round);
        }
    })
    .await?;
    if ctx.output == Output::Json {
        let rows: Vec<_> = rounds
            .iter()
            .map(|r| {
                json!({
                    "writers": r.writers,
                    "syncs": r.syncs,
                    "seconds": r.elapsed.as_secs_f64(),
                    "syncs_per_sec": r.per_sec(),
                    "p50_ms": r.quantile_ms(0.5),
                    "p99_ms": r.quantile_ms(0.99),
                    "p999_ms": r.quantile_ms(0.999),
                    "max_ms": r.sync_us.max() as f64 / 1000.0,
                })
            })
            .collect();
        let report = json!({
            "dir": config.parent().display().to_string(),
            "record_size": config.record_size,
            "rounds": rows,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

fn print_row(header: bool, r: &Round) {
    if header {
        println!(
            "{:>7} {:>9} {:>9} {:>9} {:>9}",
            "writers", "syncs/s", "p50 ms", "p99 ms", "p999 ms"
        );
    }
    println!(
        "{:>7} {:>9.0} {:>9.3} {:>9.3} {:>9.3}",
        r.writers,
        r.per_sec(),
        r.quantile_ms(0.5),
        r.quantile_ms(0.99),
        r.quantile_ms(0.999)
    );
}
