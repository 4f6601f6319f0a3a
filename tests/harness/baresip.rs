//! baresip (Debian's `baresip-core`) as a real softphone in a lab namespace: headless (no UI
//! module), auto-answer (`menu` with `answermode=auto`), G.711 only, audio read from a wav file
//! written here (`aufile`: 20 s of a 440 Hz tone at 8 kHz, the rate aufile insists on; baresip's
//! own sounds are 44.1 kHz) and played to nowhere (`aubridge`), so it needs no sound card; optionally what it hears is recorded (`sndfile`: the decoded audio of each call in
//! `dump-<time>-dec.wav`, what it sends in `-enc.wav`). Its config directory is generated per
//! run under the lab's directory.

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
    /// Where to record each call's audio (the `sndfile` module's `snd_path`), if anywhere.
    pub record: Option<&'a Path>,
}

/// The config files for `account`, written into `dir`.
pub fn write_config(dir: &Path, a: &Account<'_>) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let tone = dir.join("tone.wav");
    std::fs::write(&tone, tone_wav(440.0, 8000, 20))?;
    let record = match a.record {
        Some(path) => {
            std::fs::create_dir_all(path)?;
            format!("module\t\t\tsndfile.so\nsnd_path\t\t{}\n", path.display())
        }
        None => String::new(),
    };
    let config = format!(
        "poll_method\t\tepoll\n\
         sip_listen\t\t{listen}\n\
         call_local_timeout\t120\n\
         call_max_calls\t\t4\n\
         audio_player\t\taubridge,nowhere\n\
         audio_source\t\taufile,{tone}\n\
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
         module_app\t\tmenu.so\n\
         {record}",
        listen = a.listen,
        tone = tone.display(),
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

/// A mono 16-bit PCM wav file of a sine tone at `hz`, amplitude 8000, sampled at `rate`.
pub fn tone_wav(hz: f64, rate: u32, secs: u32) -> Vec<u8> {
    let n = rate * secs;
    let mut out = Vec::with_capacity(44 + 2 * n as usize);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + 2 * n).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(2 * rate).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&(2 * n).to_le_bytes());
    for i in 0..n {
        let s = 8000.0 * (2.0 * std::f64::consts::PI * hz * f64::from(i) / f64::from(rate)).sin();
        out.extend_from_slice(&(s as i16).to_le_bytes());
    }
    out
}

/// A recorded wav file's samples (16-bit PCM, as `sndfile` writes them): the `data` chunk.
pub fn wav_samples(bytes: &[u8]) -> Result<Vec<i16>> {
    anyhow::ensure!(bytes.get(..4) == Some(b"RIFF") && bytes.get(8..12) == Some(b"WAVE"), "not a wav file");
    let mut at = 12;
    while let (Some(id), Some(len)) = (bytes.get(at..at + 4), bytes.get(at + 4..at + 8)) {
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let body = bytes.get(at + 8..).unwrap_or_default();
        if id == b"data" {
            let body = body.get(..len.min(body.len())).unwrap_or_default();
            return Ok(body.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect());
        }
        at += 8 + len + (len & 1);
    }
    anyhow::bail!("no data chunk in the wav file")
}

/// G.711 A-law (ITU-T G.711 PCMA) to linear 16-bit, for RTP payloads seen on a capture.
pub fn alaw_to_linear(a: u8) -> i16 {
    let a = a ^ 0x55;
    let seg = (a & 0x70) >> 4;
    let mut t = i16::from(a & 0x0f) << 4;
    t += match seg {
        0 => 8,
        _ => 0x108,
    };
    if seg > 1 {
        t <<= seg - 1;
    }
    if a & 0x80 != 0 { t } else { -t }
}

/// Peak and RMS of samples.
pub fn level(samples: &[i16]) -> (u16, f64) {
    let peak = samples.iter().map(|s| s.unsigned_abs()).max().unwrap_or(0);
    let sum: f64 = samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    (peak, if samples.is_empty() { 0.0 } else { (sum / samples.len() as f64).sqrt() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_tone_reads_back_with_its_level_and_alaw_decodes_silence_and_peaks() {
        let samples = wav_samples(&tone_wav(440.0, 8000, 1)).unwrap();
        assert_eq!(samples.len(), 8000);
        let (peak, rms) = level(&samples);
        assert!((7990..=8000).contains(&peak), "{peak}");
        assert!((rms - 8000.0 / 2f64.sqrt()).abs() < 20.0, "{rms}");
        assert_eq!(level(&[]), (0, 0.0));
        assert_eq!(alaw_to_linear(0xd5), 8, "A-law silence");
        assert_eq!(alaw_to_linear(0x55), -8);
        assert_eq!(alaw_to_linear(0xaa), 32256, "the largest positive A-law value");
        assert!(wav_samples(b"RIFF\0\0\0\0WAVE").is_err());
    }
}
