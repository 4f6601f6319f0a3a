//! `just demo`: builds the three-namespace lab, runs calls both ways through the SBC with
//! captures on both of its veths, prints `calls ok=N failed=F leaked=L` and cleans up.

use std::process::ExitCode;
use std::time::Duration;

use sbc_lab::calls::{CORE_ADDR, capture_both, core_port, spawn_sipp};
use sbc_lab::{EXT_PEER, Lab, SBC_EXT, SBC_INT, SippStats, scenario, sipp_stats};

const CALLS: u64 = 50;

fn run_pair(lab: &Lab, outbound: bool) -> anyhow::Result<SippStats> {
    let n = CALLS.to_string();
    let (callee_ns, callee_sf, callee_ip, callee_port, caller_ns, caller_sf, caller_ip, target, rsa) = if outbound {
        (
            &lab.ext,
            "uas.xml",
            EXT_PEER,
            "5060".to_string(),
            &lab.core,
            "uac-nosdp.xml",
            CORE_ADDR,
            format!("{EXT_PEER}:5060"),
            Some(format!("{SBC_INT}:5060")),
        )
    } else {
        (
            &lab.core,
            "uas-nosdp.xml",
            CORE_ADDR,
            core_port(),
            &lab.ext,
            "uac.xml",
            EXT_PEER,
            format!("{SBC_EXT}:5060"),
            None,
        )
    };
    let callee_sf = scenario(callee_sf).to_string_lossy().into_owned();
    let mut uas = spawn_sipp(
        lab,
        callee_ns,
        "callee",
        &["-sf", &callee_sf, "-t", "u1", "-i", callee_ip, "-p", &callee_port, "-m", &n, "-timeout", "60s"],
    )?;
    std::thread::sleep(Duration::from_millis(300));
    let caller_sf = scenario(caller_sf).to_string_lossy().into_owned();
    let mut args = vec![
        "-sf", &caller_sf, "-t", "u1", "-i", caller_ip, "-p", "5062", "-s", "1000", &target, "-m", &n, "-r", "20",
        "-d", "200", "-timeout", "60s",
    ];
    if let Some(r) = &rsa {
        args.extend_from_slice(&["-rsa", r]);
    }
    let mut uac = spawn_sipp(lab, caller_ns, "caller", &args)?;
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
    let _sbc = match lab.start_sbc("[probe]\ninterval_ms = 0\n") {
        Ok(p) => p,
        Err(e) => {
            eprintln!("sbc: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let run = capture_both(&lab, || -> anyhow::Result<(u64, u64)> {
        let a = run_pair(&lab, false)?;
        let b = run_pair(&lab, true)?;
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
