//! `sbc`: the Session Border Controller daemon and its CLI.
//!
//! * `sbc run [-c FILE]` — run in the foreground (embedded default config without -c).
//! * `sbc check-config -c FILE` — validate a config, print every error with its line and path.

mod admin;
mod allowlist_cmd;
mod config;
mod guard;
mod logsum;
mod management;
mod media;
mod metrics;
mod net;
mod notify;
mod pressure;
mod run;
mod shard;
mod store;
mod stun;
mod trunk;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::admin::AdminCommand;

#[derive(Parser)]
#[command(name = "sbc", version, about = "Session Border Controller")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the SBC in the foreground.
    Run {
        /// Config file (TOML); the embedded default when absent.
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Validate a config file; exits non-zero and lists every error.
    CheckConfig {
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Print the embedded default config.
    DefaultConfig,
    /// The trunk allowlist exported from the operator's providers_ips table.
    Allowlist {
        #[command(subcommand)]
        cmd: allowlist_cmd::AllowlistCmd,
    },
    /// The running daemon's bans (rate limits and fail2ban-style jails).
    Bans {
        #[command(subcommand)]
        cmd: BansCmd,
    },
    /// Counters of the running daemon (SIP, state, XDP verdicts by reason).
    Stats {
        /// Admin socket of the daemon.
        #[arg(long, default_value = config::DEFAULT_ADMIN_SOCKET)]
        socket: PathBuf,
    },
}

#[derive(Subcommand)]
enum BansCmd {
    /// Every ban: prefix, jail, remaining time, hits, packets dropped in userspace, reason, evidence.
    List {
        #[arg(long, default_value = config::DEFAULT_ADMIN_SOCKET)]
        socket: PathBuf,
    },
    /// The ban covering ADDR.
    Show {
        addr: String,
        #[arg(long, default_value = config::DEFAULT_ADMIN_SOCKET)]
        socket: PathBuf,
    },
    /// Ban ADDR (an address, or a prefix such as 198.51.100.0/24) by hand.
    Add {
        addr: String,
        /// How long, in seconds.
        #[arg(long = "for", default_value_t = 3600)]
        secs: u64,
        #[arg(long, default_value = "")]
        reason: String,
        #[arg(long, default_value = config::DEFAULT_ADMIN_SOCKET)]
        socket: PathBuf,
    },
    /// Lift the ban of ADDR (or the one covering it) at once; its recidive history is forgotten.
    Del {
        addr: String,
        #[arg(long, default_value = config::DEFAULT_ADMIN_SOCKET)]
        socket: PathBuf,
    },
}

/// `sbc bans ...` as an admin command and the socket to send it to.
fn bans_command(cmd: BansCmd) -> Result<(PathBuf, AdminCommand), String> {
    let prefix = |a: &str| a.parse::<sbc_policy::Prefix>().map_err(|e| format!("{a:?}: {e}"));
    Ok(match cmd {
        BansCmd::List { socket } => (socket, AdminCommand::BansList),
        BansCmd::Show { addr, socket } => (socket, AdminCommand::BansShow(prefix(&addr)?)),
        BansCmd::Del { addr, socket } => (socket, AdminCommand::BansDel(prefix(&addr)?)),
        BansCmd::Add { addr, secs, reason, socket } => {
            // One line on the wire: control characters become spaces.
            let reason: String = reason.chars().map(|c| if c.is_control() { ' ' } else { c }).take(128).collect();
            (socket, AdminCommand::BansAdd { prefix: prefix(&addr)?, secs, reason: reason.trim().to_string() })
        }
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::CheckConfig { config } => match config::load(config.as_deref()) {
            Ok(_) => {
                println!("ok");
                ExitCode::SUCCESS
            }
            Err(errs) => {
                eprint!("{errs}");
                ExitCode::from(2)
            }
        },
        Cmd::Stats { socket } => admin_call(&socket, AdminCommand::Stats),
        Cmd::Bans { cmd } => match bans_command(cmd) {
            Ok((socket, command)) => admin_call(&socket, command),
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Cmd::Allowlist { cmd: allowlist_cmd::AllowlistCmd::Export(args) } => allowlist_cmd::export(&args),
        Cmd::Allowlist { cmd: allowlist_cmd::AllowlistCmd::Show { socket } } => {
            admin_call(&socket, AdminCommand::AllowlistShow)
        }
        Cmd::Allowlist { cmd: allowlist_cmd::AllowlistCmd::Reload { socket } } => {
            admin_call(&socket, AdminCommand::AllowlistReload)
        }
        Cmd::DefaultConfig => {
            print!("{}", config::DEFAULT);
            ExitCode::SUCCESS
        }
        Cmd::Run { config } => {
            let cfg = match config::load(config.as_deref()) {
                Ok(c) => c,
                Err(errs) => {
                    eprint!("invalid configuration:\n{errs}");
                    return ExitCode::from(2);
                }
            };
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.log_level));
            // Colours only on a terminal: under systemd, stderr is the journal.
            let ansi = std::io::stderr().is_terminal();
            tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();
            match run::run(cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// One admin command to the running daemon; its answer on stdout.
fn admin_call(socket: &std::path::Path, command: AdminCommand) -> ExitCode {
    match admin::call(socket, &command) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
