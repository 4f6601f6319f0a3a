#!/usr/bin/env bash
# Checks the peers themselves, on loopback, without the SBC:
#   direct   every sipp scenario pair against each other (no proxy);
#   proxy    every pair through Kamailio as a record-routing, topology-hiding proxy
#            (bench/kamailio/kamailio-topoh.cfg), which proves in-dialog requests in both
#            directions follow [next_url]/[routes] (the Contact and Record-Route a proxy put in);
#   phone    phone-register-uas.xml registers to tests/peers/kamailio-core.cfg, then
#            core-call-user.xml calls that user through it.
# each over UDP (u1) and TCP (t1), checking every call succeeded on both sides.
#
#   tests/peers/selftest.sh                        # everything: 20 calls per pair at 10 calls/s
#   MODES=direct TRANSPORTS=t1 tests/peers/selftest.sh
#   CALLS=50 RATE=25 KEEP=1 tests/peers/selftest.sh
#
# Every process is bounded (-m, -timeout, `timeout`) and killed by PID on exit.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
sc="$here/scenarios"
read -r -a modes <<<"${MODES:-direct proxy phone}"
read -r -a transports <<<"${TRANSPORTS:-u1 t1}"
calls="${CALLS:-20}"
rate="${RATE:-10}"
ip="${IP:-127.0.0.1}"
uas_port=15060 uac_port=15061 proxy_port=15070 phone_port=15080
work="$(mktemp -d /tmp/hp-selftest.XXXXXX)"
pids=()

cleanup() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    if [[ "${KEEP:-0}" == 1 ]]; then echo "logs kept in $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The -nosdp scenarios never carry SDP (labs about something else than media use them).
for f in uac-nosdp uac-nosdp-target uas-nosdp uac-waitbye-nosdp uas-bye-nosdp uac-reinvite-nosdp \
         uas-reinvite-nosdp uas-refer-nosdp uac-ext-nosdp uas-ext-nosdp phone-incoming-call-nosdp; do
    if grep -qiE 'application/sdp|^ *[vocm]=' "$sc/$f.xml"; then
        echo "FAIL: $f.xml carries SDP" >&2
        exit 1
    fi
done
# The core's scenarios for the media-anchoring labs carry its SDP (the leak check covers it).
for f in uas-core uac-core uac-core-target uas-bye-core uac-waitbye-core uas-reinvite-core uas-refer-core uas-hold-core \
         uas-reinvite-from-callee core-call-user core-call-user-rtp; do
    if ! grep -q 'o=corepbx-media ' "$sc/$f.xml"; then
        echo "FAIL: $f.xml carries no core SDP" >&2
        exit 1
    fi
done

pairs=( # "uac uas"
    "uac uas"
    "uac-nosdp uas-nosdp"
    "uac uas-nosdp"
    "core-call-user uas"
    "uac-waitbye uas-bye"
    "uac-waitbye-nosdp uas-bye-nosdp"
    "uac-reinvite uas-reinvite"
    "uac-reinvite-nosdp uas-reinvite-nosdp"
    "uac-accept-reinvite uas-reinvite-from-callee"
    "uac uas-core"
    "uac-core uas"
    "uac-waitbye uas-bye-core"
    "uac-waitbye-core uas-bye"
    "uac-reinvite uas-reinvite-core"
)

linger() { # UDP: keep answering retransmitted BYEs for a while (see the scenarios' linger_ms)
    if [[ $1 == u1 ]] && grep -q linger_ms "$sc/$2.xml"; then echo "-set linger_ms 1000"; fi
}

successful() { # sipp's final screen: "Successful call | <periodic> | <cumulative>"
    awk -F'|' '/Successful call/ {gsub(/ /, "", $3); n=$3} END {print n+0}' "$1"
}

wait_listen() { # proto ip:port, at most 10 s
    local i
    for i in $(seq 100); do
        ss -Hln"${1:0:1}" src "$2" 2>/dev/null | grep -q . && return 0
        sleep 0.1
    done
    echo "nothing listens on $1 $2" >&2
    return 1
}

kam_pid=""
start_kamailio() { # cfg name [kamailio args...]
    local cfg="$1" name="$2" dir="$work/$2"
    shift 2
    mkdir -p "$dir"
    kamailio -f "$cfg" -DD -E -x fm -m 64 -M 8 \
        -l "udp:$ip:$proxy_port" -l "tcp:$ip:$proxy_port" \
        -P "$dir/kamailio.pid" -Y "$dir" "$@" >"$dir/kamailio.log" 2>&1 &
    kam_pid=$!
    pids+=("$kam_pid")
    wait_listen udp "$ip:$proxy_port" && wait_listen tcp "$ip:$proxy_port"
}
stop_kamailio() {
    kill "$kam_pid" 2>/dev/null || true
    wait "$kam_pid" 2>/dev/null || true
    kam_pid=""
}

