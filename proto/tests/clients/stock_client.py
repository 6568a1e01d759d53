#!/usr/bin/env python3
"""A stock grpcio client against one banger socket, with default options.

What another tool would do: `grpc.insecure_channel("unix:" + path)` and nothing
else. Lists the services by reflection (v1 and v1alpha), checks
grpc.health.v1, then calls every unary and server-streaming method of the
socket's own API with an empty request, which must come back as a real gRPC
answer (OK or a precise error code) — never UNIMPLEMENTED, INTERNAL or
UNKNOWN, which is what a transport-level refusal looks like.

With `--error METHOD FIELD=VALUE CODE REASON`, also calls METHOD with that one
string field set and checks the error's code and its `google.rpc.ErrorInfo`
reason (read with grpcio-status, as a client that branches on it would).

Usage: stock_client.py SOCKET EXPECTED_SERVICE [--skip METHOD]... [--error M F=V CODE REASON]...
Prints one JSON summary line last; exits non-zero on any failure.
"""
import json
import sys

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

# Codes that prove the call reached the service and was judged by it.
ANSWERED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
}


def reflect(channel, version, requests):
    """One ServerReflectionInfo stream; v1 and v1alpha share the wire format."""
    call = channel.stream_stream(
        f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    return list(call(iter(requests), timeout=10))


def list_services(channel, version):
    [resp] = reflect(channel, version, [reflection_pb2.ServerReflectionRequest(list_services="")])
    return sorted(s.name for s in resp.list_services_response.service)


def load_pool(channel, service):
    """Every file the service needs, fetched by reflection, in one pool."""
    files = {}
    pending = [reflection_pb2.ServerReflectionRequest(file_containing_symbol=service)]
    while pending:
        for resp in reflect(channel, "v1", pending):
            if resp.HasField("error_response"):
                raise RuntimeError(f"reflection error: {resp.error_response}")
            for raw in resp.file_descriptor_response.file_descriptor_proto:
                fd = descriptor_pb2.FileDescriptorProto.FromString(raw)
                files.setdefault(fd.name, fd)
        pending = [
            reflection_pb2.ServerReflectionRequest(file_by_filename=dep)
            for fd in list(files.values())
            for dep in fd.dependency
            if dep not in files
        ]
    pool = descriptor_pool.DescriptorPool()
    added = set()

    def add(name):
        if name in added:
            return
        for dep in files[name].dependency:
            add(dep)
        pool.Add(files[name])
        added.add(name)

    for name in files:
        add(name)
    return pool


def main():
    args = sys.argv[1:]
    socket, expected = args[0], args[1]
    skip = {args[i + 1] for i, a in enumerate(args) if a == "--skip"}
    errors = [args[i + 1 : i + 5] for i, a in enumerate(args) if a == "--error"]
    failures = []
    channel = grpc.insecure_channel("unix:" + socket)

    want = sorted(
        [
            expected,
            "banger.runtime.v1.Info",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ]
    )
    for version in ("v1", "v1alpha"):
        got = list_services(channel, version)
        if got != want:
            failures.append(f"reflection {version} lists {got}, want {want}")

    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", expected):
        status = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10).status
        if status != health_pb2.HealthCheckResponse.SERVING:
            failures.append(f"health of {name!r} is {status}")

    pool = load_pool(channel, expected)
    service = pool.FindServiceByName(expected)
    called = {}
    for method in service.methods:
        path = f"/{expected}/{method.name}"
        if method.client_streaming or method.name in skip:
            continue
        request_cls = message_factory.GetMessageClass(method.input_type)
        response_cls = message_factory.GetMessageClass(method.output_type)
        kind = channel.unary_stream if method.server_streaming else channel.unary_unary
        call = kind(
            path,
            request_serializer=request_cls.SerializeToString,
            response_deserializer=response_cls.FromString,
        )
        try:
            result = call(request_cls(), timeout=20)
            if method.server_streaming:
                for _ in result:
                    pass
            code = grpc.StatusCode.OK
        except grpc.RpcError as e:
            code = e.code()
            if code not in ANSWERED:
                failures.append(f"{path}: {code.name}: {e.details()}")
        called[method.name] = code.name
        print(f"{path} -> {code.name}", file=sys.stderr)

    for method_name, assignment, want_code, want_reason in errors:
        method = service.methods_by_name[method_name]
        field, value = assignment.split("=", 1)
        request = message_factory.GetMessageClass(method.input_type)(**{field: value})
        call = channel.unary_unary(
            f"/{expected}/{method_name}",
            request_serializer=type(request).SerializeToString,
            response_deserializer=message_factory.GetMessageClass(method.output_type).FromString,
        )
        try:
            call(request, timeout=10)
            failures.append(f"{method_name}({assignment}) succeeded, want {want_code}")
            continue
        except grpc.RpcError as e:
            status = rpc_status.from_call(e)
            reasons = []
            for detail in status.details if status else []:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    reasons.append((info.reason, info.domain))
            if e.code().name != want_code or (want_reason, "banger") not in reasons:
                failures.append(
                    f"{method_name}({assignment}): {e.code().name} {reasons}, want {want_code} {want_reason}"
                )
            called[f"{method_name}:error"] = want_reason

    info_path = "/banger.runtime.v1.Info/GetInfo"
    info_pool = load_pool(channel, "banger.runtime.v1.Info")
    info_method = info_pool.FindServiceByName("banger.runtime.v1.Info").methods_by_name["GetInfo"]
    info_resp = message_factory.GetMessageClass(info_method.output_type)
    info = channel.unary_unary(
        info_path,
        request_serializer=message_factory.GetMessageClass(info_method.input_type).SerializeToString,
        response_deserializer=info_resp.FromString,
    )(message_factory.GetMessageClass(info_method.input_type)(), timeout=10)
    if expected not in info.services:
        failures.append(f"Info lists {list(info.services)}, not {expected}")

    print(json.dumps({"service": expected, "called": called, "failures": failures}))
    sys.exit(1 if failures or not called else 0)


if __name__ == "__main__":
    main()
