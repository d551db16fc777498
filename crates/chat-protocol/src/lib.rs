//! The chat protocol of the IOCP tutorial's chat server and its C# client (`Packet.h`,
//! `ErrorCode.h`, `PacketDefine.cs`, `Packet.cs`), shared by `iocp-server chat`, the `iocp-chat`
//! terminal client and `iocp-load chat`. Packets only: no I/O, no server.
//!
//! Every packet is a frame of [`iocp_wire`]: the packed little-endian 5-byte header
//! `u16 packet_length (header included), u16 packet_id, u8 type`, then a body laid out as the
//! tutorial's packed C struct (or, for the three room notifies the C# client parses, as
//! `Packet.cs` reads them). We send `type` = 0 and ignore it on receipt.
//!
//! | packet | id | body | bytes |
//! |---|---|---|---|
//! | [`DevEcho`] | 1 | any bytes, echoed as they are | 0 – 8,187 |
//! | [`LoginRequest`] | 201 | `char UserID[33]`, `char UserPW[33]` | 66 |
//! | [`LoginResponse`] | 202 | `u16 Result` | 2 |
//! | [`RoomEnterRequest`] | 206 | `i32 RoomNumber` | 4 |
//! | [`RoomEnterResponse`] | 207 | `i16 Result` | 2 |
//! | [`RoomNewUserNotify`] | 208 | `i64 UniqueId`, `i8 IdLen`, `IdLen` bytes of id | 9 + IdLen |
//! | [`RoomUserListNotify`] | 209 | `i8 Count`, then per user `i64 UniqueId`, `i8 IdLen`, id | 1 + Σ(9 + IdLen) |
//! | [`RoomLeaveRequest`] | 215 | (empty) | 0 |
//! | [`RoomLeaveResponse`] | 216 | `i16 Result` | 2 |
//! | [`RoomLeaveUserNotify`] | 217 | `i64 UniqueId` | 8 |
//! | [`RoomChatRequest`] | 221 | `char Message[257]` | 257 |
//! | [`RoomChatResponse`] | 222 | `i16 Result` | 2 |
//! | [`RoomChatNotify`] | 223 | `char UserID[33]`, `char Msg[257]` | 290 |
//!
//! Fixed-size bodies must have exactly their length ([`PacketError::BodyLength`] otherwise), as
//! the tutorial checks `packetSize == sizeof(...)`. User ids and passwords are UTF-8 up to the
//! first NUL (at most 32 bytes; invalid UTF-8 is read with replacement characters, which no valid
//! user id has). Chat messages are **bytes**: the field's bytes up to the first NUL, or all 257
//! when there is none, relayed unchanged. Results are [`ResultCode`]s (a `u16`, or an `i16` with
//! the same bytes in the room packets). `docs/protocol.md` tells the whole conversation.
//!
//! The protocol follows the tutorial repository at commit
//! `d79dc429d25f83424bdf54f22a5f399f48a9d1b1` ([`TUTORIAL_COMMIT`]).

#![forbid(unsafe_code)]

use std::fmt;

use bytes::{Bytes, BytesMut};
use iocp_wire::{BodyReader, Frame, FrameWriter, MAX_BODY_LEN, read_fixed_str};

pub use iocp_wire::{PacketError, TypedPacket};

