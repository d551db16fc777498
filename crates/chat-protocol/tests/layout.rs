//! Every chat packet, byte for byte, against the protocol table (the tutorial's packed structs):
//! header `u16 len, u16 id, u8 type` little-endian, then the body with its exact size.

use iocp_packet::chat_protocol::{
    ChatPacket, LoginRequest, LoginResponse, Packet, ResultCode, RoomChatNotify, RoomChatRequest,
    RoomChatResponse, RoomEnterRequest, RoomEnterResponse, RoomLeaveRequest, RoomLeaveResponse,
    RoomLeaveUserNotify, RoomNewUserNotify, RoomUserListNotify,
};
use iocp_wire::{Frame, MAX_FRAME_LEN};

/// A NUL-padded `char[n]` holding `s`.
fn field(s: &str, n: usize) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    assert!(v.len() < n);
    v.resize(n, 0);
    v
}

/// The header for `id` with a body of `body_len` bytes, type 0.
fn header(id: u16, body_len: usize) -> Vec<u8> {
    let len = (5 + body_len) as u16;
    let mut v = len.to_le_bytes().to_vec();
    v.extend_from_slice(&id.to_le_bytes());
    v.push(0);
    v
}

/// Checks the encoding against `body` (and its size against `size`), and decodes it back.
fn check(packet: impl ChatPacket + Into<Packet> + Clone, id: u16, size: usize, body: Vec<u8>) {
    assert_eq!(
        body.len(),
        size,
        "the expected body of packet {id} has the table's size"
    );
    let mut expected = header(id, size);
    expected.extend_from_slice(&body);
    let encoded = packet.encode();
    assert_eq!(&encoded[..], &expected[..], "packet {id}");
    let (frame, rest) = Frame::parse(&encoded, MAX_FRAME_LEN).unwrap().unwrap();
    assert!(rest.is_empty());
    assert_eq!(Packet::decode(&frame).unwrap(), packet.into());
    // One byte short or long is refused.
    let decode = |body: &[u8]| {
        let bytes = iocp_wire::encode(id, 0, body).unwrap();
        let (frame, _) = Frame::parse(&bytes, MAX_FRAME_LEN).unwrap().unwrap();
        Packet::decode(&frame)
    };
    if let Some((_, shorter)) = body.split_last() {
        assert!(decode(shorter).is_err(), "packet {id} one byte short");
    }
    let mut longer = body.clone();
    longer.push(0);
    assert!(decode(&longer).is_err(), "packet {id} one byte long");
}

#[test]
fn login_request_201_is_42_bytes() {
    let mut body = field("alice", 21);
    body.extend(field("s3cret", 21));
    check(
        LoginRequest {
            user_id: "alice".into(),
            password: "s3cret".into(),
        },
        201,
        42,
        body,
    );
}

#[test]
fn login_response_202_is_2_bytes() {
    check(
        LoginResponse {
            result: ResultCode::LOGIN_USER_ALREADY,
        },
        202,
        2,
        vec![31, 0],
    );
}

#[test]
fn room_enter_request_206_is_4_bytes() {
    check(
        RoomEnterRequest {
            room_number: 0x0102_0304,
        },
        206,
        4,
        vec![4, 3, 2, 1],
    );
    check(RoomEnterRequest { room_number: -1 }, 206, 4, vec![0xff; 4]);
}

#[test]
fn room_enter_response_207_is_23_bytes() {
    let mut body = vec![54, 0];
    body.extend(field("bob", 21));
    check(
        RoomEnterResponse {
            result: ResultCode::ENTER_ROOM_FULL_USER,
            rival_user_id: "bob".into(),
        },
        207,
        23,
        body,
    );
}

#[test]
fn room_leave_request_209_is_empty() {
    check(RoomLeaveRequest, 209, 0, vec![]);
}

#[test]
fn room_leave_response_210_is_2_bytes() {
    check(
        RoomLeaveResponse {
            result: ResultCode::LEAVE_ROOM_INVALID_ROOM_INDEX,
        },
        210,
        2,
        vec![71, 0],
    );
}

#[test]
fn room_user_list_notify_211_is_2_plus_21_per_user() {
    let mut body = vec![2, 0];
    body.extend(field("alice", 21));
    body.extend(field("bob", 21));
    check(
        RoomUserListNotify {
            user_ids: vec!["alice".into(), "bob".into()],
        },
        211,
        44,
        body,
    );
}

#[test]
fn room_new_and_leave_user_notify_212_213_are_21_bytes() {
    check(
        RoomNewUserNotify {
            user_id: "carol".into(),
        },
        212,
        21,
        field("carol", 21),
    );
    check(
        RoomLeaveUserNotify {
            user_id: "carol".into(),
        },
        213,
        21,
        field("carol", 21),
    );
}

