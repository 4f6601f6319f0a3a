//! baresip (Debian's `baresip-core`) as a real softphone in a lab namespace: headless (no UI
//! module), auto-answer (`menu` with `answermode=auto`), G.711 only, audio read from one of
//! baresip's own wav files (`aufile`) and played to nowhere (`aubridge`), so it needs no sound
//! card. Its config directory is generated per run under the lab's directory.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use crate::{Netns, Proc};

/// One account of a baresip softphone.
#[derive(Debug, Clone)]
pub struct Account<'a> {
    /// The user part of its AOR.
    pub user: &'a str,
    /// Where it registers (its AOR's host and port: the SBC).
    pub registrar: SocketAddr,
    /// `"udp"` or `"tcp"`.
    pub transport: &'a str,
    /// Its SIP address (`sip_listen`).
    pub listen: SocketAddr,
    /// Registration interval it asks for (`;regint=`), seconds.
    pub regint_secs: u32,
    /// A STUN server for its media addresses (`;medianat=stun`), as a phone behind NAT uses.
    pub stun: Option<SocketAddr>,
}

/// The config files for `account`, written into `dir`.
pub fn write_config(dir: &Path, a: &Account<'_>) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let config = format!(
        "poll_method\t\tepoll\n\
         sip_listen\t\t{listen}\n\
         call_local_timeout\t120\n\
         call_max_calls\t\t4\n\
         audio_player\t\taubridge,nowhere\n\
         audio_source\t\taufile,/usr/share/baresip/sound1.wav\n\
         audio_alert\t\taubridge,nowhere\n\
         audio_srate\t\t8000\n\
         audio_channels\t\t1\n\
         rtp_timeout\t\t0\n\
         module_path\t\t/usr/lib/baresip/modules\n\
         module\t\t\tg711.so\n\
         module\t\t\taufile.so\n\
         module\t\t\taubridge.so\n\
         module\t\t\tstun.so\n\
         module_app\t\taccount.so\n\
         module_app\t\tmenu.so\n",
        listen = a.listen,
    );
    std::fs::write(dir.join("config"), config)?;
    let stun = a.stun.map(|s| format!(";medianat=stun;stunserver=stun:{s}")).unwrap_or_default();
    let account = format!(
        "<sip:{user}@{registrar};transport={transport}>;auth_pass=lab-secret;regint={regint};answermode=auto;\
         audio_codecs=PCMU,PCMA{stun}\n",
        user = a.user,
        registrar = a.registrar,
        transport = a.transport,
        regint = a.regint_secs,
    );
    std::fs::write(dir.join("accounts"), account)?;
    std::fs::write(dir.join("contacts"), "")?;
    Ok(())
}

/// Starts baresip in `ns` with a config directory `dir` (written here), logging to
/// `<dir>.log`; it quits by itself after `life` (stopped by PID before that, normally).
pub fn spawn(ns: &Netns, dir: &Path, a: &Account<'_>, life: Duration) -> Result<Proc> {
    write_config(dir, a)?;
    let mut c = ns.cmd("baresip");
    c.arg("-f").arg(dir).args(["-4", "-v", "-t", &life.as_secs().max(1).to_string()]);
    Proc::spawn("baresip", c, dir.with_extension("log"))
}
