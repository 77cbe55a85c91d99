//! The HTTP gateway as one of the runner's background services: when it stops,
//! the runner stops.

use std::sync::Mutex;

use blueprint_runner::error::RunnerError;
use blueprint_runner::BackgroundService;
use faas_gateway::serve::TlsAcceptor;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Serves `app` on an already bound listener (over TLS with an acceptor) once
/// the runner starts it.
pub struct GatewayService {
    listener: Mutex<Option<TcpListener>>,
    app: faas_gateway::Router,
    tls: Option<TlsAcceptor>,
}

impl GatewayService {
    /// Binding first, in `main`, makes a busy port a start-up error.
    pub fn new(listener: TcpListener, app: faas_gateway::Router, tls: Option<TlsAcceptor>) -> Self {
        GatewayService {
            listener: Mutex::new(Some(listener)),
            app,
            tls,
        }
    }
}

impl BackgroundService for GatewayService {
    async fn start(&self) -> Result<oneshot::Receiver<Result<(), RunnerError>>, RunnerError> {
        let listener = self
            .listener
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
            .ok_or_else(|| RunnerError::BackgroundService("gateway started twice".into()))?;
        let app = self.app.clone();
        let tls = self.tls.clone();
        let (done, rx) = oneshot::channel();
        tokio::spawn(async move {
            // The runner's end is the process's end: no graceful stop here.
            let served = faas_gateway::serve::serve(listener, app, tls, std::future::pending())
                .await
                .map_err(|e| RunnerError::BackgroundService(format!("HTTP gateway: {e}")));
            let _ = done.send(served);
        });
        Ok(rx)
    }
}
