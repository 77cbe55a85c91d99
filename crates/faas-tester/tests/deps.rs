//! Declared dependencies are installed once on the host and visible to the function.
//! Needs PyPI and the npm registry (reachable from our machines and CI).

use faas_tester::{executor_tests, require, Executor, TestServer};
use serde_json::json;

executor_tests!(python_and_node_dependencies_are_installed);

async fn python_and_node_dependencies_are_installed(executor: Executor) {
    if !require(executor, "python_and_node_dependencies_are_installed") {
        return;
    }
    let s = TestServer::start(executor).await;
    let py = "import six\ndef handler(event, context):\n    return {'six': six.__version__, 'path': six.__file__}\n";
    s.deploy(
        "withsix",
        "python",
        "m.handler",
        &[("m.py", py)],
        json!({"dependencies": ["six==1.16.0"]}),
    )
    .await;
    let v = s.invoke_json("withsix", json!(null)).await;
    assert_eq!(v["six"], "1.16.0");
    assert!(
        v["path"].as_str().unwrap().starts_with("/opt/faas/deps/"),
        "{v}"
    );

    let js = "const isNumber = require('is-number');\nexports.handler = (e) => ({ yes: isNumber(e.n), no: isNumber('x') });\n";
    s.deploy(
        "withnum",
        "node",
        "i.handler",
        &[("i.js", js)],
        json!({"dependencies": ["is-number@7.0.0"]}),
    )
    .await;
    assert_eq!(
        s.invoke_json("withnum", json!({"n": 5})).await,
        json!({"yes": true, "no": false})
    );

    // A package that does not exist is a clear 400, and nothing is registered.
    let (status, v) = s
        .try_deploy(
            "bad",
            "python",
            "m.handler",
            &[("m.py", py)],
            json!({"dependencies": ["surely-no-such-package-faas-xyz==9.9.9"]}),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    let error = v["error"].as_str().unwrap();
    assert!(
        error.contains("surely-no-such-package-faas-xyz==9.9.9") && error.contains("no wheel"),
        "{v}"
    );
    assert_eq!(s.get("/functions/bad").await.0, 404);
    s.stop_and_check_clean().await;
}
