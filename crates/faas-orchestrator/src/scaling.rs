//! Per-function scaling: the limits the pool applies to a function (its
//! `Scaling` over the node's defaults), changing them without a deploy,
//! starting instances ahead of calls (`warm`), and keeping `min_instances`
//! started at all times: after a deploy, after a restart, after a crash.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use faas_auth::{Caller, Scope};
use faas_common::api::FunctionInfo;
use faas_common::Scaling;

use crate::pool::FunctionLimits;
use crate::store::FunctionVersion;
use crate::{tenancy, Orchestrator, OrchestratorError};

/// How long starting an instance ahead of calls waits for node capacity:
/// warming never queues behind invocations for long.
const WARM_WAIT: Duration = Duration::from_secs(1);

/// How often provisioned functions are checked for missing instances.
const PROVISION_EVERY: Duration = Duration::from_secs(1);

/// The scaling in force for `limits` (what `GET /functions/{fn}/status` shows).
pub(crate) fn effective(limits: &FunctionLimits) -> Scaling {
    let u32_of = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    Scaling {
        min_instances: Some(u32_of(limits.min_instances)),
        max_instances: Some(u32_of(limits.max_instances)),
        concurrency: Some(1),
        idle_timeout_sec: Some(u32::try_from(limits.idle_timeout.as_secs()).unwrap_or(u32::MAX)),
        max_queue: Some(u32_of(limits.max_queue)),
    }
}

impl Orchestrator {
    /// What the pool lets `f` hold and keep: its scaling over the node's defaults.
    pub(crate) fn limits_of(&self, f: &FunctionVersion) -> FunctionLimits {
        let defaults = self.pool.default_limits();
        let s = &f.scaling;
        let max_instances = s
            .max_instances
            .map_or(defaults.max_instances, |m| m as usize)
            .min(defaults.max_instances);
        FunctionLimits {
            max_instances,
            min_instances: s.min_instances.map_or(0, |m| m as usize).min(max_instances),
            idle_timeout: s
                .idle_timeout_sec
                .map_or(defaults.idle_timeout, |t| Duration::from_secs(t.into())),
            max_queue: s.max_queue.map_or(defaults.max_queue, |q| q as usize),
        }
    }

    /// Replace a function's scaling, in force at once (no redeploy).
    pub async fn set_scaling(
        &self,
        caller: &Caller,
        id_or_name: &str,
        scaling: Scaling,
    ) -> Result<FunctionInfo, OrchestratorError> {
        faas_common::validate::scaling(&scaling)
            .map_err(|e| OrchestratorError::Invalid(e.to_string()))?;
        let mut f = self.function(caller, Scope::Deploy, id_or_name).await?;
        self.store
            .set_scaling(&caller.tenant, &f.id, scaling)
            .await?;
        f.scaling = scaling;
        self.pool.limit_function(&f.id, self.limits_of(&f));
        tracing::info!(tenant = %f.tenant, function = %f.name, ?scaling, "scaling set");
        self.audit(tenancy::entry(
            caller,
            "scaling",
            Some(&f.name),
            Some(serde_json::to_string(&scaling).unwrap_or_default()),
        ))
        .await;
        Ok(f.info())
    }

    /// Start instances of a function until `instances` of it are warm (at
    /// most its `max_instances`); returns how many are.
    pub async fn warm(
        self: &Arc<Self>,
        caller: &Caller,
        id_or_name: &str,
        instances: usize,
    ) -> Result<usize, OrchestratorError> {
        let f = self.function(caller, Scope::Invoke, id_or_name).await?;
        if let Some(required) = &f.attestation {
            self.admit(&f.name, required)?;
        }
        let limits = self.limits_of(&f);
        let instances = instances.clamp(1, limits.max_instances);
        let name = f.name.clone();
        let (warmed, failure) = self.start_instances(f, instances).await?;
        match failure {
            Some(e) if warmed == 0 => Err(e),
            _ => {
                tracing::info!(tenant = %caller.tenant, function = %name, warmed, "warmed");
                Ok(warmed)
            }
        }
    }

