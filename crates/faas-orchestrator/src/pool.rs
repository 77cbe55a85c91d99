//! Warm instances: reuse an idle instance of the same function version when there
//! is one, start one (a cold start) when there is not, keep it after the call for
//! an idle period, and bound how many exist at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use faas_executor::{ExecutorError, Instance, InstanceSpec, Sandbox};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
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

struct Idle {
    instance: Box<dyn Instance>,
    since: Instant,
    /// When it last proved alive (released, or answered a heartbeat).
    checked: Instant,
    permit: OwnedSemaphorePermit,
}

/// How long the agent of an idle instance may take to answer a heartbeat.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct State {
    idle: HashMap<PoolKey, Vec<Idle>>,
    busy: HashMap<PoolKey, usize>,
    /// Per function, the lowest version still wanted; `u32::MAX` once deleted.
    floor: HashMap<String, u32>,
    closed: bool,
}

/// An instance lent to one invocation. Give it back with [`Pool::release`].
pub struct Lease {
    instance: Box<dyn Instance>,
    permit: OwnedSemaphorePermit,
    key: PoolKey,
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
}

/// Why no instance could be had.
#[derive(Debug)]
pub enum AcquireError {
    /// Every slot is busy and none freed up in time.
    Saturated(usize),
    /// The pool is shutting down.
    Closed,
    /// Starting the instance failed.
    Start(ExecutorError),
}

/// The instance pool.
pub struct Pool {
    state: Mutex<State>,
    slots: Arc<Semaphore>,
    max_instances: usize,
    idle_timeout: Duration,
    heartbeat: Duration,
    metrics: Arc<Metrics>,
    teardown: TaskTracker,
}

impl Pool {
    /// A pool of at most `max_instances` live instances; an idle instance is
    /// pinged every `heartbeat` and replaced when it does not answer (a hung
    /// guest is found before a caller waits on it).
    pub fn new(
        max_instances: usize,
        idle_timeout: Duration,
        heartbeat: Duration,
        metrics: Arc<Metrics>,
    ) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            state: Mutex::new(State::default()),
            slots: Arc::new(Semaphore::new(max_instances)),
            max_instances,
            idle_timeout,
            heartbeat,
            metrics,
            teardown: TaskTracker::new(),
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

    /// Lend a warm instance of `key`, or start one in `sandbox` from `spec` within `wait`.
    pub async fn acquire(
        &self,
        key: &PoolKey,
        sandbox: &dyn Sandbox,
        spec: impl FnOnce() -> InstanceSpec,
        wait: Duration,
    ) -> Result<Lease, AcquireError> {
        if let Some(idle) = self.take_idle(key)? {
            return Ok(Lease {
                instance: idle.instance,
                permit: idle.permit,
                key: key.clone(),
                cold: false,
                start_time: Duration::ZERO,
            });
        }
        let permit = self.slot(wait).await?;
        let started = Instant::now();
        let instance = sandbox.start(spec()).await.map_err(AcquireError::Start)?;
        self.metrics.live_instances.inc();
        let mut st = self.state.lock().expect("pool lock");
        *st.busy.entry(key.clone()).or_default() += 1;
        Ok(Lease {
            instance,
            permit,
            key: key.clone(),
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
            since: now,
            checked: now,
            permit: lease.permit,
        };
        self.keep_or_destroy(st, lease.key, idle, healthy);
    }

    /// Keep `idle` warm when it is healthy, of a wanted version and the pool is
    /// open; destroy it otherwise.
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
            .is_none_or(|&floor| key.version >= floor);
        if healthy && wanted && !st.closed {
            st.idle.entry(key).or_default().push(idle);
            self.metrics.warm_instances.inc();
        } else {
            drop(st);
            self.destroy(idle.instance, idle.permit);
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

    /// Stop keeping instances of `function_id` below `version` (`u32::MAX`: all of them).
    pub fn retire(&self, function_id: &str, version: u32) {
        let mut st = self.state.lock().expect("pool lock");
        st.floor.insert(function_id.to_string(), version);
        let stale: Vec<PoolKey> = st
            .idle
            .keys()
            .filter(|k| k.function_id == function_id && k.version < version)
            .cloned()
            .collect();
        let mut doomed = Vec::new();
        for k in stale {
            doomed.extend(st.idle.remove(&k).unwrap_or_default());
        }
        drop(st);
        for idle in doomed {
            self.metrics.warm_instances.dec();
            self.destroy(idle.instance, idle.permit);
        }
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

    /// Destroy every idle instance and refuse new work; waits until all
    /// teardowns (including those of leases returned meanwhile) finished.
    pub async fn shutdown(&self) {
        let doomed: Vec<Idle> = {
            let mut st = self.state.lock().expect("pool lock");
            st.closed = true;
            st.idle.drain().flat_map(|(_, v)| v).collect()
        };
        for idle in doomed {
            self.metrics.warm_instances.dec();
            self.destroy(idle.instance, idle.permit);
        }
        self.teardown.close();
        self.teardown.wait().await;
    }

    fn take_idle(&self, key: &PoolKey) -> Result<Option<Idle>, AcquireError> {
        let mut st = self.state.lock().expect("pool lock");
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

    /// A free slot; when all are taken, evict the longest-idle instance of any
    /// function, else wait for a busy one to come back.
    async fn slot(&self, wait: Duration) -> Result<OwnedSemaphorePermit, AcquireError> {
        loop {
            if let Ok(p) = self.slots.clone().try_acquire_owned() {
                return Ok(p);
            }
            let victim = {
                let mut st = self.state.lock().expect("pool lock");
                let oldest = st
                    .idle
                    .iter()
                    .filter_map(|(k, v)| v.first().map(|i| (k.clone(), i.since)))
                    .min_by_key(|(_, since)| *since)
                    .map(|(k, _)| k);
                oldest.map(|k| {
                    let list = st.idle.get_mut(&k).expect("present");
                    let victim = list.remove(0);
                    if list.is_empty() {
                        st.idle.remove(&k);
                    }
                    victim
                })
            };
            match victim {
                Some(idle) => {
                    self.metrics.warm_instances.dec();
                    // Its permit returns at once; the teardown continues in the background.
                    self.destroy(idle.instance, idle.permit);
                }
                None => {
                    return match tokio::time::timeout(wait, self.slots.clone().acquire_owned())
                        .await
                    {
                        Ok(Ok(p)) => Ok(p),
                        Ok(Err(_)) => Err(AcquireError::Closed),
                        Err(_) => Err(AcquireError::Saturated(self.max_instances)),
                    };
                }
            }
        }
    }

    fn expire_idle(&self) {
        let now = Instant::now();
        let mut expired = Vec::new();
        {
            let mut st = self.state.lock().expect("pool lock");
            for list in st.idle.values_mut() {
                let (old, keep): (Vec<Idle>, Vec<Idle>) = list
                    .drain(..)
                    .partition(|i| now.duration_since(i.since) >= self.idle_timeout);
                *list = keep;
                expired.extend(old);
            }
            st.idle.retain(|_, v| !v.is_empty());
        }
        for idle in expired {
            self.metrics.warm_instances.dec();
            self.destroy(idle.instance, idle.permit);
        }
    }

    fn destroy(&self, instance: Box<dyn Instance>, permit: OwnedSemaphorePermit) {
        drop(permit);
        let metrics = self.metrics.clone();
        self.teardown.spawn(async move {
            instance.destroy().await;
            metrics.live_instances.dec();
        });
    }
}
