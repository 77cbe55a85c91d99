#!/usr/bin/env python3
"""Write the seed corpus (fuzz/corpus/<target>/): the attacks from the
attack suite (crates/faas-tester/tests/attacks.rs) and valid inputs, so the
fuzzers start from both sides of every check. Run from fuzz/."""
import io
import json
import os
import struct
import tarfile
import zipfile


def write(target, name, data):
    d = os.path.join("corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def tar_gz(entries):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, kind, data, link in entries:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.size = len(data)
            if link:
                info.linkname = link
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def zip_of(entries):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries:
            z.writestr(name, data)
    return buf.getvalue()


F, D, L = tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE
main = b"def handler(e, c):\n    return 'x'\n"
write("archive", "link_chain.tar.gz", tar_gz([
    ("a/b/c/", D, b"", None),
    ("a/b/c/up", L, b"", "../../.."),
    ("a/b/c/out", L, b"", "up/" + "../" * 12 + "etc"),
    ("a/b/c/out/cron.d/evil", F, b"x", None),
    ("main.py", F, main, None),
]))
write("archive", "link_out.tar.gz", tar_gz([("out", L, b"", "../../../tmp"), ("out/x", F, b"x", None)]))
write("archive", "in_tree_links.tar.gz", tar_gz([
    ("lib/real.py", F, main, None), ("main.py", L, b"", "lib/real.py"), ("libdir", L, b"", "lib"),
]))
write("archive", "dotdot.tar.gz", tar_gz([("../../evil", F, b"x", None)]))
write("archive", "many_links.tar.gz", tar_gz([("f", F, b"x", None)] + [(f"l{i}", L, b"", "f") for i in range(300)]))
write("archive", "plain.zip", zip_of([("main.py", main), ("pkg/__init__.py", b"")]))
write("archive", "zeros.zip", zip_of([("main.py", b"\0" * (4 << 20))]))
write("archive", "slip.zip", zip_of([("../../evil.py", b"x")]))


def frame(header, body=b""):
    h = json.dumps(header).encode()
    rest = bytes([2]) + struct.pack(">I", len(h)) + h + body
    return rest  # Frame::decode takes what follows the length prefix


write("frame", "invoke", frame({"type": "invoke", "request_id": "r1", "timeout_ms": 1000}, b'{"x":1}'))
write("frame", "result", frame({"type": "result", "request_id": "r1", "error": None, "failure": None,
                                 "logs": "hi", "content_type": "application/json", "exit_code": None,
                                 "duration_us": 5}, b"[]"))
write("frame", "ping", frame({"type": "ping"}))
write("frame", "bad_header_len", bytes([2]) + struct.pack(">I", 1 << 30) + b"{}")
write("frame", "wrong_version", bytes([9]) + struct.pack(">I", 2) + b"{}")

good = {"name": "hello", "language": "python", "handler": "main.handler",
        "files": {"main.py": main.decode()}, "dependencies": ["numpy>=1.26,<2"],
        "env": {"GREETING": "hi"}, "memory_mb": 128, "timeout_sec": 10}
write("definition", "good.json", json.dumps(good))
write("definition", "shell.json", json.dumps({"name": "up", "language": "shell", "handler": "bin/up.sh",
                                              "code_base64": "ZWNobyBoaQo="}))
write("definition", "hostile.json", json.dumps({"name": "../../etc", "language": "native",
                                                "handler": "/bin/sh", "env": {"1BAD": "a\u0000b"},
                                                "dependencies": ["x @ http://127.0.0.1/x.tgz"],
                                                "memory_mb": 4294967295}))

write("dependency", "specs.txt", "\n".join([
    "requests", "numpy>=1.26,<2", "uvicorn[standard]==0.30.*", "tomli ; python_version < \"3.11\"",
    "pkg @ https://evil.example/pkg.tar.gz", "git+https://github.com/x/y", "/etc/passwd", "./local",
    "--index-url=http://evil", "-e .", "x.whl", "left-pad@1.3.0", "@types/node@20.x", "file:../x",
    "github:user/repo", "user/repo", "pkg@npm:other@1", "x.tgz",
]))


def word(n):
    return n.to_bytes(32, "big")


def enc_bytes(b):
    return word(len(b)) + b + b"\0" * ((32 - len(b) % 32) % 32)


def params(*dynamic):
    tails = [enc_bytes(d) for d in dynamic]
    head, offset = b"", 32 * len(dynamic)
    for t in tails:
        head += word(offset)
        offset += len(t)
    return head + b"".join(tails)


definition = json.dumps(good).encode()
write("abi", "deploy_params", params(definition))
write("abi", "deploy_tuple", word(32) + params(definition))
write("abi", "invoke_params", params(b"hello", b'{"x": 1}'))
write("abi", "invoke_tuple", word(32) + params(b"hello", b'{"x": 1}'))
write("abi", "huge_length", word(32) + word(1 << 60))

write("manifest", "requirements.txt",
      "# data\nnumpy==1.26.4  # pinned\npandas>=2,\\\n<3\njinja2 ; python_version >= \"3.8\"\n")
write("manifest", "requirements_options.txt", "-r other.txt\n--index-url https://evil/simple\n-e .\n")
write("manifest", "package.json", json.dumps({
    "name": "x", "dependencies": {"lodash": "^4.17.21", "@img/sharp": "1.0.0"},
    "optionalDependencies": {"left-pad": ""}, "devDependencies": {"jest": "29"}}))
write("manifest", "package_git.json", json.dumps({"dependencies": {"x": "git+https://github.com/a/b"}}))
write("manifest", "package-lock.json", json.dumps({
    "lockfileVersion": 3, "packages": {
        "": {"dependencies": {"a": "1"}},
        "node_modules/a": {"version": "1.0.0",
                           "resolved": "https://registry.npmjs.org/a/-/a-1.0.0.tgz",
                           "integrity": "sha512-x"},
        "node_modules/a/node_modules/b": {"version": "1.0.0", "inBundle": True}}}))
write("manifest", "lock_evil.json", json.dumps({
    "lockfileVersion": 3, "packages": {
        "node_modules/a": {"resolved": "https://registry.npmjs.org.evil/a.tgz", "integrity": "x"},
        "../../etc": {"resolved": "https://registry.npmjs.org/a", "integrity": "x"}}}))
write("manifest", "lock_root_resolved.json", json.dumps({
    "lockfileVersion": 3, "packages": {"": {"resolved": "ht", "integrity": "sh"}}}))
