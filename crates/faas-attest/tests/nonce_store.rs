//! Nonces are single-use and expire.

use std::time::Duration;

use faas_attest::{Nonce, NonceError, NonceStore};

#[test]
fn a_nonce_is_consumed_exactly_once() {
    let store = NonceStore::new(Duration::from_secs(60));
    let a = store.issue().unwrap();
    let b = store.issue().unwrap();
    assert_ne!(a, b);
    assert_eq!(store.outstanding(), 2);
    store.consume(&a).unwrap();
    assert_eq!(store.consume(&a), Err(NonceError::Unknown), "replay");
    store.consume(&b).unwrap();
    assert_eq!(store.outstanding(), 0);
}

#[test]
fn unknown_nonces_are_refused() {
    let store = NonceStore::new(Duration::from_secs(60));
    assert_eq!(
        store.consume(&Nonce::random().unwrap()),
        Err(NonceError::Unknown)
    );
}

#[test]
fn nonces_expire() {
    let store = NonceStore::new(Duration::from_millis(50));
    let n = store.issue().unwrap();
    std::thread::sleep(Duration::from_millis(120));
    assert_eq!(store.consume(&n), Err(NonceError::Expired));
    assert_eq!(store.consume(&n), Err(NonceError::Unknown));

    let stale = store.issue().unwrap();
    std::thread::sleep(Duration::from_millis(120));
    store.issue().unwrap();
    assert_eq!(
        store.outstanding(),
        1,
        "expired nonces are dropped on issue"
    );
    assert_eq!(store.consume(&stale), Err(NonceError::Unknown));
}

#[test]
fn outstanding_nonces_are_capped() {
    let store = NonceStore::with_capacity(Duration::from_secs(60), 2);
    store.issue().unwrap();
    let second = store.issue().unwrap();
    assert_eq!(store.issue(), Err(NonceError::StoreFull(2)));
    store.consume(&second).unwrap();
    store.issue().unwrap();
}

#[test]
fn hex_round_trip() {
    let n = Nonce::random().unwrap();
    assert_eq!(Nonce::from_hex(&n.to_hex()).unwrap(), n);
    assert_eq!(Nonce::from_hex("zz"), Err(NonceError::Malformed));
    let json = serde_json::to_string(&n).unwrap();
    assert_eq!(json, format!("\"{}\"", n.to_hex()));
}
