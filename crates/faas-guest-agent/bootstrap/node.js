// FaaS-Blueprint Node.js bootstrap: loads the handler once, then serves invocations.
//
// Protocol with the guest agent: fd 3 carries requests in, fd 4 replies out, each a
// frame of [u32 header_len][u32 body_len][JSON header][body], big endian. stdout and
// stderr are the function's logs; after each reply an end marker is written to them
// so the agent can tell which log lines belong to which invocation.
'use strict';
const fs = require('fs');
const path = require('path');

function readExact(n) {
  const buf = Buffer.alloc(n);
  let off = 0;
  while (off < n) {
    let got;
    try {
      got = fs.readSync(3, buf, off, n - off, null);
    } catch (e) {
      if (e.code === 'EAGAIN' || e.code === 'EINTR') continue;
      throw e;
    }
    if (got === 0) process.exit(0);
    off += got;
  }
  return buf;
}

function recv() {
  const lens = readExact(8);
  const hlen = lens.readUInt32BE(0);
  const blen = lens.readUInt32BE(4);
  const header = JSON.parse(readExact(hlen).toString('utf8'));
  return [header, blen ? readExact(blen) : Buffer.alloc(0)];
}

function send(header, body = Buffer.alloc(0)) {
  const h = Buffer.from(JSON.stringify(header), 'utf8');
  const lens = Buffer.alloc(8);
  lens.writeUInt32BE(h.length, 0);
  lens.writeUInt32BE(body.length, 4);
  const frame = Buffer.concat([lens, h, body]);
  let off = 0;
  while (off < frame.length) off += fs.writeSync(4, frame, off, frame.length - off);
}

// process.stdout/stderr writes to pipes are asynchronous: wait until they drained
// before the marker goes out, or the marker could overtake a log line.
async function endLogs(tag) {
  await new Promise((r) => process.stdout.write('', r));
  await new Promise((r) => process.stderr.write('', r));
  fs.writeSync(2, `\x1eFAAS_END:${tag}\x1e`);
}

function load(spec) {
  const dot = spec.handler.lastIndexOf('.');
  if (dot <= 0) throw new Error(`handler ${JSON.stringify(spec.handler)} must look like module.function`);
  const moduleName = spec.handler.slice(0, dot);
  const funcName = spec.handler.slice(dot + 1);
  const mod = require(path.join(spec.code_dir, moduleName));
  const func = mod[funcName];
  if (typeof func !== 'function') {
    throw new Error(`module ${JSON.stringify(moduleName)} has no exported function ${JSON.stringify(funcName)}`);
  }
  return func;
}

function decodeEvent(body) {
  if (body.length === 0) return null;
  try {
    return JSON.parse(body.toString('utf8'));
  } catch (_) {
    return body;
  }
}

function encodeResult(value) {
  if (Buffer.isBuffer(value) || value instanceof Uint8Array) {
    return [Buffer.from(value), 'application/octet-stream'];
  }
  const text = JSON.stringify(value === undefined ? null : value);
  return [Buffer.from(text, 'utf8'), 'application/json'];
}

// Errors travel in the reply header: the agent refuses headers over 1 MiB and
// keeps 4 KiB of any error, so cut them here, where the start is still known.
const MAX_ERROR = 4096;

function describe(err) {
  let text = err instanceof Error ? `${err.name}: ${err.message}` : `Error: ${String(err)}`;
  if (text.length > MAX_ERROR) {
    text = `${text.slice(0, MAX_ERROR)}... [${text.length - MAX_ERROR} characters cut]`;
  }
  return text;
}

function context(spec, requestId, deadlineMs) {
  return {
    requestId,
    awsRequestId: requestId,
    functionName: spec.function_name,
    functionVersion: String(spec.function_version),
    memoryLimitInMB: spec.memory_mb,
    deadlineMs,
    getRemainingTimeInMillis: () => Math.max(0, deadlineMs - Date.now()),
  };
}

async function main() {
  // Loaded and waiting: a pre-started runtime is parked only after this.
  send({ type: 'started' });
  const [init] = recv();
  const spec = init.spec;
  // A pre-started runtime learns its function only now: take the function's
  // environment and directory (the same values a fresh one started with, so
  // this changes nothing there), and read NODE_PATH again.
  for (const key of Object.keys(process.env)) {
    if (!Object.prototype.hasOwnProperty.call(init.env, key)) delete process.env[key];
  }
  Object.assign(process.env, init.env);
  process.chdir(init.cwd);
  require('module').Module._initPaths();
  let func;
  try {
    func = load(spec);
  } catch (err) {
    console.error(err && err.stack ? err.stack : String(err));
    await endLogs('init');
    send({ type: 'init_error', error: describe(err) });
    return;
  }
  await endLogs('init');
  send({ type: 'ready' });
  for (;;) {
    const [header, body] = recv();
    const rid = header.request_id;
    const reply = { type: 'result', error: null, content_type: 'application/octet-stream' };
    let out = Buffer.alloc(0);
    try {
      const value = await func(decodeEvent(body), context(spec, rid, header.deadline_ms));
      [out, reply.content_type] = encodeResult(value);
    } catch (err) {
      console.error(err && err.stack ? err.stack : String(err));
      reply.error = describe(err);
      out = Buffer.alloc(0);
    }
    await endLogs(rid);
    send(reply, out);
  }
}

main().catch((err) => {
  console.error(err && err.stack ? err.stack : String(err));
  process.exit(1);
});
