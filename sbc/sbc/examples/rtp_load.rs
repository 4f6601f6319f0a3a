//! A bounded RTP load generator for `bench/media/run.sh`: calls whose two ends (one per side of
//! a media relay) each send RTP to the relay, at a ladder of total packet rates, each held for
//! `--secs`; counts, per step, what every end received (the other end's packets, relayed). Prints
//! one line per step: rate asked, sent, achieved, received, loss, and how many calls carried
//! media both ways in it (each direction at least half of what was sent). Stops after the first
//! step with `--stop-loss` or more lost, after the last rate, or after `--max-secs`. Only for
//! loopback or namespaces the bench made itself.
//!
//! ```text
//! rtp_load --calls FILE --rates 20000,40000,... [--secs 3] [--drain-ms 300] [--stop-loss 5]
//!          [--max-secs 240]
//! ```
//! FILE: one call per line, `a_local a_relay b_local b_relay` (socket addresses): end A binds
//! `a_local` and sends to `a_relay`, end B likewise; A receives what B sent, and B what A sent.
//! Packets: RTP (PT 8, 172 octets), SSRC = call × 2 + end, and in the payload the step and a
//! sequence number, so late packets of a step never count for the next.

use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg};

const MAX_STEPS: usize = 32;
const PACKET: usize = 172;
/// Sending is paced in ticks of this length: each end sends its share of a tick in one sendmmsg.
const TICK: Duration = Duration::from_millis(2);

fn packet(ssrc: u32, step: u8, seq: u32) -> [u8; PACKET] {
    let mut p = [0xd5u8; PACKET];
    p[0] = 0x80;
    p[1] = 8;
    p[2..4].copy_from_slice(&(seq as u16).to_be_bytes());
    p[4..8].copy_from_slice(&seq.wrapping_mul(160).to_be_bytes());
    p[8..12].copy_from_slice(&ssrc.to_be_bytes());
    p[12] = step;
    p[13..17].copy_from_slice(&seq.to_be_bytes());
    p
}

