//! The guard's rules, each on a virtual clock: events in, decisions and actions out.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::config::{JailKey, Over, Raw, validate};
use super::*;

const ATTACKER: &str = "198.51.100.66";
const PHONE: &str = "192.0.2.10";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn p(s: &str) -> Prefix {
    s.parse().unwrap()
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn guard_with(f: impl FnOnce(&mut Raw)) -> (Guard, Instant) {
    let mut raw = Raw::default();
    f(&mut raw);
    let now = Instant::now();
    (Guard::new(validate(&raw, "guard").unwrap(), now), now)
}

/// The core's answer to a REGISTER of `source` for `user`.
fn answer(source: &str, code: u16, user: &str) -> FinalResponse<'static> {
    FinalResponse {
        source: ip(source),
        class: MethodClass::Register,
        code,
        by_sbc: false,
        credentials: true,
        in_dialog: false,
        target_user: Some(Box::leak(user.to_string().into_boxed_str())),
        trunk: None,
    }
}

fn fail(g: &mut Guard, now: Instant, source: &str) -> Decision {
    g.handle_event(now, &Event::Final(answer(source, 401, "1001")), &NoExempt)
}

fn actions(g: &mut Guard) -> Vec<BanAction> {
    std::iter::from_fn(|| g.poll_action()).collect()
}

fn ban_of(actions: &[BanAction]) -> Option<(Prefix, Instant, String)> {
    actions.iter().find_map(|a| match a {
        BanAction::Ban { prefix, until, jail, .. } => Some((*prefix, *until, jail.clone())),
        _ => None,
    })
}

fn request<'a>(source: &str, class: MethodClass) -> Request<'a> {
    Request::new(ip(source), class)
}

fn admit(g: &mut Guard, now: Instant, req: Request<'_>) -> Decision {
    g.handle_event(now, &Event::Request(req), &NoExempt)
}

#[test]
fn maxretry_auth_failures_within_findtime_ban_the_source_at_once() {
    let (mut g, t0) = guard_with(|_| {});
    for i in 0..4 {
        fail(&mut g, t0 + secs(i * 100), ATTACKER);
    }
    assert!(actions(&mut g).is_empty(), "4 failures < maxretry 5");
    let fifth = t0 + secs(400);
    assert_eq!(fail(&mut g, fifth, ATTACKER), Decision::Drop { why: Why::Banned });
    let acts = actions(&mut g);
    let (prefix, until, jail) = ban_of(&acts).expect("banned on the 5th failure");
    assert_eq!((prefix, jail.as_str()), (p("198.51.100.66/32"), "sip-auth"));
    assert_eq!(until, fifth + secs(600));
    let BanAction::Ban { reason, evidence, .. } = &acts[0] else { panic!() };
    assert!(reason.starts_with("5 auth-failure in 400s"), "{reason}");
    assert_eq!(evidence, "401 to REGISTER for user \"1001\"");
    // Its next request is dropped without reaching anything else.
    let d = admit(&mut g, fifth + secs(1), request(ATTACKER, MethodClass::Register));
    assert_eq!(d, Decision::Drop { why: Why::Banned });
    assert_eq!(g.show(fifth + secs(1), ip(ATTACKER)).unwrap().dropped, 1);
}

#[test]
fn failures_spread_beyond_findtime_do_not_ban() {
    let (mut g, t0) = guard_with(|_| {});
    for i in 0..20 {
        fail(&mut g, t0 + secs(i * 151), ATTACKER); // 5 failures span 604 s > findtime 600 s
    }
    assert!(actions(&mut g).is_empty());
    assert_eq!(g.counters().events[EventKind::AuthFailure.index()], 20);
}

#[test]
fn a_challenge_to_a_request_without_credentials_is_not_a_failure() {
    let (mut g, t0) = guard_with(|_| {});
    for i in 0..50 {
        let challenge = FinalResponse { credentials: false, ..answer(PHONE, 401, "1001") };
        g.handle_event(t0 + secs(i), &Event::Final(challenge), &NoExempt);
        let by_sbc = FinalResponse { by_sbc: true, ..answer(PHONE, 403, "1001") };
        g.handle_event(t0 + secs(i), &Event::Final(by_sbc), &NoExempt);
    }
    assert!(actions(&mut g).is_empty());
    assert_eq!(g.sizes().tracks, 0);
}

