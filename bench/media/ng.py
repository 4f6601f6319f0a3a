#!/usr/bin/env python3
"""rtpengine's NG control protocol (bencode over UDP) for the media bench: sets up CALLS calls
(offer from end A, answer from end B; CALLS 0: a ping, for readiness) and prints one line per call for rtp_load:
`a_local a_relay b_local b_relay`. Bounded: one request at a time, 2 s timeout each."""
import re, socket, sys

def enc(v):
    if isinstance(v, int): return b"i%de" % v
    if isinstance(v, str): v = v.encode()
    if isinstance(v, bytes): return b"%d:%s" % (len(v), v)
    if isinstance(v, list): return b"l" + b"".join(enc(x) for x in v) + b"e"
    if isinstance(v, dict): return b"d" + b"".join(enc(k) + enc(v[k]) for k in sorted(v)) + b"e"
    raise TypeError(v)

def sdp(ip, port):
    return f"v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n"

def main():
    ng, calls, a_ip, a_base, b_ip, b_base = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5], int(sys.argv[6])
    host, port = ng.rsplit(":", 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    def req(n, d):
        cookie = b"c%d " % n
        s.sendto(cookie + enc(d), (host, int(port)))
        data = s.recv(65535)
        assert data.startswith(cookie), data[:80]
        body = data[len(cookie):]
        m = re.search(rb"m=audio (\d+)", body)
        c = re.search(rb"c=IN IP4 ([0-9.]+)", body)
        assert m and c, body[:300]
        return c.group(1).decode(), int(m.group(1))
    if calls == 0:
        # Readiness: a ping answered with pong.
        s.sendto(b"p0 " + enc({"command": "ping"}), (host, int(port)))
        data = s.recv(65535)
        assert data.startswith(b"p0 ") and b"pong" in data, data[:80]
        return
    for i in range(calls):
        a, b = a_base + 2 * i, b_base + 2 * i
        cid, ft, tt = f"bench-{i}", f"ft{i}", f"tt{i}"
        # The offer's SDP (toward B) names where B sends; the answer's (toward A) where A sends.
        bip, bport = req(2 * i, {"command": "offer", "call-id": cid, "from-tag": ft, "sdp": sdp(a_ip, a), "replace": ["origin"]})
        aip, aport = req(2 * i + 1, {"command": "answer", "call-id": cid, "from-tag": ft, "to-tag": tt, "sdp": sdp(b_ip, b), "replace": ["origin"]})
        print(f"{a_ip}:{a} {aip}:{aport} {b_ip}:{b} {bip}:{bport}")

main()
