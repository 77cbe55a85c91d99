"""FaaS-Blueprint Python bootstrap: loads the handler once, then serves invocations.

Protocol with the guest agent: fd 3 carries requests in, fd 4 replies out, each a
frame of [u32 header_len][u32 body_len][JSON header][body], big endian. stdout and
stderr are the function's logs; after each reply an end marker is written to them
so the agent can tell which log lines belong to which invocation.
"""
import asyncio
import importlib
import inspect
import json
import os
import struct
import sys
import time
import traceback

PROTO_IN = os.fdopen(3, "rb", buffering=0)
PROTO_OUT = os.fdopen(4, "wb", buffering=0)


def read_exact(n):
    chunks = []
    while n:
        chunk = PROTO_IN.read(n)
        if not chunk:
            sys.exit(0)
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def recv():
    hlen, blen = struct.unpack(">II", read_exact(8))
    header = json.loads(read_exact(hlen))
    return header, read_exact(blen) if blen else b""


def send(header, body=b""):
    h = json.dumps(header).encode()
    PROTO_OUT.write(struct.pack(">II", len(h), len(body)) + h + body)


def end_logs(tag):
    sys.stdout.flush()
    sys.stderr.flush()
    os.write(2, b"\x1eFAAS_END:" + tag.encode() + b"\x1e")


class Context:
    """What the handler learns about its invocation (Lambda-compatible names)."""

    def __init__(self, spec, request_id, deadline_ms):
        self.request_id = request_id
        self.aws_request_id = request_id
        self.function_name = spec["function_name"]
        self.function_version = str(spec["function_version"])
        self.memory_limit_in_mb = spec["memory_mb"]
        self.deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self):
        return max(0, self.deadline_ms - int(time.time() * 1000))

    def __repr__(self):
        return f"Context(request_id={self.request_id!r}, function_name={self.function_name!r})"


def load(spec):
    module_name, _, func_name = spec["handler"].rpartition(".")
    if not module_name:
        raise ValueError(f"handler {spec['handler']!r} must look like module.function")
    sys.path.insert(0, spec["code_dir"])
    if spec.get("deps_dir"):
        sys.path.insert(1, spec["deps_dir"])
    module = importlib.import_module(module_name)
    func = getattr(module, func_name, None)
    if func is None or not callable(func):
        raise AttributeError(f"module {module_name!r} has no function {func_name!r}")
    try:
        params = inspect.signature(func).parameters.values()
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        varargs = any(p.kind == p.VAR_POSITIONAL for p in params)
        takes_context = varargs or len(positional) >= 2
    except (TypeError, ValueError):
        takes_context = True
    return func, takes_context


def decode_event(body):
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return body


def encode_result(value):
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value), "application/octet-stream"
    return json.dumps(value).encode(), "application/json"


# Errors travel in the reply header: the agent refuses headers over 1 MiB and
# keeps 4 KiB of any error, so cut them here, where the start is still known.
MAX_ERROR = 4096


def describe(exc):
    text = f"{type(exc).__name__}: {exc}"
    if len(text) > MAX_ERROR:
        text = text[:MAX_ERROR] + f"... [{len(text) - MAX_ERROR} characters cut]"
    return text


def main():
    # Loaded and waiting: a pre-started interpreter is parked only after this.
    send({"type": "started"})
    header, _ = recv()
    spec = header["spec"]
    # A pre-started interpreter learns its function only now: take the
    # function's environment and directory (the same values a fresh one
    # started with, so this changes nothing there).
    os.environ.clear()
    os.environ.update(header["env"])
    os.chdir(header["cwd"])
    try:
        func, takes_context = load(spec)
    except BaseException as exc:  # a handler's import may raise anything, even SystemExit
        traceback.print_exc()
        end_logs("init")
        send({"type": "init_error", "error": describe(exc)})
        return
    end_logs("init")
    send({"type": "ready"})
    while True:
        header, body = recv()
        rid = header["request_id"]
        reply = {"type": "result", "error": None, "content_type": "application/octet-stream"}
        out = b""
        try:
            event = decode_event(body)
            args = (event, Context(spec, rid, header["deadline_ms"])) if takes_context else (event,)
            value = func(*args)
            if inspect.isawaitable(value):
                value = asyncio.run(value) if inspect.iscoroutine(value) else asyncio.run(_await(value))
            try:
                out, reply["content_type"] = encode_result(value)
            except (TypeError, ValueError) as exc:
                raise TypeError(f"handler returned a value that is not JSON serializable: {exc}")
        except Exception as exc:
            traceback.print_exc()
            reply["error"] = describe(exc)
            out = b""
        end_logs(rid)
        send(reply, out)


async def _await(value):
    return await value


if __name__ == "__main__":
    main()