#[test]
fn recidive_grows_the_bantime_by_its_factor_up_to_the_maximum() {
    let (mut g, t0) = guard_with(|raw| {
        raw.jail[0].bantime_max_secs = 3000; // 600, 1200, 2400, then 3000
    });
    let mut now = t0;
    let mut bantimes = Vec::new();
    for _ in 0..5 {
        for _ in 0..5 {
            fail(&mut g, now, ATTACKER);
        }
        let (_, until, _) = ban_of(&actions(&mut g)).expect("banned");
        bantimes.push((until - now).as_secs());
        assert_eq!(g.show(now, ip(ATTACKER)).unwrap().offence, bantimes.len() as u32);
        now = until;
        g.handle_timeout(now);
        assert!(matches!(actions(&mut g)[..], [BanAction::Unban { reason: UnbanReason::Expired, .. }]));
    }
    assert_eq!(bantimes, [600, 1200, 2400, 3000, 3000]);
    // Past the recidive memory, a ban starts over.
    now += secs(7 * 86_400 + 1);
    g.handle_timeout(now);
    for _ in 0..5 {
        fail(&mut g, now, ATTACKER);
    }
    assert_eq!(ban_of(&actions(&mut g)).unwrap().1, now + secs(600));
}

#[test]
fn allowlisted_and_ignored_sources_are_never_banned_but_rate_limited() {
    let (mut g, t0) = guard_with(|raw| raw.ignore = vec!["192.0.2.0/24".into()]);
    let provider = ip("203.0.113.10");
    let allowlist = |a: IpAddr| a == provider;
    for i in 0..100 {
        let now = t0 + Duration::from_millis(i);
        for src in ["192.0.2.10", "203.0.113.10"] {
            g.handle_event(now, &Event::Final(answer(src, 403, "1001")), &allowlist);
            g.handle_event(now, &Event::Malformed { source: ip(src), what: "x" }, &allowlist);
            let scanner = Request { user_agent: Some("friendly-scanner"), ..request(src, MethodClass::Options) };
            g.handle_event(now, &Event::Request(scanner), &allowlist);
        }
    }
    assert!(actions(&mut g).is_empty(), "never banned");
    assert!(g.bans(t0).is_empty());
    // ...but the ignored access source was rate limited (OPTIONS: 20 at once, then dropped).
    assert_eq!(g.counters().rate_hits[MethodClass::Options.index()], 2 * 80);
    assert_eq!(g.counters().events, [0; 7], "no jail counted an exempt source");
    // The operator cannot ban them by hand either.
    let err = g.add(t0, p("203.0.113.10/32"), secs(60), "test", &allowlist).unwrap_err();
    assert_eq!(err, AddError::Exempt { prefix: p("203.0.113.10/32") });
    assert!(g.add(t0, p("192.0.0.0/16"), secs(60), "test", &allowlist).is_err(), "covers an ignored range");
}

#[test]
fn ipv6_sources_are_limited_and_banned_per_64() {
    let (mut g, t0) = guard_with(|_| {});
    // Five failures from five addresses of one /64: one ban of the /64.
    for i in 1..=5u16 {
        let src = format!("2001:db8:1:2::{i:x}");
        fail(&mut g, t0, &src);
    }
    let (prefix, _, _) = ban_of(&actions(&mut g)).expect("banned");
    assert_eq!(prefix, p("2001:db8:1:2::/64"));
    let d = admit(&mut g, t0, request("2001:db8:1:2:ffff::9", MethodClass::Invite));
    assert_eq!(d, Decision::Drop { why: Why::Banned });
    assert!(admit(&mut g, t0, request("2001:db8:1:3::1", MethodClass::Invite)).is_admit(), "the next /64 is not");
    // Rate limits share the /64's bucket too: 20 INVITEs at once from 20 addresses, then 503.
    for i in 1..=20u16 {
        assert!(admit(&mut g, t0, request(&format!("2001:db8:9:9::{i:x}"), MethodClass::Invite)).is_admit());
    }
    assert!(matches!(
        admit(&mut g, t0, request("2001:db8:9:9::99", MethodClass::Invite)),
        Decision::Reject { code: 503, .. }
    ));
}

