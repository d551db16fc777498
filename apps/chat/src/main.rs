//! `iocp-chat`: a terminal client for the chat server (`iocp-server chat`).
//!
//! ```text
//! iocp-chat --addr 127.0.0.1:11021 --user alice        # password prompted (no echo)
//! printf 'pw\n/join 1\nhello\n' | iocp-chat --user alice --password-stdin
//! ```
//!
//! It logs in, then reads commands and messages from standard input, one per line: `/join N`,
//! `/leave`, `/echo TEXT`, `/quit` (or end of input), `/help`; any other line is said in the
//! room. A second
//! thread prints what the server sends: `[bob] hello`, `* bob entered the room`, refusals with
//! their result code. Plain blocking I/O: one socket, two threads.
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use iocp_chat_protocol::{
    DevEcho, LoginRequest, MAX_CHAT_MSG_LEN, MAX_USER_PW_LEN, Packet, ResultCode, RoomChatRequest,
    RoomEnterRequest, RoomLeaveRequest, TypedPacket, valid_user_id,
};
use iocp_wire::{Decoder, MAX_FRAME_LEN};

/// A terminal chat client for iocp-server's chat server.
#[derive(Parser, Debug)]
#[command(
    name = "iocp-chat",
    version,
    after_help = "Once logged in, type a line to say it in your room, or:\n  \
                  /join N     enter room N\n  /leave      leave the room\n  \
                  /echo TEXT  have the server echo TEXT (DEV_ECHO)\n  \
                  /quit       leave (end of input too)\n  /help       this list\n\n\
                  The protocol is the tutorial's (user ids and passwords up to 32 bytes, \
                  messages up to 256 bytes of UTF-8); see docs/protocol.md."
)]
struct Args {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:11021")]
    addr: String,
    /// User id to log in as.
    #[arg(long, short)]
    user: String,
    /// Read the password from the first line of standard input instead of prompting.
    #[arg(long)]
    password_stdin: bool,
    /// Enter this room right after logging in.
    #[arg(long)]
    room: Option<i32>,
    /// Give up connecting or logging in after this many seconds.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
}

