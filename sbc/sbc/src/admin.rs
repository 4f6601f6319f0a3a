//! The admin socket: a unix stream socket (directory 0700, socket 0600: root only) taking one
//! command line per connection and answering with text, and its CLI client. Both ends share
//! [`AdminCommand`] and the one wire encoding defined here: the command's [`Display`] form
//! and a newline; the answer `ok\n` or `error\n`, then text. The daemon executes commands on
//! its own task, so an answer always reflects the state packets see.
//!
//! Commands: `allowlist show`, `allowlist reload`, `stats`, `bans list`, `bans show ADDR`,
//! `bans add ADDR SECS [REASON]`, `bans del ADDR`.

use std::fmt;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sbc_policy::Prefix;
use tokio::io::{AsyncBufReadExt, AsyncReadExt as _, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};

/// What the admin socket can ask of the running daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminCommand {
    /// The counters: SIP, state, XDP verdicts, userspace drops, the guard.
    Stats,
    /// The allowlist the daemon enforces, in the file format.
    AllowlistShow,
    /// Re-read the allowlist file (a bad file leaves the running list).
    AllowlistReload,
    /// Every ban, one line each (prefix, jail, remaining, hits, reason, evidence).
    BansList,
    /// The ban covering an address.
    BansShow(Prefix),
    /// An operator's ban of `prefix` for `secs`.
    BansAdd { prefix: Prefix, secs: u64, reason: String },
    /// Lifts a ban at once.
    BansDel(Prefix),
}

/// The command lines, in the order an error lists them.
const USAGE: [&str; 7] = [
    "allowlist show",
    "allowlist reload",
    "stats",
    "bans list",
    "bans show ADDR",
    "bans add ADDR SECS [REASON]",
    "bans del ADDR",
];

impl fmt::Display for AdminCommand {
    /// The command line on the wire (also what an operator types after `sbc`, for the ones
    /// without arguments).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminCommand::Stats => f.write_str("stats"),
            AdminCommand::AllowlistShow => f.write_str("allowlist show"),
            AdminCommand::AllowlistReload => f.write_str("allowlist reload"),
            AdminCommand::BansList => f.write_str("bans list"),
            AdminCommand::BansShow(p) => write!(f, "bans show {p}"),
            AdminCommand::BansAdd { prefix, secs, reason } if reason.is_empty() => {
                write!(f, "bans add {prefix} {secs}")
            }
            AdminCommand::BansAdd { prefix, secs, reason } => write!(f, "bans add {prefix} {secs} {reason}"),
            AdminCommand::BansDel(p) => write!(f, "bans del {p}"),
        }
    }
}

/// A command line that names no [`AdminCommand`]; its message lists the commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownCommand(pub String);

impl fmt::Display for UnknownCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown command {:?} ({})", self.0, USAGE.join(" | "))
    }
}

impl std::error::Error for UnknownCommand {}

impl FromStr for AdminCommand {
    type Err = UnknownCommand;
    fn from_str(line: &str) -> Result<Self, Self::Err> {
        let unknown = || UnknownCommand(line.to_owned());
        let prefix = |s: &str| s.parse::<Prefix>().map_err(|_| unknown());
        Ok(match line {
            "stats" => AdminCommand::Stats,
            "allowlist show" => AdminCommand::AllowlistShow,
            "allowlist reload" => AdminCommand::AllowlistReload,
            "bans list" => AdminCommand::BansList,
            _ => {
                if let Some(a) = line.strip_prefix("bans show ") {
                    AdminCommand::BansShow(prefix(a)?)
                } else if let Some(a) = line.strip_prefix("bans del ") {
                    AdminCommand::BansDel(prefix(a)?)
                } else if let Some(rest) = line.strip_prefix("bans add ") {
                    let mut it = rest.splitn(3, ' ');
                    let p = prefix(it.next().unwrap_or_default())?;
                    let secs = it.next().and_then(|s| s.parse().ok()).ok_or_else(unknown)?;
                    AdminCommand::BansAdd { prefix: p, secs, reason: it.next().unwrap_or_default().to_string() }
                } else {
                    return Err(unknown());
                }
            }
        })
    }
}

/// A command from a client, with where to send the answer (`Err` → the CLI exits non-zero).
pub struct Request {
    pub command: AdminCommand,
    pub reply: oneshot::Sender<Result<String, String>>,
}

/// Longest command line accepted.
const MAX_COMMAND: usize = 256;

/// Binds the socket with restrictive permissions and serves it until the process ends.
pub fn serve(path: &Path, tx: mpsc::Sender<Request>) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let tx = tx.clone();
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut line = String::new();
                let mut reader = BufReader::new(r.take(MAX_COMMAND as u64));
                if reader.read_line(&mut line).await.is_err() {
                    return;
                }
                let text = encode_answer(&answer(&line, &tx).await);
                let _ = w.write_all(text.as_bytes()).await;
            });
        }
    });
    Ok(())
}

/// The daemon's answer to one command line; an unknown command is answered here, without
/// bothering the daemon.
async fn answer(line: &str, tx: &mpsc::Sender<Request>) -> Result<String, String> {
    let command: AdminCommand = line.trim().parse().map_err(|e: UnknownCommand| e.to_string())?;
    let (reply, answer) = oneshot::channel();
    if tx.send(Request { command, reply }).await.is_err() {
        return Err("daemon stopping".into());
    }
    answer.await.unwrap_or_else(|_| Err("daemon stopping".into()))
}

