//! Language runtimes inside the sandbox.
//!
//! Python and Node.js run a bootstrap process that loads the handler once and
//! then serves invocations in a loop; the agent talks to it over two inherited
//! pipes (fd 3: agent -> bootstrap, fd 4: bootstrap -> agent) with frames of
//! `[u32 header_len][u32 body_len][JSON header][body]`. The bootstrap's stdout and
//! stderr share one pipe that the agent reads as the function's logs; after each
//! reply the bootstrap writes an end marker to it, so the agent knows which log
//! lines belong to which invocation. Shell scripts, native executables and
//! `Exec` run one process per call.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use faas_common::protocol::{FailureKind, Frame, InitSpec, Message};
use faas_common::Language;
use serde_json::json;

use faas_common::contract::{BOOTSTRAP_DIR, MAX_ERROR_BYTES, MAX_LOG_BYTES, MAX_RESPONSE_BYTES};

/// Most log bytes kept per invocation; older bytes are dropped.
const LOG_CAP: usize = MAX_LOG_BYTES;
/// How long to wait for a bootstrap's end-of-logs marker after its reply.
const MARKER_WAIT: Duration = Duration::from_secs(2);
const PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// What an invocation produced.
pub struct Outcome {
    pub error: Option<String>,
    pub failure: Option<FailureKind>,
    pub logs: String,
    pub content_type: String,
    pub exit_code: Option<i32>,
    /// The signal that ended the runtime, if one did.
    pub signal: Option<i32>,
    pub duration_us: u64,
    pub body: Vec<u8>,
}

impl Outcome {
    pub fn failed(failure: FailureKind, error: String) -> Self {
        Outcome {
            error: Some(error),
            failure: Some(failure),
            logs: String::new(),
            content_type: "text/plain".into(),
            exit_code: None,
            signal: None,
            duration_us: 0,
            body: Vec::new(),
        }
    }

    pub fn into_frame(self, request_id: String) -> Frame {
        Frame::with_body(
            Message::Result {
                request_id,
                error: self
                    .error
                    .map(|e| faas_common::contract::truncate(&e, MAX_ERROR_BYTES)),
                failure: self.failure,
                logs: self.logs,
                content_type: self.content_type,
                exit_code: self.exit_code,
                signal: self.signal,
                duration_us: self.duration_us,
            },
            self.body,
        )
    }
}

/// A loaded function, or a runtime started ahead for one.
pub enum Runtime {
    /// Python or Node.js bootstrap process.
    Bootstrap(Bootstrap),
    /// Shell script or native executable: one process per invocation.
    Process(InitSpec),
    /// Started by `Prestart` with no function: the next `Init` loads one into
    /// it (a Python or Node.js bootstrap already running; nothing for shell
    /// and native, which start a process per call anyway).
    Spare {
        /// The runtime it is.
        language: Language,
        /// The interpreter, waiting for its `init`.
        bootstrap: Option<Bootstrap>,
    },
}

impl Runtime {
    /// Start `language`'s runtime with no function; returns the runtime (if
    /// usable) and the `Ready` reply.
    pub fn prestart(language: Language) -> (Option<Runtime>, Message) {
        let started = Instant::now();
        let bootstrap = match language {
            Language::Shell | Language::Native => Ok(None),
            Language::Python | Language::Node => {
                Bootstrap::launch(language, &bootstrap_env(language, None), "/").map(Some)
            }
        };
        let (runtime, error) = match bootstrap {
            Ok(bootstrap) => (
                Some(Runtime::Spare {
                    language,
                    bootstrap,
                }),
                None,
            ),
            Err(e) => (None, Some(e)),
        };
        let ready = Message::Ready {
            error,
            logs: String::new(),
            init_us: started.elapsed().as_micros() as u64,
        };
        (runtime, ready)
    }

