//! `just demo`: builds the three-namespace lab, runs calls both ways through the SBC with
//! captures on both of its veths (the core's UAs send SDP, the
//! SBC anchors the media: the leak count covers the SDP too), prints `calls ok=N failed=F leaked=L` and cleans up.

use std::process::ExitCode;
use std::time::Duration;

use sbc_lab::calls::{Calls, capture_both, start_calls};
use sbc_lab::{Lab, SippStats, sipp_stats};

const CALLS: u64 = 50;

fn run_pair(lab: &Lab, c: &Calls<'_>) -> anyhow::Result<SippStats> {
    let (mut uac, mut uas) = start_calls(lab, c)?;
    let _ = uac.wait(Duration::from_secs(90));
    let _ = uas.wait(Duration::from_secs(10));
    Ok(sipp_stats(&uac.log_text()))
}

fn main() -> ExitCode {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("the demo builds network namespaces: run it as root");
        return ExitCode::from(2);
    }
    let lab = match Lab::new("sbdemo", "demo") {
        Ok(l) => l,
        Err(e) => {
            eprintln!("lab: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let _sbc = match lab.start_sbc("[probe]\ninterval_ms = 0\n[media]\nenabled = true\nports = \"40000-40999\"\n") {
        Ok(p) => p,
        Err(e) => {
            eprintln!("sbc: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let run = capture_both(&lab, || -> anyhow::Result<(u64, u64)> {
        let a = run_pair(&lab, &Calls::inbound("uas-core.xml", "uac.xml", CALLS, 20))?;
        let b = run_pair(&lab, &Calls::outbound("uas.xml", "uac-core.xml", CALLS, 20))?;
        Ok((
            a.successful + b.successful,
            a.failed + b.failed + (2 * CALLS).saturating_sub(a.successful + a.failed + b.successful + b.failed),
        ))
    });
    match run {
        Ok((Ok((ok, failed)), cap)) => {
            let leaked = cap.leak_report().leaks.len();
            println!("calls ok={ok} failed={failed} leaked={leaked}");
            eprintln!("logs and captures: {}", lab.dir.display());
            if failed == 0 && leaked == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Ok((Err(e), _)) | Err(e) => {
            eprintln!("demo failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}