#[test]
fn room_chat_request_214_is_257_bytes() {
    check(
        RoomChatRequest {
            message: "안녕하세요 hello".into(),
        },
        214,
        257,
        field("안녕하세요 hello", 257),
    );
}

#[test]
fn room_chat_response_215_is_2_bytes() {
    check(
        RoomChatResponse {
            result: ResultCode::CHAT_ROOM_INVALID_ROOM_NUMBER,
        },
        215,
        2,
        vec![81, 0],
    );
}

#[test]
fn room_chat_notify_216_is_278_bytes() {
    let mut body = field("alice", 21);
    body.extend(field("hi all", 257));
    check(
        RoomChatNotify {
            user_id: "alice".into(),
            message: "hi all".into(),
        },
        216,
        278,
        body,
    );
}

#[test]
fn result_codes_match_the_tutorial() {
    let table = [
        (ResultCode::NONE, 0, "NONE"),
        (
            ResultCode::USER_MGR_INVALID_USER_INDEX,
            11,
            "USER_MGR_INVALID_USER_INDEX",
        ),
        (
            ResultCode::USER_MGR_INVALID_USER_UNIQUEID,
            12,
            "USER_MGR_INVALID_USER_UNIQUEID",
        ),
        (ResultCode::LOGIN_USER_ALREADY, 31, "LOGIN_USER_ALREADY"),
        (
            ResultCode::LOGIN_USER_USED_ALL_OBJ,
            32,
            "LOGIN_USER_USED_ALL_OBJ",
        ),
        (
            ResultCode::NEW_ROOM_USED_ALL_OBJ,
            41,
            "NEW_ROOM_USED_ALL_OBJ",
        ),
        (ResultCode::NEW_ROOM_FAIL_ENTER, 42, "NEW_ROOM_FAIL_ENTER"),
        (
            ResultCode::ENTER_ROOM_NOT_FINDE_USER,
            51,
            "ENTER_ROOM_NOT_FINDE_USER",
        ),
        (
            ResultCode::ENTER_ROOM_INVALID_USER_STATUS,
            52,
            "ENTER_ROOM_INVALID_USER_STATUS",
        ),
        (
            ResultCode::ENTER_ROOM_NOT_USED_STATUS,
            53,
            "ENTER_ROOM_NOT_USED_STATUS",
        ),
        (ResultCode::ENTER_ROOM_FULL_USER, 54, "ENTER_ROOM_FULL_USER"),
        (ResultCode::ROOM_INVALID_INDEX, 61, "ROOM_INVALID_INDEX"),
        (ResultCode::ROOM_NOT_USED, 62, "ROOM_NOT_USED"),
        (ResultCode::ROOM_TOO_MANY_PACKET, 63, "ROOM_TOO_MANY_PACKET"),
        (
            ResultCode::LEAVE_ROOM_INVALID_ROOM_INDEX,
            71,
            "LEAVE_ROOM_INVALID_ROOM_INDEX",
        ),
        (
            ResultCode::CHAT_ROOM_INVALID_ROOM_NUMBER,
            81,
            "CHAT_ROOM_INVALID_ROOM_NUMBER",
        ),
        // Ours, for what the tutorial lacks.
        (
            ResultCode::USER_MGR_NOT_LOGGED_IN,
            13,
            "USER_MGR_NOT_LOGGED_IN",
        ),
        (
            ResultCode::LOGIN_USER_INVALID_PW,
            33,
            "LOGIN_USER_INVALID_PW",
        ),
        (
            ResultCode::LOGIN_USER_INVALID_ID,
            34,
            "LOGIN_USER_INVALID_ID",
        ),
        (ResultCode::LOGIN_SERVER_BUSY, 35, "LOGIN_SERVER_BUSY"),
        (ResultCode::LOGIN_STORE_ERROR, 36, "LOGIN_STORE_ERROR"),
    ];
    for (code, value, name) in table {
        assert_eq!(code.0, value);
        assert_eq!(code.name(), Some(name));
    }
    assert_eq!(ResultCode::ALL.len(), table.len());
}

#[test]
fn the_type_byte_is_ignored_on_receipt() {
    let mut bytes = LoginResponse {
        result: ResultCode::NONE,
    }
    .encode()
    .to_vec();
    bytes[4] = 0x7f;
    let (frame, _) = Frame::parse(&bytes, MAX_FRAME_LEN).unwrap().unwrap();
    assert_eq!(
        Packet::decode(&frame).unwrap(),
        Packet::LoginResponse(LoginResponse {
            result: ResultCode::NONE
        })
    );
}
