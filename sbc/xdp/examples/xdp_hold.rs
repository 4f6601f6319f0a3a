//! Attaches the XDP filter to an interface of the current network namespace with a given
//! configuration, prints `ready prog_id=N mode=M`, and holds it until a stop file
//! appears or a time limit passes (both bounded), then prints the counters and detaches.
//! Used by `bench/xdp/run.sh`; handy for poking at the filter by hand.
//!
//! ```text
//! xdp_hold --iface r0 [--mode native|skb|auto] [--protect 0.0.0.0:5060/udp]...
//!          [--allow 203.0.113.0/24]... [--block 198.51.100.7]... [--stop-file F] [--seconds N]
//! ```

use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use sbc_xdp::{AttachMode, Prefix, Proto, XdpFilter};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut iface = None;
    let mut mode = AttachMode::Native;
    let mut protect = Vec::new();
    let mut allow = Vec::new();
    let mut block = Vec::new();
    let mut stop_file: Option<PathBuf> = None;
    let mut seconds = 60u64;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut val = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--iface" => iface = Some(val()?),
            "--mode" => {
                mode = match val()?.as_str() {
                    "native" => AttachMode::Native,
                    "skb" => AttachMode::Skb,
                    "auto" => AttachMode::Auto,
                    m => return Err(format!("unknown mode {m}").into()),
                }
            }
            "--protect" => {
                let v = val()?;
                let (addr, proto) = v.rsplit_once('/').ok_or("--protect ADDR:PORT/udp|tcp")?;
                let addr: SocketAddr = addr.parse()?;
                let proto = match proto {
                    "udp" => Proto::Udp,
                    "tcp" => Proto::Tcp,
                    p => return Err(format!("unknown protocol {p}").into()),
                };
                protect.push((addr.ip(), addr.port(), proto));
            }
            "--allow" => allow.push(val()?.parse::<Prefix>()?),
            "--block" => block.push(val()?.parse::<Prefix>()?),
            "--stop-file" => stop_file = Some(val()?.into()),
            "--seconds" => seconds = val()?.parse()?,
            f => return Err(format!("unknown flag {f}").into()),
        }
    }
    let iface = iface.ok_or("--iface is required")?;
    let mut filter = XdpFilter::attach(&iface, mode)?;
    filter.set_protected(&protect)?;
    filter.replace_allowlist(&allow)?;
    for b in block {
        filter.block(b, None)?;
    }
    println!(
        "ready prog_id={} mode={}",
        filter.program_id().unwrap_or(0),
        filter.mode().map(|m| m.to_string()).unwrap_or_default()
    );
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < deadline && !stop_file.as_ref().is_some_and(|f| f.exists()) {
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("stats {}", filter.stats()?);
    Ok(())
}
