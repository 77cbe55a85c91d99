//! Warm instances: reuse an idle instance of the same function version when there
//! is one, start one (a cold start) when there is not, keep it after the call for
//! an idle period, and bound what exists at once: instances on the node,
//! instances of one function, the instances and memory of one tenant, and
//! the memory of them all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use faas_executor::{ExecutorError, Instance, InstanceSpec, Sandbox};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;

/// Which instances are interchangeable: same function, same version.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// Function id.
    pub function_id: String,
    /// Function version.
    pub version: u32,
}

/// What the pool may hold at once.
#[derive(Debug, Clone, Copy)]
pub struct PoolLimits {
    /// Instances on the node.
    pub instances: usize,
    /// Instances of one function (every version): no function can take the
    /// whole node.
    pub per_function: usize,
    /// Memory of all instances together, MiB (each counts its limit).
    pub memory_mb: u64,
    /// Callers that may wait for one function's instances, unless it sets its own.
    pub max_queue: usize,
}

/// What one tenant may hold in the pool at once (its quota; `None`: no bound).
#[derive(Debug, Clone)]
pub struct TenantShare {
    /// The tenant.
    pub tenant: String,
    /// Instances alive at once.
    pub max_instances: Option<u32>,
    /// `memory_mb` of its live instances together.
    pub max_memory_mb: Option<u64>,
}

/// Per tenant: (instances, MiB) held now.
type TenantUsage = Arc<Mutex<HashMap<String, (u64, u64)>>>;

/// One instance's part of its tenant's usage, given back on drop.
struct TenantHold {
    usage: TenantUsage,
    tenant: String,
    memory_mb: u64,
}

impl Drop for TenantHold {
    fn drop(&mut self) {
        let mut usage = self.usage.lock().expect("tenant usage lock");
        if let Some(u) = usage.get_mut(&self.tenant) {
            u.0 -= 1;
            u.1 -= self.memory_mb;
            if u.0 == 0 {
                usage.remove(&self.tenant);
            }
        }
    }
}

/// The shares of the node's capacity one instance holds for its whole life.
struct Permits {
    _node: OwnedSemaphorePermit,
    _function: OwnedSemaphorePermit,
    _memory: OwnedSemaphorePermit,
    tenant: TenantHold,
    /// Counts the instance for the pool's shutdown, which waits for it.
    _live: TaskTrackerToken,
}

struct Idle {
    instance: Box<dyn Instance>,
    /// The function's epoch when the instance started (see [`Pool::recycle`]).
    epoch: u64,
    since: Instant,
    /// When it last proved alive (released, or answered a heartbeat).
    checked: Instant,
    permits: Permits,
}

/// How long the agent of an idle instance may take to answer a heartbeat.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);

/// What one function may hold and keep (its scaling, with the node's
/// defaults filled in and its bounds applied).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FunctionLimits {
    /// Most instances at once.
    pub max_instances: usize,
    /// Instances never expired for idleness.
    pub min_instances: usize,
    /// How long an idle instance above `min_instances` is kept.
    pub idle_timeout: Duration,
    /// Callers that may wait for an instance at once; beyond, [`AcquireError::QueueFull`].
    pub max_queue: usize,
}

/// Per function: its share of the node, its limits, and a wake-up for
/// callers waiting for one of its instances.
struct FunctionShare {
    slots: Arc<Semaphore>,
    limits: FunctionLimits,
    /// Callers waiting for an instance now.
    waiting: Arc<std::sync::atomic::AtomicUsize>,
    /// Instances being started now.
    starting: Arc<std::sync::atomic::AtomicUsize>,
    released: Arc<Notify>,
}

/// Counts one caller or start in a function's gauge, and the node's
/// exported one, while alive.
struct Gauge(
    Arc<std::sync::atomic::AtomicUsize>,
    prometheus_client::metrics::gauge::Gauge,
);

impl Gauge {
    fn enter(
        counter: &Arc<std::sync::atomic::AtomicUsize>,
        exported: &prometheus_client::metrics::gauge::Gauge,
    ) -> Gauge {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        exported.inc();
        Gauge(counter.clone(), exported.clone())
    }
}

impl Drop for Gauge {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        self.1.dec();
    }
}

#[derive(Default)]
struct State {
    idle: HashMap<PoolKey, Vec<Idle>>,
    busy: HashMap<PoolKey, usize>,
    /// Per function, the lowest version still wanted; `u32::MAX` once deleted.
    /// It only ever rises.
    floor: HashMap<String, u32>,
    /// Per function, bumped when its instances must be replaced although
    /// the version stays (its secrets changed).
    epochs: HashMap<String, u64>,
    functions: HashMap<String, FunctionShare>,
    closed: bool,
}

/// An instance lent to one invocation. Give it back with [`Pool::release`].
pub struct Lease {
    instance: Box<dyn Instance>,
    permits: Permits,
    key: PoolKey,
    epoch: u64,
    /// Whether the instance was started for this invocation.
    pub cold: bool,
    /// Time the cold start took.
    pub start_time: Duration,
}

impl Lease {
    /// The instance.
    pub fn instance(&mut self) -> &mut dyn Instance {
        self.instance.as_mut()
    }

    /// Whether its instance was specialised from a pre-started one.
    pub fn prestarted(&self) -> bool {
        self.instance.prestarted()
    }
}

