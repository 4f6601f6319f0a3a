#!/usr/bin/env python3
"""Sends one SIP OPTIONS over UDP and prints the status line of the answer.

Usage: sip-options.py HOST PORT [TIMEOUT_S]. Exit 0 on a 200, 1 on another answer, 2 on none.
Used by .ci/first-command to prove the README's first command brings up a SIP service."""
import random
import socket
import sys

host, port = sys.argv[1], int(sys.argv[2])
timeout = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
lport = s.getsockname()[1]
tag = "%08x" % random.getrandbits(32)
msg = (
    f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
    f"Via: SIP/2.0/UDP 127.0.0.1:{lport};branch=z9hG4bK{tag};rport\r\n"
    f"From: <sip:ci@127.0.0.1>;tag={tag}\r\n"
    f"To: <sip:{host}:{port}>\r\n"
    f"Call-ID: {tag}@127.0.0.1\r\n"
    "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
)
s.settimeout(timeout)
s.sendto(msg.encode(), (host, port))
try:
    data, _ = s.recvfrom(65535)
except (socket.timeout, ConnectionRefusedError):
    sys.exit(2)
status = data.split(b"\r\n", 1)[0].decode(errors="replace")
print(status)
sys.exit(0 if status.startswith("SIP/2.0 200") else 1)