#[test]
fn svmap_signature_is_banned_on_first_sight() {
    let (mut g, t0) = guard_with(|_| {});
    // svmap's OPTIONS: From "sipvicious"<sip:100@1.1.1.1>, User-Agent friendly-scanner.
    let svmap = Request {
        user_agent: Some("friendly-scanner"),
        from_name: Some("sipvicious"),
        from_user: Some("100"),
        from_host: Some("1.1.1.1"),
        target_user: Some("100"),
        ..request(ATTACKER, MethodClass::Options)
    };
    assert_eq!(admit(&mut g, t0, svmap.clone()), Decision::Drop { why: Why::Banned });
    let acts = actions(&mut g);
    let BanAction::Ban { jail, evidence, until, .. } = &acts[0] else { panic!("{acts:?}") };
    assert_eq!((jail.as_str(), evidence.as_str()), ("sip-scanner", "User-Agent \"friendly-scanner\""));
    assert_eq!(*until, t0 + secs(3600));
    // svmap --compact sends no User-Agent: its From still gives it away.
    let compact = Request { user_agent: None, ..svmap.clone() };
    let other = "198.51.100.67";
    assert_eq!(admit(&mut g, t0, Request { source: ip(other), ..compact }), Decision::Drop { why: Why::Banned });
    assert!(g.show(t0, ip(other)).unwrap().evidence.contains("From name"));
}

#[test]
fn a_sweep_with_a_changed_user_agent_is_still_banned_by_behaviour() {
    let (mut g, t0) = guard_with(|_| {});
    // A phone re-registering two lines over and over is not a sweep.
    for i in 0..50u64 {
        let user = if i % 2 == 0 { "1001" } else { "1002" };
        let req = Request { target_user: Some(user), ..request(PHONE, MethodClass::Register) };
        assert!(admit(&mut g, t0 + secs(i), req).is_admit());
    }
    // svwar with a phone's User-Agent and From: extensions 100, 101, ... each answered 404.
    let mut banned_at = None;
    for ext in 100..200u32 {
        let user = ext.to_string();
        let req = Request {
            user_agent: Some("Yealink SIP-T46S 66.86.0.15"),
            from_user: Some(&user),
            from_host: Some("sbc.example"),
            target_user: Some(&user),
            ..request(ATTACKER, MethodClass::Register)
        };
        let now = t0 + Duration::from_millis(u64::from(ext) * 20);
        if admit(&mut g, now, req) == (Decision::Drop { why: Why::Banned }) {
            banned_at = Some(ext - 100);
            break;
        }
    }
    assert_eq!(banned_at, Some(10), "the 11th distinct target user in 60 s");
    let acts = actions(&mut g);
    let BanAction::Ban { jail, evidence, .. } = &acts[0] else { panic!("{acts:?}") };
    assert_eq!(jail, "sip-scanner");
    assert!(evidence.starts_with("more than 10 distinct target users in 60s"), "{evidence}");
    assert!(evidence.contains("Yealink"), "{evidence}");
}

#[test]
fn many_out_of_dialog_requests_without_a_success_are_a_scanner_and_a_success_resets_the_count() {
    let (mut g, t0) = guard_with(|raw| {
        raw.rate.options.per_second = 0; // no rate limit: behaviour alone
    });
    // A phone whose REGISTER succeeds may ping as it likes.
    for round in 0..3u64 {
        for i in 0..60 {
            let now = t0 + secs(round * 20) + Duration::from_millis(i * 100);
            assert!(admit(&mut g, now, request(PHONE, MethodClass::Options)).is_admit());
        }
        g.handle_event(t0 + secs(round * 20 + 10), &Event::Final(answer(PHONE, 200, "1001")), &NoExempt);
    }
    // The same without a success: the 61st out-of-dialog request in 60 s bans it.
    let mut decisions =
        (0..61).map(|i| admit(&mut g, t0 + Duration::from_millis(i * 100), request(ATTACKER, MethodClass::Options)));
    assert!(decisions.by_ref().take(60).all(|d| d.is_admit()));
    assert_eq!(decisions.next(), Some(Decision::Drop { why: Why::Banned }));
    drop(decisions);
    assert!(g.show(t0, ip(PHONE)).is_none());
    assert_eq!(ban_of(&actions(&mut g)).unwrap().0, p("198.51.100.66/32"));
}

