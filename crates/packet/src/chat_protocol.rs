//! The chat protocol of the tutorial (`Packet.h`, `ErrorCode.h`), shared by the chat server,
//! the `iocp-chat` client and the load generator.
//!
//! Every packet is a frame of [`iocp_wire`]: the packed little-endian 5-byte header
//! `u16 packet_length (header included), u16 packet_id, u8 type`, then a body laid out as the
//! tutorial's packed C struct — fixed-size, NUL-padded `char` arrays and little-endian integers.
//! We send `type` = [`PACKET_TYPE`] (0) and ignore it on receipt.
//!
//! | packet | id | body | bytes |
//! |---|---|---|---|
//! | [`LoginRequest`] | 201 | `char UserID[21]`, `char UserPW[21]` | 42 |
//! | [`LoginResponse`] | 202 | `u16 Result` | 2 |
//! | [`RoomEnterRequest`] | 206 | `i32 RoomNumber` | 4 |
//! | [`RoomEnterResponse`] | 207 | `i16 Result`, `char RivalUserID[21]` | 23 |
//! | [`RoomLeaveRequest`] | 209 | (empty) | 0 |
//! | [`RoomLeaveResponse`] | 210 | `i16 Result` | 2 |
//! | [`RoomUserListNotify`] *(new)* | 211 | `u16 Count`, `char UserID[21]` × Count | 2 + 21·Count |
//! | [`RoomNewUserNotify`] *(new)* | 212 | `char UserID[21]` | 21 |
//! | [`RoomLeaveUserNotify`] *(new)* | 213 | `char UserID[21]` | 21 |
//! | [`RoomChatRequest`] | 214 | `char Message[257]` | 257 |
//! | [`RoomChatResponse`] | 215 | `i16 Result` | 2 |
//! | [`RoomChatNotify`] | 216 | `char UserID[21]`, `char Msg[257]` | 278 |
//!
//! Bodies must have exactly their length ([`PacketError::BodyLength`] otherwise), as the
//! tutorial checks `packetSize == sizeof(...)`. Text fields hold UTF-8 up to the first NUL (at
//! most 20 bytes of user id or password, 256 of message; see [`iocp_wire::write_fixed_str`] for
//! the truncation rules); invalid UTF-8 is read with replacement characters. Results are
//! [`ResultCode`]s (a `u16`, or an `i16` with the same bytes in the room packets). `docs/protocol.md`
//! tells the whole conversation: who sends what, when, and in which order.

use std::fmt;

use bytes::{Bytes, BytesMut};
use iocp_wire::{BodyReader, Frame, FrameWriter, HEADER_LEN, read_fixed_str};

use crate::PacketError;

/// The `type` byte we send. It is ignored on receipt.
pub const PACKET_TYPE: u8 = 0;
/// Longest user id, in bytes (`char UserID[MAX_USER_ID_LEN + 1]`).
pub const MAX_USER_ID_LEN: usize = 20;
/// Longest password, in bytes (`char UserPW[MAX_USER_PW_LEN + 1]`).
pub const MAX_USER_PW_LEN: usize = 20;
/// Longest chat message, in bytes (`char Message[MAX_CHAT_MSG_LEN + 1]`).
pub const MAX_CHAT_MSG_LEN: usize = 256;
/// Most user ids in one [`RoomUserListNotify`]; a longer list is sent in several.
pub const MAX_USER_LIST: usize = 100;

const ID_FIELD: usize = MAX_USER_ID_LEN + 1;
const PW_FIELD: usize = MAX_USER_PW_LEN + 1;
const MSG_FIELD: usize = MAX_CHAT_MSG_LEN + 1;

