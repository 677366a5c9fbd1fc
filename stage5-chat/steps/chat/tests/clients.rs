//! The client table's checks, on this step's table.

use stage5b_chat as step;

#[path = "checks/clients.rs"]
mod clients;
