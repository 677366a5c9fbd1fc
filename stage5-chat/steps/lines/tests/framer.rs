//! The framer's checks, on this step's framer (the framer's home: every
//! later step uses this file by path, and runs these checks on it).

use stage5a_lines as step;

#[path = "checks/framer.rs"]
mod framer;
