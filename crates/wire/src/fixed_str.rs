//! NUL-padded fixed-size character arrays, the tutorial's `char UserID[21]` fields.
//!
//! The rules are documented once, on [`write_fixed_str`].

/// How many bytes of `s` a field of `n` bytes stores, by the [rules](write_fixed_str#rules).
pub fn fixed_str_len(s: &str, n: usize) -> usize {
    let before_nul = s.bytes().position(|b| b == 0).unwrap_or(s.len());
    let mut len = before_nul.min(n.saturating_sub(1));
    while !s.is_char_boundary(len) {
        len -= 1;
    }
    len
}

/// Writes `s` into `field`, NUL-padded to the field's whole length.
///
/// # Rules
///
/// Writing `s` into a field of `n` bytes stores the longest prefix of `s` that
///
/// 1. stops before the first NUL in `s`, if there is one (a reader could not see past it);
/// 2. is at most `n - 1` bytes long, so that at least one NUL always follows and a C peer may
///    treat the field as a C string: `char UserID[MAX_USER_ID_LEN + 1]` holds an id of up to
///    `MAX_USER_ID_LEN` bytes;
/// 3. ends on a UTF-8 character boundary, so a valid `&str` is never cut in the middle of a
///    character;
///
/// and fills the rest of the field with NUL. A field of 0 bytes stores nothing.
///
/// Returns how many bytes of `s` were stored: less than `s.len()` means that `s` was
/// truncated (refuse it if a truncated value is not acceptable, as for a user id).
///
/// Reading ([`read_fixed_str`]) returns the bytes up to the first NUL, or the whole field if it
/// has none (a peer that fills all `n` bytes is tolerated).
///
/// ```
/// let mut user_id = [0xffu8; 8];
/// assert_eq!(iocp_wire::write_fixed_str(&mut user_id, "bob"), 3);
/// assert_eq!(user_id, *b"bob\0\0\0\0\0");
/// assert_eq!(iocp_wire::write_fixed_str(&mut user_id, "abcdefghij"), 7);
/// assert_eq!(user_id, *b"abcdefg\0");
/// ```
pub fn write_fixed_str(field: &mut [u8], s: &str) -> usize {
    let len = fixed_str_len(s, field.len());
    let (head, pad) = field.split_at_mut(len);
    head.copy_from_slice(&s.as_bytes()[..len]);
    pad.fill(0);
    len
}

/// `s` as a NUL-padded `[u8; N]`, by the [rules](write_fixed_str#rules) (truncating silently; use
/// [`fixed_str_len`] or [`write_fixed_str`] to detect truncation).
///
/// ```
/// assert_eq!(iocp_wire::fixed_str::<6>("héllo"), *b"h\xc3\xa9ll\0");
/// assert_eq!(iocp_wire::fixed_str::<4>("héllo"), *b"h\xc3\xa9\0");
/// assert_eq!(iocp_wire::fixed_str::<3>("héllo"), *b"h\0\0", "é is not cut in half");
/// ```
pub fn fixed_str<const N: usize>(s: &str) -> [u8; N] {
    let mut field = [0; N];
    write_fixed_str(&mut field, s);
    field
}

/// The bytes of a NUL-padded field up to its first NUL (the whole field if it has none).
///
/// ```
/// assert_eq!(iocp_wire::read_fixed_str(b"bob\0\0\0"), b"bob");
/// assert_eq!(iocp_wire::read_fixed_str(b"full"), b"full");
/// ```
pub fn read_fixed_str(field: &[u8]) -> &[u8] {
    match field.iter().position(|&b| b == 0) {
        Some(end) => &field[..end],
        None => field,
    }
}

/// [`read_fixed_str`], checked to be UTF-8.
///
/// # Errors
///
/// The [`Utf8Error`](std::str::Utf8Error) if the bytes before the first NUL are not UTF-8.
pub fn read_fixed_utf8(field: &[u8]) -> Result<&str, std::str::Utf8Error> {
    std::str::from_utf8(read_fixed_str(field))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        assert_eq!(fixed_str_len("abc", 0), 0);
        assert_eq!(fixed_str_len("abc", 1), 0);
        assert_eq!(fixed_str_len("abc", 3), 2);
        assert_eq!(fixed_str_len("abc", 4), 3);
        assert_eq!(fixed_str_len("abc", 100), 3);
        assert_eq!(fixed_str_len("a\0bc", 100), 1);
        // "é" is 2 bytes, "한" is 3.
        assert_eq!(fixed_str_len("한글", 4), 3);
        assert_eq!(fixed_str_len("한글", 6), 3);
        assert_eq!(fixed_str_len("한글", 7), 6);
        assert_eq!(fixed_str_len("한", 3), 0);
    }

    #[test]
    fn write_pads_and_read_stops_at_nul() {
        let mut field = [0xAA; 21];
        assert_eq!(write_fixed_str(&mut field, "user01"), 6);
        assert_eq!(&field[..6], b"user01");
        assert!(field[6..].iter().all(|&b| b == 0));
        assert_eq!(read_fixed_utf8(&field), Ok("user01"));

        let mut empty: [u8; 0] = [];
        assert_eq!(write_fixed_str(&mut empty, "x"), 0);
        assert_eq!(read_fixed_str(&empty), b"");
        assert!(read_fixed_utf8(b"\xff\0").is_err());
    }
}