/// Packet ids (`enum class PACKET_ID : UINT16` of the tutorial's `Packet.h`).
pub mod packet_id {
    /// A session connected. Internal to the server (a system event of the logic queue), never
    /// on the wire.
    pub const SYS_USER_CONNECT: u16 = 11;
    /// A session ended. Internal to the server, never on the wire.
    pub const SYS_USER_DISCONNECT: u16 = 12;
    /// Client → server: log in.
    pub const LOGIN_REQUEST: u16 = 201;
    /// Server → client: the result of a login.
    pub const LOGIN_RESPONSE: u16 = 202;
    /// Client → server: enter a room.
    pub const ROOM_ENTER_REQUEST: u16 = 206;
    /// Server → client: the result of entering a room.
    pub const ROOM_ENTER_RESPONSE: u16 = 207;
    /// Client → server: leave the room.
    pub const ROOM_LEAVE_REQUEST: u16 = 209;
    /// Server → client: the result of leaving.
    pub const ROOM_LEAVE_RESPONSE: u16 = 210;
    /// Server → client (new): who is in the room, sent to a user who just entered.
    pub const ROOM_USER_LIST_NOTIFY: u16 = 211;
    /// Server → client (new): someone entered your room.
    pub const ROOM_NEW_USER_NOTIFY: u16 = 212;
    /// Server → client (new): someone left your room (or disconnected).
    pub const ROOM_LEAVE_USER_NOTIFY: u16 = 213;
    /// Client → server: say something in the room.
    pub const ROOM_CHAT_REQUEST: u16 = 214;
    /// Server → client: the result of a chat request.
    pub const ROOM_CHAT_RESPONSE: u16 = 215;
    /// Server → every member of the room, the sender included: someone said something.
    pub const ROOM_CHAT_NOTIFY: u16 = 216;
}

/// A result code (`enum class ERROR_CODE : UINT16` of the tutorial's `ErrorCode.h`, plus the
/// codes it lacks). An open set: a peer may send a code this version does not know, which is
/// kept as is.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResultCode(pub u16);

macro_rules! result_codes {
    ($($(#[$doc:meta])* $name:ident = $value:literal,)*) => {
        impl ResultCode {
            $($(#[$doc])* pub const $name: ResultCode = ResultCode($value);)*

            /// Every code this version knows, in numeric order.
            pub const ALL: &'static [ResultCode] = &[$(ResultCode::$name),*];

            /// The code's name as in `ErrorCode.h` (`"LOGIN_USER_ALREADY"`), if it is known.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($value => Some(stringify!($name)),)*
                    _ => None,
                }
            }
        }
    };
}

result_codes! {
    /// Success.
    NONE = 0,
    /// The session's user slot is out of range (tutorial; not sent by this server).
    USER_MGR_INVALID_USER_INDEX = 11,
    /// The user's unique id does not match (tutorial; not sent by this server).
    USER_MGR_INVALID_USER_UNIQUEID = 12,
    /// *New:* a room or chat request before the session logged in.
    USER_MGR_NOT_LOGGED_IN = 13,
    /// This user is already logged in (on another session), or this session already is or is
    /// logging in.
    LOGIN_USER_ALREADY = 31,
    /// No user object left (tutorial; the server has one per session slot, so not sent).
    LOGIN_USER_USED_ALL_OBJ = 32,
    /// *New:* unknown user or wrong password (the two are not told apart, so that user ids
    /// cannot be probed).
    LOGIN_USER_INVALID_PW = 33,
    /// *New:* the user id is empty, too long, or has characters other than letters, digits,
    /// `-`, `_` and `.`.
    LOGIN_USER_INVALID_ID = 34,
    /// *New:* too many logins waiting for the password check; try again shortly.
    LOGIN_SERVER_BUSY = 35,
    /// *New:* the account store failed (logged on the server).
    LOGIN_STORE_ERROR = 36,
    /// No room object left (tutorial; rooms are made at start, so not sent).
    NEW_ROOM_USED_ALL_OBJ = 41,
    /// Entering a new room failed (tutorial; not sent).
    NEW_ROOM_FAIL_ENTER = 42,
    /// The user was not found (tutorial; not sent: [`ResultCode::USER_MGR_NOT_LOGGED_IN`]).
    ENTER_ROOM_NOT_FINDE_USER = 51,
    /// The user is already in a room.
    ENTER_ROOM_INVALID_USER_STATUS = 52,
    /// The room is not in use (tutorial; not sent).
    ENTER_ROOM_NOT_USED_STATUS = 53,
    /// The room is full.
    ENTER_ROOM_FULL_USER = 54,
    /// No room has this number.
    ROOM_INVALID_INDEX = 61,
    /// The room is not in use (tutorial; not sent).
    ROOM_NOT_USED = 62,
    /// Too many packets (tutorial; not sent).
    ROOM_TOO_MANY_PACKET = 63,
    /// Leaving while in no room.
    LEAVE_ROOM_INVALID_ROOM_INDEX = 71,
    /// Chatting while in no room.
    CHAT_ROOM_INVALID_ROOM_NUMBER = 81,
}

impl ResultCode {
    /// Whether this is [`ResultCode::NONE`], success.
    pub const fn is_ok(self) -> bool {
        self.0 == 0
    }

    /// The code as the `i16 Result` of the room packets (same bytes).
    pub const fn as_i16(self) -> i16 {
        self.0 as i16
    }

    /// A code read from an `i16 Result`.
    pub const fn from_i16(v: i16) -> ResultCode {
        ResultCode(v as u16)
    }

    /// What the code means, for people.
    pub fn describe(self) -> &'static str {
        match self {
            ResultCode::NONE => "success",
            ResultCode::USER_MGR_NOT_LOGGED_IN => "log in first",
            ResultCode::LOGIN_USER_ALREADY => "already logged in",
            ResultCode::LOGIN_USER_INVALID_PW => "unknown user or wrong password",
            ResultCode::LOGIN_USER_INVALID_ID => {
                "invalid user id (1 to 20 letters, digits, '-', '_', '.')"
            }
            ResultCode::LOGIN_SERVER_BUSY => "the server is busy, try again",
            ResultCode::LOGIN_STORE_ERROR => "the server could not check the password",
            ResultCode::ENTER_ROOM_INVALID_USER_STATUS => "already in a room (/leave first)",
            ResultCode::ENTER_ROOM_FULL_USER => "the room is full",
            ResultCode::ROOM_INVALID_INDEX => "no such room",
            ResultCode::LEAVE_ROOM_INVALID_ROOM_INDEX => "not in a room",
            ResultCode::CHAT_ROOM_INVALID_ROOM_NUMBER => "not in a room (/join N first)",
            _ => "error",
        }
    }
}

impl fmt::Display for ResultCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} ({})", self.0),
            None => write!(f, "unknown result {}", self.0),
        }
    }
}

