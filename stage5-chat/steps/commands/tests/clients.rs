//! The client table's checks: stage 5b's, included by path, on this step's
//! table, and its own: names that `/nick` changes.

use stage5c_commands as step;
use stage5c_commands::clients::{Clients, NickError};
use testkit::tcp_socket as socket;

/// Stage 5b's checks.
#[path = "../../chat/tests/checks/clients.rs"]
mod clients;

#[test]
fn names_count_up_and_skip_taken_ones() {
    let mut clients = Clients::new(1024);
    let (a, name) = clients.join(socket());
    assert_eq!(&*name, "client1");
    clients.rename(a, b"client2").unwrap();
    let (b, name) = clients.join(socket());
    assert_eq!(&*name, "client3", "client2 is taken");
    assert_eq!(clients.online_count(), 2);
    assert_eq!(clients.rename(b, b"client2"), Err(NickError::Taken));
    assert_eq!(clients.rename(b, b"no spaces"), Err(NickError::Invalid));
    assert_eq!(clients.rename(b, b""), Err(NickError::Invalid));
    assert_eq!(clients.rename(b, &[b'x'; 33]), Err(NickError::Invalid));
    assert_eq!(clients.rename(b, "é".as_bytes()), Err(NickError::Invalid));
    let names: Vec<String> = clients.names().iter().map(|n| n.to_string()).collect();
    assert_eq!(names, ["client2", "client3"]);
}

#[test]
fn a_name_is_free_again_once_its_client_left() {
    let mut clients = Clients::new(1024);
    let (a, _) = clients.join(socket());
    let (b, _) = clients.join(socket());
    clients.rename(a, b"alice").unwrap();
    assert_eq!(clients.rename(b, b"alice"), Err(NickError::Taken));
    clients.leave(a, step::clients::Why::EndOfFile);
    assert_eq!(clients.rename(b, b"alice").as_deref(), Ok("client2"));
}
