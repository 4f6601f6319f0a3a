#!/usr/bin/env python3
"""Ban reaction from one phase's captures (bench/guard/run.sh): reads the core-side and the
attacker-side pcaps (tcpdump -w, Ethernet, IPv4/UDP) and prints key=value lines.

  t_fail     the core's 401 to the MAXRETRY-th REGISTER carrying credentials (core capture):
             the failure that crosses maxretry
  t_drop     the first attacker request sent after t_fail that was never answered (attacker
             capture, requests and responses paired by their top Via branch): the first one
             dropped
  reaction   t_drop - t_fail, ms (an upper bound: it includes the attacker's own gap)
  core_after REGISTERs that reached the core after t_fail
  sent_after / answered_after: attacker requests sent after t_fail, and how many were answered

usage: analyse.py CORE.pcap ATTACKER.pcap ATTACKER_IP CORE_IP MAXRETRY
"""
import re
import struct
import sys


def packets(path):
    with open(path, "rb") as f:
        data = f.read()
    magic = struct.unpack("<I", data[:4])[0]
    if magic == 0xA1B2C3D4:
        endian, scale = "<", 1e-6
    elif magic == 0xA1B23C4D:
        endian, scale = "<", 1e-9
    else:
        sys.exit(f"{path}: not a little-endian pcap")
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    off = 24
    while off + 16 <= len(data):
        sec, frac, incl, _ = struct.unpack(endian + "IIII", data[off : off + 16])
        frame = data[off + 16 : off + 16 + incl]
        off += 16 + incl
        ts = sec + frac * scale
        if linktype == 1:
            eth = 14
            etype = struct.unpack(">H", frame[12:14])[0]
            if etype == 0x8100:
                eth, etype = 18, struct.unpack(">H", frame[16:18])[0]
            if etype != 0x0800:
                continue
        elif linktype == 113:  # Linux cooked
            eth = 16
        else:
            continue
        ip = frame[eth:]
        if len(ip) < 20 or ip[9] != 17:
            continue
        ihl = (ip[0] & 15) * 4
        src = ".".join(map(str, ip[12:16]))
        dst = ".".join(map(str, ip[16:20]))
        payload = ip[ihl + 8 :]
        yield ts, src, dst, payload.decode("latin-1")


BRANCH = re.compile(r"^(?:Via|v)\s*:[^\r\n]*?;\s*branch=([^;,\s]+)", re.I | re.M)


def branch(text):
    m = BRANCH.search(text)
    return m.group(1) if m else None


def main():
    core_pcap, att_pcap, attacker, core, maxretry = sys.argv[1:6]
    maxretry = int(maxretry)
    core_pkts = list(packets(core_pcap))
    # The MAXRETRY-th REGISTER with credentials toward the core, and the core's 401 to it.
    creds = [
        p for p in core_pkts
        if p[2] == core and p[3].startswith("REGISTER ") and re.search(r"\r\n(Proxy-)?Authorization\s*:", p[3], re.I)
    ]
    if len(creds) < maxretry:
        sys.exit(f"only {len(creds)} REGISTERs with credentials reached the core (maxretry {maxretry})")
    b = branch(creds[maxretry - 1][3])
    t_fail = next(
        (p[0] for p in core_pkts if p[1] == core and p[3].startswith("SIP/2.0 401") and branch(p[3]) == b), None
    )
    if t_fail is None:
        sys.exit("no 401 to the maxretry-th REGISTER with credentials in the core capture")
    core_after = sum(1 for p in core_pkts if p[2] == core and p[3].startswith("REGISTER ") and p[0] > t_fail)
    att = list(packets(att_pcap))
    answered = {branch(p[3]) for p in att if p[2] == attacker and p[3].startswith("SIP/2.0 ")}
    sent = [(p[0], branch(p[3])) for p in att if p[1] == attacker and p[3][:1].isalpha() and not p[3].startswith("SIP/")]
    sent_after = [s for s in sent if s[0] > t_fail]
    dropped = [s for s in sent_after if s[1] not in answered]
    print(f"t_fail={t_fail:.6f}")
    print(f"failures_before={len(creds[:maxretry])}")
    print(f"creds_total={len(creds)}")
    print(f"core_after={core_after}")
    print(f"sent_after={len(sent_after)}")
    print(f"answered_after={len(sent_after) - len(dropped)}")
    if dropped:
        print(f"t_drop={dropped[0][0]:.6f}")
        print(f"reaction_ms={(dropped[0][0] - t_fail) * 1000:.3f}")
    else:
        print("t_drop=none")
        print("reaction_ms=none")


main()