    /// Load the function into `runtime`: into its spare interpreter when the
    /// instance was pre-started, else a new one. Returns the `Ready` reply;
    /// an instance that already has a function keeps it.
    pub fn start(runtime: &mut Option<Runtime>, spec: InitSpec) -> Message {
        let started = Instant::now();
        let ready = |error: Option<String>, logs: String| Message::Ready {
            error,
            logs,
            init_us: started.elapsed().as_micros() as u64,
        };
        let spare = match runtime.take() {
            None => None,
            // A shell spare serves a native executable too: neither has an
            // interpreter.
            Some(Runtime::Spare {
                language,
                bootstrap,
            }) if language.image() == spec.language.image() => bootstrap,
            Some(Runtime::Spare { language, .. }) => {
                let error = format!("instance was started for {language}, not {}", spec.language);
                return ready(Some(error), String::new());
            }
            Some(loaded) => {
                *runtime = Some(loaded);
                return ready(Some("instance already initialised".into()), String::new());
            }
        };
        let (loaded, reply) = Self::load(spare, spec, ready);
        *runtime = loaded;
        reply
    }

    fn load(
        spare: Option<Bootstrap>,
        spec: InitSpec,
        ready: impl Fn(Option<String>, String) -> Message,
    ) -> (Option<Runtime>, Message) {
        match spec.language {
            Language::Shell | Language::Native => {
                let script = format!("{}/{}", spec.code_dir, spec.handler);
                if std::fs::metadata(&script).is_err() {
                    return (
                        None,
                        ready(Some(format!("handler {script} not found")), String::new()),
                    );
                }
                (Some(Runtime::Process(spec)), ready(None, String::new()))
            }
            Language::Python | Language::Node => {
                let launched = match spare {
                    Some(b) => Ok(b),
                    None => Bootstrap::launch(
                        spec.language,
                        &bootstrap_env(spec.language, Some(&spec)),
                        &spec.code_dir,
                    ),
                };
                match launched
                    .map_err(|e| (e, String::new()))
                    .and_then(|b| b.load(&spec))
                {
                    Ok((b, logs)) => (Some(Runtime::Bootstrap(b)), ready(None, logs)),
                    Err((error, logs)) => (None, ready(Some(error), logs)),
                }
            }
        }
    }

    /// Run one invocation.
    pub fn invoke(&mut self, request_id: &str, deadline_ms: u64, payload: Vec<u8>) -> Outcome {
        match self {
            Runtime::Bootstrap(b) => b.invoke(request_id, deadline_ms, payload),
            Runtime::Spare { .. } => {
                Outcome::failed(FailureKind::Agent, "instance not initialised".into())
            }
            Runtime::Process(spec) => {
                let path = format!("{}/{}", spec.code_dir, spec.handler);
                let mut argv = match spec.language {
                    // A native executable runs as itself.
                    Language::Native => Vec::new(),
                    _ => shebang(&path).unwrap_or_else(|| vec!["/bin/sh".into()]),
                };
                argv.push(path);
                let mut env = function_env(spec);
                env.insert("FAAS_REQUEST_ID".into(), request_id.into());
                env.insert("FAAS_DEADLINE_MS".into(), deadline_ms.to_string());
                let env: Vec<String> = env.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
                let mut out = run_once(&argv, &env, Some(&spec.code_dir), payload);
                if out.error.is_none() && out.exit_code != Some(0) {
                    out.error = Some(match out.exit_code {
                        Some(c) => format!("handler exited with status {c}"),
                        None => "handler was killed".into(),
                    });
                    out.failure = Some(FailureKind::Handler);
                }
                if out.error.is_some() && out.failure.is_none() {
                    out.failure = Some(FailureKind::Handler);
                }
                out
            }
        }
    }
}

/// `Exec`: run a command once with `stdin` as input; stdout is the body.
pub fn exec(command: &[String], env: &[String], stdin: Vec<u8>) -> Outcome {
    if command.is_empty() {
        return Outcome::failed(FailureKind::Agent, "empty command".into());
    }
    let mut env = env.to_vec();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(format!("PATH={PATH}"));
    }
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push("HOME=/tmp".into());
    }
    run_once(command, &env, Some("/tmp"), stdin)
}

