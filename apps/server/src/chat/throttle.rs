//! Login throttling, across connections: failed logins back off per account and per source
//! address, and each address may have only a few password checks waiting at once. A throttled
//! login is answered at once, without hashing, so a flood costs the server what it can bear,
//! and a real user's login never waits behind thousands of an attacker's. Owned by the logic
//! thread: no lock.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The limits (flags of `iocp-server chat`).
#[derive(Clone, Copy, Debug)]
pub struct ThrottleConfig {
    /// Failed logins of one account before it backs off.
    pub account_failures: u32,
    /// Failed logins from one address before it backs off.
    pub addr_failures: u32,
    /// Password checks one address may have waiting or running at once.
    pub addr_pending: u32,
    /// The longest back-off; it starts at 1 s and doubles with each further failure.
    pub max_backoff: Duration,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            account_failures: 5,
            addr_failures: 20,
            addr_pending: 4,
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// Failures are forgotten this long after the last one.
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// The first back-off.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Entries kept before the quiet ones are swept.
const SWEEP_ABOVE: usize = 10_000;

#[derive(Clone, Copy, Debug)]
struct Failures {
    count: u32,
    last: Instant,
    blocked_until: Option<Instant>,
}

impl Failures {
    fn new(now: Instant) -> Failures {
        Failures {
            count: 0,
            last: now,
            blocked_until: None,
        }
    }

    fn blocked(&self, now: Instant) -> bool {
        self.blocked_until.is_some_and(|until| until > now)
    }

    fn fail(&mut self, now: Instant, allowance: u32, max: Duration) {
        if now.duration_since(self.last) > FORGET_AFTER {
            self.count = 0;
        }
        self.count += 1;
        self.last = now;
        if self.count >= allowance {
            let doublings = (self.count - allowance).min(20);
            let backoff = FIRST_BACKOFF.saturating_mul(1 << doublings).min(max);
            self.blocked_until = Some(now + backoff);
        }
    }

    fn quiet(&self, now: Instant) -> bool {
        !self.blocked(now) && now.duration_since(self.last) > FORGET_AFTER
    }
}

#[derive(Debug)]
struct Addr {
    failures: Failures,
    pending: u32,
}

/// Why a login is throttled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Throttled {
    /// The account is backing off after failed logins.
    Account,
    /// The address is backing off after failed logins.
    Addr,
    /// The address has as many checks waiting as it may.
    Pending,
}

/// The throttle's state.
pub(crate) struct Throttle {
    config: ThrottleConfig,
    /// By lower-cased user id.
    accounts: HashMap<String, Failures>,
    addrs: HashMap<IpAddr, Addr>,
}

impl Throttle {
    pub(crate) fn new(config: ThrottleConfig) -> Throttle {
        Throttle {
            config,
            accounts: HashMap::new(),
            addrs: HashMap::new(),
        }
    }

    /// Whether a login of `user_id` from `addr` must be refused now; if not, a check is
    /// counted as pending for `addr` until [`Throttle::done`].
    pub(crate) fn admit(
        &mut self,
        user_id: &str,
        addr: IpAddr,
        now: Instant,
    ) -> Result<(), Throttled> {
        if self
            .accounts
            .get(&user_id.to_lowercase())
            .is_some_and(|f| f.blocked(now))
        {
            return Err(Throttled::Account);
        }
        let entry = self.addrs.entry(addr).or_insert_with(|| Addr {
            failures: Failures::new(now),
            pending: 0,
        });
        if entry.failures.blocked(now) {
            return Err(Throttled::Addr);
        }
        if entry.pending >= self.config.addr_pending {
            return Err(Throttled::Pending);
        }
        entry.pending += 1;
        Ok(())
    }

    /// A check admitted for `addr` is over; `failed` if the password was wrong (or the user
    /// unknown).
    pub(crate) fn done(&mut self, user_id: &str, addr: IpAddr, failed: bool, now: Instant) {
        let ThrottleConfig {
            account_failures,
            addr_failures,
            max_backoff,
            ..
        } = self.config;
        if let Some(entry) = self.addrs.get_mut(&addr) {
            entry.pending = entry.pending.saturating_sub(1);
            if failed {
                entry.failures.fail(now, addr_failures, max_backoff);
            }
        }
        let key = user_id.to_lowercase();
        if failed {
            self.accounts
                .entry(key)
                .or_insert_with(|| Failures::new(now))
                .fail(now, account_failures, max_backoff);
        } else {
            self.accounts.remove(&key);
        }
        if self.accounts.len() + self.addrs.len() > SWEEP_ABOVE {
            self.sweep(now);
        }
    }

    /// A check admitted for `addr` was not done (the queue was full, the store failed, or its
    /// session closed first): it no longer counts as pending, and as nothing.
    pub(crate) fn cancel(&mut self, addr: IpAddr) {
        if let Some(entry) = self.addrs.get_mut(&addr) {
            entry.pending = entry.pending.saturating_sub(1);
        }
    }

    /// Forgets the entries that have been quiet long enough.
    pub(crate) fn sweep(&mut self, now: Instant) {
        self.accounts.retain(|_, f| !f.quiet(now));
        self.addrs
            .retain(|_, a| a.pending > 0 || !a.failures.quiet(now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_and_addresses_back_off_and_pending_is_bounded() {
        let config = ThrottleConfig {
            account_failures: 3,
            addr_failures: 5,
            addr_pending: 2,
            max_backoff: Duration::from_secs(8),
        };
        let mut t = Throttle::new(config);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        // Two checks at once from one address; a third waits its turn.
        assert_eq!(t.admit("alice", a, t0), Ok(()));
        assert_eq!(t.admit("alice", a, t0), Ok(()));
        assert_eq!(t.admit("alice", a, t0), Err(Throttled::Pending));
        t.done("alice", a, true, t0);
        t.done("alice", a, true, t0);
        assert_eq!(t.admit("Alice", a, t0), Ok(()), "two failures: not yet");
        t.done("Alice", a, true, t0);
        // Three failures of the account: it backs off for 1 s, from any address.
        assert_eq!(t.admit("alice", b, t0), Err(Throttled::Account));
        let later = t0 + Duration::from_millis(1100);
        assert_eq!(t.admit("alice", b, later), Ok(()));
        t.done("alice", b, true, later);
        // One more failure: 2 s now.
        assert_eq!(
            t.admit("alice", b, later + Duration::from_millis(1500)),
            Err(Throttled::Account)
        );
        // Another account from the first address: the address backs off at 5 failures.
        for _ in 0..2 {
            assert_eq!(t.admit("bob", a, later), Ok(()));
            t.done("bob", a, true, later);
        }
        assert_eq!(t.admit("carol", a, later), Err(Throttled::Addr));
        // A success clears the account.
        let much_later = later + Duration::from_secs(30);
        assert_eq!(t.admit("alice", b, much_later), Ok(()));
        t.done("alice", b, false, much_later);
        assert_eq!(t.admit("alice", b, much_later), Ok(()));
    }
}
