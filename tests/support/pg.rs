//! A real PostgreSQL server for tests: `DECKHAND_TEST_PG` (an admin URL,
//! e.g. `postgres://postgres@127.0.0.1:54329/postgres`, what
//! `.ci/postgres.sh start` prints), else the default local port. Each test
//! gets a database of its own, dropped at the end.
//!
//! No server reachable: the test prints a visible SKIPPED line and passes,
//! unless `DECKHAND_REQUIRE_PG=1` (set by `.ci/run`), where it fails.

#![allow(dead_code)]

use std::time::Duration;

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A database created for one test.
pub struct TestDb {
    admin: String,
    pub name: String,
    pub url: String,
}

/// The admin URL of a reachable server, or `None` after printing why the
/// test is skipped. Panics when PostgreSQL is required but unreachable.
pub async fn admin_url(test: &str) -> Option<String> {
    let url = std::env::var("DECKHAND_TEST_PG").unwrap_or_else(|_| DEFAULT_URL.to_string());
    let probe = tokio::time::timeout(Duration::from_secs(5), probe(&url)).await;
    match probe {
        Ok(Ok(())) => Some(url),
        other => {
            let why = match other {
                Err(_) => "timed out".to_string(),
                Ok(Err(e)) => e.to_string(),
                Ok(Ok(())) => unreachable!(),
            };
            if std::env::var("DECKHAND_REQUIRE_PG").is_ok_and(|v| v == "1") {
                panic!("{test}: PostgreSQL required (DECKHAND_REQUIRE_PG=1) but {url} is unreachable: {why}");
            }
            eprintln!(
                "SKIPPED {test}: no PostgreSQL server at {url} ({why}); start one with `eval \"$(bash .ci/postgres.sh start /tmp/pg)\"`"
            );
            None
        }
    }
}

/// Connects once to see whether the server answers.
async fn probe(url: &str) -> Result<(), sqlx::Error> {
    use sqlx::Connection;
    sqlx::postgres::PgConnection::connect(url).await?.close().await
}

impl TestDb {
    /// A fresh, empty database on the test server; `None` when skipped.
    pub async fn create(test: &str) -> Option<TestDb> {
        let admin = admin_url(test).await?;
        let name = format!("deckhand_test_{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
        exec(&admin, &format!("CREATE DATABASE {name}")).await;
        let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
        let url = format!("{base}/{name}");
        Some(TestDb { admin, name, url })
    }

    /// Drops the database; connections still open are terminated.
    pub async fn drop_db(self) {
        exec(&self.admin, &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)).await;
    }
}

async fn exec(url: &str, sql: &str) {
    use sqlx::{Connection, Executor};
    let mut c = sqlx::postgres::PgConnection::connect(url).await.expect("connect to the test server");
    c.execute(sqlx::AssertSqlSafe(sql.to_string())).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    let _ = c.close().await;
}
