//! Where in a TOML file a byte offset (a `toml` error's or a `Spanned`
//! value's span) lies, for errors that name the line: the stack file, the
//! appliance file and image definitions share it.

/// 1-based line and column (in characters) of byte `offset` in `text`.
/// Counts bytes, so an offset past the end or inside a character cannot
/// panic.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let tail = &before[start..];
    // Whole characters only: an offset inside one is at its column.
    let whole = match std::str::from_utf8(tail) {
        Ok(t) => t,
        Err(e) => std::str::from_utf8(&tail[..e.valid_up_to()]).unwrap_or(""),
    };
    let column = whole.chars().count() + 1;
    (line, column)
}

/// The 1-based line of byte `offset` in `text`.
pub fn line(text: &str, offset: usize) -> usize {
    line_column(text, offset).0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_columns_count_from_one() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
        assert_eq!(line_column("ab\ncd", 99), (2, 3));
        // Inside the two-byte "é": no panic, the column before it.
        assert_eq!(line_column("a\né", 3), (2, 1));
        assert_eq!(line("a\nb\nc", 4), 3);
    }
}