impl fmt::Debug for ResultCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Whether `id` is an acceptable user id: 1 to [`MAX_USER_ID_LEN`] bytes of letters, digits,
/// `-`, `_` and `.` (any script's letters and digits).
pub fn valid_user_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_USER_ID_LEN
        && id
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A packet of the chat protocol: its id, its body layout, and the encoding both ways.
pub trait ChatPacket: Sized {
    /// The packet id.
    const ID: u16;
    /// The name of the packet, as in `Packet.h`.
    const NAME: &'static str;

    /// Length of this packet's body in bytes.
    fn body_len(&self) -> usize;

    /// Writes the body.
    fn write_body(&self, w: &mut FrameWriter<'_>);

    /// Reads a body (exactly its length; see the [module notes](self)).
    ///
    /// # Errors
    ///
    /// [`PacketError::BodyLength`] or [`PacketError::Body`] when the body does not have the
    /// packet's layout.
    fn read_body(body: &[u8]) -> Result<Self, PacketError>;

    /// Appends the whole frame, header included, to `buf`.
    fn encode_into(&self, buf: &mut BytesMut) {
        let mut w = FrameWriter::new(buf, Self::ID, PACKET_TYPE);
        self.write_body(&mut w);
        w.finish()
            .expect("chat packets are far below the frame limit");
    }

    /// The whole frame as shared bytes: encode a notification once, send it to every member.
    fn encode(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(HEADER_LEN + self.body_len());
        self.encode_into(&mut buf);
        buf.freeze()
    }

    /// Reads this packet from a frame.
    ///
    /// # Errors
    ///
    /// [`PacketError::Invalid`] if the frame has another id, else those of
    /// [`read_body`](Self::read_body).
    fn decode(frame: &Frame<'_>) -> Result<Self, PacketError> {
        if frame.id() != Self::ID {
            return Err(PacketError::Invalid {
                id: frame.id(),
                why: format!("expected {} ({})", Self::NAME, Self::ID),
            });
        }
        Self::read_body(frame.body())
    }
}

/// A reader over a body that must be exactly `len` bytes long.
fn exact(id: u16, body: &[u8], len: usize) -> Result<BodyReader<'_>, PacketError> {
    if body.len() != len {
        return Err(PacketError::BodyLength {
            id,
            expected: len,
            got: body.len(),
        });
    }
    Ok(BodyReader::new(body))
}

