//! The admin socket: a unix stream socket (directory 0700, socket 0600: root only) taking one
//! command line per connection and answering with text. The engine task executes commands, so
//! an answer always reflects the state packets see.
//!
//! Commands: `allowlist show`, `allowlist reload`, `stats`.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};

/// A command from a client, with where to send the answer (`Err` → the CLI exits non-zero).
pub struct Request {
    pub command: String,
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
                let (rtx, rrx) = oneshot::channel();
                let answer = if tx.send(Request { command: line.trim().to_string(), reply: rtx }).await.is_ok() {
                    rrx.await.unwrap_or_else(|_| Err("daemon stopping".into()))
                } else {
                    Err("daemon stopping".into())
                };
                let text = match answer {
                    Ok(t) => format!("ok\n{t}"),
                    Err(e) => format!("error\n{e}\n"),
                };
                let _ = w.write_all(text.as_bytes()).await;
            });
        }
    });
    Ok(())
}

use tokio::io::AsyncReadExt as _;

/// The CLI side: sends one command, prints the answer, fails on `error`.
pub fn call(socket: &PathBuf, command: &str) -> Result<String, String> {
    let mut s = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| format!("cannot reach the daemon at {}: {e}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    s.write_all(format!("{command}\n").as_bytes()).map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    match out.split_once('\n') {
        Some(("ok", rest)) => Ok(rest.to_string()),
        Some(("error", rest)) => Err(rest.trim_end().to_string()),
        _ => Err(format!("unexpected answer: {out:?}")),
    }
}
