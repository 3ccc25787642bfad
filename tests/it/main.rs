//! Integration tests: real PostgreSQL, pgenrich in-process, real clients (tokio-postgres, psql,
//! raw protocol bytes).

mod harness;

mod access;
mod asyncpg;
mod auth;
mod bedrock;
mod cache;
mod cli;
mod cursors;
mod differential;
mod dml;
mod explain;
mod fleet;
mod hostile;
mod jdbc;
mod lifecycle;
mod limits;
mod malformed;
mod memory;
mod metrics;
mod ml;
mod ml_hook;
mod modify;
mod moto;
mod node;
mod pipelines;
mod prepared;
mod psql;
mod psycopg;
mod queries;
mod quickstart;
mod redaction;
mod reference;
mod residual;
mod settings;
mod snapshot;
mod standby;
mod tls;
mod transactions;