/// Reads a NUL-padded text field of `n` bytes (the body's length was checked before).
fn text(id: u16, r: &mut BodyReader<'_>, n: usize) -> Result<String, PacketError> {
    let field = r
        .bytes(n)
        .map_err(|error| PacketError::Body { id, error })?;
    Ok(String::from_utf8_lossy(read_fixed_str(field)).into_owned())
}

fn field<T>(id: u16, v: Result<T, iocp_wire::FrameError>) -> Result<T, PacketError> {
    v.map_err(|error| PacketError::Body { id, error })
}

macro_rules! packet {
    ($ty:ident, $id:ident) => {
        impl $ty {
            /// The packet id.
            pub const ID: u16 = packet_id::$id;
        }
    };
}

/// `LOGIN_REQUEST` (201): `char UserID[21]; char UserPW[21];` — 42 bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct LoginRequest {
    /// The user id (at most [`MAX_USER_ID_LEN`] bytes are sent).
    pub user_id: String,
    /// The password (at most [`MAX_USER_PW_LEN`] bytes are sent).
    pub password: String,
}
packet!(LoginRequest, LOGIN_REQUEST);

impl fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the password.
        f.debug_struct("LoginRequest")
            .field("user_id", &self.user_id)
            .finish_non_exhaustive()
    }
}

impl ChatPacket for LoginRequest {
    const ID: u16 = packet_id::LOGIN_REQUEST;
    const NAME: &'static str = "LOGIN_REQUEST";
    fn body_len(&self) -> usize {
        ID_FIELD + PW_FIELD
    }
    fn write_body(&self, w: &mut FrameWriter<'_>) {
        w.put_fixed_str(&self.user_id, ID_FIELD);
        w.put_fixed_str(&self.password, PW_FIELD);
    }
    fn read_body(body: &[u8]) -> Result<Self, PacketError> {
        let mut r = exact(Self::ID, body, ID_FIELD + PW_FIELD)?;
        Ok(LoginRequest {
            user_id: text(Self::ID, &mut r, ID_FIELD)?,
            password: text(Self::ID, &mut r, PW_FIELD)?,
        })
    }
}

/// `LOGIN_RESPONSE` (202): `u16 Result;` — 2 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoginResponse {
    /// [`ResultCode::NONE`] when logged in.
    pub result: ResultCode,
}
packet!(LoginResponse, LOGIN_RESPONSE);

impl ChatPacket for LoginResponse {
    const ID: u16 = packet_id::LOGIN_RESPONSE;
    const NAME: &'static str = "LOGIN_RESPONSE";
    fn body_len(&self) -> usize {
        2
    }
    fn write_body(&self, w: &mut FrameWriter<'_>) {
        w.put_u16_le(self.result.0);
    }
    fn read_body(body: &[u8]) -> Result<Self, PacketError> {
        let mut r = exact(Self::ID, body, 2)?;
        Ok(LoginResponse {
            result: ResultCode(field(Self::ID, r.u16_le())?),
        })
    }
}

/// `ROOM_ENTER_REQUEST` (206): `i32 RoomNumber;` — 4 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoomEnterRequest {
    /// The room, `0..rooms`.
    pub room_number: i32,
}
packet!(RoomEnterRequest, ROOM_ENTER_REQUEST);

impl ChatPacket for RoomEnterRequest {
    const ID: u16 = packet_id::ROOM_ENTER_REQUEST;
    const NAME: &'static str = "ROOM_ENTER_REQUEST";
    fn body_len(&self) -> usize {
        4
    }
    fn write_body(&self, w: &mut FrameWriter<'_>) {
        w.put_slice(&self.room_number.to_le_bytes());
    }
    fn read_body(body: &[u8]) -> Result<Self, PacketError> {
        let mut r = exact(Self::ID, body, 4)?;
        Ok(RoomEnterRequest {
            room_number: i32::from_le_bytes(field(Self::ID, r.array())?),
        })
    }
}

