//! The `flowlens` command.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use flowlens::{check, config::RunArgs, report, run, top};

/// flowlens: flow records from XDP and netfilter-hook eBPF probes, exported to the sinks of
/// `--sink` (Parquet files, locally or on S3, Kafka, OTLP, IPFIX, stdout).
#[derive(Parser)]
#[command(
    name = "flowlens",
    version,
    about = "flowlens: per-flow counters from XDP and netfilter-hook eBPF probes, exported as flow records to Parquet files (local or on S3), Kafka, OTLP (OpenTelemetry logs over gRPC), IPFIX collectors (UDP or TCP) or stdout",
    after_help = "Log level: FLOWLENS_LOG=error|warn|info|debug|trace (default info), on stderr.",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

// Parsed once at start: the size difference between the variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Cmd {
    /// Attach the probes and export flow records until stopped (needs root or CAP_BPF,
    /// CAP_NET_ADMIN and CAP_PERFMON).
    ///
    /// Examples: flowlens run --xdp eth0 --sink parquet:./flows; flowlens run --netfilter forward
    Run(Box<RunArgs>),
    /// Say whether `flowlens run` with the same options would start on this kernel and these
    /// interfaces, one line per feature: ok, fallback, missing or FAIL, and why.
    ///
    /// Tries each thing as `run` would: loads the probe, attaches it to every selected interface
    /// in the --xdp-mode asked for (auto: native, else the generic fallback run would take) and
    /// detaches it, attaches and detaches each --netfilter hook; probes kernel BTF, capabilities,
    /// the batch map drain, the coarse clock helper and BPF atomics. Exit status 1 exactly when
    /// a line says FAIL (run would exit with an error); sinks are not contacted and no file is
    /// written. Attaching native XDP makes some drivers reset their queues (a short traffic
    /// interruption), as `run` does.
    ///
    /// Example: flowlens check --xdp eth0 --netfilter forward
    Check(Box<RunArgs>),
    /// Print the biggest flows found in a directory of flowlens Parquet files.
    Top {
        /// Directory written by the Parquet sink.
        #[arg(long, value_name = "DIR", default_value = "./flows")]
        input: PathBuf,
        /// Number of rows.
        #[arg(long, short = 'n', default_value_t = 20)]
        limit: usize,
        /// Print every flow as CSV (ignores --limit) instead of a table.
        #[arg(long)]
        csv: bool,
    },
    /// Capacity-planning report from a flow lake (directories or s3:// prefixes of Parquet
    /// files, as flowlens or another engine wrote them, or --from-json): throughput per
    /// interface and direction (peak, p95, p99), top talkers, hosts, growth, link utilisation.
    ///
    /// Example: flowlens report --input ./flows --from -24h --bucket 5m --html report.html
    ///          --link-capacity eth0=10Gbit
    Report(Box<report::ReportArgs>),
}

fn main() {
    let filter = std::env::var("FLOWLENS_LOG")
        .ok()
        .and_then(|s| s.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    tracing_subscriber::fmt()
        .with_max_level(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    if let Err(e) = real_main() {
        eprintln!("flowlens: error: {e:#}");
        std::process::exit(1);
    }
}

/// Parses the command line. Usage errors are one line (`flowlens: error: …`, exit status 2)
/// like every other error; `--help` and `--version` print as usual.
fn parse_cli() -> Cli {
    use clap::error::ErrorKind;
    match Cli::try_parse() {
        Ok(c) => c,
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) =>
        {
            e.exit()
        }
        Err(e) => {
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("flowlens: error: {first} (see --help)");
            std::process::exit(2);
        }
    }
}

fn real_main() -> Result<()> {
    match parse_cli().cmd {
        Cmd::Run(args) => {
            // A binary built with build.rs's stub says so before anything else.
            flowlens::probe::probe_object()?;
            let cfg = (*args).resolve()?;
            run::run(cfg)?;
        }
        Cmd::Check(args) => {
            let cfg = (*args).resolve()?;
            check::run(&cfg)?;
        }
        Cmd::Top { input, limit, csv } => {
            let agg = top::aggregate(&input)?;
            if csv {
                print!("{}", top::csv(&agg));
            } else {
                print!("{}", top::table(&agg, limit));
            }
        }
        Cmd::Report(args) => report::run(&args)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;
    use flowlens_sinks::SinkSpec;

    use super::*;

    /// For each sink kind `--sink` accepts: an example, the word `flowlens --help` must name
    /// and the form `flowlens run --help` must show. The match is exhaustive: a new kind does
    /// not compile until it is listed here.
    fn kind(spec: &SinkSpec) -> (&'static str, &'static str) {
        match spec {
            SinkSpec::Parquet(_) => ("Parquet", "`parquet:DIR`"),
            SinkSpec::ParquetS3(_) => ("S3", "`parquet:s3://BUCKET/PREFIX`"),
            SinkSpec::Kafka { .. } => ("Kafka", "`kafka:BROKERS/TOPIC`"),
            SinkSpec::Otlp(_) => ("OTLP", "`otlp:http://HOST:PORT`"),
            SinkSpec::Ipfix { tcp: false, .. } => ("IPFIX", "`ipfix:HOST:PORT`"),
            SinkSpec::Ipfix { tcp: true, .. } => ("IPFIX", "`ipfix+tcp:HOST:PORT`"),
            SinkSpec::Stdout => ("stdout", "`stdout`"),
        }
    }

    #[test]
    fn help_names_every_sink_kind() {
        let examples = [
            "parquet:/x",
            "parquet:s3://b/p",
            "kafka:h:9092/t",
            "otlp:http://h:4317",
            "ipfix:h:4739",
            "ipfix+tcp:h:4739",
            "stdout",
        ];
        let specs: Vec<SinkSpec> = examples.iter().map(|e| e.parse().unwrap()).collect();
        let kinds: std::collections::BTreeSet<_> = specs.iter().map(kind).collect();
        assert_eq!(kinds.len(), examples.len(), "one example per kind");

        let mut cli = Cli::command();
        let top = cli.render_help().to_string();
        let run = cli
            .find_subcommand_mut("run")
            .unwrap()
            .render_long_help()
            .to_string();
        for (word, form) in kinds {
            assert!(
                top.contains(word),
                "flowlens --help does not name {word}:\n{top}"
            );
            assert!(
                run.contains(form),
                "flowlens run --help does not show {form}"
            );
        }
    }
}