/// `#!/bin/bash -e` -> `["/bin/bash", "-e"]`.
fn shebang(script: &str) -> Option<Vec<String>> {
    let mut head = [0u8; 256];
    let n = std::fs::File::open(script).ok()?.read(&mut head).ok()?;
    let line = head[..n].strip_prefix(b"#!")?;
    let end = line.iter().position(|&b| b == b'\n').unwrap_or(line.len());
    let line = std::str::from_utf8(&line[..end]).ok()?;
    let argv: Vec<String> = line.split_whitespace().map(str::to_string).collect();
    (!argv.is_empty()).then_some(argv)
}

fn run_once(argv: &[String], env: &[String], cwd: Option<&str>, stdin: Vec<u8>) -> Outcome {
    let started = Instant::now();
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .envs(env.iter().filter_map(|kv| kv.split_once('=')))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    crate::vm::restrict_child(&mut cmd);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Outcome::failed(FailureKind::Handler, format!("cannot run {}: {e}", argv[0]))
        }
    };
    let mut child_in = child.stdin.take().expect("piped");
    // Feed stdin from its own thread so a command that ignores its input cannot
    // deadlock against a full stdout pipe.
    let feeder = std::thread::spawn(move || {
        let _ = child_in.write_all(&stdin);
    });
    let stderr = child.stderr.take().expect("piped");
    let err_reader = std::thread::spawn(move || read_capped(stderr));
    let stdout = read_bounded(child.stdout.take().expect("piped"), MAX_RESPONSE_BYTES);
    if stdout.is_none() {
        // Past the limit: stop the command rather than read on.
        let _ = child.kill();
    }
    let logs = err_reader.join().unwrap_or_default();
    let _ = feeder.join();
    let status = child.wait();
    let Some(stdout) = stdout else {
        return Outcome {
            logs: String::from_utf8_lossy(&logs).into_owned(),
            duration_us: started.elapsed().as_micros() as u64,
            ..Outcome::failed(
                FailureKind::Handler,
                format!("output exceeds the {MAX_RESPONSE_BYTES} byte response limit"),
            )
        };
    };
    let duration_us = started.elapsed().as_micros() as u64;
    match status {
        Ok(status) => Outcome {
            error: None,
            failure: None,
            logs: String::from_utf8_lossy(&logs).into_owned(),
            content_type: if std::str::from_utf8(&stdout).is_ok() {
                "text/plain; charset=utf-8".into()
            } else {
                "application/octet-stream".into()
            },
            exit_code: status.code(),
            signal: status.signal(),
            duration_us,
            body: stdout,
        },
        Err(e) => Outcome::failed(FailureKind::Agent, format!("wait: {e}")),
    }
}

/// Read to EOF, or `None` once there is more than `max` bytes.
fn read_bounded(r: impl Read, max: usize) -> Option<Vec<u8>> {
    let mut v = Vec::new();
    let _ = r.take(max as u64 + 1).read_to_end(&mut v);
    (v.len() <= max).then_some(v)
}

/// Read to EOF, keeping only the last [`LOG_CAP`] bytes.
fn read_capped(mut r: impl Read) -> Vec<u8> {
    let mut keep = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(n) = r.read(&mut buf) {
        if n == 0 {
            break;
        }
        keep.extend_from_slice(&buf[..n]);
        if keep.len() > 2 * LOG_CAP {
            keep.drain(..keep.len() - LOG_CAP);
        }
    }
    if keep.len() > LOG_CAP {
        keep.drain(..keep.len() - LOG_CAP);
    }
    keep
}