/// Received per step and per end.
struct Tally {
    /// [step][end]
    got: Vec<Vec<AtomicU64>>,
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(file) = arg(&args, "--calls") else {
        eprintln!("usage: rtp_load --calls FILE --rates R1,R2,... [--secs 3] [--drain-ms 300] [--stop-loss 5]");
        std::process::exit(2);
    };
    let rates: Vec<u64> = arg(&args, "--rates")
        .unwrap_or_else(|| "10000".into())
        .split(',')
        .filter_map(|r| r.trim().parse().ok())
        .take(MAX_STEPS)
        .collect();
    let secs: f64 = arg(&args, "--secs").and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let drain = Duration::from_millis(arg(&args, "--drain-ms").and_then(|s| s.parse().ok()).unwrap_or(300));
    let stop_loss: f64 = arg(&args, "--stop-loss").and_then(|s| s.parse().ok()).unwrap_or(5.0);
    let max_secs: u64 = arg(&args, "--max-secs").and_then(|s| s.parse().ok()).unwrap_or(240);
    let text = std::fs::read_to_string(&file).expect("calls file");
    // Ends: (socket, destination); end 2c is call c's A, 2c+1 its B.
    let mut ends: Vec<(UdpSocket, SocketAddr)> = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<SocketAddr> = line.split_whitespace().map(|s| s.parse().expect("socket address")).collect();
        assert_eq!(f.len(), 4, "a call line holds four socket addresses: {line}");
        for (local, dst) in [(f[0], f[1]), (f[2], f[3])] {
            let s = UdpSocket::bind(local).unwrap_or_else(|e| panic!("bind {local}: {e}"));
            s.set_nonblocking(true).expect("nonblocking");
            ends.push((s, dst));
        }
    }
    let calls = ends.len() / 2;
    let ends = Arc::new(ends);
    let tally =
        Arc::new(Tally { got: (0..MAX_STEPS).map(|_| (0..ends.len()).map(|_| AtomicU64::new(0)).collect()).collect() });
    let stop = Arc::new(AtomicBool::new(false));
    let rx = {
        let (ends, tally, stop) = (ends.clone(), tally.clone(), stop.clone());
        std::thread::spawn(move || receive(&ends, &tally, &stop))
    };
    let started = Instant::now();
    let mut best = 0u64;
    for (step, &rate) in rates.iter().enumerate() {
        if started.elapsed() > Duration::from_secs(max_secs) {
            break;
        }
        let step_u8 = step as u8;
        let per_end = rate as f64 / ends.len() as f64;
        let mut hdrs = MultiHeaders::<SockaddrStorage>::preallocate(64, None);
        let mut sent = vec![0u64; ends.len()];
        let t0 = Instant::now();
        let dur = Duration::from_secs_f64(secs);
        let mut next = t0;
        while t0.elapsed() < dur {
            let due = (t0.elapsed().as_secs_f64() * per_end) as u64;
            for (i, (sock, dst)) in ends.iter().enumerate() {
                let n = due.saturating_sub(sent[i]).min(64) as usize;
                if n == 0 {
                    continue;
                }
                let pkts: Vec<[u8; PACKET]> =
                    (0..n).map(|k| packet(i as u32, step_u8, (sent[i] + k as u64) as u32)).collect();
                let iovs: Vec<[IoSlice<'_>; 1]> = pkts.iter().map(|p| [IoSlice::new(p)]).collect();
                let dsts = vec![Some(SockaddrStorage::from(*dst)); n];
                if let Ok(r) = sendmmsg(sock.as_raw_fd(), &mut hdrs, iovs.iter(), &dsts, [], MsgFlags::MSG_DONTWAIT) {
                    sent[i] += r.count() as u64;
                }
            }
            next += TICK;
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let elapsed = t0.elapsed().as_secs_f64();
        std::thread::sleep(drain);
        let total_sent: u64 = sent.iter().sum();
        let got: Vec<u64> = tally.got[step].iter().map(|a| a.load(Ordering::Relaxed)).collect();
        // What end i received was sent by its partner (i ^ 1).
        let received: u64 = got.iter().sum();
        let loss = if total_sent > 0 { 100.0 * (1.0 - received as f64 / total_sent as f64) } else { 100.0 };
        let alive = (0..calls)
            .filter(|c| {
                let (a, b) = (2 * c, 2 * c + 1);
                got[b] * 2 >= sent[a].max(1) && got[a] * 2 >= sent[b].max(1)
            })
            .count();
        let achieved = (total_sent as f64 / elapsed) as u64;
        let rcv_rate = (received as f64 / elapsed) as u64;
        println!(
            "step rate={rate} sent={total_sent} achieved={achieved} received={received} received_rate={rcv_rate} \
             loss={loss:.2} calls_alive={alive}/{calls}"
        );
        if loss < 1.0 {
            best = best.max(rcv_rate);
        }
        if loss >= stop_loss {
            break;
        }
    }
    println!("best received_rate={best}");
    stop.store(true, Ordering::Relaxed);
    let _ = rx.join();
}

fn receive(ends: &[(UdpSocket, SocketAddr)], tally: &Tally, stop: &AtomicBool) {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).expect("epoll");
    for (i, (s, _)) in ends.iter().enumerate() {
        epoll.add(s, EpollEvent::new(EpollFlags::EPOLLIN, i as u64)).expect("epoll add");
    }
    let mut events = [EpollEvent::empty(); 64];
    let mut bufs = vec![[0u8; 2048]; 32];
    let mut hdrs = MultiHeaders::<SockaddrStorage>::preallocate(32, None);
    while !stop.load(Ordering::Relaxed) {
        let n = epoll.wait(&mut events, 100u16).unwrap_or(0);
        for ev in &events[..n] {
            let i = ev.data() as usize;
            let Some((sock, _)) = ends.get(i) else { continue };
            let lens: Vec<usize> = {
                let mut iovs: Vec<[IoSliceMut<'_>; 1]> =
                    bufs.iter_mut().map(|b| [IoSliceMut::new(b.as_mut_slice())]).collect();
                match recvmmsg(sock.as_raw_fd(), &mut hdrs, iovs.iter_mut(), MsgFlags::MSG_DONTWAIT, None) {
                    Ok(msgs) => msgs.map(|m| m.bytes).collect(),
                    Err(_) => continue,
                }
            };
            for (b, len) in bufs.iter().zip(lens) {
                if len >= 17 && b[0] == 0x80 {
                    let step = usize::from(b[12]);
                    if let Some(per_end) = tally.got.get(step) {
                        per_end[i].fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}
