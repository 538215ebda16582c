//! The properties every backend's OAuth grants must have (see `conformance_tests!`).

use crate::{AnyStore, OAuthTokens, SealedCredential};

fn sealed(byte: u8) -> SealedCredential {
    SealedCredential {
        nonce: vec![byte; 24],
        ciphertext: vec![byte; 40],
    }
}

fn tokens(s: &SealedCredential) -> OAuthTokens<'_> {
    OAuthTokens {
        sealed: s,
        expires_at: Some(1_000),
        scopes: "read write",
    }
}

/// A grant is stored, read, replaced (a new version, broken state cleared) and deleted, per
/// tenant and upstream.
pub async fn grant_round_trip(store: &AnyStore) {
    let one = sealed(1);
    assert_eq!(
        store
            .put_oauth_grant("acme", "crm", &tokens(&one))
            .await
            .unwrap(),
        1
    );
    assert_eq!(store.get_oauth_grant("globex", "crm").await.unwrap(), None);
    let g = store.get_oauth_grant("acme", "crm").await.unwrap().unwrap();
    assert_eq!(
        (g.sealed, g.expires_at, g.scopes.as_str()),
        (one, Some(1_000), "read write")
    );
    assert_eq!((g.version, g.broken, g.lease_until), (1, None, None));
    assert!(store
        .break_oauth_grant("acme", "crm", 1, "invalid_grant")
        .await
        .unwrap());
    let broken = store.list_oauth_grants(None, true).await.unwrap();
    assert_eq!(broken.len(), 1);
    assert_eq!(broken[0].broken.as_deref(), Some("invalid_grant"));
    // Connecting again replaces the grant and mends it.
    let two = sealed(2);
    assert_eq!(
        store
            .put_oauth_grant("acme", "crm", &tokens(&two))
            .await
            .unwrap(),
        2
    );
    assert!(store
        .list_oauth_grants(None, true)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store
            .list_oauth_grants(Some("acme"), false)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(store
        .list_oauth_grants(Some("globex"), false)
        .await
        .unwrap()
        .is_empty());
    assert!(store.delete_oauth_grant("acme", "crm").await.unwrap());
    assert!(!store.delete_oauth_grant("acme", "crm").await.unwrap());
}

/// One owner at a time holds a grant's refresh lease, until it expires or is given back;
/// new tokens are stored only over the version the refresh started from.
pub async fn refresh_lease_is_single_flight(store: &AnyStore) {
    let one = sealed(1);
    store
        .put_oauth_grant("acme", "crm", &tokens(&one))
        .await
        .unwrap();
    assert!(store
        .lease_oauth_refresh("acme", "crm", 1, "a", 100, 200)
        .await
        .unwrap());
    assert!(!store
        .lease_oauth_refresh("acme", "crm", 1, "b", 150, 250)
        .await
        .unwrap());
    // Not even its holder takes it again while it runs (each attempt is an owner).
    assert!(!store
        .lease_oauth_refresh("acme", "crm", 1, "a", 150, 250)
        .await
        .unwrap());
    // Given back: another may take it; expired: too.
    store.release_oauth_lease("acme", "crm", "a").await.unwrap();
    assert!(store
        .lease_oauth_refresh("acme", "crm", 1, "b", 160, 200)
        .await
        .unwrap());
    assert!(store
        .lease_oauth_refresh("acme", "crm", 1, "c", 200, 300)
        .await
        .unwrap());
    // A stale version takes no lease and stores nothing.
    assert!(!store
        .lease_oauth_refresh("acme", "crm", 0, "d", 400, 500)
        .await
        .unwrap());
    let two = sealed(2);
    assert!(!store
        .store_oauth_refresh("acme", "crm", 0, &tokens(&two))
        .await
        .unwrap());
    assert!(store
        .store_oauth_refresh("acme", "crm", 1, &tokens(&two))
        .await
        .unwrap());
    let g = store.get_oauth_grant("acme", "crm").await.unwrap().unwrap();
    assert_eq!((g.version, g.sealed, g.lease_until), (2, two, None));
    // The refresh of version 1 that lost cannot overwrite version 2.
    assert!(!store
        .store_oauth_refresh("acme", "crm", 1, &tokens(&one))
        .await
        .unwrap());
    // A broken grant takes no lease, and is marked broken once.
    assert!(store
        .break_oauth_grant("acme", "crm", 2, "invalid_grant")
        .await
        .unwrap());
    assert!(!store
        .break_oauth_grant("acme", "crm", 2, "invalid_grant")
        .await
        .unwrap());
    assert!(!store
        .lease_oauth_refresh("acme", "crm", 2, "a", 1_000, 2_000)
        .await
        .unwrap());
}

/// Of many concurrent takers of a lease, exactly one wins.
pub async fn concurrent_leases_have_one_winner(store: &AnyStore) {
    let one = sealed(1);
    store
        .put_oauth_grant("acme", "crm", &tokens(&one))
        .await
        .unwrap();
    let takers: Vec<_> = (0..20)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .lease_oauth_refresh("acme", "crm", 1, &format!("node-{i}"), 100, 10_000)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut won = 0;
    for t in takers {
        won += usize::from(t.await.unwrap());
    }
    assert_eq!(won, 1);
}