/// The environment every function process gets.
fn function_env(spec: &InitSpec) -> BTreeMap<String, String> {
    let mut env = spec.env.clone();
    for (k, v) in default_env() {
        env.entry(k).or_insert(v);
    }
    env.insert("FAAS_FUNCTION_NAME".into(), spec.function_name.clone());
    env.insert(
        "FAAS_FUNCTION_VERSION".into(),
        spec.function_version.to_string(),
    );
    env.insert("FAAS_MEMORY_MB".into(), spec.memory_mb.to_string());
    env.insert("FAAS_CODE_DIR".into(), spec.code_dir.clone());
    env
}

/// What a process gets unless the function sets it.
fn default_env() -> BTreeMap<String, String> {
    [
        ("PATH", PATH),
        ("HOME", "/tmp"),
        ("LANG", "C.UTF-8"),
        ("TMPDIR", "/tmp"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// A bootstrap's environment: `spec`'s function environment, or (started
/// ahead, with no function yet) the defaults alone. The interpreter settings
/// are the same either way: a pre-started interpreter must be the one a
/// function would have got.
fn bootstrap_env(language: Language, spec: Option<&InitSpec>) -> BTreeMap<String, String> {
    let mut env = spec.map_or_else(default_env, function_env);
    if let Some(deps) = spec.and_then(|s| s.deps_dir.as_ref()) {
        env.insert("FAAS_DEPS_DIR".into(), deps.clone());
        if language == Language::Node {
            env.insert("NODE_PATH".into(), format!("{deps}/node_modules"));
        }
    }
    if language == Language::Python {
        env.insert("PYTHONDONTWRITEBYTECODE".into(), "1".into());
        env.insert("PYTHONUNBUFFERED".into(), "1".into());
    }
    env
}

/// Log bytes shared between the pipe-reading thread and the agent.
#[derive(Default)]
struct LogState {
    buf: Vec<u8>,
    eof: bool,
}

/// Collects a bootstrap's stdout+stderr and splits it per invocation.
struct Logs {
    state: Arc<(Mutex<LogState>, Condvar)>,
}

impl Logs {
    fn start(mut pipe: impl Read + Send + 'static) -> Logs {
        let state = Arc::new((Mutex::new(LogState::default()), Condvar::new()));
        let shared = state.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                let n = pipe.read(&mut buf).unwrap_or(0);
                let (lock, cv) = &*shared;
                let mut st = lock.lock().expect("log lock");
                if n == 0 {
                    st.eof = true;
                    cv.notify_all();
                    return;
                }
                st.buf.extend_from_slice(&buf[..n]);
                if st.buf.len() > 4 * LOG_CAP {
                    // Keep the tail: it holds the marker we are waiting for.
                    let cut = st.buf.len() - 2 * LOG_CAP;
                    st.buf.drain(..cut);
                }
                cv.notify_all();
            }
        });
        Logs { state }
    }

    /// Everything logged before `marker` (which is removed), or whatever there is
    /// once the pipe closes or `wait` passes.
    fn take_until(&self, marker: &[u8], wait: Duration) -> String {
        let (lock, cv) = &*self.state;
        let deadline = Instant::now() + wait;
        let mut st = lock.lock().expect("log lock");
        loop {
            if let Some(pos) = find(&st.buf, marker) {
                let mut logs: Vec<u8> = st.buf.drain(..pos + marker.len()).collect();
                logs.truncate(pos);
                return cap_text(logs);
            }
            let now = Instant::now();
            if st.eof || now >= deadline {
                return cap_text(std::mem::take(&mut st.buf));
            }
            st = cv.wait_timeout(st, deadline - now).expect("log lock").0;
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn cap_text(mut logs: Vec<u8>) -> String {
    if logs.len() > LOG_CAP {
        let cut = logs.len() - LOG_CAP;
        logs.drain(..cut);
        let mut s = format!("[{cut} earlier log bytes dropped]\n");
        s.push_str(&String::from_utf8_lossy(&logs));
        return s;
    }
    String::from_utf8_lossy(&logs).into_owned()
}

fn marker(id: &str) -> Vec<u8> {
    format!("\x1eFAAS_END:{id}\x1e").into_bytes()
}

/// A running Python or Node.js bootstrap.
pub struct Bootstrap {
    child: Child,
    to: std::fs::File,
    from: std::fs::File,
    logs: Logs,
}

impl Bootstrap {
    /// Start `language`'s bootstrap with `env` in `cwd`; it waits for its
    /// `init`.
    fn launch(
        language: Language,
        env: &BTreeMap<String, String>,
        cwd: &str,
    ) -> Result<Bootstrap, String> {
        let (program, script) = match language {
            Language::Python => ("python3", format!("{BOOTSTRAP_DIR}/python.py")),
            Language::Node => ("node", format!("{BOOTSTRAP_DIR}/node.js")),
            Language::Shell | Language::Native => {
                unreachable!("no bootstrap for {language}")
            }
        };
        let io = |e: std::io::Error| format!("cannot start {program}: {e}");
        let (to_child_r, to_child_w) = std::io::pipe().map_err(io)?;
        let (from_child_r, from_child_w) = std::io::pipe().map_err(io)?;
        let (logs_r, logs_w) = std::io::pipe().map_err(io)?;
        let child_in: OwnedFd = to_child_r.into();
        let child_out: OwnedFd = from_child_w.into();
        let (in_fd, out_fd) = (child_in.as_raw_fd(), child_out.as_raw_fd());
        let logs_w2 = logs_w.try_clone().map_err(io)?;
        let mut cmd = Command::new(program);
        cmd.arg(&script)
            .env_clear()
            .envs(env)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::from(OwnedFd::from(logs_w)))
            .stderr(Stdio::from(OwnedFd::from(logs_w2)));
        // SAFETY: only async-signal-safe calls (fcntl, dup2, close) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // Move both ends above 4 first so the dup2s below cannot clobber them.
                let a = libc::fcntl(in_fd, libc::F_DUPFD_CLOEXEC, 10);
                let b = libc::fcntl(out_fd, libc::F_DUPFD_CLOEXEC, 10);
                if a < 0 || b < 0 || libc::dup2(a, 3) < 0 || libc::dup2(b, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        crate::vm::restrict_child(&mut cmd);
        let child = cmd.spawn().map_err(io)?;
        // Our copies of the child's ends must close, or EOF never arrives.
        drop(child_in);
        drop(child_out);
        drop(cmd);
        let mut b = Bootstrap {
            child,
            to: std::fs::File::from(OwnedFd::from(to_child_w)),
            from: std::fs::File::from(OwnedFd::from(from_child_r)),
            logs: Logs::start(logs_r),
        };
        // The interpreter says when it has loaded the bootstrap: a
        // pre-started one must not be frozen halfway through its start.
        match b.recv() {
            Ok((hdr, _)) if hdr.get("type").and_then(|t| t.as_str()) == Some("started") => Ok(b),
            Ok(_) => Err(format!("{program} bootstrap sent no start message")),
            Err(_) => Err(b.exit_reason(format!("{program} exited while starting"))),
        }
    }

    /// Load `spec`'s handler: the bootstrap takes the function's environment
    /// and working directory from the `init` (a pre-started one has neither
    /// yet), then imports the handler.
    fn load(mut self, spec: &InitSpec) -> Result<(Bootstrap, String), (String, String)> {
        let init = json!({
            "type": "init",
            "spec": spec,
            "env": bootstrap_env(spec.language, Some(spec)),
            "cwd": spec.code_dir,
        });
        if let Err(e) = self.send(&init, &[]) {
            let logs = self.logs.take_until(&marker("init"), MARKER_WAIT);
            return Err((
                self.exit_reason(format!("runtime failed to start: {e}")),
                logs,
            ));
        }
        match self.recv() {
            Ok((hdr, _)) => {
                let logs = self.logs.take_until(&marker("init"), MARKER_WAIT);
                match hdr.get("type").and_then(|t| t.as_str()) {
                    Some("ready") => Ok((self, logs)),
                    _ => Err((error_of(&hdr, "handler failed to load"), logs)),
                }
            }
            Err(_) => {
                let reason = self.exit_reason("runtime exited while loading the handler".into());
                let logs = self.logs.take_until(&marker("init"), MARKER_WAIT);
                Err((reason, logs))
            }
        }
    }

    fn invoke(&mut self, request_id: &str, deadline_ms: u64, payload: Vec<u8>) -> Outcome {
        let started = Instant::now();
        let hdr = json!({"type": "invoke", "request_id": request_id, "deadline_ms": deadline_ms});
        let reply = self.send(&hdr, &payload).and_then(|()| self.recv());
        let duration_us = started.elapsed().as_micros() as u64;
        match reply {
            Ok((hdr, body)) => {
                let logs = self.logs.take_until(&marker(request_id), MARKER_WAIT);
                let error = hdr
                    .get("error")
                    .and_then(|e| e.as_str())
                    .map(str::to_string);
                Outcome {
                    failure: error.as_ref().map(|_| FailureKind::Handler),
                    error,
                    logs,
                    content_type: hdr
                        .get("content_type")
                        .and_then(|c| c.as_str())
                        .unwrap_or("application/octet-stream")
                        .to_string(),
                    exit_code: None,
                    signal: None,
                    duration_us,
                    body,
                }
            }
            Err(e) => {
                let error = self.exit_reason(format!("runtime failed: {e}"));
                let signal = self.exit_signal();
                let logs = self.logs.take_until(&marker(request_id), MARKER_WAIT);
                Outcome {
                    logs,
                    duration_us,
                    signal,
                    ..Outcome::failed(FailureKind::RuntimeExited, error)
                }
            }
        }
    }

    /// The signal that ended the bootstrap, if it has ended by one.
    fn exit_signal(&mut self) -> Option<i32> {
        self.child
            .try_wait()
            .ok()
            .flatten()
            .and_then(|s| s.signal())
    }

    /// Describe how the bootstrap ended, or `fallback` if it is still running.
    fn exit_reason(&mut self, fallback: String) -> String {
        // Its pipe closed, so it is exiting; give it a moment to be reaped.
        for _ in 0..50 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return describe_exit(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        fallback
    }

    fn send(&mut self, hdr: &serde_json::Value, body: &[u8]) -> std::io::Result<()> {
        let h = serde_json::to_vec(hdr)?;
        let mut out = Vec::with_capacity(8 + h.len() + body.len());
        out.extend_from_slice(&(h.len() as u32).to_be_bytes());
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(body);
        self.to.write_all(&out)
    }

    fn recv(&mut self) -> std::io::Result<(serde_json::Value, Vec<u8>)> {
        let mut lens = [0u8; 8];
        self.from.read_exact(&mut lens)?;
        let hlen = u32::from_be_bytes(lens[..4].try_into().expect("4 bytes")) as usize;
        let blen = u32::from_be_bytes(lens[4..].try_into().expect("4 bytes")) as usize;
        // The header is a small JSON object; the body is the response.
        if hlen > 1024 * 1024 || blen > MAX_RESPONSE_BYTES {
            return Err(std::io::Error::other(format!(
                "response of {blen} bytes exceeds the {MAX_RESPONSE_BYTES} byte limit"
            )));
        }
        let mut h = vec![0u8; hlen];
        self.from.read_exact(&mut h)?;
        let mut body = vec![0u8; blen];
        self.from.read_exact(&mut body)?;
        Ok((serde_json::from_slice(&h)?, body))
    }
}

impl Drop for Bootstrap {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn error_of(hdr: &serde_json::Value, fallback: &str) -> String {
    hdr.get("error")
        .and_then(|e| e.as_str())
        .unwrap_or(fallback)
        .to_string()
}

fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("runtime exited with status {c}"),
        (None, Some(libc::SIGKILL)) => "runtime was killed (signal 9)".into(),
        (None, Some(s)) => format!("runtime was killed by signal {s}"),
        _ => "runtime exited".into(),
    }
}

/// Unix time in milliseconds on this side's clock.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}