#[test]
fn over_the_rate_a_class_is_rejected_with_retry_after_or_dropped_then_recovers() {
    let (mut g, t0) = guard_with(|_| {});
    for _ in 0..20 {
        assert!(admit(&mut g, t0, request(PHONE, MethodClass::Invite)).is_admit(), "burst 20");
    }
    let d = admit(&mut g, t0, request(PHONE, MethodClass::Invite));
    assert_eq!(d, Decision::Reject { code: 503, retry_after: secs(1), why: Why::SourceRate(MethodClass::Invite) });
    // Another class, another bucket; OPTIONS over its rate is dropped silently.
    for _ in 0..20 {
        assert!(admit(&mut g, t0, request(PHONE, MethodClass::Options)).is_admit());
    }
    let d = admit(&mut g, t0, request(PHONE, MethodClass::Options));
    assert_eq!(d, Decision::Drop { why: Why::SourceRate(MethodClass::Options) });
    // 5 per second: 200 ms later one more INVITE conforms, a second does not.
    let later = t0 + Duration::from_millis(200);
    assert!(admit(&mut g, later, request(PHONE, MethodClass::Invite)).is_admit());
    assert!(!admit(&mut g, later, request(PHONE, MethodClass::Invite)).is_admit());
    let c = g.counters();
    assert_eq!((c.rejected, c.dropped_rate, c.admitted), (2, 1, 41));
}

#[test]
fn rate_limit_hits_feed_the_flood_jail() {
    let (mut g, t0) = guard_with(|raw| raw.scanner.max_out_of_dialog = 0);
    let mut n = 0;
    while admit(&mut g, t0, request(ATTACKER, MethodClass::Invite)) != (Decision::Drop { why: Why::Banned }) {
        n += 1;
        assert!(n < 1000);
    }
    assert_eq!(n, 20 + 49, "burst 20, then the 50th hit in 10 s bans");
    let acts = actions(&mut g);
    assert_eq!(ban_of(&acts).unwrap().2, "sip-flood");
    // A limiter outside the guard reports its hits as events too.
    let other = ip("198.51.100.67");
    for _ in 0..100 {
        g.handle_event(t0, &Event::RateLimited { source: other, what: "stun" }, &NoExempt);
    }
    assert!(g.show(t0, other).is_some());
}

#[test]
fn trunks_are_limited_per_trunk_in_calls_per_second_and_concurrent_calls_never_banned() {
    let (mut g, t0) = guard_with(|raw| {
        raw.trunk.calls_per_second = 2;
        raw.trunk.calls_burst = 3;
        raw.trunk.max_concurrent = 4;
        raw.trunk.over = "drop".into();
    });
    let call = |src: &str| Request { trunk: Some("carrier-a"), ..request(src, MethodClass::Invite) };
    // Two addresses of one provider share its limits.
    assert!(admit(&mut g, t0, call("203.0.113.10")).is_admit());
    assert!(admit(&mut g, t0, call("203.0.113.11")).is_admit());
    assert!(admit(&mut g, t0, call("203.0.113.10")).is_admit());
    assert_eq!(admit(&mut g, t0, call("203.0.113.10")), Decision::Drop { why: Why::TrunkCallRate });
    // In-dialog requests are not new calls.
    let bye = Request { in_dialog: true, ..call("203.0.113.10") };
    assert!(admit(&mut g, t0, bye).is_admit());
    let t1 = t0 + secs(1);
    assert!(admit(&mut g, t1, call("203.0.113.10")).is_admit());
    assert_eq!(g.concurrent_calls("carrier-a"), 4);
    assert_eq!(admit(&mut g, t1 + secs(5), call("203.0.113.10")), Decision::Drop { why: Why::TrunkConcurrent });
    g.handle_event(t1, &Event::CallEnded { trunk: "carrier-a" }, &NoExempt);
    assert!(admit(&mut g, t1 + secs(5), call("203.0.113.10")).is_admit());
    // Another trunk is not affected; per-source limits do not apply to trunks.
    for _ in 0..3 {
        assert!(
            admit(&mut g, t0, Request { trunk: Some("carrier-b"), ..request(ATTACKER, MethodClass::Invite) })
                .is_admit()
        );
    }
    // The many hits never banned the provider.
    for _ in 0..500 {
        admit(&mut g, t1 + secs(5), call("203.0.113.10"));
    }
    assert!(g.bans(t1).is_empty());
    assert!(g.counters().trunk_concurrent_hits > 100);
}