/// The commit of the tutorial repository (`jacking75/edu_cpp_IOCP`) whose `Tutorial/10/Packet.h`,
/// `ErrorCode.h` and `ChatClient/Packet.cs` this protocol follows.
pub const TUTORIAL_COMMIT: &str = "d79dc429d25f83424bdf54f22a5f399f48a9d1b1";
/// The `type` byte we send. It is ignored on receipt.
pub const PACKET_TYPE: u8 = 0;
/// Longest user id, in bytes (`MAX_USER_ID_LEN`; the field is one byte longer).
pub const MAX_USER_ID_LEN: usize = 32;
/// Longest password, in bytes (`MAX_USER_PW_LEN`; the field is one byte longer).
pub const MAX_USER_PW_LEN: usize = 32;
/// Longest chat message that keeps its NUL, in bytes (`MAX_CHAT_MSG_SIZE`). A message that fills
/// the whole field ([`MSG_FIELD`] bytes, no NUL) is relayed whole too.
pub const MAX_CHAT_MSG_LEN: usize = 256;
/// Size of the user id field, `char UserID[MAX_USER_ID_LEN + 1]`.
pub const ID_FIELD: usize = MAX_USER_ID_LEN + 1;
/// Size of the password field, `char UserPW[MAX_USER_PW_LEN + 1]`.
pub const PW_FIELD: usize = MAX_USER_PW_LEN + 1;
/// Size of the message field, `char Message[MAX_CHAT_MSG_SIZE + 1]`.
pub const MSG_FIELD: usize = MAX_CHAT_MSG_LEN + 1;
/// Most users in one [`RoomUserListNotify`] (its count is an `i8`); a longer list is sent in
/// several.
pub const MAX_USER_LIST: usize = i8::MAX as usize;

/// Packet ids (`enum class PACKET_ID : UINT16` of `Packet.h`, `enum PACKET_ID` of
/// `PacketDefine.cs`).
pub mod packet_id {
    /// Client → server → client: the body, echoed (the C# client's echo button).
    pub const DEV_ECHO: u16 = 1;
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
    /// Server → the other members: someone entered the room.
    pub const ROOM_NEW_USER_NOTIFY: u16 = 208;
    /// Server → the user who entered: who is in the room.
    pub const ROOM_USER_LIST_NOTIFY: u16 = 209;
    /// Client → server: leave the room.
    pub const ROOM_LEAVE_REQUEST: u16 = 215;
    /// Server → client: the result of leaving.
    pub const ROOM_LEAVE_RESPONSE: u16 = 216;
    /// Server → the other members: someone left the room (or disconnected).
    pub const ROOM_LEAVE_USER_NOTIFY: u16 = 217;
    /// Client → server: say something in the room.
    pub const ROOM_CHAT_REQUEST: u16 = 221;
    /// Server → client: the result of a chat request.
    pub const ROOM_CHAT_RESPONSE: u16 = 222;
    /// Server → every member of the room, the sender included: someone said something.
    pub const ROOM_CHAT_NOTIFY: u16 = 223;
}

/// A result code (`enum class ERROR_CODE : unsigned short` of `ErrorCode.h`, plus the codes it
/// lacks). An open set: a peer may send a code this version does not know, which is kept as is.
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
    /// *Ours:* a room or chat request before the session logged in.
    USER_MGR_NOT_LOGGED_IN = 13,
    /// This user is already logged in (on another session), or this session already is or is
    /// logging in.
    LOGIN_USER_ALREADY = 31,
    /// No user object left (tutorial; the server has one per session slot, so not sent).
    LOGIN_USER_USED_ALL_OBJ = 32,
    /// Unknown user or wrong password (the two are not told apart, so that user ids cannot be
    /// probed).
    LOGIN_USER_INVALID_PW = 33,
    /// *Ours:* the user id is empty, too long, or has characters other than letters, digits,
    /// `-`, `_` and `.`.
    LOGIN_USER_INVALID_ID = 34,
    /// *Ours:* too many logins waiting for the password check; try again shortly.
    LOGIN_SERVER_BUSY = 35,
    /// *Ours:* the account store failed (logged on the server).
    LOGIN_STORE_ERROR = 36,
    /// *Ours:* too many failed logins of this account or from this address (or too many logins
    /// from this address waiting to be checked): answered at once, without checking; try later.
    LOGIN_TOO_MANY_ATTEMPTS = 37,
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
                "invalid user id (1 to 32 bytes of letters, digits, '-', '_', '.')"
            }
            ResultCode::LOGIN_SERVER_BUSY => "the server is busy, try again",
            ResultCode::LOGIN_STORE_ERROR => "the server could not check the password",
            ResultCode::LOGIN_TOO_MANY_ATTEMPTS => "too many login attempts, try again later",
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