fn encode_answer(answer: &Result<String, String>) -> String {
    match answer {
        Ok(t) => format!("ok\n{t}"),
        Err(e) => format!("error\n{e}\n"),
    }
}

fn decode_answer(text: &str) -> Result<String, String> {
    match text.split_once('\n') {
        Some(("ok", rest)) => Ok(rest.to_string()),
        Some(("error", rest)) => Err(rest.trim_end().to_string()),
        _ => Err(format!("unexpected answer: {text:?}")),
    }
}

/// The CLI side: sends one command, returns the answer; `Err` when the daemon refused it or
/// cannot be reached.
pub fn call(socket: &Path, command: &AdminCommand) -> Result<String, String> {
    let mut s = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| format!("cannot reach the daemon at {}: {e}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    s.write_all(format!("{command}\n").as_bytes()).map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    decode_answer(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_round_trips_through_its_wire_form() {
        let p: Prefix = "198.51.100.66/32".parse().unwrap();
        let all = [
            AdminCommand::AllowlistShow,
            AdminCommand::AllowlistReload,
            AdminCommand::Stats,
            AdminCommand::BansList,
            AdminCommand::BansShow(p),
            AdminCommand::BansAdd { prefix: p, secs: 60, reason: "brute force, by hand".into() },
            AdminCommand::BansAdd { prefix: p, secs: 60, reason: String::new() },
            AdminCommand::BansDel(p),
        ];
        for c in &all {
            assert_eq!(c.to_string().parse::<AdminCommand>().as_ref(), Ok(c));
        }
        // The wire form is a contract with clients already installed (and the lab tests).
        let wire: Vec<String> = all.iter().map(ToString::to_string).collect();
        assert_eq!(
            wire,
            [
                "allowlist show",
                "allowlist reload",
                "stats",
                "bans list",
                "bans show 198.51.100.66/32",
                "bans add 198.51.100.66/32 60 brute force, by hand",
                "bans add 198.51.100.66/32 60",
                "bans del 198.51.100.66/32"
            ]
        );
        assert!("bans add 198.51.100.66 soon".parse::<AdminCommand>().is_err());
        assert!("bans del nonsense".parse::<AdminCommand>().is_err());
    }

    #[test]
    fn an_unknown_command_is_a_typed_error_listing_the_commands() {
        let err = "allowlist delete".parse::<AdminCommand>().unwrap_err();
        assert_eq!(err, UnknownCommand("allowlist delete".into()));
        assert_eq!(
            err.to_string(),
            r#"unknown command "allowlist delete" (allowlist show | allowlist reload | stats | bans list | bans show ADDR | bans add ADDR SECS [REASON] | bans del ADDR)"#
        );
        assert!("Stats".parse::<AdminCommand>().is_err(), "commands are case-sensitive");
        assert!("".parse::<AdminCommand>().is_err());
    }

    #[test]
    fn answers_round_trip_through_their_wire_form() {
        for a in [Ok("sip.requests_in 3\n".to_string()), Ok(String::new()), Err("no trunk.allowlist configured".into())]
        {
            assert_eq!(decode_answer(&encode_answer(&a)), a);
        }
        assert!(decode_answer("garbage").is_err());
    }

    /// The whole wire, both ends: the CLI's `call` against `serve`, with a fake daemon behind
    /// the channel; an unknown line is answered by the server without reaching the daemon.
    #[tokio::test]
    async fn the_socket_carries_a_command_to_the_daemon_and_refuses_an_unknown_one() {
        let dir = std::env::temp_dir().join(format!("sbc-admin-test-{}", std::process::id()));
        let sock = dir.join("admin.sock");
        let (tx, mut rx) = mpsc::channel::<Request>(4);
        serve(&sock, tx).unwrap();
        let daemon = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(req) = rx.recv().await {
                let _ = req.reply.send(Ok(format!("did {}\n", req.command)));
                seen.push(req.command);
                if seen.len() == 2 {
                    break;
                }
            }
            seen
        });
        let s = sock.clone();
        let answers = tokio::task::spawn_blocking(move || {
            let unknown = {
                let mut c = std::os::unix::net::UnixStream::connect(&s).unwrap();
                c.write_all(b"allowlist delete\n").unwrap();
                let mut out = String::new();
                c.read_to_string(&mut out).unwrap();
                decode_answer(&out)
            };
            (call(&s, &AdminCommand::Stats), call(&s, &AdminCommand::AllowlistReload), unknown)
        })
        .await
        .unwrap();
        assert_eq!(answers.0, Ok("did stats\n".to_string()));
        assert_eq!(answers.1, Ok("did allowlist reload\n".to_string()));
        assert_eq!(
            answers.2,
            Err(r#"unknown command "allowlist delete" (allowlist show | allowlist reload | stats | bans list | bans show ADDR | bans add ADDR SECS [REASON] | bans del ADDR)"#.to_string())
        );
        assert_eq!(daemon.await.unwrap(), [AdminCommand::Stats, AdminCommand::AllowlistReload]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
