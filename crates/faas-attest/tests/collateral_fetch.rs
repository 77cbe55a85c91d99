//! Fetching TDX collateral from a PCCS, caching it, and refetching it when it expires,
//! against a PCCS stand-in on loopback serving dcap-qvl's sample collateral.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use common::*;
use dcap_qvl::QuoteCollateralV3;
use faas_attest::{CollateralSource, EvidenceKind, PccsConfig, TdxCollateral, Verifier};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A PCCS stand-in: answers the four v4 endpoints from one collateral sample and counts
/// the requests per path.
struct FakePccs {
    addr: SocketAddr,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    down: Arc<AtomicBool>,
}

impl FakePccs {
    async fn start(sample: &str) -> Self {
        let c: QuoteCollateralV3 = serde_json::from_str(sample).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(Mutex::new(HashMap::new()));
        let down = Arc::new(AtomicBool::new(false));
        let (h, d) = (hits.clone(), down.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let (c, h, d) = (c.clone(), h.clone(), d.clone());
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let line = String::from_utf8_lossy(&request)
                        .lines()
                        .next()
                        .unwrap_or("")
                        .to_owned();
                    let target = line.split(' ').nth(1).unwrap_or("").to_owned();
                    let path = target.split('?').next().unwrap().to_owned();
                    *h.lock().unwrap().entry(path.clone()).or_default() += 1;
                    let (status, headers, body) = if d.load(Ordering::SeqCst) {
                        ("500 Internal Server Error", vec![], b"down".to_vec())
                    } else {
                        respond(&c, &path, &target)
                    };
                    let mut head = format!(
                        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
                        body.len()
                    );
                    for (name, value) in headers {
                        head.push_str(&format!("{name}: {value}\r\n"));
                    }
                    head.push_str("\r\n");
                    let _ = stream.write_all(head.as_bytes()).await;
                    let _ = stream.write_all(&body).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Self { addr, hits, down }
    }

    fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn total_hits(&self) -> usize {
        self.hits.lock().unwrap().values().sum()
    }
}

fn respond(
    c: &QuoteCollateralV3,
    path: &str,
    target: &str,
) -> (&'static str, Vec<(String, String)>, Vec<u8>) {
    let enc = |pem: &str| utf8_percent_encode(pem, NON_ALPHANUMERIC).to_string();
    match path {
        "/sgx/certification/v4/pckcrl" => {
            assert!(
                target.contains("ca=platform") && target.contains("encoding=der"),
                "{target}"
            );
            (
                "200 OK",
                vec![(
                    "SGX-PCK-CRL-Issuer-Chain".into(),
                    enc(&c.pck_crl_issuer_chain),
                )],
                c.pck_crl.clone(),
            )
        }
        "/tdx/certification/v4/tcb" => {
            assert!(target.contains("fmspc=B0C06F000000"), "{target}");
            let body = format!(
                r#"{{"tcbInfo":{},"signature":"{}"}}"#,
                c.tcb_info,
                hex::encode(&c.tcb_info_signature)
            );
            (
                "200 OK",
                vec![(
                    "TCB-Info-Issuer-Chain".into(),
                    enc(&c.tcb_info_issuer_chain),
                )],
                body.into_bytes(),
            )
        }
        "/tdx/certification/v4/qe/identity" => {
            let body = format!(
                r#"{{"enclaveIdentity":{},"signature":"{}"}}"#,
                c.qe_identity,
                hex::encode(&c.qe_identity_signature)
            );
            (
                "200 OK",
                vec![(
                    "SGX-Enclave-Identity-Issuer-Chain".into(),
                    enc(&c.qe_identity_issuer_chain),
                )],
                body.into_bytes(),
            )
        }
        // A PCCS returns the root CA CRL hex-encoded.
        "/sgx/certification/v4/rootcacrl" => {
            ("200 OK", vec![], hex::encode(&c.root_ca_crl).into_bytes())
        }
        _ => ("404 Not Found", vec![], Vec::new()),
    }
}

fn config(pccs: &FakePccs, cache: &std::path::Path) -> PccsConfig {
    PccsConfig {
        cache_dir: Some(cache.to_owned()),
        ..PccsConfig::new(pccs.base_url())
    }
}

#[tokio::test]
async fn fetched_collateral_verifies_the_quote_and_is_cached() {
    let pccs = FakePccs::start(TDX_COLLATERAL).await;
    let cache = tempfile::tempdir().unwrap();
    let source = CollateralSource::pccs(config(&pccs, cache.path())).unwrap();

    let fetched = source.for_quote(TDX_QUOTE, TDX_SAMPLE_TIME).await.unwrap();
    assert_eq!(fetched, collateral(TDX_COLLATERAL));
    assert_eq!(pccs.total_hits(), 4);

    let evidence = sample_evidence(EvidenceKind::Tdx, TDX_QUOTE, TDX_REPORT_DATA_OFFSET);
    let v = Verifier::new(sample_policy()).unwrap().verify(
        &evidence,
        None,
        Some(&fetched),
        TDX_SAMPLE_TIME,
    );
    assert!(v.ok && v.hardware, "{:?}", v.reasons);
    assert_eq!(v.tcb_status.as_deref(), Some("UpToDate"));

    // Memory cache.
    source.for_quote(TDX_QUOTE, TDX_SAMPLE_TIME).await.unwrap();
    assert_eq!(pccs.total_hits(), 4);

    // Disk cache, per platform.
    let file = cache.path().join("tdx-B0C06F000000-platform.json");
    assert_eq!(TdxCollateral::load(&file).unwrap(), fetched);
    let restarted = CollateralSource::pccs(config(&pccs, cache.path())).unwrap();
    assert_eq!(
        restarted
            .for_quote(TDX_QUOTE, TDX_SAMPLE_TIME)
            .await
            .unwrap(),
        fetched
    );
    assert_eq!(pccs.total_hits(), 4);
}

#[tokio::test]
async fn expired_cache_entries_are_refetched() {
    let pccs = FakePccs::start(TDX_COLLATERAL).await;
    let cache = tempfile::tempdir().unwrap();
    let source = CollateralSource::pccs(config(&pccs, cache.path())).unwrap();
    let fetched = source.for_quote(TDX_QUOTE, TDX_SAMPLE_TIME).await.unwrap();
    assert_eq!(pccs.total_hits(), 4);
    let next_update = fetched.next_update().unwrap();

    // Past nextUpdate: refetched from the memory-cached state...
    source.for_quote(TDX_QUOTE, next_update + 1).await.unwrap();
    assert_eq!(pccs.total_hits(), 8);
    // ...and from the disk-cached state after a restart.
    let restarted = CollateralSource::pccs(config(&pccs, cache.path())).unwrap();
    restarted
        .for_quote(TDX_QUOTE, next_update + 1)
        .await
        .unwrap();
    assert_eq!(pccs.total_hits(), 12);

    // Within refresh_before of nextUpdate: refreshed ahead of expiry.
    source
        .for_quote(TDX_QUOTE, next_update - 3600)
        .await
        .unwrap();
    assert_eq!(pccs.total_hits(), 16);
}

#[tokio::test]
async fn a_failed_refresh_falls_back_to_unexpired_cache_only() {
    let pccs = FakePccs::start(TDX_COLLATERAL).await;
    let cache = tempfile::tempdir().unwrap();
    let source = CollateralSource::pccs(config(&pccs, cache.path())).unwrap();
    let fetched = source.for_quote(TDX_QUOTE, TDX_SAMPLE_TIME).await.unwrap();
    let next_update = fetched.next_update().unwrap();

    pccs.down.store(true, Ordering::SeqCst);
    let stale = source.for_quote(TDX_QUOTE, next_update - 60).await.unwrap();
    assert_eq!(
        stale, fetched,
        "still valid: served from cache while the PCCS is down"
    );

    let err = source
        .for_quote(TDX_QUOTE, next_update + 1)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("HTTP 500"), "{err}");
}

#[tokio::test]
async fn file_source_and_bad_quotes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("collateral.json");
    std::fs::write(&path, TDX_COLLATERAL).unwrap();
    let source = CollateralSource::file(&path);
    assert_eq!(
        source.for_quote(TDX_QUOTE, TDX_SAMPLE_TIME).await.unwrap(),
        collateral(TDX_COLLATERAL)
    );

    let pccs = FakePccs::start(TDX_COLLATERAL).await;
    let source = CollateralSource::pccs(PccsConfig::new(pccs.base_url())).unwrap();
    assert!(source
        .for_quote(b"not a quote", TDX_SAMPLE_TIME)
        .await
        .is_err());
    assert_eq!(pccs.total_hits(), 0);
}
