//! The accounts in Redis: one hash, user id → Argon2id hash (a PHC string; never a password).

use std::sync::Arc;

use fred::prelude::*;
use iocp_accounts::{AccountStore, StoreError};

use super::Redis;

/// The hash that holds the accounts.
const ACCOUNTS: &str = "iocp:accounts";

/// Accounts kept in Redis, shared by every instance ([`AccountStore`]). Its calls block the
/// calling thread (a login thread, or `iocp-server users`) for one round trip.
pub struct RedisStore {
    redis: Arc<Redis>,
}

impl RedisStore {
    /// The accounts in `redis`.
    pub fn new(redis: Arc<Redis>) -> RedisStore {
        RedisStore { redis }
    }
}

fn failed(op: &'static str) -> impl FnOnce(Error) -> StoreError {
    move |e| StoreError::new(op, e)
}

impl AccountStore for RedisStore {
    fn password_hash(&self, user_id: &str) -> Result<Option<String>, StoreError> {
        let client = &self.redis.client;
        self.redis
            .block_on(client.hget(ACCOUNTS, user_id))
            .map_err(failed("reading an account from Redis"))
    }

    fn insert(&self, user_id: &str, hash: &str, replace: bool) -> Result<bool, StoreError> {
        let client = &self.redis.client;
        self.redis
            .block_on(async {
                if replace {
                    let _: i64 = client.hset(ACCOUNTS, (user_id, hash)).await?;
                    Ok(true)
                } else {
                    client.hsetnx(ACCOUNTS, user_id, hash).await
                }
            })
            .map_err(failed("writing an account to Redis"))
    }

    fn remove(&self, user_id: &str) -> Result<bool, StoreError> {
        let client = &self.redis.client;
        self.redis
            .block_on(client.hdel::<i64, _, _>(ACCOUNTS, user_id))
            .map(|n| n > 0)
            .map_err(failed("removing an account from Redis"))
    }

    fn user_ids(&self) -> Result<Vec<String>, StoreError> {
        let client = &self.redis.client;
        let mut ids: Vec<String> = self
            .redis
            .block_on(client.hkeys(ACCOUNTS))
            .map_err(failed("listing the accounts in Redis"))?;
        ids.sort();
        Ok(ids)
    }
}
