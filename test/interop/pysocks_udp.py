#!/usr/bin/python3
"""
UDP through a SOCKS5 proxy with PySocks (Debian python3-socks), for
test/interop/pysocks-udp.test.ts.

Usage: pysocks_udp.py '<json>' where the JSON is
  {"proxy": [host, port], "timeout": seconds,
   "sends": [{"host": h, "port": p, "payload": hex}, ...]}

One socksocket (SOCK_DGRAM) makes one UDP association on its first sendto;
each payload is sent to its destination and one reply is read back. Prints
one JSON object: the control connection's local port, the UDP socket's local
port, the relay address, and per send the byte count PySocks reports, the
reply's payload (hex) and its sender as PySocks parsed it from the header.
A timeout or any error is printed as {"error": ...} with exit status 1.
"""
import json
import socket
import sys

import socks


def main() -> int:
    spec = json.loads(sys.argv[1])
    s = socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM)
    s.set_proxy(socks.SOCKS5, spec["proxy"][0], int(spec["proxy"][1]))
    s.settimeout(float(spec.get("timeout", 5)))
    out = {"replies": []}
    try:
        for send in spec["sends"]:
            sent = s.sendto(bytes.fromhex(send["payload"]), (send["host"], int(send["port"])))
            if "control_port" not in out:
                out["control_port"] = s._proxyconn.getsockname()[1]
                out["udp_port"] = s.getsockname()[1]
                out["relay"] = list(socket.socket.getpeername(s)[:2])
            data, sender = s.recvfrom(65535)
            out["replies"].append({"sent": sent, "data": data.hex(), "from": [sender[0], sender[1]]})
    except Exception as err:  # reported to the test, which fails with it
        out["error"] = f"{type(err).__name__}: {err}"
        print(json.dumps(out))
        return 1
    finally:
        s.close()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
