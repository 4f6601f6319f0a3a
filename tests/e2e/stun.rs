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
