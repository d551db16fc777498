//! The packet manager (in progress).