const HELP: &str =
    "/join N: enter room N | /leave | /echo TEXT | /quit | anything else: say it in the room";

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("iocp-chat: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<ExitCode, String> {
    if !valid_user_id(&args.user) {
        return Err(format!(
            "invalid user id {:?}: {}",
            args.user,
            ResultCode::LOGIN_USER_INVALID_ID.describe()
        ));
    }
    let stdin = io::stdin();
    let mut input = stdin.lock();
    let password = read_password(args, &mut input)?;
    let timeout = Duration::from_secs(args.timeout.max(1));
    let addr = resolve(&args.addr)?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    stream.set_nodelay(true).ok();

    // Log in before anything else, synchronously.
    let mut reader = Reader::new(stream.try_clone().map_err(|e| e.to_string())?);
    send(
        &mut stream,
        &LoginRequest {
            user_id: args.user.clone(),
            password,
        },
    )?;
    stream.set_read_timeout(Some(timeout)).ok();
    match reader.next().map_err(|e| format!("logging in: {e}"))? {
        Some(Packet::LoginResponse(r)) if r.result.is_ok() => {}
        Some(Packet::LoginResponse(r)) => {
            return Err(format!(
                "login failed: {} ({})",
                r.result.describe(),
                r.result
            ));
        }
        Some(other) => return Err(format!("unexpected {other:?} before the login response")),
        None => return Err("the server closed the connection".into()),
    }
    stream.set_read_timeout(None).ok();
    println!("* logged in as {} on {addr} ({HELP})", args.user);

    // Rooms asked for, oldest first: responses come in request order.
    let asked_room: Arc<Mutex<VecDeque<i32>>> = Arc::default();
    let quitting = Arc::new(AtomicBool::new(false));
    let mut requests = Requests {
        stream,
        pending: Arc::new(AtomicU64::new(0)),
    };
    let printer = {
        let (asked_room, quitting, pending) = (
            asked_room.clone(),
            quitting.clone(),
            requests.pending.clone(),
        );
        std::thread::spawn(move || print_incoming(reader, &asked_room, &quitting, &pending))
    };
    if let Some(room) = args.room {
        lock(&asked_room).push_back(room);
        requests.send(&RoomEnterRequest { room_number: room })?;
    }

    let mut line = String::new();
    loop {
        line.clear();
        if input.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
            break; // end of input: like /quit
        }
        let text = line.trim_end_matches(['\n', '\r']);
        let result = match text.split_once(' ').unwrap_or((text, "")) {
            ("", _) => Ok(()),
            ("/quit", _) => break,
            ("/help", _) => {
                println!("* {HELP}");
                Ok(())
            }
            ("/join", n) => match n.trim().parse::<i32>() {
                Ok(room) => {
                    lock(&asked_room).push_back(room);
                    requests.send(&RoomEnterRequest { room_number: room })
                }
                Err(_) => {
                    println!("! /join needs a room number");
                    Ok(())
                }
            },
            ("/leave", _) => requests.send(&RoomLeaveRequest),
            ("/echo", rest) => requests.send(&DevEcho {
                data: rest.as_bytes().to_vec(),
            }),
            (cmd, _) if cmd.starts_with('/') => {
                println!("! unknown command {cmd} ({HELP})");
                Ok(())
            }
            _ => {
                if text.len() > MAX_CHAT_MSG_LEN {
                    println!("! message cut to {MAX_CHAT_MSG_LEN} bytes");
                }
                requests.send(&RoomChatRequest::text(text))
            }
        };
        if let Err(e) = result {
            eprintln!("iocp-chat: {e}");
            break;
        }
        let _ = io::stdout().flush();
    }
    // Wait for the answers to what was sent (the server may drop answers that are not ready
    // when it sees the end of our stream), then stop sending: the server flushes and closes,
    // and the printer ends.
    let deadline = Instant::now() + Duration::from_secs(2);
    while requests.pending.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    quitting.store(true, Ordering::Relaxed);
    let _ = requests.stream.shutdown(Shutdown::Write);
    let _ = requests
        .stream
        .set_read_timeout(Some(Duration::from_secs(2)));
    let _ = printer.join();
    Ok(ExitCode::SUCCESS)
}

/// The socket, for requests after the login, and how many wait for their response.
struct Requests {
    stream: TcpStream,
    pending: Arc<AtomicU64>,
}

impl Requests {
    fn send(&mut self, packet: &impl TypedPacket) -> Result<(), String> {
        self.pending.fetch_add(1, Ordering::Relaxed);
        send(&mut self.stream, packet)
    }
}

fn resolve(addr: &str) -> Result<SocketAddr, String> {
    addr.to_socket_addrs()
        .map_err(|e| format!("{addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr}: no address"))
}

fn read_password(args: &Args, input: &mut impl BufRead) -> Result<String, String> {
    let password = if args.password_stdin {
        let mut line = String::new();
        input
            .read_line(&mut line)
            .map_err(|e| format!("reading the password: {e}"))?;
        line.trim_end_matches(['\n', '\r']).to_owned()
    } else if io::stdin().is_terminal() {
        rpassword::prompt_password(format!("password for {}: ", args.user))
            .map_err(|e| format!("reading the password: {e}"))?
    } else {
        return Err("standard input is not a terminal: use --password-stdin".into());
    };
    if password.len() > MAX_USER_PW_LEN {
        return Err(format!(
            "the password is longer than {MAX_USER_PW_LEN} bytes, which the protocol cannot carry"
        ));
    }
    Ok(password)
}

fn send(stream: &mut TcpStream, packet: &impl TypedPacket) -> Result<(), String> {
    stream
        .write_all(&packet.encode())
        .map_err(|e| format!("sending: {e}"))
}

/// Reads whole packets from the socket.
struct Reader {
    stream: TcpStream,
    decoder: Decoder,
    frames: std::collections::VecDeque<Vec<u8>>,
}

