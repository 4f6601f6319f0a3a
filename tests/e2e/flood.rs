//! An INVITE flood whose 2xx are never ACKed (RFC 3261 §13.3.1.4), through the real daemon:
//! each dialog ends 64·T1 after its 2xx with a BYE to the callee, so the dialog table stays
//! bounded by rate × 32 s instead of filling up for `dialog_idle_secs` (12 h) and locking
//! everyone out.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use sbc_lab::calls::{Calls, start_calls};
use sbc_lab::{Lab, lab_lock, privileged, sbc_cli, sipp_stats, stat};

const RATE: u32 = 100;
const CALLS: u64 = 4500; // 45 s of flood: longer than 64·T1, so dialogs must end during it

fn stats(lab: &Lab) -> Result<String> {
    let (ok, text) = sbc_cli(&["stats", "--socket", &lab.admin_socket().to_string_lossy()])?;
    ensure!(ok, "sbc stats failed: {text}");
    Ok(text)
}

#[test]
fn an_unacked_invite_flood_keeps_the_dialog_table_bounded_rfc3261_13_3_1_4() -> Result<()> {
    if !privileged("unacked_flood") {
        return Ok(());
    }
    let _g = lab_lock();
    let lab = Lab::new("sbf1", "unacked_flood")?;
    let _sbc = lab.start_sbc("[probe]\ninterval_ms = 0\n")?;
    let (mut caller, mut callee) =
        start_calls(&lab, &Calls::inbound("uas-answer-wait-bye.xml", "uac-noack.xml", CALLS, RATE))?;
    let start = Instant::now();
    let mut peak = 0;
    let mut series = Vec::new();
    // The flood (45 s), then 64·T1 and a margin for the last dialogs to end.
    while start.elapsed() < Duration::from_secs(45 + 40) {
        std::thread::sleep(Duration::from_secs(3));
        let d = stat(&stats(&lab)?, "state.dialogs");
        series.push((start.elapsed().as_secs(), d));
        peak = peak.max(d);
        if start.elapsed() > Duration::from_secs(50) && d == 0 {
            break;
        }
    }
    let end = stats(&lab)?;
    caller.wait(Duration::from_secs(30))?;
    let st = callee.wait(Duration::from_secs(60))?;
    let callee_stats = sipp_stats(&callee.log_text());
    eprintln!("dialogs over time (s, dialogs): {series:?}; peak {peak}; callee {callee_stats:?}");
    // Bounded: about RATE × 32 s alive at once, never the whole flood.
    let bound = u64::from(RATE) * 36;
    ensure!(peak > 0 && peak <= bound, "peak {peak} dialogs, bound {bound}: {series:?}");
    ensure!(peak < CALLS, "every flood dialog was alive at once ({peak}): none ended during the flood");
    ensure!(stat(&end, "state.dialogs") == 0, "dialogs left at the end:\n{end}");
    ensure!(
        stat(&end, "sip.unacked_dialogs_ended") == CALLS,
        "{} of {CALLS} unACKed dialogs ended:\n{end}",
        stat(&end, "sip.unacked_dialogs_ended")
    );
    // Every callee got its BYE from the SBC and answered it.
    ensure!(st.success() && callee_stats.successful == CALLS, "callee: exit {st}, {callee_stats:?}");
    Ok(())
}
