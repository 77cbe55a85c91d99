//! Prometheus metrics (`GET /metrics`).

use std::sync::Mutex;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of per-invocation series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// The function's tenant.
    pub tenant: String,
    /// Function name (unique within its tenant).
    pub function: String,
    /// `success`, `error`, `timeout`, `oom`, `crash`, `unavailable`.
    pub outcome: String,
}

/// Labels of per-function series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FunctionLabels {
    /// The function's tenant.
    pub tenant: String,
    /// Function name (unique within its tenant).
    pub function: String,
}

fn duration_histogram() -> Histogram {
    // 0.25 ms .. ~8 s
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

/// Every metric the platform exports.
pub struct Metrics {
    registry: Mutex<Registry>,
    /// Invocations by function and outcome.
    pub invocations: Family<OutcomeLabels, Counter>,
    /// End-to-end invocation latency, seconds.
    pub duration: Family<FunctionLabels, Histogram, fn() -> Histogram>,
    /// Invocations that started a new instance.
    pub cold_starts: Family<FunctionLabels, Counter>,
    /// Time to start an instance and load its handler, seconds.
    pub cold_start_duration: Family<FunctionLabels, Histogram, fn() -> Histogram>,
    /// Instances alive now (idle or busy).
    pub live_instances: Gauge,
    /// Instances idle and ready now.
    pub warm_instances: Gauge,
    /// Instances being started now.
    pub starting_instances: Gauge,
    /// Pre-started instances ready now, with no function yet.
    pub prestarted_instances: Gauge,
    /// Invocations waiting for a busy function's instance now.
    pub queued_invocations: Gauge,
    /// Invocations turned away, by reason.
    pub rejections: Family<ReasonLabels, Counter>,
    /// Time to start an instance, by why it started: `on_demand` (a call
    /// found none idle) or `ahead` (warm, `min_instances`).
    pub instance_start: Family<StartLabels, Histogram, fn() -> Histogram>,
    /// Asynchronous invocations accepted and not final.
    pub async_backlog: Gauge,
    /// Asynchronous attempts that failed and will be retried.
    pub async_retries: Counter,
    /// Asynchronous invocations that exhausted their retries.
    pub async_dead_letters: Counter,
    /// Schedule ticks that queued an invocation.
    pub schedule_ticks: Counter,
    attestation: Family<AttestationLabels, Gauge>,
}

/// Why an invocation was turned away.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// `queue_full` (429), `tenant_quota` (429), `rate_limited` (429),
    /// `no_capacity` (503).
    pub reason: String,
}

/// Why an instance started, and how.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StartLabels {
    /// `on_demand` or `ahead`.
    pub kind: String,
    /// `prestarted` (a pre-started instance, specialised) or `full` (a
    /// sandbox and runtime started for the function).
    pub from: String,
}

/// Labels of the node's attestation state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttestationLabels {
    kind: String,
    simulated: String,
    hardware: String,
}

impl Metrics {
    /// Register every metric.
    pub fn new(executors: &[&str]) -> Metrics {
        let mut registry = Registry::with_prefix("faas");
        let invocations = Family::<OutcomeLabels, Counter>::default();
        let duration = Family::new_with_constructor(duration_histogram as fn() -> Histogram);
        let cold_starts = Family::<FunctionLabels, Counter>::default();
        let cold_start_duration =
            Family::new_with_constructor(duration_histogram as fn() -> Histogram);
        let live_instances = Gauge::default();
        let warm_instances = Gauge::default();
        registry.register(
            "invocations",
            "Invocations by function and outcome",
            invocations.clone(),
        );
        registry.register(
            "invocation_duration_seconds",
            "End-to-end invocation latency, cold starts included",
            duration.clone(),
        );
        registry.register(
            "cold_starts",
            "Invocations that had to start a new instance",
            cold_starts.clone(),
        );
        registry.register(
            "cold_start_duration_seconds",
            "Time to start an instance and load its handler",
            cold_start_duration.clone(),
        );
        registry.register(
            "live_instances",
            "Sandbox instances alive, idle or busy",
            live_instances.clone(),
        );
        registry.register(
            "warm_instances",
            "Sandbox instances idle and ready",
            warm_instances.clone(),
        );
        let starting_instances = Gauge::default();
        registry.register(
            "starting_instances",
            "Sandbox instances being started",
            starting_instances.clone(),
        );
        let prestarted_instances = Gauge::default();
        registry.register(
            "prestarted_instances",
            "Pre-started instances ready now, with no function yet",
            prestarted_instances.clone(),
        );
        let queued_invocations = Gauge::default();
        registry.register(
            "queued_invocations",
            "Invocations waiting for an instance of a function whose instances are all busy",
            queued_invocations.clone(),
        );
        let rejections = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "rejections",
            "Invocations turned away, by reason",
            rejections.clone(),
        );
        let instance_start = Family::new_with_constructor(duration_histogram as fn() -> Histogram);
        registry.register(
            "instance_start_seconds",
            "Time to start an instance, by why it started (on_demand, ahead) and from what (prestarted, full)",
            instance_start.clone(),
        );
        let async_backlog = Gauge::default();
        registry.register(
            "async_backlog",
            "Asynchronous invocations accepted and not final",
            async_backlog.clone(),
        );
        let async_retries = Counter::default();
        registry.register(
            "async_retries",
            "Asynchronous attempts that failed and were scheduled again",
            async_retries.clone(),
        );
        let async_dead_letters = Counter::default();
        registry.register(
            "async_dead_letters",
            "Asynchronous invocations that exhausted their retries",
            async_dead_letters.clone(),
        );
        let schedule_ticks = Counter::default();
        registry.register(
            "schedule_ticks",
            "Schedule ticks that queued an invocation",
            schedule_ticks.clone(),
        );
        let info = Family::<ExecutorLabels, Gauge>::default();
        for executor in executors {
            info.get_or_create(&ExecutorLabels {
                executor: executor.to_string(),
            })
            .set(1);
        }
        registry.register("executor_info", "Sandbox kinds offered", info);
        let attestation = Family::<AttestationLabels, Gauge>::default();
        registry.register(
            "attestation_verified",
            "1 when the node's current evidence verified (simulated evidence is labelled so)",
            attestation.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            invocations,
            duration,
            cold_starts,
            cold_start_duration,
            live_instances,
            warm_instances,
            starting_instances,
            prestarted_instances,
            queued_invocations,
            rejections,
            instance_start,
            async_backlog,
            async_retries,
            async_dead_letters,
            schedule_ticks,
            attestation,
        }
    }

    /// Record the node's current attestation verdict.
    pub fn set_attestation(&self, kind: &str, simulated: bool, hardware: bool, ok: bool) {
        self.attestation.clear();
        self.attestation
            .get_or_create(&AttestationLabels {
                kind: kind.to_string(),
                simulated: simulated.to_string(),
                hardware: hardware.to_string(),
            })
            .set(i64::from(ok));
    }

    /// Count an invocation turned away for `reason`.
    pub fn reject(&self, reason: &str) {
        self.rejections
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().expect("metrics lock");
        encode(&mut out, &registry).expect("writing to a String cannot fail");
        out
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExecutorLabels {
    executor: String,
}
