//! A bounded STUN Binding load generator for `bench/stun/run.sh`: a ladder of fixed request
//! rates, each held for `--secs`, paced in `sendmmsg` batches from one socket, with a second
//! thread reading the answers with `recvmmsg` and counting each transaction id once. Prints one
//! line per step (rate asked, sent, rate achieved, answered, loss) and stops after the first
//! step with `--stop-loss` or more lost, after the last rate, or after `--max-secs`. Only for
//! loopback or namespaces the bench made itself.
//!
//! ```text
//! stun_load --dst 127.0.0.1:3478 [--src 127.0.0.1] [--rates 50000,100000,...] [--secs 3]
//!           [--drain-ms 300] [--stop-loss 5] [--max-secs 120]
//! ```
//!
//! Each request is a 28-octet Binding request (header + FINGERPRINT, what a SIP phone's
//! keepalive looks like); its transaction id carries the step and a sequence number, so late
//! answers of a step are never counted for the next one, and duplicates count once.

use std::io::{IoSlice, IoSliceMut};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg};
use sbc_media::stun::fingerprint_value;

const BATCH: usize = 64;
/// The marker in octets 13..20 of our transaction ids (octet 8 is the step, 9..13 the sequence).
const MARK: [u8; 7] = *b"sbcload";
const MAX_STEPS: usize = 64;

