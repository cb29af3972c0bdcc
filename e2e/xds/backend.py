"""A gRPC backend for the xDS tests: answers /echo.Echo/Who with its name.

Usage: backend.py ADDRESS:PORT NAME   (prints "ready" once serving; runs until killed)
"""
import sys
from concurrent import futures

import grpc


def main():
    address, name = sys.argv[1], sys.argv[2].encode()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.method_handlers_generic_handler(
        "echo.Echo", {"Who": grpc.unary_unary_rpc_method_handler(lambda request, context: name)}
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(address)
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