/// Cuts `text` to at most `max` bytes at a character boundary.
pub fn cut_text(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn field<T>(id: u16, v: Result<T, iocp_wire::FrameError>) -> Result<T, PacketError> {
    v.map_err(|error| PacketError::body(id, error))
}

/// Reads a NUL-padded text field of `n` bytes as UTF-8 (lossy).
fn text(id: u16, r: &mut BodyReader<'_>, n: usize) -> Result<String, PacketError> {
    let bytes = field(id, r.bytes(n))?;
    Ok(String::from_utf8_lossy(read_fixed_str(bytes)).into_owned())
}

/// Writes `bytes` into a field of `n` bytes, NUL-padded (cut at `n`).
fn put_field(w: &mut FrameWriter<'_>, bytes: &[u8], n: usize) {
    let len = bytes.len().min(n);
    w.put_slice(&bytes[..len]);
    w.put_zeros(n - len);
}

/// Writes a user id as `i8 IdLen` and its bytes (cut at [`MAX_USER_ID_LEN`]).
fn put_short_id(w: &mut FrameWriter<'_>, user_id: &str) {
    let id = cut_text(user_id, MAX_USER_ID_LEN);
    w.put_u8(id.len() as u8);
    w.put_slice(id.as_bytes());
}

/// Reads `i64 UniqueId`, `i8 IdLen`, id.
fn read_user(id: u16, r: &mut BodyReader<'_>) -> Result<RoomUser, PacketError> {
    let unique_id = i64::from_le_bytes(field(id, r.array())?);
    let len = field(id, r.u8())? as i8;
    if !(0..=MAX_USER_ID_LEN as i8).contains(&len) {
        return Err(PacketError::Invalid {
            id,
            why: format!("user id length {len}, at most {MAX_USER_ID_LEN}"),
        });
    }
    let bytes = field(id, r.bytes(len as usize))?;
    Ok(RoomUser {
        unique_id,
        user_id: String::from_utf8_lossy(bytes).into_owned(),
    })
}

/// Nothing may follow the last field of a variable-length body.
fn end(id: u16, r: &BodyReader<'_>, expected: usize) -> Result<(), PacketError> {
    if r.remaining() != 0 {
        return Err(PacketError::BodyLength {
            id,
            expected,
            got: expected + r.remaining(),
        });
    }
    Ok(())
}

macro_rules! packet {
    ($ty:ident, $id:ident) => {
        impl $ty {
            /// The packet id.
            pub const ID: u16 = packet_id::$id;
        }
    };
}

/// `DEV_ECHO` (1): any body; the server sends it back unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevEcho {
    /// The bytes to echo (at most [`MAX_BODY_LEN`] are sent; the server's frame limit is lower).
    pub data: Vec<u8>,
}
packet!(DevEcho, DEV_ECHO);

impl TypedPacket for DevEcho {
    const ID: u16 = packet_id::DEV_ECHO;
    const NAME: &'static str = "DEV_ECHO";
    fn body_len(&self) -> usize {
        self.data.len().min(MAX_BODY_LEN)
    }
    fn write_body(&self, w: &mut FrameWriter<'_>) {
        w.put_slice(&self.data[..self.body_len()]);
    }
    fn read_body(body: &[u8]) -> Result<Self, PacketError> {
        Ok(DevEcho {
            data: body.to_vec(),
        })
    }
}

/// `LOGIN_REQUEST` (201): `char UserID[33]; char UserPW[33];` — 66 bytes.
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

impl TypedPacket for LoginRequest {
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
        let mut r = PacketError::exact(Self::ID, body, ID_FIELD + PW_FIELD)?;
        Ok(LoginRequest {
            user_id: text(Self::ID, &mut r, ID_FIELD)?,
            password: text(Self::ID, &mut r, PW_FIELD)?,
        })
    }
}