fn request(step: u8, seq: u32) -> [u8; 28] {
    let mut r = [0u8; 28];
    r[0..2].copy_from_slice(&0x0001u16.to_be_bytes()); // Binding request
    r[2..4].copy_from_slice(&8u16.to_be_bytes()); // length: the FINGERPRINT attribute
    r[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
    r[8] = step;
    r[9..13].copy_from_slice(&seq.to_be_bytes());
    r[13..20].copy_from_slice(&MARK);
    r[20..22].copy_from_slice(&0x8028u16.to_be_bytes());
    r[22..24].copy_from_slice(&4u16.to_be_bytes());
    let fp = fingerprint_value(&r[..20]);
    r[24..28].copy_from_slice(&fp.to_be_bytes());
    r
}

/// Per step: a bit per sequence number answered, and the count of distinct answers.
struct Tally {
    bits: Vec<Vec<AtomicU64>>,
    answered: Vec<AtomicU64>,
    other: AtomicU64,
}

impl Tally {
    fn record(&self, answer: &[u8]) {
        // A Binding success (0x0101) with one of our ids.
        let ok = answer.len() >= 20 && answer[0..2] == [0x01, 0x01] && answer[13..20] == MARK;
        if !ok {
            self.other.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let step = usize::from(answer[8]);
        let seq = u32::from_be_bytes([answer[9], answer[10], answer[11], answer[12]]) as usize;
        let Some(word) = self.bits.get(step).and_then(|b| b.get(seq / 64)) else {
            self.other.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let bit = 1u64 << (seq % 64);
        if word.fetch_or(bit, Ordering::Relaxed) & bit == 0 {
            self.answered[step].fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn receiver(sock: UdpSocket, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    let fd = sock.as_raw_fd();
    let mut bufs = vec![[0u8; 256]; BATCH];
    let mut hdrs = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut lens = Vec::with_capacity(BATCH);
    while !stop.load(Ordering::Relaxed) {
        lens.clear();
        {
            let mut iovs: Vec<[IoSliceMut<'_>; 1]> = bufs.iter_mut().map(|b| [IoSliceMut::new(&mut b[..])]).collect();
            match recvmmsg(fd, &mut hdrs, iovs.iter_mut(), MsgFlags::MSG_WAITFORONE, None) {
                Ok(msgs) => lens.extend(msgs.map(|m| m.bytes)),
                Err(_) => continue, // the read timeout: look at the stop flag
            }
        }
        for (len, buf) in lens.iter().zip(bufs.iter()) {
            tally.record(&buf[..*len]);
        }
    }
}

struct Step {
    rate: u64,
    sent: u64,
    secs: f64,
    answered: u64,
}

/// Sends `rate` requests per second for `secs`, paced: after each batch, as many as are due.
fn run_step(sock: &UdpSocket, step: u8, rate: u64, secs: f64, deadline: Instant) -> (u64, f64) {
    let fd = sock.as_raw_fd();
    let total = (rate as f64 * secs) as u64;
    let mut hdrs = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let addrs = vec![None; BATCH];
    let mut pkts = vec![[0u8; 28]; BATCH];
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < total && Instant::now() < deadline {
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
        if due <= sent {
            std::thread::sleep(Duration::from_micros(50));
            continue;
        }
        let n = ((due - sent) as usize).min(BATCH);
        for (i, p) in pkts.iter_mut().take(n).enumerate() {
            *p = request(step, (sent + i as u64) as u32);
        }
        let iovs: Vec<[IoSlice<'_>; 1]> = pkts[..n].iter().map(|p| [IoSlice::new(p)]).collect();
        match sendmmsg(fd, &mut hdrs, iovs.iter(), &addrs[..n], [], MsgFlags::empty()) {
            Ok(r) => sent += r.count().max(1) as u64,
            Err(_) => sent += 1, // e.g. ECONNREFUSED from a port with nobody: counted as lost
        }
    }
    (sent, start.elapsed().as_secs_f64())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut dst: Option<SocketAddr> = None;
    let mut src: IpAddr = "127.0.0.1".parse()?;
    let mut rates: Vec<u64> = vec![25_000, 50_000, 100_000, 150_000, 200_000, 250_000, 300_000, 400_000, 500_000];
    let (mut secs, mut drain_ms, mut stop_loss, mut max_secs) = (3.0f64, 300u64, 5.0f64, 120u64);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let v = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--dst" => dst = Some(v.parse()?),
            "--src" => src = v.parse()?,
            "--rates" => rates = v.split(',').map(str::parse).collect::<Result<_, _>>()?,
            "--secs" => secs = v.parse()?,
            "--drain-ms" => drain_ms = v.parse()?,
            "--stop-loss" => stop_loss = v.parse()?,
            "--max-secs" => max_secs = v.parse()?,
            f => return Err(format!("unknown flag {f}").into()),
        }
    }
    let dst = dst.ok_or("--dst required")?;
    if rates.is_empty() || rates.len() > MAX_STEPS || secs <= 0.0 || secs > 60.0 {
        return Err(format!("1..={MAX_STEPS} rates and 0 < secs <= 60, please").into());
    }
    let sock = UdpSocket::bind(SocketAddr::new(src, 0))?;
    sock.connect(dst)?;
    let s2 = socket2::SockRef::from(&sock);
    let _ = s2.set_recv_buffer_size(8 << 20);
    let _ = s2.set_send_buffer_size(8 << 20);
    let rx = sock.try_clone()?;
    rx.set_read_timeout(Some(Duration::from_millis(100)))?;
    let tally = Arc::new(Tally {
        bits: rates
            .iter()
            .map(|r| (0..((*r as f64 * secs) as usize / 64 + 1)).map(|_| AtomicU64::new(0)).collect())
            .collect(),
        answered: rates.iter().map(|_| AtomicU64::new(0)).collect(),
        other: AtomicU64::new(0),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (tally, stop) = (tally.clone(), stop.clone());
        std::thread::spawn(move || receiver(rx, tally, stop))
    };
    let deadline = Instant::now() + Duration::from_secs(max_secs);
    let mut steps = Vec::new();
    for (i, &rate) in rates.iter().enumerate() {
        if Instant::now() >= deadline {
            break;
        }
        let (sent, took) = run_step(&sock, i as u8, rate, secs, deadline);
        std::thread::sleep(Duration::from_millis(drain_ms));
        let answered = tally.answered[i].load(Ordering::Relaxed);
        let step = Step { rate, sent, secs: took, answered };
        let loss = 100.0 * (sent.saturating_sub(answered)) as f64 / sent.max(1) as f64;
        println!(
            "step rate={} sent={} secs={:.3} achieved={:.0} answered={} loss={:.3}",
            step.rate,
            step.sent,
            step.secs,
            step.sent as f64 / step.secs,
            step.answered,
            loss
        );
        steps.push(step);
        if loss >= stop_loss {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = reader.join();
    let best = steps
        .iter()
        .filter(|s| s.sent > 0 && (s.sent - s.answered.min(s.sent)) as f64 <= 0.01 * s.sent as f64)
        .map(|s| s.answered as f64 / s.secs)
        .fold(0.0f64, f64::max);
    println!("best answered_per_sec_under_1pct_loss={best:.0} other={}", tally.other.load(Ordering::Relaxed));
    Ok(())
}
