"""Calls Identity/GetPluginInfo and Identity/Probe on a CSI socket with Python's grpcio, as an
operator's script would: `grpc.insecure_channel("unix:<path>")` with every default, so grpc
C-core picks the `:authority` it sends (the percent-encoded socket path since grpcio 1.57).

Usage: grpcio_identity.py <socket path>. Prints one JSON object; on an RPC error prints the
code and details to stderr and exits 1. Messages are encoded by hand (both requests are
empty), so nothing but grpcio is needed.
"""

import json
import sys

import grpc


def varint(buf, pos):
    value, shift = 0, 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return value, pos


def fields(buf):
    """The top-level fields of a protobuf message: number -> list of values (varints as
    int, length-delimited fields as bytes)."""
    out, pos = {}, 0
    while pos < len(buf):
        key, pos = varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = varint(buf, pos)
        elif wire == 2:
            size, pos = varint(buf, pos)
            value, pos = bytes(buf[pos:pos + size]), pos + size
        else:
            raise ValueError(f"unexpected wire type {wire} in field {number}")
        out.setdefault(number, []).append(value)
    return out


def main():
    path = sys.argv[1]
    with grpc.insecure_channel("unix:" + path) as channel:
        def call(method):
            rpc = channel.unary_unary(f"/csi.v1.Identity/{method}")
            return rpc(b"", timeout=20)

        try:
            info = fields(call("GetPluginInfo"))
            probe = fields(call("Probe"))
        except grpc.RpcError as e:
            print(f"{e.code()}: {e.details()}", file=sys.stderr)
            sys.exit(1)
    ready = None
    if 1 in probe:  # google.protobuf.BoolValue ready = 1
        ready = bool(fields(probe[1][0]).get(1, [0])[0])
    print(json.dumps({
        "grpcio": grpc.__version__,
        "name": info.get(1, [b""])[0].decode(),
        "vendor_version": info.get(2, [b""])[0].decode(),
        "ready": ready,
    }))


if __name__ == "__main__":
    main()