fail=0
report() { # label uac_rc uac_log uas_rc uas_log expected
    local ok_uac ok_uas
    ok_uac=$(successful "$3")
    ok_uas=$(successful "$5")
    if [[ $2 == 0 && $4 == 0 && $ok_uac == "$6" && $ok_uas == "$6" ]]; then
        printf 'ok    %-70s %s/%s calls\n' "$1" "$ok_uac" "$6"
    else
        printf 'FAIL  %-70s uac rc=%s ok=%s, uas rc=%s ok=%s (KEEP=1 keeps logs)\n' \
            "$1" "$2" "$ok_uac" "$4" "$ok_uas"
        fail=1
    fi
}

run_pairs() { # transport target(ip:port) label
    local t="$1" target="$2" label="$3" pair uac uas log uas_pid uac_rc uas_rc
    for pair in "${pairs[@]}"; do
        read -r uac uas <<<"$pair"
        log="$work/$label-$t-$uac-$uas"
        # shellcheck disable=SC2046 # linger prints zero or two words
        timeout 60 sipp -sf "$sc/$uas.xml" -t "$t" -i "$ip" -p "$uas_port" -m "$calls" -d 200 \
            $(linger "$t" "$uas") -nostdin -timeout 50s -timeout_error -trace_err -error_file "$log.uas.err" \
            >"$log.uas.out" 2>&1 &
        uas_pid=$!
        pids+=("$uas_pid")
        wait_listen "${t/1/}" "$ip:$uas_port" 2>/dev/null || sleep 0.3
        set +e
        # shellcheck disable=SC2046
        timeout 60 sipp -sf "$sc/$uac.xml" -t "$t" -i "$ip" -p "$uac_port" "$target" \
            $(linger "$t" "$uac") -r "$rate" -m "$calls" -d 200 -nostdin -timeout 50s -timeout_error \
            -trace_err -error_file "$log.uac.err" >"$log.uac.out" 2>&1
        uac_rc=$?
        wait "$uas_pid"
        uas_rc=$?
        set -e
        report "$label $t $uac <-> $uas" "$uac_rc" "$log.uac.out" "$uas_rc" "$log.uas.out" "$calls"
    done
}

for mode in "${modes[@]}"; do
    for t in "${transports[@]}"; do
        case "$mode" in
            direct)
                run_pairs "$t" "$ip:$uas_port" direct
                ;;
            proxy)
                proto=udp
                [[ $t == t1 ]] && proto=tcp
                start_kamailio "$root/bench/kamailio/kamailio-topoh.cfg" "topoh-$t" -A WITH_TCP \
                    -A "UAS_URI=\"sip:$ip:$uas_port;transport=$proto\"" -A "MASK_IP=\"192.0.2.254\""
                run_pairs "$t" "$ip:$proxy_port" "via-kamailio-topoh"
                stop_kamailio
                ;;
            phone)
                start_kamailio "$here/kamailio-core.cfg" "core-$t"
                log="$work/phone-$t"
                # shellcheck disable=SC2046
                timeout 60 sipp -sf "$sc/phone-register-uas.xml" -oocsf "$sc/phone-incoming-call.xml" \
                    $(linger "$t" phone-incoming-call) -t "$t" -i "$ip" -p "$phone_port" -s alice "$ip:$proxy_port" -m 1 \
                    -nostdin -timeout 50s -timeout_error >"$log.phone.out" 2>&1 &
                phone_pid=$!
                pids+=("$phone_pid")
                sleep 1   # the REGISTER goes first
                set +e
                timeout 60 sipp -sf "$sc/core-call-user.xml" -t "$t" -i "$ip" -p "$uac_port" \
                    -s alice "$ip:$proxy_port" -m 1 -d 200 -nostdin -timeout 30s -timeout_error \
                    >"$log.core.out" 2>&1
                core_rc=$?
                wait "$phone_pid"
                phone_rc=$?
                set -e
                report "phone $t phone-register-uas (registrar kamailio-core) <- core-call-user" \
                    "$core_rc" "$log.core.out" "$phone_rc" "$log.phone.out" 1
                stop_kamailio
                ;;
            *)
                echo "unknown mode $mode (direct, proxy, phone)" >&2
                exit 2
                ;;
        esac
    done
done
exit "$fail"