/// A packet whose body is one result: `u16 Result` (login) or `i16 Result` (rooms) — 2 bytes.
macro_rules! result_packet {
    ($(#[$doc:meta])* $ty:ident, $id:ident, $put:expr, $get:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub struct $ty {
            /// [`ResultCode::NONE`] on success.
            pub result: ResultCode,
        }
        packet!($ty, $id);

        impl TypedPacket for $ty {
            const ID: u16 = packet_id::$id;
            const NAME: &'static str = stringify!($id);
            fn body_len(&self) -> usize {
                2
            }
            fn write_body(&self, w: &mut FrameWriter<'_>) {
                w.put_slice(&$put(self.result));
            }
            fn read_body(body: &[u8]) -> Result<Self, PacketError> {
                let mut r = PacketError::exact(Self::ID, body, 2)?;
                Ok($ty {
                    result: $get(field(Self::ID, r.array::<2>())?),
                })
            }
        }
    };
}

fn put_u16(code: ResultCode) -> [u8; 2] {
    code.0.to_le_bytes()
}

fn get_u16(b: [u8; 2]) -> ResultCode {
    ResultCode(u16::from_le_bytes(b))
}

fn put_i16(code: ResultCode) -> [u8; 2] {
    code.as_i16().to_le_bytes()
}

fn get_i16(b: [u8; 2]) -> ResultCode {
    ResultCode::from_i16(i16::from_le_bytes(b))
}

result_packet!(
    /// `LOGIN_RESPONSE` (202): `u16 Result;` — 2 bytes.
    LoginResponse,
    LOGIN_RESPONSE,
    put_u16,
    get_u16
);
result_packet!(
    /// `ROOM_ENTER_RESPONSE` (207): `i16 Result;` — 2 bytes.
    RoomEnterResponse,
    ROOM_ENTER_RESPONSE,
    put_i16,
    get_i16
);
result_packet!(
    /// `ROOM_LEAVE_RESPONSE` (216): `i16 Result;` — 2 bytes.
    RoomLeaveResponse,
    ROOM_LEAVE_RESPONSE,
    put_i16,
    get_i16
);
result_packet!(
    /// `ROOM_CHAT_RESPONSE` (222): `i16 Result;` — 2 bytes.
    RoomChatResponse,
    ROOM_CHAT_RESPONSE,
    put_i16,
    get_i16
);

/// `ROOM_ENTER_REQUEST` (206): `i32 RoomNumber;` — 4 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoomEnterRequest {
    /// The room, `0..rooms`.
    pub room_number: i32,
}
packet!(RoomEnterRequest, ROOM_ENTER_REQUEST);

impl TypedPacket for RoomEnterRequest {
    const ID: u16 = packet_id::ROOM_ENTER_REQUEST;
    const NAME: &'static str = "ROOM_ENTER_REQUEST";
    fn body_len(&self) -> usize {
        4
    }
    fn write_body(&self, w: &mut FrameWriter<'_>) {
        w.put_slice(&self.room_number.to_le_bytes());
    }
    fn read_body(body: &[u8]) -> Result<Self, PacketError> {
        let mut r = PacketError::exact(Self::ID, body, 4)?;
        Ok(RoomEnterRequest {
            room_number: i32::from_le_bytes(field(Self::ID, r.array())?),
        })
    }
}

/// `ROOM_LEAVE_REQUEST` (215): no body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoomLeaveRequest;
packet!(RoomLeaveRequest, ROOM_LEAVE_REQUEST);

impl TypedPacket for RoomLeaveRequest {
    const ID: u16 = packet_id::ROOM_LEAVE_REQUEST;
    const NAME: &'static str = "ROOM_LEAVE_REQUEST";
    fn body_len(&self) -> usize {
        0
    }
    fn write_body(&self, _: &mut FrameWriter<'_>) {}
    fn read_body(body: &[u8]) -> Result<Self, PacketError> {
        PacketError::exact(Self::ID, body, 0)?;
        Ok(RoomLeaveRequest)
    }
}

/// A member of a room as the room notifies carry it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomUser {
    /// Identifies one logged-in session: a user who logs in again gets another.
    pub unique_id: i64,
    /// The user id (at most [`MAX_USER_ID_LEN`] bytes are sent).
    pub user_id: String,
}