#[test]
fn a_ban_expires_at_its_timeout_and_the_source_is_admitted_again() {
    let (mut g, t0) = guard_with(|_| {});
    for _ in 0..5 {
        fail(&mut g, t0, ATTACKER);
    }
    let (_, until, _) = ban_of(&actions(&mut g)).unwrap();
    assert_eq!(g.poll_timeout(), Some(t0 + SWEEP_INTERVAL), "the sweep comes first");
    g.handle_timeout(t0 + SWEEP_INTERVAL);
    assert_eq!(g.show(t0, ip(ATTACKER)).unwrap().remaining, secs(600));
    let mut now = t0 + SWEEP_INTERVAL;
    while let Some(at) = g.poll_timeout()
        && at < until
    {
        now = at;
        g.handle_timeout(now);
    }
    assert!(actions(&mut g).is_empty());
    assert_eq!(g.poll_timeout(), Some(until));
    g.handle_timeout(until);
    assert!(
        matches!(&actions(&mut g)[..], [BanAction::Unban { prefix, reason: UnbanReason::Expired, .. }] if *prefix == p("198.51.100.66/32"))
    );
    assert!(admit(&mut g, until, request(ATTACKER, MethodClass::Register)).is_admit());
    assert!(now < until);
}

#[test]
fn operator_bans_list_show_and_delete_at_once_forgiving_the_history() {
    let (mut g, t0) = guard_with(|_| {});
    let view = g.add(t0, p("198.51.100.0/24"), secs(3600), "abuse\nreport", &NoExempt).unwrap();
    assert_eq!((view.jail.as_str(), view.reason.as_str()), ("manual", "operator: abuse%0Areport"));
    assert!(matches!(actions(&mut g)[..], [BanAction::Ban { .. }]));
    assert_eq!(g.show(t0, ip("198.51.100.7")).unwrap().prefix, p("198.51.100.0/24"));
    assert_eq!(g.show(t0 + secs(100), ip("198.51.100.7")).unwrap().remaining, secs(3500));
    assert!(g.add(t0, p("198.51.101.0/24"), Duration::ZERO, "", &NoExempt).is_err());
    // A jail ban inside it, then both listed.
    for _ in 0..5 {
        fail(&mut g, t0, "198.51.100.66");
    }
    actions(&mut g);
    let listed: Vec<_> = g.bans(t0).into_iter().map(|b| b.prefix).collect();
    assert_eq!(listed, [p("198.51.100.0/24"), p("198.51.100.66/32")]);
    // Deleting by address lifts the longest covering ban.
    let gone = g.delete(t0, p("198.51.100.66/32")).unwrap();
    assert_eq!(gone.jail, "sip-auth");
    assert!(
        matches!(&actions(&mut g)[..], [BanAction::Unban { prefix, reason: UnbanReason::Deleted, .. }] if *prefix == p("198.51.100.66/32"))
    );
    assert_eq!(g.delete(t0, p("198.51.100.9/32")).unwrap().prefix, p("198.51.100.0/24"));
    assert!(g.delete(t0, p("198.51.100.9/32")).is_none());
    assert!(admit(&mut g, t0, request("198.51.100.66", MethodClass::Register)).is_admit());
    // Forgiven: its next ban is a first offence again.
    for _ in 0..5 {
        fail(&mut g, t0 + secs(1), "198.51.100.66");
    }
    assert_eq!(g.show(t0 + secs(1), ip("198.51.100.66")).unwrap().offence, 1);
}