/// `ROOM_ENTER_RESPONSE` (207): `i16 Result; char RivalUserID[21];` — 23 bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomEnterResponse {
    /// [`ResultCode::NONE`] when entered.
    pub result: ResultCode,
    /// Another member of the room (the one who has been there longest), empty if none: the
    /// tutorial's rooms were for two.
    pub rival_user_id: String,
}
packet!(RoomEnterResponse, ROOM_ENTER_RESPONSE);

impl ChatPacket for RoomEnterResponse {
    const ID: u16 = packet_id::ROOM_ENTER_RESPONSE;
    const NAME: &'static str = "ROOM_ENTER_RESPONSE";
    fn body_len(&self) -> usize {
        2 + ID_FIELD
    }
    fn write_body(&self, w: &mut FrameWriter<'_>) {
        w.put_slice(&self.result.as_i16().to_le_bytes());
        w.put_fixed_str(&self.rival_user_id, ID_FIELD);
    }
    fn read_body(body: &[u8]) -> Result<Self, PacketError> {
        let mut r = exact(Self::ID, body, 2 + ID_FIELD)?;
        Ok(RoomEnterResponse {
            result: ResultCode::from_i16(i16::from_le_bytes(field(Self::ID, r.array())?)),
            rival_user_id: text(Self::ID, &mut r, ID_FIELD)?,
        })
    }
}

/// `ROOM_LEAVE_REQUEST` (209): no body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoomLeaveRequest;
packet!(RoomLeaveRequest, ROOM_LEAVE_REQUEST);

impl ChatPacket for RoomLeaveRequest {
    const ID: u16 = packet_id::ROOM_LEAVE_REQUEST;
    const NAME: &'static str = "ROOM_LEAVE_REQUEST";
    fn body_len(&self) -> usize {
        0
    }
    fn write_body(&self, _: &mut FrameWriter<'_>) {}
    fn read_body(body: &[u8]) -> Result<Self, PacketError> {
        exact(Self::ID, body, 0)?;
        Ok(RoomLeaveRequest)
    }
}

/// A packet whose body is one `i16 Result` (2 bytes).
macro_rules! result_packet {
    ($(#[$doc:meta])* $ty:ident, $id:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub struct $ty {
            /// [`ResultCode::NONE`] on success.
            pub result: ResultCode,
        }
        packet!($ty, $id);

        impl ChatPacket for $ty {
            const ID: u16 = packet_id::$id;
            const NAME: &'static str = stringify!($id);
            fn body_len(&self) -> usize {
                2
            }
            fn write_body(&self, w: &mut FrameWriter<'_>) {
                w.put_slice(&self.result.as_i16().to_le_bytes());
            }
            fn read_body(body: &[u8]) -> Result<Self, PacketError> {
                let mut r = exact(Self::ID, body, 2)?;
                Ok($ty {
                    result: ResultCode::from_i16(i16::from_le_bytes(field(Self::ID, r.array())?)),
                })
            }
        }
    };
}

result_packet!(
    /// `ROOM_LEAVE_RESPONSE` (210): `i16 Result;` — 2 bytes.
    RoomLeaveResponse,
    ROOM_LEAVE_RESPONSE
);
result_packet!(
    /// `ROOM_CHAT_RESPONSE` (215): `i16 Result;` — 2 bytes.
    RoomChatResponse,
    ROOM_CHAT_RESPONSE
);

/// A packet whose body is one `char UserID[21]` (21 bytes).
macro_rules! user_packet {
    ($(#[$doc:meta])* $ty:ident, $id:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub struct $ty {
            /// The user concerned.
            pub user_id: String,
        }
        packet!($ty, $id);

        impl ChatPacket for $ty {
            const ID: u16 = packet_id::$id;
            const NAME: &'static str = stringify!($id);
            fn body_len(&self) -> usize {
                ID_FIELD
            }
            fn write_body(&self, w: &mut FrameWriter<'_>) {
                w.put_fixed_str(&self.user_id, ID_FIELD);
            }
            fn read_body(body: &[u8]) -> Result<Self, PacketError> {
                let mut r = exact(Self::ID, body, ID_FIELD)?;
                Ok($ty {
                    user_id: text(Self::ID, &mut r, ID_FIELD)?,
                })
            }
        }
    };
}

user_packet!(
    /// `ROOM_NEW_USER_NOTIFY` (212, new): `char UserID[21];` — someone entered your room.
    RoomNewUserNotify,
    ROOM_NEW_USER_NOTIFY
);
user_packet!(
    /// `ROOM_LEAVE_USER_NOTIFY` (213, new): `char UserID[21];` — someone left your room.
    RoomLeaveUserNotify,
    ROOM_LEAVE_USER_NOTIFY
);

/// `ROOM_USER_LIST_NOTIFY` (211, new): `u16 Count; char UserID[21][Count];` — the members who
/// were in the room when you entered, at most [`MAX_USER_LIST`] per packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomUserListNotify {
    /// The members (at most [`MAX_USER_LIST`] are encoded).
    pub user_ids: Vec<String>,
}
packet!(RoomUserListNotify, ROOM_USER_LIST_NOTIFY);