impl RoomUser {
    fn len(&self) -> usize {
        8 + 1 + cut_text(&self.user_id, MAX_USER_ID_LEN).len()
    }

    fn write(&self, w: &mut FrameWriter<'_>) {
        w.put_slice(&self.unique_id.to_le_bytes());
        put_short_id(w, &self.user_id);
    }
}

/// `ROOM_NEW_USER_NOTIFY` (208): `i64 UniqueId; i8 IdLen; IdLen bytes of id` — someone entered
/// your room (`RoomNewUserNtfPacket` of `Packet.cs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomNewUserNotify {
    /// Who entered.
    pub user: RoomUser,
}
packet!(RoomNewUserNotify, ROOM_NEW_USER_NOTIFY);

impl TypedPacket for RoomNewUserNotify {
    const ID: u16 = packet_id::ROOM_NEW_USER_NOTIFY;
    const NAME: &'static str = "ROOM_NEW_USER_NOTIFY";
    fn body_len(&self) -> usize {
        self.user.len()
    }
    fn write_body(&self, w: &mut FrameWriter<'_>) {
        self.user.write(w);
    }
    fn read_body(body: &[u8]) -> Result<Self, PacketError> {
        let mut r = BodyReader::new(body);
        let user = read_user(Self::ID, &mut r)?;
        end(Self::ID, &r, user.len())?;
        Ok(RoomNewUserNotify { user })
    }
}

/// `ROOM_USER_LIST_NOTIFY` (209): `i8 Count;` then per user `i64 UniqueId; i8 IdLen; id` — who
/// is in the room, sent to a user who just entered (`RoomUserListNtfPacket` of `Packet.cs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomUserListNotify {
    /// The members (at most [`MAX_USER_LIST`] are encoded).
    pub users: Vec<RoomUser>,
}
packet!(RoomUserListNotify, ROOM_USER_LIST_NOTIFY);

impl TypedPacket for RoomUserListNotify {
    const ID: u16 = packet_id::ROOM_USER_LIST_NOTIFY;
    const NAME: &'static str = "ROOM_USER_LIST_NOTIFY";
    fn body_len(&self) -> usize {
        1 + self
            .users
            .iter()
            .take(MAX_USER_LIST)
            .map(RoomUser::len)
            .sum::<usize>()
    }
    fn write_body(&self, w: &mut FrameWriter<'_>) {
        let n = self.users.len().min(MAX_USER_LIST);
        w.put_u8(n as u8);
        for user in &self.users[..n] {
            user.write(w);
        }
    }
    fn read_body(body: &[u8]) -> Result<Self, PacketError> {
        let mut r = BodyReader::new(body);
        let count = field(Self::ID, r.u8())? as i8;
        if count < 0 {
            return Err(PacketError::Invalid {
                id: Self::ID,
                why: format!("user count {count}"),
            });
        }
        let users = (0..count)
            .map(|_| read_user(Self::ID, &mut r))
            .collect::<Result<Vec<_>, _>>()?;
        let len = 1 + users.iter().map(RoomUser::len).sum::<usize>();
        end(Self::ID, &r, len)?;
        Ok(RoomUserListNotify { users })
    }
}

/// `ROOM_LEAVE_USER_NOTIFY` (217): `i64 UniqueId;` — 8 bytes: someone left your room
/// (`RoomLeaveUserNtfPacket` of `Packet.cs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoomLeaveUserNotify {
    /// The unique id the member had in [`RoomNewUserNotify`] / [`RoomUserListNotify`].
    pub unique_id: i64,
}
packet!(RoomLeaveUserNotify, ROOM_LEAVE_USER_NOTIFY);

