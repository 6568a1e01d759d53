#!/usr/bin/env python3
"""Hostile HTTP/2 and gRPC input against one banger socket.

Each case is sent on its own connection; after each, a stock grpcio health
check on a fresh channel must still answer SERVING, and at the end the
server must be the same process (banger.runtime.v1.Info pid) — the service
stays healthy for everyone else. A case passes when the server answers,
resets the stream, sends GOAWAY or closes the connection; a hang fails it.

Usage: hostile_client.py SOCKET SERVICE
Prints one JSON summary line last; exits non-zero on any failure.
"""
import json
import socket
import struct
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def hpack_int(value, prefix_bits, flags=0):
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([flags | value])
    out = [flags | limit]
    value -= limit
    while value >= 128:
        out.append(value % 128 | 0x80)
        value //= 128
    out.append(value)
    return bytes(out)


def literal(name, value):
    """HPACK literal without indexing, new name, no Huffman."""
    return b"\x00" + hpack_int(len(name), 7) + name + hpack_int(len(value), 7) + value


def frame(kind, flags, stream, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def headers(fields, flags=0x5):
    return frame(0x1, flags, 1, b"".join(literal(n, v) for n, v in fields))


def request(authority=b"localhost", path=b"/grpc.health.v1.Health/Check", drop=()):
    fields = [
        (b":method", b"POST"), (b":scheme", b"http"), (b":path", path),
        (b":authority", authority), (b"content-type", b"application/grpc"), (b"te", b"trailers"),
    ]
    return [(n, v) for n, v in fields if n not in drop]


def outcome(sock_path, data, wait=20.0):
    """Sends raw bytes; returns how the server ended it."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(wait)
    s.connect(sock_path)
    try:
        if data:
            try:
                s.sendall(data)
            except (BrokenPipeError, ConnectionResetError):
                return "closed"
        buf = b""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                return "hang"
            except ConnectionResetError:
                return "closed"
            if not chunk:
                return "closed"
            buf += chunk
            while len(buf) >= 9:
                length = int.from_bytes(buf[:3], "big")
                kind, stream = buf[3], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
                if len(buf) < 9 + length:
                    break
                buf = buf[9 + length:]
                if kind == 0x3 and stream == 1:
                    return "rst_stream"
                if kind == 0x7:
                    return "goaway"
                if kind == 0x1 and stream == 1:
                    return "answered"
        return "hang"
    finally:
        s.close()


def healthy(sock_path):
    with grpc.insecure_channel("unix:" + sock_path) as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
        return resp.status == health_pb2.HealthCheckResponse.SERVING


def server_pid(sock_path):
    # banger.runtime.v1.Info/GetInfo: field 3 (pid) of ServiceInfo, read by hand.
    with grpc.insecure_channel("unix:" + sock_path) as ch:
        raw = ch.unary_unary("/banger.runtime.v1.Info/GetInfo")(b"", timeout=10)
    i = 0
    while i < len(raw):
        key = raw[i]; i += 1
        field, wire = key >> 3, key & 7
        if wire == 0:
            val = shift = 0
            while True:
                b = raw[i]; i += 1
                val |= (b & 0x7F) << shift; shift += 7
                if not b & 0x80:
                    break
            if field == 3:
                return val
        elif wire == 2:
            n = shift = 0
            while True:
                b = raw[i]; i += 1
                n |= (b & 0x7F) << shift; shift += 7
                if not b & 0x80:
                    break
            i += n
        else:
            raise ValueError("unexpected wire type")
    return None


def main():
    sock_path, service = sys.argv[1], sys.argv[2]
    settings = frame(0x4, 0, 0, b"")
    failures, results = [], {}
    pid = server_pid(sock_path)

    raw_cases = {
        "malformed_authority": PREFACE + settings + headers(request(authority=b"not an\x01authority/")),
        "missing_path": PREFACE + settings + headers(request(drop=(b":path",))),
        "huge_path": PREFACE + settings + headers(request(path=b"/" + b"a" * 300_000)),
        "path_over_h2_limit": PREFACE + settings + headers(request(path=b"/" + b"a" * 60_000)),
        "undecodable_hpack": PREFACE + settings + frame(0x1, 0x5, 1, b"\xff\xff\xff\xff"),
        "garbage_not_http2": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        "silent_connection": b"",
    }
    for name, data in raw_cases.items():
        got = outcome(sock_path, data)
        results[name] = got
        if got == "hang":
            failures.append(f"{name}: the server neither answered nor closed")
        if not healthy(sock_path):
            failures.append(f"{name}: health check failed afterwards")

    with grpc.insecure_channel("unix:" + sock_path) as ch:
        for name, path in {
            "unknown_service": "/banger.nope.v1.Nope/Nothing",
            "unknown_method": f"/{service}/NoSuchMethod",
        }.items():
            try:
                ch.unary_unary(path)(b"", timeout=10)
                failures.append(f"{name}: succeeded")
            except grpc.RpcError as e:
                results[name] = e.code().name
                if e.code() != grpc.StatusCode.UNIMPLEMENTED:
                    failures.append(f"{name}: {e.code().name}, want UNIMPLEMENTED")
        # A 5 MiB message: field 1 (a string in every banger request used here).
        big = b"\x0a" + bytes(hpack_varint(5 << 20)) + b"a" * (5 << 20)
        try:
            ch.unary_unary("/grpc.health.v1.Health/Check")(big, timeout=20)
            failures.append("oversized_message: accepted")
        except grpc.RpcError as e:
            results["oversized_message"] = e.code().name
            # tonic answers OUT_OF_RANGE for a message over its decode limit.
            if e.code() not in (grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.RESOURCE_EXHAUSTED):
                failures.append(f"oversized_message: {e.code().name}, want OUT_OF_RANGE")
        # A stream abandoned mid-way: open reflection, send one request, drop it.
        call = ch.stream_stream("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
        responses = call(iter([b"\x3a\x00"]), timeout=10)  # list_services = ""
        next(responses)
        responses.cancel()
        results["abandoned_stream"] = "cancelled"
    if not healthy(sock_path):
        failures.append("health check failed after the gRPC cases")
    if server_pid(sock_path) != pid:
        failures.append("the server process changed: it died and was restarted")
    print(json.dumps({"service": service, "results": results, "failures": failures}))
    sys.exit(1 if failures else 0)


def hpack_varint(n):
    """Protobuf varint."""
    out = []
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return out


if __name__ == "__main__":
    main()