impl ChatPacket for RoomUserListNotify {
    const ID: u16 = packet_id::ROOM_USER_LIST_NOTIFY;
    const NAME: &'static str = "ROOM_USER_LIST_NOTIFY";
    fn body_len(&self) -> usize {
        2 + ID_FIELD * self.user_ids.len().min(MAX_USER_LIST)
    }
    fn write_body(&self, w: &mut FrameWriter<'_>) {
        let n = self.user_ids.len().min(MAX_USER_LIST);
        w.put_u16_le(n as u16);
        for id in &self.user_ids[..n] {
            w.put_fixed_str(id, ID_FIELD);
        }
    }
    fn read_body(body: &[u8]) -> Result<Self, PacketError> {
        let mut r = BodyReader::new(body);
        let count = usize::from(field(Self::ID, r.u16_le())?);
        if count > MAX_USER_LIST {
            return Err(PacketError::Invalid {
                id: Self::ID,
                why: format!("{count} user ids, at most {MAX_USER_LIST}"),
            });
        }
        let mut r = exact(Self::ID, body, 2 + ID_FIELD * count)?;
        r.bytes(2).expect("length checked");
        let user_ids = (0..count)
            .map(|_| text(Self::ID, &mut r, ID_FIELD))
            .collect::<Result<_, _>>()?;
        Ok(RoomUserListNotify { user_ids })
    }
}

/// `ROOM_CHAT_REQUEST` (214): `char Message[257];` — 257 bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomChatRequest {
    /// The message (at most [`MAX_CHAT_MSG_LEN`] bytes are sent).
    pub message: String,
}
packet!(RoomChatRequest, ROOM_CHAT_REQUEST);

impl ChatPacket for RoomChatRequest {
    const ID: u16 = packet_id::ROOM_CHAT_REQUEST;
    const NAME: &'static str = "ROOM_CHAT_REQUEST";
    fn body_len(&self) -> usize {
        MSG_FIELD
    }
    fn write_body(&self, w: &mut FrameWriter<'_>) {
        w.put_fixed_str(&self.message, MSG_FIELD);
    }
    fn read_body(body: &[u8]) -> Result<Self, PacketError> {
        let mut r = exact(Self::ID, body, MSG_FIELD)?;
        Ok(RoomChatRequest {
            message: text(Self::ID, &mut r, MSG_FIELD)?,
        })
    }
}

/// `ROOM_CHAT_NOTIFY` (216): `char UserID[21]; char Msg[257];` — 278 bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomChatNotify {
    /// Who said it.
    pub user_id: String,
    /// What was said.
    pub message: String,
}
packet!(RoomChatNotify, ROOM_CHAT_NOTIFY);

impl ChatPacket for RoomChatNotify {
    const ID: u16 = packet_id::ROOM_CHAT_NOTIFY;
    const NAME: &'static str = "ROOM_CHAT_NOTIFY";
    fn body_len(&self) -> usize {
        ID_FIELD + MSG_FIELD
    }
    fn write_body(&self, w: &mut FrameWriter<'_>) {
        w.put_fixed_str(&self.user_id, ID_FIELD);
        w.put_fixed_str(&self.message, MSG_FIELD);
    }
    fn read_body(body: &[u8]) -> Result<Self, PacketError> {
        let mut r = exact(Self::ID, body, ID_FIELD + MSG_FIELD)?;
        Ok(RoomChatNotify {
            user_id: text(Self::ID, &mut r, ID_FIELD)?,
            message: text(Self::ID, &mut r, MSG_FIELD)?,
        })
    }
}

