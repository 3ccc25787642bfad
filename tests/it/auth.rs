//! Authentication passes through untouched: every method PostgreSQL uses works, wrong passwords
//! are rejected by PostgreSQL itself, and the session runs as the client's own role.

use crate::harness::{sqlstate, Proxy, DATABASE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_auth_method_passes_through_and_keeps_the_identity() {
    let proxy = Proxy::start().await;
    for (user, password) in [
        ("alice", "alice-secret"),         // scram-sha-256
        ("md5_user", "md5-secret"),        // md5
        ("password_user", "plain-secret"), // cleartext password
        ("trust_user", ""),                // trust
    ] {
        let client = crate::harness::connect(&proxy.conninfo(user, password)).await;
        let row = client
            .query_one(
                "SELECT current_user::text, session_user::text, current_database()::text",
                &[],
            )
            .await
            .expect("query");
        assert_eq!(row.get::<_, String>(0), user);
        assert_eq!(row.get::<_, String>(1), user);
        assert_eq!(row.get::<_, String>(2), DATABASE);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_are_rejected_by_postgres() {
    let proxy = Proxy::start().await;
    for (user, password) in [
        ("alice", "wrong"),
        ("md5_user", "wrong"),
        ("password_user", "wrong"),
    ] {
        let error = tokio_postgres::connect(&proxy.conninfo(user, password), tokio_postgres::NoTls)
            .await
            .err()
            .unwrap_or_else(|| panic!("{user} logged in with a wrong password"));
        assert_eq!(sqlstate(&error), "28P01", "{user}: {error}");
    }
    // The proxy keeps serving.
    let client = proxy.connect().await;
    client
        .simple_query("SELECT 1")
        .await
        .expect("still serving");
}
