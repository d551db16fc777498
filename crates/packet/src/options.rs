//! [`PacketOptions`]: what both modes of the packet manager share.

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

impl Default for PacketOptions {
    /// Frames of up to [`DEFAULT_MAX_FRAME_LEN`] bytes, and [`BadPacket::Close`].
    fn default() -> Self {
        PacketOptions {
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            bad_packet: BadPacket::Close,
        }
    }
}
