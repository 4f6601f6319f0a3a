//! The registration cache with real peers: 100 sipp phones whose Contacts name private
//! addresses (so the SBC judges them behind NAT) register through the SBC to Kamailio and
//! refresh every 15 s; the SBC grants them 20 s and answers the refreshes itself while
//! Kamailio's 3600 s registration lasts. Counted on the wire (the internal capture) and in
//! `sbc stats`; at the end Kamailio calls every phone and each call completes (SDP offer from
//! the core, answer from the phone, anchored by the media relay: no media port of the core in
//! the SDP the phones get, every port pair back in the pool); the SBC's OPTIONS keepalives are
//! all answered.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use sbc_lab::calls::{capture_both, sipp_ok, spawn_sipp, start_kamailio};
use sbc_lab::{CORE, CORE_PORT, EXT_PEER, Lab, SBC_EXT, lab_lock, privileged, sbc_cli, scenario, sdp_port_leaks, stat};

const PHONES: usize = 100;

#[test]
fn phones_behind_nat_refresh_at_the_edge_and_the_core_sees_one_register_each_and_reaches_them_all() -> Result<()> {
    if !privileged("registration_cache") {
        return Ok(());
    }
    let _g = lab_lock();
    let lab = Lab::new("sbrg", "registration_cache")?;
    let _k = start_kamailio(&lab)?;
    let _sbc = lab.start_sbc(
        "[probe]\ninterval_ms = 1000\ntimeout_ms = 1000\n\
         [nat]\nregister_expiry_secs = 20\nping_interval_secs = 5\nping_failures = 2\n\
         [media]\nenabled = true\nports = \"40000-40999\"\nworkers = 1\n",
    )?;
    let users: Vec<String> = (0..PHONES).map(|i| format!("nat{i:03}")).collect();
    let csv = lab.dir.join("users.csv");
    std::fs::write(&csv, format!("SEQUENTIAL\n{}\n", users.join("\n")))?;
    // The core's caller: core-call-user.xml with the user taken from the same file.
    let core_sf = lab.dir.join("core-call-users.xml");
    let text = std::fs::read_to_string(scenario("core-call-user.xml"))?;
    ensure!(text.contains("[service]"), "core-call-user.xml no longer names the user as [service]");
    std::fs::write(&core_sf, text.replace("[service]", "[field0]"))?;

    let (res, cap) = capture_both(&lab, || -> Result<()> {
        // One socket per phone (-t un): each has its own flow, as phones behind one NAT do.
        let phones = spawn_sipp(
            &lab,
            &lab.ext,
            "phones",
            &[
                "-sf",
                &scenario("phone-refresh-uas.xml").to_string_lossy(),
                "-oocsf",
                &scenario("phone-incoming-call.xml").to_string_lossy(),
                "-inf",
                &csv.to_string_lossy(),
                "-t",
                "un",
                "-max_socket",
                "1000",
                "-i",
                EXT_PEER,
                &format!("{SBC_EXT}:5060"),
                "-m",
                &PHONES.to_string(),
                "-l",
                &PHONES.to_string(),
                "-r",
                "50",
                "-timeout",
                "150s",
            ],
        )?;
        // Four refresh intervals (60 s) after the first REGISTERs, the core calls everyone
        // while the phones wait (25 s) for it.
        std::thread::sleep(Duration::from_secs(63));
        let core = spawn_sipp(
            &lab,
            &lab.core,
            "core-caller",
            &[
                "-sf",
                &core_sf.to_string_lossy(),
                "-inf",
                &csv.to_string_lossy(),
                "-t",
                "u1",
                "-i",
                CORE,
                "-p",
                "5072",
                &format!("{CORE}:{CORE_PORT}"),
                "-m",
                &PHONES.to_string(),
                "-r",
                "25",
                "-d",
                "200",
                "-timeout",
                "40s",
            ],
        )?;
        sipp_ok(core, Duration::from_secs(60), PHONES as u64).context("the core's calls to the phones")?;
        sipp_ok(phones, Duration::from_secs(60), PHONES as u64).context("the phones")?;
        Ok(())
    })?;
    res?;

    let registers_to_core =
        cap.internal.iter().filter(|p| p.dst.ip().to_string() == CORE && p.payload.starts_with(b"REGISTER ")).count();
    let registers_from_phones = cap
        .external
        .iter()
        .filter(|p| p.dst.ip().to_string() == SBC_EXT && p.payload.starts_with(b"REGISTER "))
        .count();
    let (ok, stats) = sbc_cli(&["stats", "--socket", &lab.admin_socket().to_string_lossy()])?;
    ensure!(ok, "sbc stats failed: {stats}");
    eprintln!(
        "REGISTERs from the phones: {registers_from_phones}, reaching the core: {registers_to_core}; \
         nat.registers_absorbed {}, nat.registers_forwarded {}, nat.pings_sent {}, nat.pings_unanswered {}",
        stat(&stats, "nat.registers_absorbed"),
        stat(&stats, "nat.registers_forwarded"),
        stat(&stats, "nat.pings_sent"),
        stat(&stats, "nat.pings_unanswered"),
    );
    // 5 refreshes and 1 unREGISTER per phone; the core sees the first and the unREGISTER.
    ensure!(registers_from_phones == PHONES * 6, "phones sent {registers_from_phones} REGISTERs");
    ensure!(registers_to_core == PHONES * 2, "{registers_to_core} REGISTERs reached the core, wanted {}", PHONES * 2);
    ensure!(stat(&stats, "nat.registers_absorbed") == (PHONES * 4) as u64, "absorbed:\n{stats}");
    ensure!(stat(&stats, "nat.registers_forwarded") == (PHONES * 2) as u64, "forwarded:\n{stats}");
    // Keepalives every 5 s to each phone, all answered (the phones answer OPTIONS 200).
    ensure!(stat(&stats, "nat.pings_sent") >= (PHONES * 10) as u64, "pings:\n{stats}");
    ensure!(stat(&stats, "nat.pings_unanswered") == 0 && stat(&stats, "nat.registrations_lost") == 0, "{stats}");
    ensure!(stat(&stats, "state.registrations") == 0, "unREGISTERs end the bindings at once:\n{stats}");
    // Every call's SDP anchored both ways, nothing of the core's media outside, every pair back.
    ensure!(stat(&stats, "media.offers") == PHONES as u64 && stat(&stats, "media.answers") == PHONES as u64, "{stats}");
    ensure!(stat(&stats, "media.refused") == 0 && stat(&stats, "media.port_pairs_in_use") == 0, "{stats}");
    ensure!(stat(&stats, "media.port_pairs_released") == (PHONES * 2) as u64, "{stats}");
    let sdp_leaks = sdp_port_leaks(&cap.internal, cap.core, &cap.external, cap.sbc_external);
    ensure!(sdp_leaks.is_empty(), "{} SDP leaks, first: {}", sdp_leaks.len(), sdp_leaks[0].at);
    // No private Contact of a phone reached the core.
    let private = cap.internal.iter().find(|p| p.payload.windows(11).any(|w| w == b"192.168.77."));
    ensure!(private.is_none(), "a phone's private address reached the core");
    Ok(())
}