/// Why no instance could be had.
#[derive(Debug)]
pub enum AcquireError {
    /// The node, or the function's share of it, is full and nothing freed
    /// up in time; says which.
    Saturated(String),
    /// The tenant holds all the instances or memory its quota allows, none
    /// of them idle; says which.
    TenantFull(String),
    /// The pool is shutting down.
    Closed,
    /// Every instance the function may have is busy and as many callers as
    /// it may queue already wait; says how many.
    QueueFull(String),
    /// Starting the instance failed.
    Start(ExecutorError),
}

/// The instance pool.
pub struct Pool {
    state: Mutex<State>,
    node: Arc<Semaphore>,
    memory: Arc<Semaphore>,
    tenants: TenantUsage,
    limits: PoolLimits,
    idle_timeout: Duration,
    heartbeat: Duration,
    metrics: Arc<Metrics>,
    teardown: TaskTracker,
    /// Cancelled when the pool closes: instances still starting are abandoned
    /// (their sandboxes' guards remove them).
    closing: tokio_util::sync::CancellationToken,
}

impl Pool {
    /// A pool within `limits`; an idle instance is pinged every `heartbeat`
    /// and replaced when it does not answer (a hung guest is found before a
    /// caller waits on it).
    pub fn new(
        limits: PoolLimits,
        idle_timeout: Duration,
        heartbeat: Duration,
        metrics: Arc<Metrics>,
    ) -> Arc<Pool> {
        let memory = limits.memory_mb.min(u64::from(u32::MAX)) as usize;
        let pool = Arc::new(Pool {
            state: Mutex::new(State::default()),
            node: Arc::new(Semaphore::new(limits.instances)),
            memory: Arc::new(Semaphore::new(memory)),
            tenants: TenantUsage::default(),
            limits,
            idle_timeout,
            heartbeat,
            metrics,
            teardown: TaskTracker::new(),
            closing: tokio_util::sync::CancellationToken::new(),
        });
        let weak = Arc::downgrade(&pool);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(pool) => {
                        pool.expire_idle();
                        pool.heartbeat();
                    }
                    None => return,
                }
            }
        });
        pool
    }

    /// Lend a warm instance of `key`, or start one in `sandbox` from `spec`
    /// (an instance of `memory_mb`, counted against `tenant`) within `wait`.
    pub async fn acquire(
        &self,
        key: &PoolKey,
        tenant: &TenantShare,
        sandbox: &dyn Sandbox,
        spec: impl FnOnce() -> InstanceSpec,
        memory_mb: u32,
        wait: Duration,
    ) -> Result<Lease, AcquireError> {
        let deadline = tokio::time::Instant::now() + wait;
        // Counts this caller as queued from its first wait to its return.
        let mut queued: Option<Gauge> = None;
        let (function, starting) = loop {
            let (slots, limits, waiting, starting, released) = {
                let mut st = self.state.lock().expect("pool lock");
                if let Some(idle) = self.take_idle(&mut st, key)? {
                    return Ok(Lease {
                        instance: idle.instance,
                        permits: idle.permits,
                        key: key.clone(),
                        epoch: idle.epoch,
                        cold: false,
                        start_time: Duration::ZERO,
                    });
                }
                let share = self.share(&mut st, &key.function_id);
                (
                    share.slots.clone(),
                    share.limits,
                    share.waiting.clone(),
                    share.starting.clone(),
                    share.released.clone(),
                )
            };
            // Registered before trying, so a release in between is not missed.
            let notified = released.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Ok(permit) = slots.clone().try_acquire_owned() {
                break (permit, starting);
            }
            // Every instance the function may have is busy: wait for one to
            // come back (warm, or gone), if the queue has room.
            if queued.is_none() {
                if waiting.load(std::sync::atomic::Ordering::SeqCst) >= limits.max_queue {
                    return Err(AcquireError::QueueFull(format!(
                        "all {} instances this function may have are busy and {} calls already wait",
                        limits.max_instances, limits.max_queue
                    )));
                }
                queued = Some(Gauge::enter(&waiting, &self.metrics.queued_invocations));
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(AcquireError::Saturated(format!(
                    "all {} instances this function may have are busy",
                    limits.max_instances
                )));
            }
        };
        drop(queued);
        let tenant = match self.hold_for(tenant, memory_mb) {
            Ok(hold) => hold,
            Err(e) => {
                drop(function);
                self.wake(&key.function_id);
                return Err(e);
            }
        };
        let (node, memory) = self.capacity(memory_mb, deadline).await?;
        let permits = Permits {
            _node: node,
            _function: function,
            _memory: memory,
            tenant,
            _live: self.teardown.token(),
        };
        let epoch = self.epoch(&key.function_id);
        let started = Instant::now();
        let _starting = Gauge::enter(&starting, &self.metrics.starting_instances);
        let start = tokio::select! {
            started = sandbox.start(spec()) => started,
            // Shutdown does not wait for boots: dropping the start removes
            // what it made so far.
            () = self.closing.cancelled() => return Err(AcquireError::Closed),
        };
        let instance = match start {
            Ok(i) => i,
            Err(e) => {
                self.wake(&key.function_id);
                return Err(AcquireError::Start(e));
            }
        };
        self.metrics.live_instances.inc();
        let mut st = self.state.lock().expect("pool lock");
        if st.closed {
            // Shutdown began while it started: it must not outlive the server.
            drop(st);
            self.destroy(instance, permits);
            return Err(AcquireError::Closed);
        }
        *st.busy.entry(key.clone()).or_default() += 1;
        Ok(Lease {
            instance,
            permits,
            key: key.clone(),
            epoch,
            cold: true,
            start_time: started.elapsed(),
        })
    }

    /// Take back a lease; a healthy instance of a current version stays warm.
    pub fn release(&self, lease: Lease, healthy: bool) {
        let mut st = self.state.lock().expect("pool lock");
        if let Some(n) = st.busy.get_mut(&lease.key) {
            *n -= 1;
            if *n == 0 {
                st.busy.remove(&lease.key);
            }
        }
        let now = Instant::now();
        let idle = Idle {
            instance: lease.instance,
            epoch: lease.epoch,
            since: now,
            checked: now,
            permits: lease.permits,
        };
        self.keep_or_destroy(st, lease.key, idle, healthy);
    }

    /// Keep `idle` warm when it is healthy, of a wanted version and the pool is
    /// open; destroy it otherwise. Either way a caller waiting for an instance
    /// of the function may now find one.
    fn keep_or_destroy(
        &self,
        mut st: std::sync::MutexGuard<'_, State>,
        key: PoolKey,
        idle: Idle,
        healthy: bool,
    ) {
        let wanted = st
            .floor
            .get(&key.function_id)
            .is_none_or(|&floor| key.version >= floor)
            && st.epochs.get(&key.function_id).copied().unwrap_or(0) == idle.epoch;
        let function = key.function_id.clone();
        if healthy && wanted && !st.closed {
            st.idle.entry(key).or_default().push(idle);
            self.metrics.warm_instances.inc();
            drop(st);
        } else {
            drop(st);
            self.destroy(idle.instance, idle.permits);
        }
        self.wake(&function);
    }

    /// The node's defaults for a function that set nothing.
    pub fn default_limits(&self) -> FunctionLimits {
        FunctionLimits {
            max_instances: self.limits.per_function,
            min_instances: 0,
            idle_timeout: self.idle_timeout,
            max_queue: self.limits.max_queue,
        }
    }

    fn share<'a>(&self, st: &'a mut State, function_id: &str) -> &'a mut FunctionShare {
        let limits = self.default_limits();
        st.functions
            .entry(function_id.to_string())
            .or_insert_with(|| FunctionShare {
                slots: Arc::new(Semaphore::new(limits.max_instances)),
                limits,
                waiting: Default::default(),
                starting: Default::default(),
                released: Arc::new(Notify::new()),
            })
    }

    /// Set what `function_id` may hold and keep; `max_instances` is capped at
    /// the node's per-function limit.
    ///
    /// A higher bound applies at once; a lower one as soon as enough of the
    /// function's instances are gone.
    pub fn limit_function(&self, function_id: &str, mut limits: FunctionLimits) {
        limits.max_instances = limits.max_instances.clamp(1, self.limits.per_function);
        limits.min_instances = limits.min_instances.min(limits.max_instances);
        let mut st = self.state.lock().expect("pool lock");
        let share = self.share(&mut st, function_id);
        let (had, cap) = (share.limits.max_instances, limits.max_instances);
        share.limits = limits;
        if had < cap {
            share.slots.add_permits(cap - had);
            // Waiters may now fit under the new bound.
            share.released.notify_waiters();
        } else if had > cap {
            let deficit = had - cap;
            let gone = share.slots.forget_permits(deficit);
            if gone < deficit {
                // The rest are held by live instances: take them as they come back.
                let slots = share.slots.clone();
                let rest = u32::try_from(deficit - gone).unwrap_or(u32::MAX);
                tokio::spawn(async move {
                    if let Ok(permits) = slots.acquire_many_owned(rest).await {
                        permits.forget();
                    }
                });
            }
        }
    }

    /// (queued callers, instances starting) of a function now.
    pub fn pressure(&self, function_id: &str) -> (usize, usize) {
        let st = self.state.lock().expect("pool lock");
        st.functions.get(function_id).map_or((0, 0), |share| {
            (
                share.waiting.load(std::sync::atomic::Ordering::SeqCst),
                share.starting.load(std::sync::atomic::Ordering::SeqCst),
            )
        })
    }

    fn wake(&self, function_id: &str) {
        let st = self.state.lock().expect("pool lock");
        if let Some(share) = st.functions.get(function_id) {
            share.released.notify_one();
        }
    }

    /// Ping the idle instances not checked for a heartbeat period, each in a
    /// task of its own; one that fails is destroyed, the others go back warm.
    /// While out they count as busy.
    fn heartbeat(self: &Arc<Self>) {
        let now = Instant::now();
        let mut due = Vec::new();
        {
            let mut st = self.state.lock().expect("pool lock");
            for (key, list) in st.idle.iter_mut() {
                let (check, keep): (Vec<Idle>, Vec<Idle>) = list
                    .drain(..)
                    .partition(|i| now.duration_since(i.checked) >= self.heartbeat);
                *list = keep;
                due.extend(check.into_iter().map(|i| (key.clone(), i)));
            }
            st.idle.retain(|_, v| !v.is_empty());
            for (key, _) in &due {
                *st.busy.entry(key.clone()).or_default() += 1;
            }
        }
        for (key, mut idle) in due {
            self.metrics.warm_instances.dec();
            let pool = self.clone();
            self.teardown.spawn(async move {
                let healthy = match idle.instance.ping(HEARTBEAT_TIMEOUT).await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(
                            instance = idle.instance.id(),
                            "idle instance failed its heartbeat, replacing it: {e}"
                        );
                        false
                    }
                };
                idle.checked = Instant::now();
                let mut st = pool.state.lock().expect("pool lock");
                if let Some(n) = st.busy.get_mut(&key) {
                    *n -= 1;
                    if *n == 0 {
                        st.busy.remove(&key);
                    }
                }
                pool.keep_or_destroy(st, key, idle, healthy);
            });
        }
    }

    /// Stop keeping instances of `function_id` below `version` (`u32::MAX`:
    /// all of them, the function is gone). Idle ones go now, busy ones when
    /// they come back. The floor never goes down: a deploy that finishes after
    /// a newer one, or after a delete, cannot bring old instances back.
    pub fn retire(&self, function_id: &str, version: u32) {
        let mut st = self.state.lock().expect("pool lock");
        let floor = st.floor.entry(function_id.to_string()).or_insert(0);
        *floor = (*floor).max(version);
        let floor = *floor;
        let stale: Vec<PoolKey> = st
            .idle
            .keys()
            .filter(|k| k.function_id == function_id && k.version < floor)
            .cloned()
            .collect();
        let mut doomed = Vec::new();
        for k in stale {
            doomed.extend(st.idle.remove(&k).unwrap_or_default());
        }
        drop(st);
        for idle in doomed {
            self.metrics.warm_instances.dec();
            self.destroy(idle.instance, idle.permits);
        }
    }

    /// Replace every instance of `function_id` although its version stays
    /// (its secrets changed): idle ones go now, busy ones when they return.
    pub fn recycle(&self, function_id: &str) {
        let mut st = self.state.lock().expect("pool lock");
        *st.epochs.entry(function_id.to_string()).or_insert(0) += 1;
        let keys: Vec<PoolKey> = st
            .idle
            .keys()
            .filter(|k| k.function_id == function_id)
            .cloned()
            .collect();
        let mut doomed = Vec::new();
        for k in keys {
            doomed.extend(st.idle.remove(&k).unwrap_or_default());
        }
        drop(st);
        for idle in doomed {
            self.metrics.warm_instances.dec();
            self.destroy(idle.instance, idle.permits);
        }
    }

    fn epoch(&self, function_id: &str) -> u64 {
        let st = self.state.lock().expect("pool lock");
        st.epochs.get(function_id).copied().unwrap_or(0)
    }

    /// (idle, busy) instances of a function, every version.
    pub fn counts(&self, function_id: &str) -> (usize, usize) {
        let st = self.state.lock().expect("pool lock");
        let idle = st
            .idle
            .iter()
            .filter(|(k, _)| k.function_id == function_id)
            .map(|(_, v)| v.len())
            .sum();
        let busy = st
            .busy
            .iter()
            .filter(|(k, _)| k.function_id == function_id)
            .map(|(_, n)| *n)
            .sum();
        (idle, busy)
    }

    /// Refuse new work, abandon instances still starting and destroy every
    /// idle one; busy ones go when they come back. Returns at once.
    pub fn close(&self) {
        self.closing.cancel();
        let doomed: Vec<Idle> = {
            let mut st = self.state.lock().expect("pool lock");
            st.closed = true;
            for share in st.functions.values() {
                share.released.notify_waiters();
            }
            st.idle.drain().flat_map(|(_, v)| v).collect()
        };
        for idle in doomed {
            self.metrics.warm_instances.dec();
            self.destroy(idle.instance, idle.permits);
        }
    }

    /// [`Pool::close`], then wait until every instance is gone.
    pub async fn shutdown(&self) {
        self.close();
        self.teardown.close();
        self.teardown.wait().await;
    }

    fn take_idle(&self, st: &mut State, key: &PoolKey) -> Result<Option<Idle>, AcquireError> {
        if st.closed {
            return Err(AcquireError::Closed);
        }
        // Most recently used first: its caches are the warmest.
        let idle = st.idle.get_mut(key).and_then(Vec::pop);
        if idle.is_some() {
            self.metrics.warm_instances.dec();
            *st.busy.entry(key.clone()).or_default() += 1;
        }
        Ok(idle)
    }

    /// Count a new instance of `memory_mb` against `share`'s tenant; at its
    /// quota, evict the tenant's longest-idle instance, or refuse when none
    /// is idle (the tenant is busy with everything it may have: a limit it
    /// set, not a shortage to wait out).
    fn hold_for(&self, share: &TenantShare, memory_mb: u32) -> Result<TenantHold, AcquireError> {
        let memory_mb = u64::from(memory_mb);
        loop {
            let over_instances = {
                let mut usage = self.tenants.lock().expect("tenant usage lock");
                let (instances, memory) = usage.get(&share.tenant).copied().unwrap_or_default();
                let over_instances = share
                    .max_instances
                    .is_some_and(|m| instances + 1 > u64::from(m));
                let over_memory = share.max_memory_mb.is_some_and(|m| memory + memory_mb > m);
                if !over_instances && !over_memory {
                    let u = usage.entry(share.tenant.clone()).or_default();
                    u.0 += 1;
                    u.1 += memory_mb;
                    return Ok(TenantHold {
                        usage: self.tenants.clone(),
                        tenant: share.tenant.clone(),
                        memory_mb,
                    });
                }
                over_instances
            };
            // Outside the usage lock: the evicted instance's hold takes it.
            if !self.evict_oldest(Some(&share.tenant)) {
                return Err(AcquireError::TenantFull(if over_instances {
                    format!(
                        "tenant {} has all {} instances its quota allows busy",
                        share.tenant,
                        share.max_instances.unwrap_or_default()
                    )
                } else {
                    format!(
                        "tenant {} has all {} MiB of instance memory its quota allows busy",
                        share.tenant,
                        share.max_memory_mb.unwrap_or_default()
                    )
                }));
            }
        }
    }

    /// A node slot and `memory_mb` of the memory budget; while either is
    /// short, evict the longest-idle instance of any function, else wait for
    /// a busy one to end (until `deadline`).
    async fn capacity(
        &self,
        memory_mb: u32,
        deadline: tokio::time::Instant,
    ) -> Result<(OwnedSemaphorePermit, OwnedSemaphorePermit), AcquireError> {
        if u64::from(memory_mb) > self.limits.memory_mb {
            return Err(AcquireError::Saturated(format!(
                "an instance of {memory_mb} MiB exceeds the node's {} MiB budget",
                self.limits.memory_mb
            )));
        }
        let mut node = None;
        let mut memory = None;
        loop {
            if node.is_none() {
                node = self.node.clone().try_acquire_owned().ok();
            }
            if memory.is_none() {
                memory = self.memory.clone().try_acquire_many_owned(memory_mb).ok();
            }
            if let (Some(_), Some(_)) = (&node, &memory) {
                return Ok((node.expect("checked"), memory.expect("checked")));
            }
            if self.evict_oldest(None) {
                continue;
            }
            // Nothing idle to make room: wait for a busy instance to end (or
            // for shutdown).
            let wait = async {
                if node.is_none() {
                    tokio::time::timeout_at(deadline, self.node.clone().acquire_owned())
                        .await
                        .map(|r| r.map(|p| node = Some(p)))
                } else {
                    tokio::time::timeout_at(
                        deadline,
                        self.memory.clone().acquire_many_owned(memory_mb),
                    )
                    .await
                    .map(|r| r.map(|p| memory = Some(p)))
                }
            };
            let waited = tokio::select! {
                waited = wait => waited,
                () = self.closing.cancelled() => return Err(AcquireError::Closed),
            };
            match waited {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(AcquireError::Closed),
                Err(_) if node.is_none() => {
                    return Err(AcquireError::Saturated(format!(
                        "all {} instance slots of this node are busy",
                        self.limits.instances
                    )))
                }
                Err(_) => {
                    return Err(AcquireError::Saturated(format!(
                        "the node's {} MiB of instance memory is in use",
                        self.limits.memory_mb
                    )))
                }
            }
        }
    }

    /// Destroy the longest-idle instance of any function (of `tenant`'s
    /// functions when given); false when none is idle.
    fn evict_oldest(&self, tenant: Option<&str>) -> bool {
        let victim = {
            let mut st = self.state.lock().expect("pool lock");
            let oldest = st
                .idle
                .iter()
                .flat_map(|(k, v)| v.iter().enumerate().map(move |(n, i)| (k, n, i)))
                .filter(|(_, _, i)| tenant.is_none_or(|t| i.permits.tenant.tenant == t))
                .min_by_key(|(_, _, i)| i.since)
                .map(|(k, n, _)| (k.clone(), n));
            oldest.map(|(k, n)| {
                let list = st.idle.get_mut(&k).expect("present");
                let victim = list.remove(n);
                if list.is_empty() {
                    st.idle.remove(&k);
                }
                (k, victim)
            })
        };
        match victim {
            Some((key, idle)) => {
                self.metrics.warm_instances.dec();
                // Its permits return at once; the teardown continues in the background.
                self.destroy(idle.instance, idle.permits);
                self.wake(&key.function_id);
                true
            }
            None => false,
        }
    }

    fn expire_idle(&self) {
        let now = Instant::now();
        let mut expired = Vec::new();
        {
            let mut st = self.state.lock().expect("pool lock");
            let st = &mut *st;
            let defaults = self.default_limits();
            // Per function: instances alive, so how many may go while
            // `min_instances` stay.
            let mut alive: HashMap<&str, usize> = HashMap::new();
            for (key, list) in &st.idle {
                *alive.entry(key.function_id.as_str()).or_default() += list.len();
            }
            for (key, n) in &st.busy {
                *alive.entry(key.function_id.as_str()).or_default() += n;
            }
            let mut spare: HashMap<String, usize> = alive
                .into_iter()
                .map(|(f, n)| {
                    let min = st.functions.get(f).map_or(0, |s| s.limits.min_instances);
                    (f.to_string(), n.saturating_sub(min))
                })
                .collect();
            for (key, list) in st.idle.iter_mut() {
                let limits = st
                    .functions
                    .get(&key.function_id)
                    .map_or(defaults, |s| s.limits);
                let spare = spare.entry(key.function_id.clone()).or_default();
                // Oldest first: the most recently used stay warmest.
                list.sort_by_key(|i| i.since);
                let mut keep = Vec::with_capacity(list.len());
                for idle in list.drain(..) {
                    if *spare > 0 && now.duration_since(idle.since) >= limits.idle_timeout {
                        *spare -= 1;
                        expired.push(idle);
                    } else {
                        keep.push(idle);
                    }
                }
                *list = keep;
            }
            st.idle.retain(|_, v| !v.is_empty());
        }
        for idle in expired {
            self.metrics.warm_instances.dec();
            self.destroy(idle.instance, idle.permits);
        }
    }

    fn destroy(&self, instance: Box<dyn Instance>, permits: Permits) {
        let Permits {
            _node,
            _function,
            _memory,
            tenant,
            _live,
        } = permits;
        // The capacity returns at once; the instance counts as live for the
        // shutdown until its teardown ends.
        drop((_node, _function, _memory, tenant));
        let metrics = self.metrics.clone();
        self.teardown.spawn(async move {
            instance.destroy().await;
            metrics.live_instances.dec();
            drop(_live);
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use faas_executor::testing::{instance_spec as spec, FakeSandbox};

    use super::*;

    fn metrics() -> Arc<Metrics> {
        Arc::new(Metrics::new(&["native"]))
    }

    fn pool(instances: usize, per_function: usize) -> Arc<Pool> {
        Pool::new(
            PoolLimits {
                instances,
                per_function,
                memory_mb: 1024,
                max_queue: 64,
            },
            Duration::from_secs(300),
            Duration::from_secs(3600),
            metrics(),
        )
    }

    fn key(f: &str, version: u32) -> PoolKey {
        PoolKey {
            function_id: f.into(),
            version,
        }
    }

    const WAIT: Duration = Duration::from_secs(2);

    fn anyone() -> TenantShare {
        tenant("default", None, None)
    }

    fn tenant(name: &str, max_instances: Option<u32>, max_memory_mb: Option<u64>) -> TenantShare {
        TenantShare {
            tenant: name.into(),
            max_instances,
            max_memory_mb,
        }
    }

    async fn settle() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    #[tokio::test]
    async fn reuses_a_warm_instance() {
        let sandbox = FakeSandbox::default();
        let pool = pool(4, 4);
        let lease = pool
            .acquire(&key("a", 1), &anyone(), &sandbox, spec, 64, WAIT)
            .await
            .unwrap();
        assert!(lease.cold);
        let id = lease.instance.id().to_string();
        pool.release(lease, true);
        let lease = pool
            .acquire(&key("a", 1), &anyone(), &sandbox, spec, 64, WAIT)
            .await
            .unwrap();
        assert!(!lease.cold);
        assert_eq!(lease.instance.id(), id);
        assert_eq!(sandbox.counters.started.load(Ordering::SeqCst), 1);
        pool.release(lease, false);
        settle().await;
        assert_eq!(
            sandbox.counters.destroyed.load(Ordering::SeqCst),
            1,
            "an unhealthy instance goes"
        );
    }

    fn at_most(pool: &Pool, max_instances: usize) -> FunctionLimits {
        FunctionLimits {
            max_instances,
            ..pool.default_limits()
        }
    }

    #[tokio::test]
    async fn a_full_queue_answers_at_once_and_drains() {
        let sandbox = Arc::new(FakeSandbox::default());
        let pool = pool(8, 4);
        let (a, share) = (key("a", 1), anyone());
        pool.limit_function(
            "a",
            FunctionLimits {
                max_instances: 1,
                max_queue: 1,
                ..pool.default_limits()
            },
        );
        let busy = pool
            .acquire(&a, &share, &*sandbox, spec, 64, WAIT)
            .await
            .unwrap();
        let queued = {
            let pool = pool.clone();
            let sandbox = sandbox.clone();
            tokio::spawn(async move {
                pool.acquire(&key("a", 1), &anyone(), &*sandbox, spec, 64, WAIT)
                    .await
                    .map(|l| (l.cold, l))
            })
        };
        settle().await;
        assert_eq!(pool.pressure("a"), (1, 0), "one caller waits");
        let started = Instant::now();
        match pool.acquire(&a, &share, &*sandbox, spec, 64, WAIT).await {
            Err(AcquireError::QueueFull(why)) => {
                assert!(why.contains("1 calls already wait"), "{why}")
            }
            other => panic!("past the queue: {:?}", other.map(|l| l.cold)),
        }
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "refused at once"
        );
        pool.release(busy, true);
        let (cold, lease) = queued.await.unwrap().unwrap();
        assert!(!cold, "the queued caller got the instance back");
        assert_eq!(pool.pressure("a"), (0, 0));
        pool.release(lease, true);
    }

    #[tokio::test]
    async fn idle_expiry_keeps_min_instances() {
        let sandbox = FakeSandbox::default();
        let pool = pool(8, 4);
        let (a, share) = (key("a", 1), anyone());
        pool.limit_function(
            "a",
            FunctionLimits {
                min_instances: 1,
                idle_timeout: Duration::ZERO,
                ..pool.default_limits()
            },
        );
        let one = pool
            .acquire(&a, &share, &sandbox, spec, 64, WAIT)
            .await
            .unwrap();
        let two = pool
            .acquire(&a, &share, &sandbox, spec, 64, WAIT)
            .await
            .unwrap();
        pool.release(one, true);
        pool.release(two, true);
        pool.expire_idle();
        settle().await;
        assert_eq!(pool.counts("a"), (1, 0), "one expired, min_instances stays");
        pool.expire_idle();
        assert_eq!(pool.counts("a"), (1, 0));
    }

    #[tokio::test]
    async fn a_function_limit_bounds_its_instances_and_can_change() {
        let sandbox = FakeSandbox::default();
        let pool = pool(8, 4);
        let (a, share) = (key("a", 1), anyone());
        pool.limit_function("a", at_most(&pool, 1));
        let first = pool
            .acquire(&a, &share, &sandbox, spec, 64, WAIT)
            .await
            .unwrap();
        let waiting = pool.acquire(&a, &share, &sandbox, spec, 64, Duration::from_millis(200));
        match waiting.await {
            Err(AcquireError::Saturated(why)) => assert!(why.contains("all 1 instances"), "{why}"),
            other => panic!("a second instance past max 1: {:?}", other.map(|l| l.cold)),
        }
        // A limit above the node's per-function one is the node's.
        pool.limit_function("a", at_most(&pool, 100));
        let mut leases = vec![first];
        for _ in 0..3 {
            leases.push(
                pool.acquire(&a, &share, &sandbox, spec, 64, WAIT)
                    .await
                    .unwrap(),
            );
        }
        let fifth = pool.acquire(&a, &share, &sandbox, spec, 64, Duration::from_millis(200));
        assert!(matches!(fifth.await, Err(AcquireError::Saturated(_))));
        for lease in leases {
            pool.release(lease, false);
        }
        settle().await;
        assert_eq!(pool.counts("a"), (0, 0));
        // Lowered again: one at a time.
        pool.limit_function("a", at_most(&pool, 1));
        let only = pool
            .acquire(&a, &share, &sandbox, spec, 64, WAIT)
            .await
            .unwrap();
        let second = pool.acquire(&a, &share, &sandbox, spec, 64, Duration::from_millis(200));
        assert!(matches!(second.await, Err(AcquireError::Saturated(_))));
        pool.release(only, true);
    }

    #[tokio::test]
    async fn evicts_the_longest_idle_at_the_cap() {
        let sandbox = FakeSandbox::default();
        let pool = pool(2, 2);
        for f in ["a", "b"] {
            let lease = pool
                .acquire(&key(f, 1), &anyone(), &sandbox, spec, 64, WAIT)
                .await
                .unwrap();
            pool.release(lease, true);
        }
        let lease = pool
            .acquire(&key("c", 1), &anyone(), &sandbox, spec, 64, WAIT)
            .await
            .unwrap();
        settle().await;
        assert_eq!(sandbox.counters.destroyed.load(Ordering::SeqCst), 1);
        assert_eq!(pool.counts("a"), (0, 0), "a, the oldest, was evicted");
        assert_eq!(pool.counts("b"), (1, 0));
        pool.release(lease, true);
    }

    #[tokio::test]
    async fn a_function_cannot_take_the_node() {
        let sandbox = FakeSandbox::default();
        let pool = pool(4, 1);
        let first = pool
            .acquire(&key("a", 1), &anyone(), &sandbox, spec, 64, WAIT)
            .await
            .unwrap();
        // The second caller of `a` waits for the first instance...
        let started = Instant::now();
        let second = {
            let pool = pool.clone();
            tokio::spawn(async move {
                let sandbox = FakeSandbox::default();
                pool.acquire(
                    &key("a", 1),
                    &anyone(),
                    &sandbox,
                    spec,
                    64,
                    Duration::from_millis(200),
                )
                .await
                .map(|l| l.cold)
            })
        };
        // ...while another function gets an instance at once.
        let other = pool
            .acquire(&key("b", 1), &anyone(), &sandbox, spec, 64, WAIT)
            .await
            .unwrap();
        assert!(started.elapsed() < Duration::from_millis(150));
        assert!(matches!(
            second.await.unwrap(),
            Err(AcquireError::Saturated(_))
        ));
        pool.release(first, true);
        let again = pool
            .acquire(&key("a", 1), &anyone(), &sandbox, spec, 64, WAIT)
            .await
            .unwrap();
        assert!(!again.cold, "the caller gets the instance that came back");
        pool.release(again, true);
        pool.release(other, true);
    }

    #[tokio::test]
    async fn the_memory_budget_holds() {
        let sandbox = FakeSandbox::default();
        let pool = Pool::new(
            PoolLimits {
                instances: 8,
                per_function: 8,
                memory_mb: 100,
                max_queue: 64,
            },
            Duration::from_secs(300),
            Duration::from_secs(3600),
            metrics(),
        );
        let a = pool
            .acquire(&key("a", 1), &anyone(), &sandbox, spec, 64, WAIT)
            .await
            .unwrap();
        let err = pool
            .acquire(
                &key("b", 1),
                &anyone(),
                &sandbox,
                spec,
                64,
                Duration::from_millis(100),
            )
            .await
            .err()
            .unwrap();
        assert!(
            matches!(err, AcquireError::Saturated(ref m) if m.contains("memory")),
            "{err:?}"
        );
        assert!(matches!(
            pool.acquire(&key("c", 1), &anyone(), &sandbox, spec, 200, WAIT)
                .await,
            Err(AcquireError::Saturated(_))
        ));
        pool.release(a, true);
        // The idle instance is evicted to make room.
        let b = pool
            .acquire(&key("b", 1), &anyone(), &sandbox, spec, 64, WAIT)
            .await
            .unwrap();
        pool.release(b, true);
    }

    #[tokio::test]
    async fn a_new_version_retires_the_old_and_the_floor_never_drops() {
        let sandbox = FakeSandbox::default();
        let pool = pool(4, 4);
        let old = pool
            .acquire(&key("a", 1), &anyone(), &sandbox, spec, 64, WAIT)
            .await
            .unwrap();
        let busy_old = pool
            .acquire(&key("a", 1), &anyone(), &sandbox, spec, 64, WAIT)
            .await
            .unwrap();
        pool.release(old, true);
        pool.retire("a", 2);
        settle().await;
        assert_eq!(
            sandbox.counters.destroyed.load(Ordering::SeqCst),
            1,
            "idle v1 goes now"
        );
        // A late retire of an older version cannot bring v1 back.
        pool.retire("a", 1);
        pool.release(busy_old, true);
        settle().await;
        assert_eq!(
            sandbox.counters.destroyed.load(Ordering::SeqCst),
            2,
            "busy v1 goes when it returns"
        );
        assert_eq!(pool.counts("a"), (0, 0));
    }

    #[tokio::test]
    async fn a_hung_idle_instance_is_replaced() {
        let sandbox = FakeSandbox::default();
        let pool = Pool::new(
            PoolLimits {
                instances: 4,
                per_function: 4,
                memory_mb: 1024,
                max_queue: 64,
            },
            Duration::from_secs(300),
            Duration::from_millis(100),
            metrics(),
        );
        let lease = pool
            .acquire(&key("a", 1), &anyone(), &sandbox, spec, 64, WAIT)
            .await
            .unwrap();
        pool.release(lease, true);
        sandbox.hang_pings.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + HEARTBEAT_TIMEOUT + Duration::from_secs(3);
        while sandbox.counters.destroyed.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(sandbox.counters.destroyed.load(Ordering::SeqCst), 1);
        assert_eq!(pool.counts("a"), (0, 0));
    }

    #[tokio::test]
    async fn shutdown_waits_for_every_teardown_and_abandons_starts() {
        let sandbox = Arc::new(FakeSandbox::default());
        let pool = pool(8, 8);
        let idle = pool
            .acquire(&key("a", 1), &anyone(), &*sandbox, spec, 64, WAIT)
            .await
            .unwrap();
        pool.release(idle, true);
        let busy = pool
            .acquire(&key("b", 1), &anyone(), &*sandbox, spec, 64, WAIT)
            .await
            .unwrap();
        let slow = Arc::new(FakeSandbox {
            start_delay: Duration::from_secs(30),
            ..FakeSandbox::default()
        });
        let starting = {
            let (pool, slow) = (pool.clone(), slow.clone());
            tokio::spawn(async move {
                pool.acquire(&key("c", 1), &anyone(), &*slow, spec, 64, WAIT)
                    .await
            })
        };
        settle().await;
        let stopping = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.shutdown().await })
        };
        assert!(matches!(starting.await.unwrap(), Err(AcquireError::Closed)));
        settle().await;
        assert!(!stopping.is_finished(), "a busy instance is still out");
        pool.release(busy, true);
        tokio::time::timeout(Duration::from_secs(5), stopping)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(sandbox.counters.destroyed.load(Ordering::SeqCst), 2);
        assert!(matches!(
            pool.acquire(&key("a", 1), &anyone(), &*sandbox, spec, 64, WAIT)
                .await,
            Err(AcquireError::Closed)
        ));
    }

    #[tokio::test]
    async fn a_tenant_at_its_quota_is_refused_and_others_are_not() {
        let sandbox = FakeSandbox::default();
        let pool = pool(8, 8);
        let capped = tenant("a", Some(2), Some(128));
        let first = pool
            .acquire(&key("a1", 1), &capped, &sandbox, spec, 64, WAIT)
            .await
            .unwrap();
        let second = pool
            .acquire(&key("a2", 1), &capped, &sandbox, spec, 64, WAIT)
            .await
            .unwrap();
        let refused = pool
            .acquire(&key("a3", 1), &capped, &sandbox, spec, 64, WAIT)
            .await
            .err()
            .unwrap();
        assert!(
            matches!(refused, AcquireError::TenantFull(ref m) if m.contains("2 instances")),
            "{refused:?}"
        );
        // Another tenant is not held back by a's quota.
        let other = pool
            .acquire(
                &key("b1", 1),
                &tenant("b", Some(2), None),
                &sandbox,
                spec,
                64,
                WAIT,
            )
            .await
            .unwrap();
        // An idle instance of the tenant makes room for its own next one.
        pool.release(first, true);
        let third = pool
            .acquire(&key("a3", 1), &capped, &sandbox, spec, 64, WAIT)
            .await
            .unwrap();
        settle().await;
        assert_eq!(sandbox.counters.destroyed.load(Ordering::SeqCst), 1);
        // Memory: 128 MiB allows two of 64, not one of 64 plus one of 100.
        pool.release(third, false);
        let big = pool
            .acquire(&key("a4", 1), &capped, &sandbox, spec, 100, WAIT)
            .await
            .err()
            .unwrap();
        assert!(
            matches!(big, AcquireError::TenantFull(ref m) if m.contains("MiB")),
            "{big:?}"
        );
        pool.release(second, false);
        pool.release(other, false);
        settle().await;
        assert!(
            pool.tenants.lock().unwrap().is_empty(),
            "every hold returned"
        );
    }
}
