//! The daemon's STUN Binding server, from outside: a Binding request on the external SIP UDP
//! port (told apart from SIP, RFC 7983) and on a dedicated STUN port is answered with the
//! sender's own address in XOR-MAPPED-ADDRESS and a valid FINGERPRINT (RFC 8489); malformed
//! STUN gets nothing; SIP on the same port is unaffected; the STUN port takes nothing else.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use sbc_lab::{EXT_PEER, Lab, SBC_EXT, lab_lock, privileged, sbc_cli, stat};
use sbc_media::stun::{BINDING, Class, Limits, Message, Writer};

const STUN_PORT: u16 = 3478;

fn binding_request(tid: &[u8; 12]) -> Vec<u8> {
    Writer::new(Class::Request, BINDING, tid).finish_with_fingerprint()
}

/// Sends `data` and returns the answer, or None after 500 ms.
fn exchange(sock: &UdpSocket, to: SocketAddr, data: &[u8]) -> Result<Option<Vec<u8>>> {
    sock.send_to(data, to)?;
    let mut buf = [0u8; 2048];
    match sock.recv(&mut buf) {
        Ok(n) => Ok(Some(buf[..n].to_vec())),
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn mapped(answer: &[u8], tid: &[u8; 12]) -> Result<SocketAddr> {
    let m = Message::parse(answer, &Limits::default()).map_err(|e| anyhow::anyhow!("answer does not parse: {e}"))?;
    ensure!(m.class == Class::SuccessResponse && m.method == BINDING, "not a Binding success: {:?}", m.class);
    ensure!(&m.transaction_id == tid, "transaction id not echoed");
    m.xor_mapped_address().context("no XOR-MAPPED-ADDRESS")?.map_err(|e| anyhow::anyhow!("bad XOR-MAPPED-ADDRESS: {e}"))
}

#[test]
fn stun_binding_is_answered_on_the_sip_port_and_the_stun_port_and_sip_still_works() -> Result<()> {
    if !privileged("stun") {
        return Ok(());
    }
    let _g = lab_lock();
    let lab = Lab::new("sbs1", "stun")?;
    let _sbc = lab.start_sbc(&format!("[probe]\ninterval_ms = 0\n[stun]\nudp = [\"{SBC_EXT}:{STUN_PORT}\"]\n"))?;
    let sock = lab.ext.enter(|| UdpSocket::bind((EXT_PEER, 0)))??;
    sock.set_read_timeout(Some(Duration::from_millis(500)))?;
    let me = sock.local_addr()?;
    let sip_port: SocketAddr = format!("{SBC_EXT}:5060").parse()?;
    let stun_port: SocketAddr = format!("{SBC_EXT}:{STUN_PORT}").parse()?;
    for (i, to) in [sip_port, stun_port].into_iter().enumerate() {
        let tid = [i as u8 + 1; 12];
        let Some(answer) = exchange(&sock, to, &binding_request(&tid))? else {
            bail!("no STUN answer from {to}");
        };
        ensure!(mapped(&answer, &tid)? == me, "{to}: mapped address is not {me}");
    }
    // A Binding request whose FINGERPRINT is wrong is ignored (RFC 8489 §7.3), on either port.
    let mut bad = binding_request(&[9; 12]);
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    for to in [sip_port, stun_port] {
        ensure!(exchange(&sock, to, &bad)?.is_none(), "{to} answered a bad FINGERPRINT");
    }
    // SIP on the same port: an OPTIONS naming the SBC is answered 200.
    let options = format!(
        "OPTIONS sip:{SBC_EXT}:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKstunlab;rport\r\n\
         From: <sip:probe@{EXT_PEER}>;tag=1\r\nTo: <sip:{SBC_EXT}:5060>\r\nCall-ID: stun-lab-1\r\nCSeq: 1 OPTIONS\r\n\
         Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    let answer = exchange(&sock, sip_port, options.as_bytes())?.context("no answer to OPTIONS")?;
    ensure!(answer.starts_with(b"SIP/2.0 200 OK\r\n"), "{}", String::from_utf8_lossy(&answer));
    // The STUN port takes nothing but STUN.
    ensure!(exchange(&sock, stun_port, options.as_bytes())?.is_none(), "the STUN port answered SIP");
    let (ok, stats) = sbc_cli(&["stats", "--socket", &lab.admin_socket().to_string_lossy()])?;
    ensure!(ok, "{stats}");
    ensure!(stat(&stats, "stun.answered") == 2, "{stats}");
    ensure!(stat(&stats, "stun.ignored") == 3, "{stats}");
    Ok(())
}

/// A Binding request with `attrs` (type, value) and a FINGERPRINT.
fn request_with(tid: &[u8; 12], attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut w = Writer::new(Class::Request, BINDING, tid);
    for (t, v) in attrs {
        w.attribute(*t, v);
    }
    w.finish_with_fingerprint()
}

/// Every datagram `sock` receives until it has been quiet for `quiet`.
fn drain(sock: &UdpSocket, quiet: Duration) -> Result<Vec<Vec<u8>>> {
    sock.set_read_timeout(Some(quiet))?;
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        match sock.recv(&mut buf) {
            Ok(n) => out.push(buf[..n].to_vec()),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => break,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

fn options(me: SocketAddr, n: u32) -> String {
    format!(
        "OPTIONS sip:{SBC_EXT}:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKstunbad{n};rport\r\n\
         From: <sip:probe@{EXT_PEER}>;tag={n}\r\nTo: <sip:{SBC_EXT}:5060>\r\nCall-ID: stun-bad-{n}\r\nCSeq: 1 OPTIONS\r\n\
         Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
}

#[test]
fn malformed_stun_is_ignored_or_answered_as_rfc8489_says_on_both_ports_and_sip_is_unaffected() -> Result<()> {
    if !privileged("stun") {
        return Ok(());
    }
    let _g = lab_lock();
    let lab = Lab::new("sbs2", "stun-malformed")?;
    let mut sbc =
        lab.start_sbc(&format!("[probe]\ninterval_ms = 0\n[stun]\nudp = [\"{SBC_EXT}:{STUN_PORT}\"]\nworkers = 2\n"))?;
    let sock = lab.ext.enter(|| UdpSocket::bind((EXT_PEER, 0)))??;
    sock.set_read_timeout(Some(Duration::from_millis(500)))?;
    let me = sock.local_addr()?;
    let sip_port: SocketAddr = format!("{SBC_EXT}:5060").parse()?;
    let stun_port: SocketAddr = format!("{SBC_EXT}:{STUN_PORT}").parse()?;
    const PRIORITY: u16 = 0x0024; // ICE's (RFC 8445), comprehension-required, not ours
    const UNKNOWN_OPTIONAL: u16 = 0x8030;
    for (p, to) in [sip_port, stun_port].into_iter().enumerate() {
        let tid = |n: u8| [p as u8 * 16 + n; 12];
        let good = request_with(&tid(1), &[(0x8022, b"lab")]);
        let truncated = good[..good.len() - 6].to_vec();
        let mut wrong_length = good.clone();
        wrong_length[3] += 4; // the header claims 4 octets more than follow
        let mut bad_fingerprint = request_with(&tid(2), &[]);
        *bad_fingerprint.last_mut().unwrap() ^= 0x55;
        let many: Vec<(u16, &[u8])> = (0..100).map(|_| (UNKNOWN_OPTIONAL, &b""[..])).collect();
        let too_many_attributes = request_with(&tid(3), &many);
        let huge: Vec<(u16, &[u8])> = (0..16_000).map(|_| (UNKNOWN_OPTIONAL, &b""[..])).collect();
        let huge_count_and_size = request_with(&tid(4), &huge);
        for (what, bytes) in [
            ("truncated", &truncated),
            ("wrong length", &wrong_length),
            ("bad FINGERPRINT", &bad_fingerprint),
            ("100 attributes", &too_many_attributes),
            ("16000 attributes in 64 kB", &huge_count_and_size),
        ] {
            ensure!(exchange(&sock, to, bytes)?.is_none(), "{to}: {what} was answered");
        }
        // An unknown comprehension-required attribute: 420 listing it (RFC 8489 §6.3.1, §14.13).
        let t = tid(5);
        let answer = exchange(&sock, to, &request_with(&t, &[(PRIORITY, &[0, 0, 0, 1])]))?
            .with_context(|| format!("{to}: no 420"))?;
        let m =
            Message::parse(&answer, &Limits::default()).map_err(|e| anyhow::anyhow!("{to}: 420 unparsable: {e}"))?;
        ensure!(m.class == Class::ErrorResponse && m.transaction_id == t, "{to}: {:?}", m.class);
        let code = m.attribute(0x0009).context("no ERROR-CODE")?.value;
        ensure!(code.len() >= 4 && code[2] == 4 && code[3] == 20, "{to}: ERROR-CODE {code:?}");
        ensure!(m.attribute(0x000A).context("no UNKNOWN-ATTRIBUTES")?.value == PRIORITY.to_be_bytes(), "{to}");
        ensure!(m.fingerprint.is_some(), "{to}: 420 without FINGERPRINT");
        // Still answering, with the right address.
        let t = tid(6);
        let answer = exchange(&sock, to, &binding_request(&t))?.with_context(|| format!("{to}: no answer after"))?;
        ensure!(mapped(&answer, &t)? == me, "{to}: mapped address");
    }
    // SIP on the shared port is unaffected.
    let answer = exchange(&sock, sip_port, options(me, 1).as_bytes())?.context("no answer to OPTIONS")?;
    ensure!(answer.starts_with(b"SIP/2.0 200 OK\r\n"), "{}", String::from_utf8_lossy(&answer));
    ensure!(sbc.running(), "the SBC died");
    let (ok, stats) = sbc_cli(&["stats", "--socket", &lab.admin_socket().to_string_lossy()])?;
    ensure!(ok, "{stats}");
    ensure!(stat(&stats, "stun.errors") == 2 && stat(&stats, "stun.answered") == 2, "{stats}");
    // The STUN port saw all five bad ones; the SIP port only those RFC 7983 calls STUN (a
    // truncated or wrong-length datagram there goes to the SIP framer, which drops it).
    ensure!(stat(&stats, "stun.ignored") == 5 + 3, "{stats}");
    Ok(())
}

/// Reads one STUN message from a stream (RFC 8489 §6.2.2: the header's length delimits it).
fn read_stun(stream: &mut std::net::TcpStream) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut header = [0u8; 20];
    stream.read_exact(&mut header)?;
    let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let mut msg = header.to_vec();
    msg.resize(20 + len, 0);
    stream.read_exact(&mut msg[20..])?;
    Ok(msg)
}

/// True when the peer closed the stream (EOF or reset) within `limit`.
fn closed_within(stream: &mut std::net::TcpStream, limit: Duration) -> Result<bool> {
    use std::io::Read;
    stream.set_read_timeout(Some(limit))?;
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => Ok(true),
        Ok(_) => Ok(false),
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => Ok(false),
        Err(_) => Ok(true),
    }
}

#[test]
fn stun_over_tcp_answers_each_request_on_its_connection_and_closes_on_garbage_or_silence() -> Result<()> {
    use std::io::Write;
    use std::net::TcpStream;
    if !privileged("stun") {
        return Ok(());
    }
    let _g = lab_lock();
    let lab = Lab::new("sbs3", "stun-tcp")?;
    let mut sbc = lab.start_sbc(&format!(
        "[probe]\ninterval_ms = 0\n[stun]\ntcp = [\"{SBC_EXT}:{STUN_PORT}\"]\ntcp_idle_secs = 1\n"
    ))?;
    let to: SocketAddr = format!("{SBC_EXT}:{STUN_PORT}").parse()?;
    let connect = || -> Result<TcpStream> {
        let s = lab.ext.enter(|| TcpStream::connect_timeout(&to, Duration::from_secs(2)))??;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        Ok(s)
    };
    // Two requests in one write, a third split across two writes: three answers, in order,
    // each mapping the connection's own address.
    let mut s = connect()?;
    let me = s.local_addr()?;
    let (t1, t2, t3) = ([1u8; 12], [2u8; 12], [3u8; 12]);
    let mut two = binding_request(&t1);
    two.extend(binding_request(&t2));
    s.write_all(&two)?;
    let third = request_with(&t3, &[(0x8022, b"split")]);
    s.write_all(&third[..7])?;
    std::thread::sleep(Duration::from_millis(200));
    s.write_all(&third[7..])?;
    for t in [t1, t2, t3] {
        let answer = read_stun(&mut s)?;
        ensure!(mapped(&answer, &t)? == me, "TCP: mapped address is not {me}");
    }
    // Garbage closes the connection.
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    ensure!(closed_within(&mut s, Duration::from_secs(2))?, "not closed after garbage");
    // So does a bad FINGERPRINT.
    let mut s = connect()?;
    let mut bad = binding_request(&[4; 12]);
    *bad.last_mut().unwrap() ^= 0x55;
    s.write_all(&bad)?;
    ensure!(closed_within(&mut s, Duration::from_secs(2))?, "not closed after a bad FINGERPRINT");
    // And a message that never completes, after tcp_idle_secs (1 s).
    let mut s = connect()?;
    s.write_all(&binding_request(&[5; 12])[..10])?;
    let started = std::time::Instant::now();
    ensure!(closed_within(&mut s, Duration::from_secs(4))?, "a half message held the connection");
    ensure!(started.elapsed() >= Duration::from_millis(800), "closed before the idle time");
    ensure!(sbc.running(), "the SBC died");
    let (ok, stats) = sbc_cli(&["stats", "--socket", &lab.admin_socket().to_string_lossy()])?;
    ensure!(ok, "{stats}");
    ensure!(stat(&stats, "stun.answered") == 3, "{stats}");
    ensure!(stat(&stats, "stun.tcp_closed_invalid") == 2, "{stats}");
    ensure!(stat(&stats, "stun.tcp_connections") == 0, "{stats}");
    Ok(())
}

#[test]
fn a_source_over_its_stun_rate_gets_no_answers_past_its_burst_and_another_source_still_does() -> Result<()> {
    if !privileged("stun") {
        return Ok(());
    }
    let _g = lab_lock();
    let lab = Lab::new("sbs4", "stun-rate")?;
    const OTHER: &str = "203.0.113.11";
    lab.ext.addr("e0", &format!("{OTHER}/24"))?;
    let mut sbc = lab.start_sbc(&format!(
        "[probe]\ninterval_ms = 0\n[stun]\nudp = [\"{SBC_EXT}:{STUN_PORT}\"]\nworkers = 2\n\
         rate_per_sec = 2\nrate_burst = 20\n"
    ))?;
    let stun_port: SocketAddr = format!("{SBC_EXT}:{STUN_PORT}").parse()?;
    // One source, four source ports (spread over the workers by the kernel's hash): 200
    // requests as fast as they go, bounded.
    let socks: Vec<UdpSocket> =
        (0..4).map(|_| lab.ext.enter(|| UdpSocket::bind((EXT_PEER, 0)))?.map_err(Into::into)).collect::<Result<_>>()?;
    let started = std::time::Instant::now();
    for i in 0..200u32 {
        let mut tid = [0u8; 12];
        tid[..4].copy_from_slice(&i.to_be_bytes());
        socks[i as usize % 4].send_to(&binding_request(&tid), stun_port)?;
    }
    let burst_secs = started.elapsed().as_secs_f64();
    let mut answers = 0;
    for s in &socks {
        answers += drain(s, Duration::from_millis(300))?.len();
    }
    // The burst, plus what 2/s refills while the 200 went out (and a little slack).
    let most = 20 + (burst_secs * 2.0).ceil() as usize + 1;
    ensure!(
        (20..=most).contains(&answers),
        "{answers} answers to 200 requests from one source (burst 20, at most {most})"
    );
    // Another source is answered.
    let other = lab.ext.enter(|| UdpSocket::bind((OTHER, 0)))??;
    other.set_read_timeout(Some(Duration::from_millis(500)))?;
    for n in 0..5u8 {
        let t = [0xA0 + n; 12];
        let answer = exchange(&other, stun_port, &binding_request(&t))?.context("the other source was not answered")?;
        ensure!(mapped(&answer, &t)? == other.local_addr()?, "mapped address of the other source");
    }
    ensure!(sbc.running(), "the SBC died");
    let (ok, stats) = sbc_cli(&["stats", "--socket", &lab.admin_socket().to_string_lossy()])?;
    ensure!(ok, "{stats}");
    ensure!(stat(&stats, "stun.rate_limited") == 200 - answers as u64, "{answers} answered; {stats}");
    ensure!(stat(&stats, "stun.answered") == answers as u64 + 5, "{stats}");
    ensure!(stat(&stats, "stun.rate_sources") == 2, "{stats}");
    Ok(())
}