impl TypedPacket for RoomLeaveUserNotify {
    const ID: u16 = packet_id::ROOM_LEAVE_USER_NOTIFY;
    const NAME: &'static str = "ROOM_LEAVE_USER_NOTIFY";
    fn body_len(&self) -> usize {
        8
    }
    fn write_body(&self, w: &mut FrameWriter<'_>) {
        w.put_slice(&self.unique_id.to_le_bytes());
    }
    fn read_body(body: &[u8]) -> Result<Self, PacketError> {
        let mut r = PacketError::exact(Self::ID, body, 8)?;
        Ok(RoomLeaveUserNotify {
            unique_id: i64::from_le_bytes(field(Self::ID, r.array())?),
        })
    }
}

/// The message bytes of a `char Message[257]` field: up to the first NUL, or all of it.
fn message_bytes(field: &[u8]) -> Vec<u8> {
    read_fixed_str(field).to_vec()
}

/// `ROOM_CHAT_REQUEST` (221): `char Message[257];` — 257 bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomChatRequest {
    /// The message's bytes (UTF-8 from the tutorial's client; relayed as they are). At most
    /// [`MSG_FIELD`] bytes are sent; a message shorter than that is NUL-terminated.
    pub message: Vec<u8>,
}
packet!(RoomChatRequest, ROOM_CHAT_REQUEST);

impl RoomChatRequest {
    /// A request saying `text`, cut at a character boundary to [`MAX_CHAT_MSG_LEN`] bytes.
    pub fn text(text: &str) -> RoomChatRequest {
        RoomChatRequest {
            message: cut_text(text, MAX_CHAT_MSG_LEN).as_bytes().to_vec(),
        }
    }
}

impl TypedPacket for RoomChatRequest {
    const ID: u16 = packet_id::ROOM_CHAT_REQUEST;
    const NAME: &'static str = "ROOM_CHAT_REQUEST";
    fn body_len(&self) -> usize {
        MSG_FIELD
    }
    fn write_body(&self, w: &mut FrameWriter<'_>) {
        put_field(w, &self.message, MSG_FIELD);
    }
    fn read_body(body: &[u8]) -> Result<Self, PacketError> {
        let mut r = PacketError::exact(Self::ID, body, MSG_FIELD)?;
        Ok(RoomChatRequest {
            message: message_bytes(field(Self::ID, r.bytes(MSG_FIELD))?),
        })
    }
}

/// `ROOM_CHAT_NOTIFY` (223): `char UserID[33]; char Msg[257];` — 290 bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomChatNotify {
    /// Who said it.
    pub user_id: String,
    /// What was said: the request's message bytes, unchanged.
    pub message: Vec<u8>,
}
packet!(RoomChatNotify, ROOM_CHAT_NOTIFY);

impl RoomChatNotify {
    /// The message as text (invalid UTF-8 shown with replacement characters).
    pub fn message_text(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.message)
    }
}

impl TypedPacket for RoomChatNotify {
    const ID: u16 = packet_id::ROOM_CHAT_NOTIFY;
    const NAME: &'static str = "ROOM_CHAT_NOTIFY";
    fn body_len(&self) -> usize {
        ID_FIELD + MSG_FIELD
    }
    fn write_body(&self, w: &mut FrameWriter<'_>) {
        w.put_fixed_str(&self.user_id, ID_FIELD);
        put_field(w, &self.message, MSG_FIELD);
    }
    fn read_body(body: &[u8]) -> Result<Self, PacketError> {
        let mut r = PacketError::exact(Self::ID, body, ID_FIELD + MSG_FIELD)?;
        Ok(RoomChatNotify {
            user_id: text(Self::ID, &mut r, ID_FIELD)?,
            message: message_bytes(field(Self::ID, r.bytes(MSG_FIELD))?),
        })
    }
}

