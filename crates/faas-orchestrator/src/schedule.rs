//! Cron schedules: on each tick, an asynchronous invocation of the function
//! with the schedule's payload, through the same queue as
//! `POST /functions/{fn}/async-invoke` (so retries, dead letters and results
//! apply). A tick missed while the server was down fires once when it is back,
//! not once per missed tick: a schedule remembers the last tick that fired,
//! and only the newest tick past it fires.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use croner::Cron;
use faas_auth::{Caller, Scope};
use faas_common::api::{ScheduleInfo, ScheduleList};
use faas_common::ScheduleSpec;

use crate::async_invoke::{queued_record, rfc3339_at};
use crate::queue::QueuedInvocation;
use crate::store::StoredSchedule;
use crate::{tenancy, unix_ms, Orchestrator, OrchestratorError};

/// Most schedules per function.
pub const MAX_SCHEDULES: usize = 10;
/// Longest cron expression.
const MAX_CRON_LEN: usize = 256;
/// Largest payload of a schedule (its JSON text).
const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
/// How often schedules are checked.
const CHECK_EVERY: Duration = Duration::from_secs(1);

fn parse(cron: &str) -> Result<Cron, OrchestratorError> {
    if cron.len() > MAX_CRON_LEN {
        return Err(OrchestratorError::Invalid(format!(
            "a cron expression is at most {MAX_CRON_LEN} characters"
        )));
    }
    Cron::from_str(cron.trim())
        .map_err(|e| OrchestratorError::Invalid(format!("invalid cron expression {cron:?}: {e}")))
}

/// Check schedules given at deploy: (new id, cron, payload JSON) each.
pub(crate) fn checked(
    list: &[ScheduleSpec],
) -> Result<Vec<(String, String, String)>, OrchestratorError> {
    if list.len() > MAX_SCHEDULES {
        return Err(OrchestratorError::Invalid(format!(
            "a function has at most {MAX_SCHEDULES} schedules"
        )));
    }
    list.iter()
        .map(|s| {
            parse(&s.cron)?;
            let payload = serde_json::to_string(&s.payload)?;
            if payload.len() > MAX_PAYLOAD_BYTES {
                return Err(OrchestratorError::Invalid(format!(
                    "a schedule's payload is at most {MAX_PAYLOAD_BYTES} bytes of JSON"
                )));
            }
            Ok((new_id(), s.cron.trim().to_string(), payload))
        })
        .collect()
}