impl Reader {
    fn new(stream: TcpStream) -> Reader {
        Reader {
            stream,
            decoder: Decoder::with_max_frame_len(MAX_FRAME_LEN),
            frames: Default::default(),
        }
    }

    /// The next packet, or `None` at the end of the stream.
    fn next(&mut self) -> io::Result<Option<Packet>> {
        let mut buf = [0u8; 8192];
        loop {
            if let Some(bytes) = self.frames.pop_front() {
                let (frame, _) = iocp_wire::Frame::parse(&bytes, MAX_FRAME_LEN)
                    .ok()
                    .flatten()
                    .expect("whole frames only");
                return Packet::decode(&frame)
                    .map(Some)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e));
            }
            let n = self.stream.read(&mut buf)?;
            if n == 0 {
                return Ok(None);
            }
            let frames = &mut self.frames;
            self.decoder
                .decode(&buf[..n], |f| frames.push_back(f.as_bytes().to_vec()))
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        }
    }
}

/// Prints what the server sends until it closes the connection; ends the process if that
/// happens while the user is still typing.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn print_incoming(
    mut reader: Reader,
    asked_room: &Mutex<VecDeque<i32>>,
    quitting: &AtomicBool,
    pending: &AtomicU64,
) {
    let refused = |what: &str, code: ResultCode| {
        println!("! {what} refused: {} ({code})", code.describe());
    };
    // The members of our room by unique id: a leave notify carries only the id.
    let mut members = std::collections::HashMap::<i64, String>::new();
    loop {
        let packet = match reader.next() {
            Ok(Some(packet)) => packet,
            Ok(None) => break,
            Err(e) => {
                if !quitting.load(Ordering::Relaxed) {
                    eprintln!("iocp-chat: {e}");
                }
                break;
            }
        };
        if matches!(
            packet,
            Packet::RoomEnterResponse(_)
                | Packet::RoomLeaveResponse(_)
                | Packet::RoomChatResponse(_)
                | Packet::DevEcho(_)
        ) {
            let _ =
                pending.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
        match packet {
            Packet::RoomEnterResponse(r) => {
                let room = lock(asked_room).pop_front();
                let room = room.map_or_else(|| "?".to_owned(), |r| r.to_string());
                if r.result.is_ok() {
                    println!("* entered room {room}");
                } else {
                    refused(&format!("entering room {room}"), r.result);
                }
            }
            Packet::RoomUserListNotify(list) => {
                let names: Vec<&str> = list.users.iter().map(|u| u.user_id.as_str()).collect();
                println!("* in the room: {}", names.join(", "));
                members.extend(list.users.into_iter().map(|u| (u.unique_id, u.user_id)));
            }
            Packet::RoomNewUserNotify(n) => {
                println!("* {} entered the room", n.user.user_id);
                members.insert(n.user.unique_id, n.user.user_id);
            }
            Packet::RoomLeaveUserNotify(n) => match members.remove(&n.unique_id) {
                Some(user_id) => println!("* {user_id} left the room"),
                None => println!("* member {} left the room", n.unique_id),
            },
            Packet::RoomLeaveResponse(r) if r.result.is_ok() => {
                members.clear();
                println!("* you left the room");
            }
            Packet::RoomLeaveResponse(r) => refused("leaving", r.result),
            Packet::RoomChatResponse(r) if r.result.is_ok() => {}
            Packet::RoomChatResponse(r) => refused("chat", r.result),
            Packet::RoomChatNotify(n) => println!("[{}] {}", n.user_id, n.message_text()),
            Packet::DevEcho(e) => println!("* echo: {}", String::from_utf8_lossy(&e.data)),
            Packet::LoginResponse(r) => println!("* login: {}", r.result),
            other => println!("? {other:?}"),
        }
        let _ = io::stdout().flush();
    }
    if !quitting.load(Ordering::Relaxed) {
        println!("* the server closed the connection");
        let _ = io::stdout().flush();
        std::process::exit(1);
    }
}
