#!/usr/bin/env python3
"""The floor for bench/xdp/run.sh: the smallest XDP program there is (r0 = XDP_DROP; exit),
loaded with the bpf() syscall and attached natively to an interface of the current network
namespace through a BPF link. Prints `ready prog_id=N`, holds until the stop file appears or
the time limit passes (both bounded), then exits, which closes the link and detaches it.

    xdp_drop_floor.py --iface r0 --stop-file F [--seconds 120]

No compiler, no object file: two instructions. Only for namespaces the bench made itself.
"""

import argparse
import ctypes
import os
import socket
import struct
import sys
import time

SYS_BPF = 321  # x86_64
BPF_PROG_LOAD, BPF_OBJ_GET_INFO_BY_FD, BPF_LINK_CREATE = 5, 15, 28
BPF_PROG_TYPE_XDP, BPF_XDP, XDP_FLAGS_DRV_MODE = 6, 37, 1 << 2
ATTR_SIZE = 128

libc = ctypes.CDLL(None, use_errno=True)


def bpf(cmd, attr):
    buf = ctypes.create_string_buffer(attr, ATTR_SIZE)
    r = libc.syscall(SYS_BPF, cmd, buf, ATTR_SIZE)
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"bpf({cmd}): {os.strerror(e)}")
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iface", required=True)
    ap.add_argument("--stop-file", required=True)
    ap.add_argument("--seconds", type=int, default=120)
    a = ap.parse_args()

    insns = struct.pack("<BBhi", 0xB7, 0, 0, 1) + struct.pack("<BBhi", 0x95, 0, 0, 0)  # r0 = 1; exit
    insns_buf = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(b"GPL")
    # prog_type, insn_cnt, insns, license, log_level, log_size, log_buf, kern_version, prog_flags, prog_name
    prog_fd = bpf(BPF_PROG_LOAD, struct.pack("<IIQQIIQII16s", BPF_PROG_TYPE_XDP, 2, ctypes.addressof(insns_buf),
                                             ctypes.addressof(lic), 0, 0, 0, 0, 0, b"hb_xdp_drop"))
    info = ctypes.create_string_buffer(64)
    bpf(BPF_OBJ_GET_INFO_BY_FD, struct.pack("<IIQ", prog_fd, 64, ctypes.addressof(info)))
    prog_id = struct.unpack_from("<II", info.raw)[1]
    # prog_fd, target_ifindex, attach_type, flags
    link_fd = bpf(BPF_LINK_CREATE, struct.pack("<IIII", prog_fd, socket.if_nametoindex(a.iface), BPF_XDP,
                                               XDP_FLAGS_DRV_MODE))
    print(f"ready prog_id={prog_id}", flush=True)
    deadline = time.monotonic() + a.seconds
    while time.monotonic() < deadline and not os.path.exists(a.stop_file):
        time.sleep(0.1)
    os.close(link_fd)
    os.close(prog_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
