"""A proxyless gRPC xDS client for the tests, driven over stdin.

Usage: client.py BOOTSTRAP TARGET
Commands, one per line; each answers with one JSON line:
  call N   -> {"counts": {name: n, ...}, "errors": n, "last_error": "..."}
  csds     -> {"resources": [{"type": ..., "name": ..., "status": ..., "error": ...}]}
             (the client's own view, from CSDS on a loopback port of its test host)
  eds      -> {"assignments": {cluster: ["address:port", ...]}}  (the endpoints it holds,
             from the same CSDS view)
The node metadata (REVISION, NAMESPACE, NETWORK, ...) comes from the bootstrap file.
"""
import json
import os
import sys

import grpc


def start_csds():
    """Serves CSDS for this process on loopback and returns a stub to query it."""
    from concurrent import futures

    import grpc_csds
    from envoy.service.status.v3 import csds_pb2_grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    grpc_csds.add_csds_servicer(server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    stub = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
    return server, stub


def client_status(csds):
    from envoy.service.status.v3 import csds_pb2

    response = csds[1].FetchClientStatus(csds_pb2.ClientStatusRequest(), timeout=5)
    out = []
    for config in response.config:
        for c in config.generic_xds_configs:
            out.append({
                "type": c.type_url,
                "name": c.name,
                "status": c.DESCRIPTOR.fields_by_name["client_status"].enum_type.values_by_number[c.client_status].name,
                "error": c.error_state.details,
            })
    return out


def assignments(csds):
    """Every load assignment the client holds: cluster name -> its endpoints' addresses."""
    from envoy.config.endpoint.v3 import endpoint_pb2
    from envoy.service.status.v3 import csds_pb2

    response = csds[1].FetchClientStatus(csds_pb2.ClientStatusRequest(), timeout=5)
    out = {}
    for config in response.config:
        for c in config.generic_xds_configs:
            if not c.type_url.endswith("ClusterLoadAssignment") or not c.HasField("xds_config"):
                continue
            cla = endpoint_pb2.ClusterLoadAssignment()
            c.xds_config.Unpack(cla)
            out[c.name] = [
                f"{e.endpoint.address.socket_address.address}:{e.endpoint.address.socket_address.port_value}"
                for locality in cla.endpoints
                for e in locality.lb_endpoints
            ]
    return out


def main():
    os.environ["GRPC_XDS_BOOTSTRAP"] = sys.argv[1]
    target = sys.argv[2]
    channel = grpc.insecure_channel(target)
    who = channel.unary_unary("/echo.Echo/Who")
    csds = None
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
        elif words[0] == "csds":
            if csds is None:
                csds = start_csds()
            print(json.dumps({"resources": client_status(csds)}), flush=True)
        elif words[0] == "eds":
            if csds is None:
                csds = start_csds()
            print(json.dumps({"assignments": assignments(csds)}), flush=True)


if __name__ == "__main__":
    main()
