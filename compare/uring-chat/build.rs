//! Stage 5b's chat checks, for `tests/server.rs`, without the three that
//! watch the server's epoll interest list.
//!
//! Those three fill a slow reader's socket until the server asks for
//! `EPOLLOUT` on it (read from `/proc/PID/fdinfo`), which a server with no
//! epoll never does. Rust cannot leave tests out of a module included by
//! path, so this reads stage 5's file where it is, drops those three by
//! name (failing the build if one is missing, so a renamed check is not
//! silently run or lost), and writes the rest to `OUT_DIR/chat.rs`. The
//! file's inner doc comment (`//!`) becomes a plain one: `include!` takes
//! items only.

use std::path::PathBuf;

/// The chat checks that inspect epoll (see `tests/server.rs`).
const EPOLL_CHECKS: [&str; 3] = [
    "lines_left_for_a_full_socket_arrive_in_order_without_more_traffic",
    "lines_a_write_found_no_room_for_are_kept_for_epollout_not_dropped",
    "end_of_file_still_gets_every_line_it_is_owed_then_the_close",
];

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let source = manifest.join("../../stage5-chat/steps/chat/tests/checks/chat.rs");
    println!("cargo:rerun-if-changed={}", source.display());
    println!("cargo:rerun-if-changed=build.rs");
    let mut text = std::fs::read_to_string(&source)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", source.display()));
    for name in EPOLL_CHECKS {
        let start = text
            .find(&format!("#[test]\nfn {name}("))
            .unwrap_or_else(|| panic!("{}: no check `{name}` to leave out", source.display()));
        // rustfmt ends a top-level function with `}` alone on a line.
        let end = start
            + text[start..]
                .find("\n}\n")
                .unwrap_or_else(|| panic!("{}: `{name}` has no end", source.display()))
            + 3;
        text.replace_range(start..end, "");
    }
    let text = text.replace("\n//!", "\n//").replacen("//!", "//", 1);
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("chat.rs");
    std::fs::write(&out, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", out.display()));
}