/// Any packet of the protocol, for a peer that reads whatever comes.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(missing_docs)] // each variant is its packet type
pub enum Packet {
    LoginRequest(LoginRequest),
    LoginResponse(LoginResponse),
    RoomEnterRequest(RoomEnterRequest),
    RoomEnterResponse(RoomEnterResponse),
    RoomLeaveRequest(RoomLeaveRequest),
    RoomLeaveResponse(RoomLeaveResponse),
    RoomUserListNotify(RoomUserListNotify),
    RoomNewUserNotify(RoomNewUserNotify),
    RoomLeaveUserNotify(RoomLeaveUserNotify),
    RoomChatRequest(RoomChatRequest),
    RoomChatResponse(RoomChatResponse),
    RoomChatNotify(RoomChatNotify),
}

macro_rules! each_packet {
    ($self:ident, $p:ident => $e:expr) => {
        match $self {
            Packet::LoginRequest($p) => $e,
            Packet::LoginResponse($p) => $e,
            Packet::RoomEnterRequest($p) => $e,
            Packet::RoomEnterResponse($p) => $e,
            Packet::RoomLeaveRequest($p) => $e,
            Packet::RoomLeaveResponse($p) => $e,
            Packet::RoomUserListNotify($p) => $e,
            Packet::RoomNewUserNotify($p) => $e,
            Packet::RoomLeaveUserNotify($p) => $e,
            Packet::RoomChatRequest($p) => $e,
            Packet::RoomChatResponse($p) => $e,
            Packet::RoomChatNotify($p) => $e,
        }
    };
}

impl Packet {
    /// Reads any packet of the protocol from a frame (its `type` byte is ignored).
    ///
    /// # Errors
    ///
    /// [`PacketError::UnknownId`] for an id outside the protocol, or the body's error.
    pub fn decode(frame: &Frame<'_>) -> Result<Packet, PacketError> {
        let body = frame.body();
        Ok(match frame.id() {
            LoginRequest::ID => Packet::LoginRequest(LoginRequest::read_body(body)?),
            LoginResponse::ID => Packet::LoginResponse(LoginResponse::read_body(body)?),
            RoomEnterRequest::ID => Packet::RoomEnterRequest(RoomEnterRequest::read_body(body)?),
            RoomEnterResponse::ID => Packet::RoomEnterResponse(RoomEnterResponse::read_body(body)?),
            RoomLeaveRequest::ID => Packet::RoomLeaveRequest(RoomLeaveRequest::read_body(body)?),
            RoomLeaveResponse::ID => Packet::RoomLeaveResponse(RoomLeaveResponse::read_body(body)?),
            RoomUserListNotify::ID => {
                Packet::RoomUserListNotify(RoomUserListNotify::read_body(body)?)
            }
            RoomNewUserNotify::ID => Packet::RoomNewUserNotify(RoomNewUserNotify::read_body(body)?),
            RoomLeaveUserNotify::ID => {
                Packet::RoomLeaveUserNotify(RoomLeaveUserNotify::read_body(body)?)
            }
            RoomChatRequest::ID => Packet::RoomChatRequest(RoomChatRequest::read_body(body)?),
            RoomChatResponse::ID => Packet::RoomChatResponse(RoomChatResponse::read_body(body)?),
            RoomChatNotify::ID => Packet::RoomChatNotify(RoomChatNotify::read_body(body)?),
            id => return Err(PacketError::UnknownId { id }),
        })
    }

    /// The packet's id.
    pub fn id(&self) -> u16 {
        fn id_of<P: ChatPacket>(_: &P) -> u16 {
            P::ID
        }
        each_packet!(self, p => id_of(p))
    }

    /// The whole frame.
    pub fn encode(&self) -> Bytes {
        each_packet!(self, p => p.encode())
    }

    /// Appends the whole frame to `buf`.
    pub fn encode_into(&self, buf: &mut BytesMut) {
        each_packet!(self, p => p.encode_into(buf))
    }
}