macro_rules! packets {
    ($($ty:ident),* $(,)?) => {
        /// Any packet of the protocol, for a peer that reads whatever comes.
        #[derive(Clone, Debug, PartialEq, Eq)]
        #[allow(missing_docs)] // each variant is its packet type
        pub enum Packet {
            $($ty($ty),)*
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
                    $($ty::ID => Packet::$ty($ty::read_body(body)?),)*
                    id => return Err(PacketError::UnknownId { id }),
                })
            }

            /// The packet's id.
            pub fn id(&self) -> u16 {
                match self {
                    $(Packet::$ty(_) => $ty::ID,)*
                }
            }

            /// The whole frame.
            pub fn encode(&self) -> Bytes {
                match self {
                    $(Packet::$ty(p) => p.encode(),)*
                }
            }

            /// Appends the whole frame to `buf`.
            pub fn encode_into(&self, buf: &mut BytesMut) {
                match self {
                    $(Packet::$ty(p) => p.encode_into(buf),)*
                }
            }
        }

        $(impl From<$ty> for Packet {
            fn from(p: $ty) -> Packet {
                Packet::$ty(p)
            }
        })*
    };
}

packets!(
    DevEcho,
    LoginRequest,
    LoginResponse,
    RoomEnterRequest,
    RoomEnterResponse,
    RoomNewUserNotify,
    RoomUserListNotify,
    RoomLeaveRequest,
    RoomLeaveResponse,
    RoomLeaveUserNotify,
    RoomChatRequest,
    RoomChatResponse,
    RoomChatNotify,
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

    fn user(unique_id: i64, user_id: &str) -> RoomUser {
        RoomUser {
            unique_id,
            user_id: user_id.into(),
        }
    }

    #[test]
    fn every_packet_roundtrips() {
        roundtrip(
            DevEcho {
                data: b"ping".to_vec(),
            }
            .into(),
        );
        roundtrip(DevEcho { data: vec![] }.into());
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
                result: ResultCode::ENTER_ROOM_FULL_USER,
            }
            .into(),
        );
        roundtrip(
            RoomNewUserNotify {
                user: user(1 << 40, "김철수"),
            }
            .into(),
        );
        roundtrip(
            RoomUserListNotify {
                users: vec![user(1, "a"), user(-2, "한국어"), user(3, &"x".repeat(32))],
            }
            .into(),
        );
        roundtrip(RoomUserListNotify { users: vec![] }.into());
        roundtrip(RoomLeaveRequest.into());
        roundtrip(
            RoomLeaveResponse {
                result: ResultCode::LEAVE_ROOM_INVALID_ROOM_INDEX,
            }
            .into(),
        );
        roundtrip(RoomLeaveUserNotify { unique_id: 42 }.into());
        roundtrip(RoomChatRequest::text("hello").into());
        roundtrip(
            RoomChatRequest {
                message: vec![0xff; MSG_FIELD],
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
                message: "안녕하세요".as_bytes().to_vec(),
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
        assert!(!valid_user_id(&"x".repeat(33)));
        assert!(valid_user_id(&"x".repeat(32)));
    }

    #[test]
    fn long_users_and_text_are_cut_at_characters() {
        let p = RoomChatRequest::text(&"é".repeat(200));
        assert_eq!(p.message.len(), 256);
        let n = RoomNewUserNotify {
            user: user(1, &"가".repeat(20)),
        };
        assert_eq!(n.body_len(), 9 + 30);
        assert_eq!(n.encode().len(), 5 + 9 + 30);
    }

    #[test]
    fn variable_bodies_are_checked() {
        // A count that promises more users than the body holds, trailing bytes, a negative count.
        assert!(RoomUserListNotify::read_body(&[1]).is_err());
        assert!(RoomUserListNotify::read_body(&[0, 0]).is_err());
        assert!(RoomUserListNotify::read_body(&[0x80]).is_err());
        let mut body = 5i64.to_le_bytes().to_vec();
        body.push(40);
        body.extend([b'a'; 40]);
        assert!(RoomNewUserNotify::read_body(&body).is_err());
        assert!(RoomLeaveUserNotify::read_body(&[0; 7]).is_err());
    }
}