#[test]
fn stats_and_ban_lines_name_what_happened() {
    let (mut g, t0) = guard_with(|_| {});
    for _ in 0..5 {
        fail(&mut g, t0, ATTACKER);
    }
    admit(&mut g, t0, request(ATTACKER, MethodClass::Invite));
    let stats = g.stats_text();
    for line in ["guard.events.auth-failure 5\n", "guard.bans 1\n", "guard.dropped_banned 1\n", "guard.state.bans 1\n"]
    {
        assert!(stats.contains(line), "{line:?} in\n{stats}");
    }
    let names: Vec<_> = stats.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(names.len(), names.iter().collect::<std::collections::HashSet<_>>().len(), "unique names");
    let line = g.show(t0 + secs(30), ip(ATTACKER)).unwrap().to_string();
    assert!(
        line.starts_with(
            "198.51.100.66/32 jail=sip-auth remaining=570s hits=5 offence=1 dropped=1 reason=\"5 auth-failure"
        ),
        "{line}"
    );
    assert!(line.ends_with(r#"evidence="401 to REGISTER for user \"1001\"""#), "{line}");
}

#[test]
fn a_full_ban_table_evicts_the_ban_that_expires_first() {
    let (mut g, t0) = guard_with(|raw| raw.max_bans = 2);
    g.add(t0, p("198.51.100.1/32"), secs(100), "", &NoExempt).unwrap();
    g.add(t0, p("198.51.100.2/32"), secs(50), "", &NoExempt).unwrap();
    g.add(t0, p("198.51.100.3/32"), secs(200), "", &NoExempt).unwrap();
    let acts = actions(&mut g);
    assert!(acts.iter().any(|a| matches!(a, BanAction::Unban { prefix, reason: UnbanReason::Evicted, .. } if *prefix == p("198.51.100.2/32"))));
    assert_eq!(g.sizes().bans, 2);
    assert_eq!(g.counters().bans_evicted, 1);
}

#[test]
fn a_flood_of_a_million_spoofed_sources_keeps_state_bounded_and_the_real_attacker_banned() {
    const CAP: u64 = 10_000;
    let (mut g, t0) = guard_with(|raw| {
        raw.max_sources = CAP;
        raw.max_tracked = CAP;
    });
    // The real attacker's first two failures, then a million spoofed sources, each sending one
    // REGISTER that the core refuses (403), within 1 s.
    fail(&mut g, t0, ATTACKER);
    fail(&mut g, t0, ATTACKER);
    // A flooder already over its REGISTER rate (burst 20, 5/s).
    let flooder = "198.51.100.99";
    let flooded: Vec<_> = (0..21).map(|_| admit(&mut g, t0, request(flooder, MethodClass::Register))).collect();
    assert!(!flooded[20].is_admit());
    let jails = g.config().jails.len();
    let mut now = t0;
    let mut peak = Sizes::default();
    for i in 0..1_000_000u32 {
        now = t0 + Duration::from_micros(u64::from(i));
        let src = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
        g.handle_event(now, &Event::Request(Request::new(src, MethodClass::Register)), &NoExempt);
        let refused = FinalResponse { source: src, target_user: None, ..answer(ATTACKER, 403, "") };
        g.handle_event(now, &Event::Final(refused), &NoExempt);
        if g.poll_timeout().is_some_and(|at| at <= now) {
            g.handle_timeout(now);
        }
        if i % 1000 == 0 {
            let s = g.sizes();
            peak.limiter_keys = peak.limiter_keys.max(s.limiter_keys);
            peak.tracks = peak.tracks.max(s.tracks);
        }
    }
    assert!(peak.limiter_keys <= CAP as usize, "{peak:?}");
    assert!(peak.tracks <= (jails + 1) * CAP as usize, "{peak:?}");
    assert!(g.counters().limiter_evicted > 900_000 && g.counters().tracks_evicted > 900_000, "{:?}", g.counters());
    assert!(actions(&mut g).is_empty(), "one failure per spoofed source bans none");
    // The flooder's bucket survived too: 1 s later it has 5 more, not a fresh burst of 20.
    let after: Vec<_> = (0..6).map(|_| admit(&mut g, t0 + secs(1), request(flooder, MethodClass::Register))).collect();
    assert!(after[..5].iter().all(Decision::is_admit) && !after[5].is_admit(), "{after:?}");
    // The attacker's track, with more hits than any spoofed one, survived the flood.
    for _ in 0..3 {
        fail(&mut g, now, ATTACKER);
    }
    assert_eq!(ban_of(&actions(&mut g)).unwrap().0, p("198.51.100.66/32"));
}

#[test]
fn bans_survive_a_restart_through_the_state_file() {
    let (mut g, t0) = guard_with(|_| {});
    for _ in 0..5 {
        fail(&mut g, t0, ATTACKER);
    }
    g.add(t0, p("2001:db8:1:2::/64"), secs(86_400), "abuse", &NoExempt).unwrap();
    assert!(g.take_dirty() && !g.take_dirty());
    let wall = UNIX_EPOCH + secs(1_767_225_000);
    let file = g.render_bans(t0 + secs(100), wall);

    // A new process: another Instant, the wall clock 30 s later.
    let (mut h, t1) = guard_with(|_| {});
    assert_eq!(h.restore(t1, wall + secs(30), file.as_bytes(), &NoExempt), Ok(2));
    let acts = actions(&mut h);
    assert_eq!(acts.len(), 2, "each restored ban goes to XDP again: {acts:?}");
    let b = h.show(t1, ip(ATTACKER)).unwrap();
    assert_eq!((b.jail.as_str(), b.remaining, b.hits, b.offence), ("sip-auth", secs(600 - 130), 5, 1));
    assert_eq!(h.show(t1, ip("2001:db8:1:2::77")).unwrap().remaining, secs(86_400 - 130));
    // Recidive continues from the restored offence.
    h.handle_timeout(t1 + secs(470));
    for _ in 0..5 {
        fail(&mut h, t1 + secs(470), ATTACKER);
    }
    assert_eq!(h.show(t1 + secs(470), ip(ATTACKER)).unwrap().remaining, secs(1200));
    // Bans already over are not restored, nor those of a prefix exempt now.
    let (mut late, t2) = guard_with(|_| {});
    assert_eq!(late.restore(t2, wall + secs(1000), file.as_bytes(), &NoExempt), Ok(1));
    let (mut listed, t3) = guard_with(|_| {});
    let allowlist = |a: IpAddr| a == ip(ATTACKER);
    assert_eq!(listed.restore(t3, wall, file.as_bytes(), &allowlist), Ok(1));
}

#[test]
fn bans_of_a_prefix_that_became_exempt_are_lifted() {
    let (mut g, t0) = guard_with(|_| {});
    for _ in 0..5 {
        fail(&mut g, t0, ATTACKER);
    }
    g.add(t0, p("198.51.100.0/24"), secs(60), "", &NoExempt).unwrap();
    g.add(t0, p("2001:db8::/32"), secs(60), "", &NoExempt).unwrap();
    actions(&mut g);
    // An allowlist reload lists the attacker's address (it was a provider after all).
    let file = "# sbc-allowlist v1\n198.51.100.66/32 IN 1 \"Carrier\" 1 ip\n";
    let allowlist = Allowlist::parse(file).unwrap();
    assert_eq!(g.lift_exempt(&allowlist), 2, "its /32 and the /24 holding it");
    let mut lifted: Vec<(Prefix, UnbanReason)> = actions(&mut g)
        .into_iter()
        .filter_map(|a| match a {
            BanAction::Unban { prefix, reason, .. } => Some((prefix, reason)),
            BanAction::Ban { .. } => None,
        })
        .collect();
    lifted.sort();
    assert_eq!(lifted, [(p("198.51.100.0/24"), UnbanReason::Exempt), (p("198.51.100.66/32"), UnbanReason::Exempt)]);
    assert_eq!(g.bans(t0).len(), 1, "the IPv6 ban holds no provider: kept");
    assert_eq!(
        g.add(t0, p("198.51.0.0/16"), secs(60), "", &allowlist),
        Err(AddError::Exempt { prefix: p("198.51.0.0/16") })
    );
}

#[test]
fn a_corrupt_state_file_is_refused_and_changes_nothing() {
    let (mut g, t0) = guard_with(|_| {});
    g.add(t0, p("198.51.100.1/32"), secs(100), "", &NoExempt).unwrap();
    let file = g.render_bans(t0, SystemTime::now());
    let (mut h, t1) = guard_with(|_| {});
    let truncated = &file.as_bytes()[..file.len() - 4];
    assert!(h.restore(t1, SystemTime::now(), truncated, &NoExempt).is_err());
    assert!(h.restore(t1, SystemTime::now(), b"\x00\xff garbage", &NoExempt).is_err());
    assert!(h.bans(t1).is_empty() && actions(&mut h).is_empty());
}

#[test]
fn a_user_keyed_jail_bans_a_distributed_guess_at_one_account() {
    let (mut g, t0) = guard_with(|raw| {
        raw.jail.retain(|j| j.name == "sip-auth-user");
        raw.jail[0].maxretry = 4;
    });
    assert_eq!(g.config().jails[0].key, JailKey::User);
    for i in 1..=4 {
        let src = format!("198.51.100.{i}");
        g.handle_event(t0, &Event::Final(answer(&src, 401, "1001")), &NoExempt);
    }
    let banned: Vec<_> = actions(&mut g).into_iter().filter_map(|a| ban_of(&[a]).map(|b| b.0)).collect();
    assert_eq!(banned.len(), 4);
    assert_eq!(g.config().rate(MethodClass::Invite).unwrap().over, Over::Reject);
}

#[test]
fn a_shared_ban_is_applied_once_unless_exempt_here_and_a_bad_record_is_refused() {
    let wall = UNIX_EPOCH + secs(1_767_225_000);
    let (mut a, t0) = guard_with(|_| {});
    a.add(t0, p("198.51.100.66/32"), secs(600), "brute force", &NoExempt).unwrap();
    a.add(t0, p("203.0.113.10/32"), secs(600), "spoofed?", &NoExempt).unwrap();
    let record = a.render_ban(&p("198.51.100.66/32"), t0, wall).unwrap();
    let listed = a.render_ban(&p("203.0.113.10/32"), t0, wall).unwrap();
    assert!(a.render_ban(&p("198.51.100.67/32"), t0, wall).is_none());

    let (mut b, t1) = guard_with(|_| {});
    let _ = actions(&mut b);
    assert_eq!(b.insert_shared(t1, wall, record.as_bytes(), &NoExempt).unwrap(), Some(p("198.51.100.66/32")));
    let (prefix, until, _) = ban_of(&actions(&mut b)).expect("queued for XDP");
    assert_eq!((prefix, until), (p("198.51.100.66/32"), t1 + secs(600)));
    assert!(b.take_dirty(), "written to the state file too");
    // Announced again (queued, then republished after an outage): nothing changes.
    assert_eq!(b.insert_shared(t1 + secs(1), wall + secs(1), record.as_bytes(), &NoExempt).unwrap(), None);
    assert!(actions(&mut b).is_empty());
    // The exemption check is local: a provider listed here is never banned by another appliance.
    let here = |ip: IpAddr| ip == IpAddr::V4(Ipv4Addr::new(203, 0, 113, 10));
    assert_eq!(b.insert_shared(t1, wall, listed.as_bytes(), &here).unwrap(), None);
    assert!(b.show(t1, ip("203.0.113.10")).is_none());
    // Two bans, or a truncated one, in a record: refused.
    let both = a.render_bans(t0, wall);
    assert!(b.insert_shared(t1, wall, both.as_bytes(), &NoExempt).is_err());
    assert!(b.insert_shared(t1, wall, &record.as_bytes()[..record.len() - 3], &NoExempt).is_err());
}

#[test]
fn a_deletion_missed_while_away_lifts_only_a_ban_older_than_it() {
    let wall = UNIX_EPOCH + secs(1_767_225_000);
    let (mut g, t0) = guard_with(|_| {});
    g.add(t0, p("198.51.100.66/32"), secs(600), "", &NoExempt).unwrap();
    let _ = actions(&mut g);
    // Deleted elsewhere 5 s before this ban began: a new ban, kept.
    assert!(g.lift_deleted(t0, wall, p("198.51.100.66/32"), 1_767_224_995).is_none());
    // Deleted after it began: lifted, and the unban queued for XDP.
    assert!(g.lift_deleted(t0 + secs(10), wall + secs(10), p("198.51.100.66/32"), 1_767_225_005).is_some());
    assert!(matches!(actions(&mut g).as_slice(), [BanAction::Unban { reason: UnbanReason::Deleted, .. }]));
    assert!(g.lift_deleted(t0, wall, p("198.51.100.67/32"), 1_767_225_005).is_none(), "not banned");
}
