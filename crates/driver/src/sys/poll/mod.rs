//! The readiness backend (`mio`): placeholder until implemented.

use std::io::{self, IoSlice};
use std::time::Duration;

use super::{Completion, Raw, Waker};
use crate::config::Config;
use crate::token::Token;

pub(crate) struct Port {}

impl Port {
    pub(crate) fn new(_config: &Config) -> io::Result<Port> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "poll backend not built yet",
        ))
    }
}

impl super::Port for Port {
    fn accept(&mut self, _listener: Raw) {}
    fn cancel_accept(&mut self) {}
    fn recv(&mut self, _fd: Raw, _token: Token) {}
    unsafe fn send(&mut self, _fd: Raw, _token: Token, _bufs: &[IoSlice<'_>]) {}
    fn cancel(&mut self, _fd: Raw, _token: Token) {}
    fn leak_buffers(&mut self) {}
    fn wait(&mut self, _t: Option<Duration>, _s: &mut dyn FnMut(Completion<'_>)) -> io::Result<()> {
        Ok(())
    }
    fn waker(&self) -> Waker {
        unimplemented!()
    }
}