    /// Hold `leases` instances of `f` at once (idle ones first, new ones for
    /// the rest), then give them all back warm: (how many, the first failure).
    ///
    /// One task owns the whole of it, so a caller that goes away leaves no
    /// lease behind. Every lease is held until all are in: given back one by
    /// one, the next would just take the previous instance again.
    async fn start_instances(
        self: &Arc<Self>,
        f: FunctionVersion,
        leases: usize,
    ) -> Result<(usize, Option<OrchestratorError>), OrchestratorError> {
        let secrets = Arc::new(self.tenancy.secrets_of(&self.store, &f.id).await?);
        let f = Arc::new(f);
        let this = self.clone();
        tokio::spawn(async move {
            let starting: Vec<_> = (0..leases)
                .map(|_| {
                    let (this, f, secrets) = (this.clone(), f.clone(), secrets.clone());
                    tokio::spawn(async move {
                        let request_id = format!("warm-{}", uuid::Uuid::new_v4());
                        this.acquire(&f, &secrets, &request_id, WARM_WAIT).await
                    })
                })
                .collect();
            let mut held = Vec::new();
            let mut failure = None;
            for task in starting {
                match task.await {
                    Ok(Ok(lease)) => held.push(lease),
                    Ok(Err(e)) => {
                        failure.get_or_insert(e);
                    }
                    Err(e) => {
                        failure
                            .get_or_insert(OrchestratorError::Internal(format!("warm task: {e}")));
                    }
                }
            }
            let n = held.len();
            for lease in held {
                this.pool.release(lease, true);
            }
            (n, failure)
        })
        .await
        .map_err(|e| OrchestratorError::Internal(format!("warm task: {e}")))
    }

    /// Keep every function's `min_instances` started, checking every second
    /// until shutdown: at server start, after a deploy or a scaling change,
    /// and after an instance dies (a crash, a failed heartbeat).
    pub fn keep_provisioned(self: &Arc<Self>) {
        let weak: Weak<Orchestrator> = Arc::downgrade(self);
        let stopping = self.stopping.clone();
        tokio::spawn(async move {
            // Per function: the last failure logged, so a function that
            // cannot get its instances says so once, not every second.
            let mut said: HashMap<String, String> = HashMap::new();
            loop {
                tokio::select! {
                    () = stopping.cancelled() => return,
                    () = tokio::time::sleep(PROVISION_EVERY) => {}
                }
                let Some(this) = weak.upgrade() else { return };
                this.provision_once(&mut said).await;
            }
        });
    }

    async fn provision_once(self: &Arc<Self>, said: &mut HashMap<String, String>) {
        let functions = match self.store.provisioned().await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!("cannot list provisioned functions: {e}");
                return;
            }
        };
        for f in functions {
            if self.stopping.is_cancelled() {
                return;
            }
            let limits = self.limits_of(&f);
            let (idle, busy) = self.pool.counts(&f.id);
            let (_, starting) = self.pool.pressure(&f.id);
            let missing = limits.min_instances.saturating_sub(idle + busy + starting);
            if missing == 0 {
                said.remove(&f.id);
                continue;
            }
            let (id, name, tenant) = (f.id.clone(), f.name.clone(), f.tenant.clone());
            let outcome = match &f.attestation {
                Some(required) => self.admit(&f.name, required).map(|_| ()),
                None => Ok(()),
            };
            // The idle ones are taken too, so that the starts are new instances.
            let outcome = match outcome {
                Ok(()) => self.start_instances(f, idle + missing).await,
                Err(e) => Err(e),
            };
            let failure = match outcome {
                Ok((_, None)) => None,
                Ok((_, Some(e))) | Err(e) => Some(e.to_string()),
            };
            match failure {
                None => {
                    tracing::info!(%tenant, function = %name, started = missing, "provisioned instances started");
                    said.remove(&id);
                }
                Some(why) => {
                    if said.get(&id) != Some(&why) {
                        tracing::warn!(%tenant, function = %name, "cannot keep its min_instances started: {why}");
                        said.insert(id, why);
                    }
                }
            }
        }
    }
}
