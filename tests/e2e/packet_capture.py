"""`python -m tests.e2e.packet_capture OUT`: log every packet on every non-loopback interface of this netns.

An AF_PACKET socket bound to no interface sees every frame of its network namespace, in both directions,
with no extra package. One JSON line per frame goes to OUT (flushed at once); "ready" goes to stdout once
the socket is open, so the caller knows nothing before that moment can be missed. Runs until SIGTERM.
"""

from __future__ import annotations

import json
import signal
import socket
import sys
from types import FrameType

ETH_P_ALL = 0x0003
DIRECTION = {0: "in", 1: "in-broadcast", 2: "in-multicast", 3: "in-other-host", 4: "out"}


def _stop(_signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)


def main() -> None:
    """Capture until SIGTERM."""
    signal.signal(signal.SIGTERM, _stop)
    capture = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    print("ready", flush=True)
    with open(sys.argv[1], "a", encoding="utf-8") as out:
        while True:
            frame, (interface, protocol, kind, _hatype, _address) = capture.recvfrom(65535)
            if interface == "lo":
                continue
            record = {
                "interface": interface,
                "direction": DIRECTION.get(kind, str(kind)),
                "ethertype": hex(protocol),
                "length": len(frame),
                "head": frame[:80].hex(),
            }
            out.write(json.dumps(record) + "\n")
            out.flush()


if __name__ == "__main__":
    main()
