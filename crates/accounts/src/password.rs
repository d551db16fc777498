//! Argon2id password hashes in the PHC string format.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use password_hash::rand_core::OsRng;

use super::StoreError;

/// How much work a new hash costs. The cost is stored in the hash itself, so verifying always
/// costs what hashing that password cost, whatever the current setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashCost {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes over the memory.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl HashCost {
    /// The recommended cost (OWASP's first choice for Argon2id, and the `argon2` crate's
    /// default): 19 MiB, 2 passes, 1 lane — tens of milliseconds per hash on a server core.
    pub const DEFAULT: HashCost = HashCost {
        memory_kib: 19 * 1024,
        iterations: 2,
        parallelism: 1,
    };

    /// A cheap cost (64 KiB, 1 pass) for test and load-test accounts only: it makes thousands
    /// of logins per second possible, and an offline guess just as cheap.
    pub const LIGHT: HashCost = HashCost {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    fn argon2(self) -> Result<Argon2<'static>, StoreError> {
        let params = Params::new(self.memory_kib, self.iterations, self.parallelism, None)
            .map_err(|e| StoreError::new("setting the Argon2 cost", e.to_string()))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }
}

impl Default for HashCost {
    fn default() -> Self {
        HashCost::DEFAULT
    }
}

/// Hashes `password` with Argon2id, a fresh random salt (from the operating system) and `cost`;
/// returns the PHC string (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`).
///
/// # Errors
///
/// If the cost is out of Argon2's bounds.
pub fn hash_password(password: &str, cost: HashCost) -> Result<String, StoreError> {
    let salt = SaltString::generate(&mut OsRng);
    let hash = cost
        .argon2()?
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| StoreError::new("hashing a password", e.to_string()))?;
    Ok(hash.to_string())
}

/// Whether `password` matches the PHC string `hash` (with the cost and salt stored in it).
///
/// # Errors
///
/// If `hash` is not a PHC string of a supported algorithm (a damaged store).
pub fn verify_password(password: &str, hash: &str) -> Result<bool, StoreError> {
    let parsed = PasswordHash::new(hash)
        .map_err(|e| StoreError::new("reading a stored password hash", e.to_string()))?;
    match Argon2::default().verify_password(password.as_bytes(), &parsed) {
        Ok(()) => Ok(true),
        Err(argon2::password_hash::Error::Password) => Ok(false),
        Err(e) => Err(StoreError::new("verifying a password", e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let a = hash_password("secret", HashCost::LIGHT).unwrap();
        let b = hash_password("secret", HashCost::LIGHT).unwrap();
        assert!(a.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{a}");
        assert_ne!(a, b, "a random salt each time");
        assert!(verify_password("secret", &a).unwrap());
        assert!(!verify_password("Secret", &a).unwrap());
        assert!(verify_password("secret", "not a hash").is_err());
    }
}
