//! Cron schedules end to end: ticks fire asynchronous invocations with the
//! schedule's payload; ticks missed while the server was down fire once, for
//! the newest; schedules are managed through the API and the CLI.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use faas_tester::{require, Executor, TestServer};
use serde_json::{json, Value};

const ECHO: &str = "def handler(event, context):\n    return {'got': event}\n";

/// Request ids of the function's recorded invocations, oldest first.
async fn invocations(s: &TestServer, name: &str) -> Vec<String> {
    let logs = s.get(&format!("/functions/{name}/logs?limit=100")).await.1;
    let mut ids: Vec<String> = logs["invocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["request_id"].as_str().unwrap().to_string())
        .collect();
    ids.reverse();
    ids
}

/// Each recorded invocation of `name` with the second (of the minute) of the
/// tick it is for.
async fn fired_ticks(s: &TestServer, name: &str) -> Vec<(u64, Value)> {
    let mut fired = Vec::new();
    for id in invocations(s, name).await {
        let (_, v) = s.get(&format!("/functions/{name}/results/{id}")).await;
        let at = v["scheduled_for"].as_str().unwrap_or_default().to_string();
        let second = at
            .get(at.len().saturating_sub(3)..at.len().saturating_sub(1))
            .and_then(|sec| sec.parse().ok())
            .unwrap_or(u64::MAX);
        fired.push((second, v));
    }
    fired
}

async fn count_reaches(s: &TestServer, name: &str, n: usize, secs: u64) -> Vec<String> {
    let until = Instant::now() + Duration::from_secs(secs);
    loop {
        let ids = invocations(s, name).await;
        if ids.len() >= n {
            return ids;
        }
        assert!(
            Instant::now() < until,
            "only {} invocations: {}",
            ids.len(),
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticks_fire_and_a_missed_run_fires_once() {
    if !require(Executor::Native, "ticks_fire_and_a_missed_run_fires_once") {
        return;
    }
    let mut s = TestServer::start(Executor::Native).await;
    s.deploy(
        "every2s",
        "python",
        "main.handler",
        &[("main.py", ECHO)],
        json!({"schedules": [{"cron": "*/2 * * * * *", "payload": {"tick": true}}]}),
    )
    .await;
    let (code, list) = s.get("/functions/every2s/schedules").await;
    assert_eq!(code, 200, "{list}");
    let schedule = &list["schedules"][0];
    assert_eq!(schedule["cron"], "*/2 * * * * *");
    assert!(schedule["next_fire_at"].as_str().is_some(), "{list}");

    // On time: a tick every two seconds, each an async invocation with the payload.
    let ids = count_reaches(&s, "every2s", 2, 20).await;
    let (_, v) = s
        .get(&format!("/functions/every2s/results/{}", ids[0]))
        .await;
    assert_eq!(v["schedule_id"], schedule["id"], "{v}");
    assert!(v["scheduled_for"].as_str().unwrap().ends_with('Z'), "{v}");
    // Removed with the CLI: no more ticks.
    let id = schedule["id"].as_str().unwrap();
    let out = s.cli(&["schedule", "rm", "every2s", id], None).await;
    assert_eq!(out.code, 0, "{out:?}");
    let settled = invocations(&s, "every2s").await.len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        invocations(&s, "every2s").await.len() <= settled + 1,
        "at most one in flight"
    );
    let out = s.cli(&["schedule", "ls", "every2s"], None).await;
    assert_eq!(out.stdout.trim(), "", "{out:?}");

    // Three ticks fall while the server is down; one fires when it is back,
    // for the newest tick. (Seconds of the current minute, so nothing else
    // ticks for the rest of the test.)
    s.deploy(
        "catchup",
        "python",
        "main.handler",
        &[("main.py", ECHO)],
        json!({}),
    )
    .await;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let ticks: Vec<u64> = [6, 8, 10].iter().map(|d| now + d).collect();
    let cron = format!(
        "{},{},{} * * * * *",
        ticks[0] % 60,
        ticks[1] % 60,
        ticks[2] % 60
    );
    let out = s
        .cli(
            &[
                "schedule",
                "add",
                "catchup",
                "--cron",
                &cron,
                "-d",
                r#"{"n": 1}"#,
            ],
            None,
        )
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    s.stop().await;
    // A tick before the server was down may have fired on time; the others
    // are missed.
    let stopped_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let missed: Vec<u64> = ticks
        .iter()
        .copied()
        .filter(|t| *t as f64 > stopped_at)
        .collect();
    assert!(
        missed.len() >= 2,
        "the server took until {stopped_at} to stop"
    );
    let back = UNIX_EPOCH + Duration::from_secs(now + 12);
    if let Ok(wait) = back.duration_since(SystemTime::now()) {
        tokio::time::sleep(wait).await;
    }
    s.restart().await;
    let newest = ticks[2] % 60;
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let now_fired = fired_ticks(&s, "catchup").await;
        if now_fired
            .iter()
            .any(|(sec, v)| *sec == newest && v["status"] == "succeeded")
        {
            break;
        }
        assert!(
            Instant::now() < until,
            "the missed ticks never fired: {now_fired:?}\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after: Vec<u64> = fired_ticks(&s, "catchup")
        .await
        .into_iter()
        .map(|(sec, _)| sec)
        .filter(|sec| missed.iter().any(|t| t % 60 == *sec))
        .collect();
    assert_eq!(
        after,
        [newest],
        "the missed ticks {missed:?} fired once, for the newest"
    );
    s.stop_and_check_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_schedules_are_refused() {
    if !require(Executor::Native, "bad_schedules_are_refused") {
        return;
    }
    let s = TestServer::start(Executor::Native).await;
    let (code, v) = s
        .try_deploy(
            "bad",
            "python",
            "main.handler",
            &[("main.py", ECHO)],
            json!({"schedules": [{"cron": "61 * * * *"}]}),
        )
        .await;
    assert_eq!(code, 400, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("invalid cron expression"),
        "{v}"
    );
    assert_eq!(
        s.get("/functions/bad").await.0,
        404,
        "nothing half-registered"
    );
    s.deploy(
        "ok",
        "python",
        "main.handler",
        &[("main.py", ECHO)],
        json!({}),
    )
    .await;
    let (code, v) = s
        .post_json("/functions/ok/schedules", &json!({"cron": "* * *"}))
        .await;
    assert_eq!(code, 400, "{v}");
    for _ in 0..10 {
        let (code, v) = s
            .post_json("/functions/ok/schedules", &json!({"cron": "0 0 * * *"}))
            .await;
        assert_eq!(code, 201, "{v}");
    }
    let (code, v) = s
        .post_json("/functions/ok/schedules", &json!({"cron": "0 0 * * *"}))
        .await;
    assert_eq!(code, 409, "at most 10: {v}");
    assert_eq!(s.delete("/functions/ok/schedules/sch-nope").await.0, 404);
    s.stop_and_check_clean().await;
}