macro_rules! packet_from {
    ($($ty:ident),*) => {
        $(impl From<$ty> for Packet {
            fn from(p: $ty) -> Packet {
                Packet::$ty(p)
            }
        })*
    };
}

packet_from!(
    LoginRequest,
    LoginResponse,
    RoomEnterRequest,
    RoomEnterResponse,
    RoomLeaveRequest,
    RoomLeaveResponse,
    RoomUserListNotify,
    RoomNewUserNotify,
    RoomLeaveUserNotify,
    RoomChatRequest,
    RoomChatResponse,
    RoomChatNotify
);

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(p: Packet) {
        let bytes = p.encode();
        let (frame, rest) = Frame::parse(&bytes, iocp_wire::MAX_FRAME_LEN)
            .unwrap()
            .unwrap();
        assert!(rest.is_empty());
        assert_eq!(frame.id(), p.id());
        assert_eq!(frame.kind(), PACKET_TYPE);
        assert_eq!(Packet::decode(&frame).unwrap(), p);
    }

    #[test]
    fn every_packet_roundtrips() {
        roundtrip(
            LoginRequest {
                user_id: "alice".into(),
                password: "pw".into(),
            }
            .into(),
        );
        roundtrip(
            LoginResponse {
                result: ResultCode::LOGIN_USER_ALREADY,
            }
            .into(),
        );
        roundtrip(RoomEnterRequest { room_number: -7 }.into());
        roundtrip(
            RoomEnterResponse {
                result: ResultCode::NONE,
                rival_user_id: "bob".into(),
            }
            .into(),
        );
        roundtrip(RoomLeaveRequest.into());
        roundtrip(
            RoomLeaveResponse {
                result: ResultCode::LEAVE_ROOM_INVALID_ROOM_INDEX,
            }
            .into(),
        );
        roundtrip(
            RoomUserListNotify {
                user_ids: vec!["a".into(), "한국어".into()],
            }
            .into(),
        );
        roundtrip(RoomUserListNotify { user_ids: vec![] }.into());
        roundtrip(
            RoomNewUserNotify {
                user_id: "c".into(),
            }
            .into(),
        );
        roundtrip(
            RoomLeaveUserNotify {
                user_id: "d".into(),
            }
            .into(),
        );
        roundtrip(
            RoomChatRequest {
                message: "hello".into(),
            }
            .into(),
        );
        roundtrip(
            RoomChatResponse {
                result: ResultCode::NONE,
            }
            .into(),
        );
        roundtrip(
            RoomChatNotify {
                user_id: "e".into(),
                message: "hi all".into(),
            }
            .into(),
        );
    }

    #[test]
    fn codes_have_names() {
        assert_eq!(
            ResultCode::LOGIN_USER_ALREADY.to_string(),
            "LOGIN_USER_ALREADY (31)"
        );
        assert_eq!(ResultCode(999).to_string(), "unknown result 999");
        assert!(ResultCode::ALL.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn user_ids() {
        assert!(valid_user_id("alice_01"));
        assert!(valid_user_id("김철수"));
        assert!(!valid_user_id(""));
        assert!(!valid_user_id("a b"));
        assert!(!valid_user_id("a\u{FFFD}"));
        assert!(!valid_user_id(&"x".repeat(21)));
        assert!(valid_user_id(&"x".repeat(20)));
    }

    #[test]
    fn strict_lengths() {
        let err = LoginRequest::read_body(&[0; 41]).unwrap_err();
        assert_eq!(
            err,
            PacketError::BodyLength {
                id: 201,
                expected: 42,
                got: 41
            }
        );
        assert!(RoomLeaveRequest::read_body(&[0]).is_err());
        assert!(RoomUserListNotify::read_body(&[1, 0]).is_err());
        assert!(RoomUserListNotify::read_body(&[200, 0]).is_err());
    }

    #[test]
    fn long_text_is_cut() {
        let p = RoomChatRequest {
            message: "é".repeat(200),
        };
        let bytes = p.encode();
        assert_eq!(bytes.len(), 5 + 257);
        let (frame, _) = Frame::parse(&bytes, 65535).unwrap().unwrap();
        let back = RoomChatRequest::decode(&frame).unwrap();
        assert_eq!(back.message, "é".repeat(128));
    }
}