fn new_id() -> String {
    format!("sch-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// The tick to fire now, if any: the newest tick at or before `now_ms`, when
/// it is after `base_ms` (the last tick that fired, or the schedule's
/// creation). However many ticks were missed, one fires.
pub(crate) fn due(cron: &Cron, base_ms: i64, now_ms: i64) -> Option<i64> {
    // Whole seconds: croner keeps the fraction of the time it searches from,
    // and a tick must be the same instant on every check.
    let now = Utc
        .timestamp_millis_opt(now_ms - now_ms.rem_euclid(1000))
        .single()?;
    let tick = cron.find_previous_occurrence(&now, true).ok()?;
    let tick_ms = tick.timestamp_millis();
    (tick_ms > base_ms).then_some(tick_ms)
}

fn next_after(cron: &Cron, ms: i64) -> Option<String> {
    let at = Utc
        .timestamp_millis_opt(ms - ms.rem_euclid(1000))
        .single()?;
    let next = cron.find_next_occurrence(&at, false).ok()?;
    Some(rfc3339_at(next.timestamp_millis()))
}

fn info(s: &StoredSchedule) -> ScheduleInfo {
    let cron = parse(&s.cron).ok();
    ScheduleInfo {
        id: s.id.clone(),
        cron: s.cron.clone(),
        payload: serde_json::from_str(&s.payload).unwrap_or_default(),
        created_at: rfc3339_at(s.created_ms),
        last_fired_at: s.last_fire_ms.map(rfc3339_at),
        next_fire_at: cron.and_then(|c| next_after(&c, unix_ms())),
    }
}

impl Orchestrator {
    /// A function's schedules.
    pub async fn schedules(
        &self,
        caller: &Caller,
        id_or_name: &str,
    ) -> Result<ScheduleList, OrchestratorError> {
        let f = self.function(caller, Scope::Read, id_or_name).await?;
        Ok(ScheduleList {
            schedules: self
                .store
                .schedules(Some(&f.id))
                .await?
                .iter()
                .map(info)
                .collect(),
        })
    }

    /// Add a schedule to a function.
    pub async fn add_schedule(
        &self,
        caller: &Caller,
        id_or_name: &str,
        spec: ScheduleSpec,
    ) -> Result<ScheduleInfo, OrchestratorError> {
        let f = self.function(caller, Scope::Deploy, id_or_name).await?;
        let (id, cron, payload) = checked(std::slice::from_ref(&spec))?.remove(0);
        let schedule = StoredSchedule {
            id,
            tenant: f.tenant.clone(),
            function_id: f.id.clone(),
            cron,
            payload,
            created_ms: unix_ms(),
            last_fire_ms: None,
        };
        self.store
            .add_schedule(schedule.clone(), MAX_SCHEDULES)
            .await?;
        self.audit(tenancy::entry(
            caller,
            "schedule.add",
            Some(&f.name),
            Some(format!("{} {}", schedule.id, schedule.cron)),
        ))
        .await;
        Ok(info(&schedule))
    }

    /// Remove one of a function's schedules.
    pub async fn remove_schedule(
        &self,
        caller: &Caller,
        id_or_name: &str,
        schedule_id: &str,
    ) -> Result<(), OrchestratorError> {
        let f = self.function(caller, Scope::Deploy, id_or_name).await?;
        if !self.store.remove_schedule(&f.id, schedule_id).await? {
            return Err(OrchestratorError::NotFound(format!(
                "schedule {schedule_id:?}"
            )));
        }
        self.audit(tenancy::entry(
            caller,
            "schedule.remove",
            Some(&f.name),
            Some(schedule_id.to_string()),
        ))
        .await;
        Ok(())
    }

    /// Fire due ticks every second until shutdown.
    pub fn start_scheduler(self: &Arc<Self>) {
        let weak: Weak<Orchestrator> = Arc::downgrade(self);
        let stopping = self.stopping.clone();
        tokio::spawn(async move {
            let mut parsed: HashMap<String, Cron> = HashMap::new();
            loop {
                tokio::select! {
                    () = stopping.cancelled() => return,
                    () = tokio::time::sleep(CHECK_EVERY) => {}
                }
                let Some(this) = weak.upgrade() else { return };
                this.fire_due(&mut parsed).await;
            }
        });
    }

    async fn fire_due(&self, parsed: &mut HashMap<String, Cron>) {
        let schedules = match self.store.schedules(None).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot read schedules: {e}");
                return;
            }
        };
        let now = unix_ms();
        for s in schedules {
            if !parsed.contains_key(&s.cron) {
                match parse(&s.cron) {
                    Ok(c) => {
                        parsed.insert(s.cron.clone(), c);
                    }
                    Err(e) => {
                        tracing::warn!(schedule = %s.id, "skipping a schedule: {e}");
                        continue;
                    }
                }
            }
            let Some(tick) = due(
                &parsed[&s.cron],
                s.last_fire_ms.unwrap_or(s.created_ms),
                now,
            ) else {
                continue;
            };
            if let Err(e) = self.fire(&s, tick).await {
                tracing::warn!(schedule = %s.id, "schedule tick not fired: {e}");
            }
        }
    }

    /// Queue the invocation of `tick`, then record the tick: a crash between
    /// the two fires it again at the next start (at least once).
    async fn fire(&self, s: &StoredSchedule, tick: i64) -> Result<(), OrchestratorError> {
        let f = self.store.latest(&s.tenant, &s.function_id).await?;
        // A tick refused by the tenant's rate quota is skipped, as a call would be.
        let admitted = self.tenancy.admit_invocation(&s.tenant);
        if let Err(e) = &admitted {
            tracing::warn!(tenant = %s.tenant, function = %f.name, schedule = %s.id, "tick skipped: {e}");
        }
        if admitted.is_ok() {
            let request_id = uuid::Uuid::new_v4().to_string();
            let mut record = queued_record(&f, &request_id);
            record.schedule_id = Some(s.id.clone());
            record.scheduled_for = Some(rfc3339_at(tick));
            self.queue
                .enqueue(QueuedInvocation {
                    id: request_id.clone(),
                    tenant: s.tenant.clone(),
                    function_id: f.id.clone(),
                    payload: s.payload.clone().into_bytes(),
                    callback_url: None,
                    record,
                })
                .await?;
            self.async_wake.notify_one();
            self.metrics.schedule_ticks.inc();
            tracing::info!(tenant = %s.tenant, function = %f.name, schedule = %s.id, %request_id, "schedule fired");
        }
        self.store.schedule_fired(&s.id, tick).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(rfc3339: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_millis()
    }

    #[test]
    fn a_missed_run_of_ticks_fires_once_for_the_newest() {
        let every_five_minutes = parse("*/5 * * * *").unwrap();
        let last = ms("2026-12-01T10:00:00Z");
        // Not yet the next tick.
        assert_eq!(
            due(&every_five_minutes, last, ms("2026-12-01T10:04:59Z")),
            None
        );
        // On time, and the same tick however far into its second.
        for at in ["2026-12-01T10:05:00.300Z", "2026-12-01T10:05:00.900Z"] {
            assert_eq!(
                due(&every_five_minutes, last, ms(at)),
                Some(ms("2026-12-01T10:05:00Z"))
            );
        }
        // Fired: nothing more until the next tick.
        let fired = ms("2026-12-01T10:05:00Z");
        assert_eq!(
            due(&every_five_minutes, fired, ms("2026-12-01T10:05:00.700Z")),
            None
        );
        let listed = parse("6,8,10 * * * * *").unwrap();
        let fired = ms("2026-12-01T10:00:10Z");
        for at in ["2026-12-01T10:00:12.500Z", "2026-12-01T10:00:13.612Z"] {
            assert_eq!(due(&listed, fired, ms(at)), None, "{at}");
        }
        // Down for an hour: twelve ticks missed, one fires, the newest.
        assert_eq!(
            due(&every_five_minutes, last, ms("2026-12-01T11:02:00Z")),
            Some(ms("2026-12-01T11:00:00Z"))
        );
        // Seconds, six fields.
        let every_two_seconds = parse("*/2 * * * * *").unwrap();
        assert_eq!(
            due(
                &every_two_seconds,
                ms("2026-12-01T10:00:00Z"),
                ms("2026-12-01T10:00:09Z")
            ),
            Some(ms("2026-12-01T10:00:08Z"))
        );
    }

    #[test]
    fn schedules_are_checked() {
        let spec = |cron: &str| ScheduleSpec {
            cron: cron.into(),
            payload: serde_json::json!({"a": 1}),
        };
        assert!(checked(&[spec("*/5 * * * *")]).is_ok());
        for bad in ["", "61 * * * *", "* * *", "every day"] {
            assert!(checked(&[spec(bad)]).is_err(), "{bad}");
        }
        assert!(checked(&vec![spec("* * * * *"); 11]).is_err());
        let big = ScheduleSpec {
            cron: "* * * * *".into(),
            payload: serde_json::json!("x".repeat(70_000)),
        };
        assert!(checked(&[big]).is_err());
    }
}
