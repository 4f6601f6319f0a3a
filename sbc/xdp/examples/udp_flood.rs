//! A bounded UDP flood for `bench/xdp/run.sh`: sends `--count` datagrams (at most
//! `--seconds`) from `--src` to `--dst` as fast as one thread can, and prints what it sent.
//! Only for namespaces the bench made itself.
//!
//! ```text
//! udp_flood --src 198.51.100.66 --dst 192.0.2.1:5060 --count 2000000 [--seconds 30] [--len 200]
//! ```

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (mut src, mut dst, mut count, mut seconds, mut len) = (None, None, 1_000_000u64, 30u64, 200usize);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let v = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--src" => src = Some(v.parse::<IpAddr>()?),
            "--dst" => dst = Some(v.parse::<SocketAddr>()?),
            "--count" => count = v.parse()?,
            "--seconds" => seconds = v.parse()?,
            "--len" => len = v.parse()?,
            f => return Err(format!("unknown flag {f}").into()),
        }
    }
    let (src, dst) = (src.ok_or("--src required")?, dst.ok_or("--dst required")?);
    let sock = UdpSocket::bind(SocketAddr::new(src, 0))?;
    let payload = vec![b'f'; len];
    let limit = Duration::from_secs(seconds);
    let start = Instant::now();
    let mut sent = 0u64;
    let mut errors = 0u64;
    while sent < count {
        if sent.is_multiple_of(4096) && start.elapsed() > limit {
            break;
        }
        match sock.send_to(&payload, dst) {
            Ok(_) => sent += 1,
            // ENOBUFS and the like under pressure: count, keep going (bounded by count/time).
            Err(_) => {
                errors += 1;
                if errors > count {
                    break;
                }
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!("sent={sent} errors={errors} seconds={secs:.3} pps={:.0}", sent as f64 / secs);
    Ok(())
}
