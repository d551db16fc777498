//! [`PacketOptions`]: what both modes of the packet manager share.

use iocp_server::Config;
use iocp_wire::DEFAULT_MAX_FRAME_LEN;

use crate::BadPacket;

/// Settings of the packet manager, in either mode.
#[derive(Clone, Debug)]
pub struct PacketOptions {
    /// The largest frame accepted, header included; a longer one closes its session
    /// ([`iocp_wire::FrameError::FrameTooLarge`]). At most [`iocp_wire::MAX_FRAME_LEN`].
    pub max_frame_len: usize,
    /// What to do with a packet of an unknown id or one its handler refused.
    pub bad_packet: BadPacket,
}

impl PacketOptions {
    /// Options for a server started with `config`: frames of up to [`DEFAULT_MAX_FRAME_LEN`]
    /// bytes, and [`BadPacket::Close`].
    pub fn for_config(config: &Config) -> PacketOptions {
        let _ = config;
        PacketOptions {
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            bad_packet: BadPacket::Close,
        }
    }
}
