//! Packet framing for `iocp-server`, without I/O.
//!
//! TCP delivers a byte stream, not messages: one read may hold half a packet, or three and a
//! bit. This crate turns that stream into *frames* and back, the way the IOCP tutorial's later
//! steps do, and nothing else: no sockets, no threads, no `unsafe`. The server crate owns the
//! I/O and calls in here; tests and the fuzzer call in here with plain byte slices.
//!
//! # The frame
//!
//! Every frame starts with the tutorial's packed, little-endian 5-byte header ([`Header`]):
//!
//! ```text
//! offset  0               2               4       5
//!         +---------------+---------------+-------+------------------------+
//!         | packet_length | packet_id     | type  | body (length - 5 bytes)|
//!         | u16 LE        | u16 LE        | u8    |                        |
//!         +---------------+---------------+-------+------------------------+
//! ```
//!
//! `packet_length` counts the whole frame, header included, so it is at least [`HEADER_LEN`]
//! and at most [`MAX_FRAME_LEN`] (`u16::MAX`). A receiver also sets its own, lower, maximum
//! ([`DEFAULT_MAX_FRAME_LEN`] unless configured), so one peer cannot make it buffer 64 KiB.
//!
//! # Receiving: [`Decoder`]
//!
//! One [`Decoder`] per session. Hand it each read's bytes; it hands back every whole [`Frame`]
//! in order. Frames that lie inside the read are lent in place (no copy); only a frame split
//! across reads is copied, into a buffer the decoder keeps, so in steady state nothing is
//! allocated. A bad length ([`FrameError::LengthTooSmall`], [`FrameError::FrameTooLarge`]) is
//! reported as soon as the two length bytes arrive, and poisons the decoder: close the session.
//!
//! ```
//! use iocp_wire::{Decoder, Frame, FrameError};
//!
//! fn on_packet(frame: Frame<'_>) {
//!     println!("packet {} type {} with {} body bytes", frame.id(), frame.kind(), frame.body().len());
//! }
//!
//! let mut decoder = Decoder::new();
//! // Called from the receive completion with the bytes just read:
//! let read: &[u8] = &[7, 0, 1, 0, 0, b'h', b'i', 5, 0];
//! decoder.decode(read, on_packet)?; // one frame, and 2 bytes of the next kept for later
//! assert_eq!(decoder.buffered_len(), 2);
//! # Ok::<(), FrameError>(())
//! ```
//!
//! A [`Frame`] gives [`header`](Frame::header), [`id`](Frame::id), [`kind`](Frame::kind) (the
//! `type` byte), [`body`](Frame::body) and [`as_bytes`](Frame::as_bytes) (to forward it as is),
//! and a [`BodyReader`] to read a struct-shaped body field by field without ever panicking.
//!
//! # Sending: [`encode`], [`encode_into`], [`FrameWriter`]
//!
//! [`encode`] makes a [`bytes::Bytes`]: encode a broadcast once and queue clones of it to every
//! session (a clone is a reference count, not a copy). [`encode_into`] appends to a buffer you
//! reuse. [`FrameWriter`] writes a body in pieces straight into a `BytesMut` and patches the
//! length at the end, which suits the tutorial's fixed-size packet structs; its
//! [`put_fixed_str`](FrameWriter::put_fixed_str) and the free functions [`write_fixed_str`],
//! [`fixed_str`] and [`read_fixed_str`] handle NUL-padded `char UserID[21]`-style fields (the
//! truncation rules are in [`write_fixed_str`](write_fixed_str#rules)).
//!
//! # Typed packets: [`TypedPacket`]
//!
//! A protocol implements [`TypedPacket`] for each of its packets (id, name, body layout); its
//! provided methods encode a packet into a frame and decode one from a frame, with a
//! [`PacketError`] saying why a body does not fit its packet.
//!
//! # Where the tutorial's code lives here
//!
//! | tutorial | here |
//! |---|---|
//! | `PACKET_HEADER { PacketLength; PacketId; Type; }` | [`Header`] |
//! | the receive buffer and the "is a whole packet in yet?" loop | [`Decoder`] |
//! | `PACKET_HEADER_LENGTH`, `MAX_RECVBUF` | [`HEADER_LEN`], the decoder's maximum frame length |
//! | filling a packet struct and `SendMsg`-ing it | [`FrameWriter`] / [`encode`] |
//! | `CopyMemory(UserID, ..., MAX_USER_ID_LEN)` | [`write_fixed_str`], [`read_fixed_str`] |

#![forbid(unsafe_code)]

mod decoder;
mod encoder;
mod error;
mod fixed_str;
mod frame;
mod header;
mod packet;
mod reader;

pub use decoder::{Decoder, Frames};
pub use encoder::{FrameWriter, encode, encode_into};
pub use error::FrameError;
pub use fixed_str::{fixed_str, fixed_str_len, read_fixed_str, read_fixed_utf8, write_fixed_str};
pub use frame::Frame;
pub use header::{DEFAULT_MAX_FRAME_LEN, HEADER_LEN, Header, MAX_BODY_LEN, MAX_FRAME_LEN};
pub use packet::{PacketError, TypedPacket};
pub use reader::BodyReader;
