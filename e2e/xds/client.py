"""A proxyless gRPC xDS client for the tests, driven over stdin.

Usage: client.py BOOTSTRAP TARGET
Commands, one per line; each answers with one JSON line:
  call N   -> {"counts": {name: n, ...}, "errors": n, "last_error": "..."}
"""
import json
import os
import sys

import grpc


def main():
    os.environ["GRPC_XDS_BOOTSTRAP"] = sys.argv[1]
    target = sys.argv[2]
    channel = grpc.insecure_channel(target)
    who = channel.unary_unary("/echo.Echo/Who")
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "call":
            counts, errors, last = {}, 0, ""
            for _ in range(int(words[1])):
                try:
                    name = who(b"", timeout=5).decode()
                    counts[name] = counts.get(name, 0) + 1
                except grpc.RpcError as e:
                    errors += 1
                    last = f"{e.code()}: {e.details()}"
            print(json.dumps({"counts": counts, "errors": errors, "last_error": last}), flush=True)


if __name__ == "__main__":
    main()
