//! Every chat packet, byte for byte, against the tutorial's current layouts (`Tutorial/10/Packet.h`
//! for the structs, `ChatClient/Packet.cs` for the three room notifies its C# client parses):
//! header `u16 len, u16 id, u8 type` little-endian, then the body. The expected bytes are written
//! out here from those files, not produced by the crate under test; the notifies are also read
//! back by a port of the C# client's parsing code.

use iocp_chat_protocol::{
    DevEcho, LoginRequest, LoginResponse, Packet, ResultCode, RoomChatNotify, RoomChatRequest,
    RoomChatResponse, RoomEnterRequest, RoomEnterResponse, RoomLeaveRequest, RoomLeaveResponse,
    RoomLeaveUserNotify, RoomNewUserNotify, RoomUser, RoomUserListNotify, TypedPacket,
};
use iocp_wire::{Frame, MAX_FRAME_LEN};

/// The header for `id` with a body of `body_len` bytes, type 0.
fn header(id: u16, body_len: usize) -> Vec<u8> {
    let len = (5 + body_len) as u16;
    let mut v = len.to_le_bytes().to_vec();
    v.extend_from_slice(&id.to_le_bytes());
    v.push(0);
    v
}

/// Checks the encoding against `body` (and its size against `size`), and decodes it back.
fn check(packet: impl TypedPacket + Into<Packet> + Clone, id: u16, size: usize, body: Vec<u8>) {
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
    // One byte short or long is refused (every packet here but DEV_ECHO has a checked length).
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

/// `UTF8.GetBytes(text)` copied into a zeroed `byte[n]`, as `LoginReqPacket.SetValue` and
/// `RoomChatReqPacket.SetValue` do.
fn cs_field(text: &[u8], n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    v[..text.len()].copy_from_slice(text);
    v
}

/// The C# client's parsing of the three room notifies (`Packet.cs`: `RoomUserListNtfPacket`,
/// `RoomNewUserNtfPacket`, `RoomLeaveUserNtfPacket`), step by step: `(SByte)` counts and
/// lengths, `BitConverter.ToInt64` at a read position, `Encoding.UTF8.GetString(bytes, pos, len)`.
mod csharp {
    fn to_int64(body: &[u8], pos: usize) -> i64 {
        i64::from_le_bytes(body[pos..pos + 8].try_into().unwrap())
    }

    fn get_string(body: &[u8], pos: usize, len: usize) -> String {
        String::from_utf8_lossy(&body[pos..pos + len]).into_owned()
    }

    /// `RoomUserListNtfPacket.FromBytes`: (unique ids, user ids).
    pub fn room_user_list(body: &[u8]) -> (Vec<i64>, Vec<String>) {
        let mut read_pos = 0;
        let user_count = body[read_pos] as i8;
        read_pos += 1;
        let (mut ids, mut names) = (Vec::new(), Vec::new());
        for _ in 0..user_count {
            let unique_id = to_int64(body, read_pos);
            read_pos += 8;
            let id_len = body[read_pos] as i8;
            read_pos += 1;
            let id = get_string(body, read_pos, id_len as usize);
            read_pos += id_len as usize;
            ids.push(unique_id);
            names.push(id);
        }
        (ids, names)
    }

    /// `RoomNewUserNtfPacket.FromBytes`: (unique id, user id).
    pub fn room_new_user(body: &[u8]) -> (i64, String) {
        let mut read_pos = 0;
        let unique_id = to_int64(body, read_pos);
        read_pos += 8;
        let id_len = body[read_pos] as i8;
        read_pos += 1;
        (unique_id, get_string(body, read_pos, id_len as usize))
    }

    /// `RoomLeaveUserNtfPacket.FromBytes`: the unique id.
    pub fn room_leave_user(body: &[u8]) -> i64 {
        to_int64(body, 0)
    }

    /// `RoomChatNtfPacket.FromBytes` before its `Trim()`: the two fields as strings.
    pub fn room_chat_notify(body: &[u8]) -> (String, String) {
        (get_string(body, 0, 33), get_string(body, 33, 257))
    }
}

/// The body of a frame.
fn body_of(bytes: &[u8]) -> &[u8] {
    &bytes[5..]
}

#[test]
fn dev_echo_1_is_any_body() {
    let text = "에코 echo".as_bytes().to_vec();
    let packet = DevEcho { data: text.clone() };
    let mut expected = header(1, text.len());
    expected.extend_from_slice(&text);
    assert_eq!(&packet.encode()[..], &expected[..]);
    let (frame, _) = Frame::parse(&expected, MAX_FRAME_LEN).unwrap().unwrap();
    assert_eq!(Packet::decode(&frame).unwrap(), Packet::DevEcho(packet));
    check_empty_echo();
}

fn check_empty_echo() {
    let bytes = DevEcho { data: vec![] }.encode();
    assert_eq!(&bytes[..], &[5, 0, 1, 0, 0]);
}

#[test]
fn login_request_201_is_66_bytes() {
    let mut body = cs_field(b"alice", 33);
    body.extend(cs_field("비밀번호".as_bytes(), 33));
    check(
        LoginRequest {
            user_id: "alice".into(),
            password: "비밀번호".into(),
        },
        201,
        66,
        body,
    );
    // A 32-byte id fills its field but for the NUL.
    let id = "x".repeat(32);
    let mut body = cs_field(id.as_bytes(), 33);
    body.extend(cs_field(b"pw", 33));
    check(
        LoginRequest {
            user_id: id,
            password: "pw".into(),
        },
        201,
        66,
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
fn room_enter_response_207_is_2_bytes() {
    check(
        RoomEnterResponse {
            result: ResultCode::ENTER_ROOM_FULL_USER,
        },
        207,
        2,
        vec![54, 0],
    );
}

#[test]
fn room_new_user_notify_208_reads_as_the_csharp_client_reads_it() {
    let packet = RoomNewUserNotify {
        user: RoomUser {
            unique_id: 0x0102_0304_0506_0708,
            user_id: "김철수".into(),
        },
    };
    let mut body = 0x0102_0304_0506_0708_i64.to_le_bytes().to_vec();
    body.push(9);
    body.extend("김철수".as_bytes());
    check(packet.clone(), 208, 18, body);
    let bytes = packet.encode();
    assert_eq!(
        csharp::room_new_user(body_of(&bytes)),
        (0x0102_0304_0506_0708, "김철수".to_owned())
    );
}

#[test]
fn room_user_list_notify_209_reads_as_the_csharp_client_reads_it() {
    let users = vec![
        RoomUser {
            unique_id: 7,
            user_id: "alice".into(),
        },
        RoomUser {
            unique_id: (3 << 32) | 12,
            user_id: "영희".into(),
        },
    ];
    let mut body = vec![2];
    body.extend(7i64.to_le_bytes());
    body.push(5);
    body.extend(b"alice");
    body.extend(((3i64 << 32) | 12).to_le_bytes());
    body.push(6);
    body.extend("영희".as_bytes());
    let packet = RoomUserListNotify {
        users: users.clone(),
    };
    check(packet.clone(), 209, 1 + 9 + 5 + 9 + 6, body);
    let (ids, names) = csharp::room_user_list(body_of(&packet.encode()));
    assert_eq!(ids, [7, (3 << 32) | 12]);
    assert_eq!(names, ["alice", "영희"]);

    // The count is an `i8`: 127 users at most in one packet, and the C# client reads them all.
    let many: Vec<RoomUser> = (0..200)
        .map(|i| RoomUser {
            unique_id: i,
            user_id: format!("user{i}"),
        })
        .collect();
    let bytes = RoomUserListNotify { users: many }.encode();
    let (ids, names) = csharp::room_user_list(body_of(&bytes));
    assert_eq!(ids.len(), 127);
    assert_eq!(names[126], "user126");
}

#[test]
fn room_leave_request_215_is_empty() {
    check(RoomLeaveRequest, 215, 0, vec![]);
}

#[test]
fn room_leave_response_216_is_2_bytes() {
    check(
        RoomLeaveResponse {
            result: ResultCode::LEAVE_ROOM_INVALID_ROOM_INDEX,
        },
        216,
        2,
        vec![71, 0],
    );
}

#[test]
fn room_leave_user_notify_217_is_8_bytes() {
    let packet = RoomLeaveUserNotify {
        unique_id: -2_i64.pow(40),
    };
    check(packet, 217, 8, (-2_i64.pow(40)).to_le_bytes().to_vec());
    assert_eq!(
        csharp::room_leave_user(body_of(&packet.encode())),
        -2_i64.pow(40)
    );
}

#[test]
fn room_chat_request_221_is_257_bytes() {
    let text = "안녕하세요 hello".as_bytes();
    check(
        RoomChatRequest {
            message: text.to_vec(),
        },
        221,
        257,
        cs_field(text, 257),
    );
    // A message filling all 257 bytes has no NUL, and is read whole.
    check(
        RoomChatRequest {
            message: vec![b'a'; 257],
        },
        221,
        257,
        vec![b'a'; 257],
    );
}

#[test]
fn room_chat_response_222_is_2_bytes() {
    check(
        RoomChatResponse {
            result: ResultCode::CHAT_ROOM_INVALID_ROOM_NUMBER,
        },
        222,
        2,
        vec![81, 0],
    );
}

#[test]
fn room_chat_notify_223_is_290_bytes() {
    let mut body = cs_field(b"alice", 33);
    body.extend(cs_field("반가워요".as_bytes(), 257));
    let packet = RoomChatNotify {
        user_id: "alice".into(),
        message: "반가워요".as_bytes().to_vec(),
    };
    check(packet.clone(), 223, 290, body);
    let (user, message) = csharp::room_chat_notify(body_of(&packet.encode()));
    assert_eq!(user.trim_end_matches('\0'), "alice");
    assert_eq!(message.trim_end_matches('\0'), "반가워요");
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
            ResultCode::LOGIN_USER_INVALID_PW,
            33,
            "LOGIN_USER_INVALID_PW",
        ),
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
            ResultCode::LOGIN_USER_INVALID_ID,
            34,
            "LOGIN_USER_INVALID_ID",
        ),
        (ResultCode::LOGIN_SERVER_BUSY, 35, "LOGIN_SERVER_BUSY"),
        (ResultCode::LOGIN_STORE_ERROR, 36, "LOGIN_STORE_ERROR"),
        (
            ResultCode::LOGIN_TOO_MANY_ATTEMPTS,
            37,
            "LOGIN_TOO_MANY_ATTEMPTS",
        ),
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
