#!/usr/bin/env python3
"""Create a VM through banger's gRPC API, run a command in it, delete it.

A starting point for another tool driving banger from Python with the stock
`grpcio` client and default channel options — nothing banger-specific on the
client side. Stubs are generated from banger's own .proto files:

    pip install grpcio grpcio-tools
    python create_exec_delete.py --socket /run/banger/vmm.sock \
        --image debian-bookworm --name pybox -- uname -a

Conventions (README, "The gRPC API for other tools"):
- dial `unix:` + the socket path; the server accepts whatever `:authority`
  the client sends for it (grpcio sends the path; that is fine);
- long operations (`CreateVm`) stream events carrying one progress message
  (`update`, a `banger.runtime.v1.Progress`), then one final result (`done`);
  closing the stream early cancels a create only this caller wanted;
- errors are gRPC status codes (INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS,
  FAILED_PRECONDITION, UNAVAILABLE…) with a message a person can act on.
"""
import argparse
import os
import subprocess
import sys
import tempfile

import grpc

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_PROTO_ROOT = os.path.join(HERE, "..", "..", "proto")


def load_stubs(proto_root):
    """Generates the Python stubs for vmm and agent into a temp dir, imports them."""
    out = tempfile.mkdtemp(prefix="banger-stubs-")
    files = [
        "banger/vmm/v1/vmm.proto",
        "banger/agent/v1/agent.proto",
        "banger/runtime/v1/progress.proto",  # the progress message vmm.proto imports
    ]
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{proto_root}",
         f"--python_out={out}", f"--grpc_python_out={out}", *files],
        check=True,
    )
    sys.path.insert(0, out)
    from banger.vmm.v1 import vmm_pb2, vmm_pb2_grpc  # noqa: E402
    from banger.agent.v1 import agent_pb2  # noqa: E402
    return vmm_pb2, vmm_pb2_grpc, agent_pb2


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--socket", default="/run/banger/vmm.sock")
    p.add_argument("--proto-root", default=DEFAULT_PROTO_ROOT)
    p.add_argument("--image", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--timeout", type=int, default=300, help="readiness timeout, seconds")
    p.add_argument("command", nargs="+", help="command to run in the VM")
    args = p.parse_args()

    vmm_pb2, vmm_pb2_grpc, agent_pb2 = load_stubs(args.proto_root)
    channel = grpc.insecure_channel("unix:" + args.socket)
    vmm = vmm_pb2_grpc.VmmStub(channel)

    # 1. Create: a server stream of progress events, then the VM itself.
    vm = None
    request = vmm_pb2.CreateVmRequest(
        name=args.name, image=args.image, ready_timeout_seconds=args.timeout)
    for event in vmm.CreateVm(request):
        if event.HasField("done"):
            vm = event.done
        elif event.HasField("update"):  # banger.runtime.v1.Progress
            pr = event.update
            if pr.seconds:  # a phase ended
                print(f"[{pr.phase}] done in {pr.seconds:.2f}s", flush=True)
            elif pr.total:  # a phase moved on
                print(f"[{pr.phase}] {pr.done}/{pr.total} {pr.message}", flush=True)
            else:  # a phase started
                print(f"[{pr.phase}] {pr.message}", flush=True)
    if vm is None:
        sys.exit("CreateVm ended without a result")
    print(f"created {vm.name}: {vm.ip} ({vmm_pb2.VmState.Name(vm.state)})", flush=True)

    try:
        # 2. Exec through the in-guest agent: the first message names the VM
        #    and the command; output streams back; the last message is the exit.
        start = agent_pb2.ExecRequest(start=agent_pb2.ExecStart(argv=args.command))
        code = None
        for out in vmm.Exec(iter([vmm_pb2.ExecRequest(vm=args.name, request=start)])):
            part = out.WhichOneof("part")
            if part == "stdout":
                sys.stdout.buffer.write(out.stdout)
            elif part == "stderr":
                sys.stderr.buffer.write(out.stderr)
            elif part == "exit":
                code = out.exit.code if out.exit.HasField("code") else 128 + out.exit.signal
        sys.stdout.flush()
        print(f"exit status {code}", flush=True)
    finally:
        # 3. Delete: stops the VM and releases everything it owned.
        vmm.DeleteVm(vmm_pb2.DeleteVmRequest(name=args.name, force=True))
        print(f"deleted {args.name}", flush=True)
    sys.exit(code if code is not None else 1)


if __name__ == "__main__":
    try:
        main()
    except grpc.RpcError as e:
        sys.exit(f"banger: {e.code().name}: {e.details()}")
