//! Epoll masks and interest lists in words, as the man pages name them.

/// The event flags, in the order a reader thinks of them: direction, mode,
/// then the conditions. `EPOLLERR` and `EPOLLHUP` are in every mask
/// `/proc` shows: the kernel adds them to each registration.
const EPOLL_FLAGS: [(libc::c_int, &str); 15] = [
    (libc::EPOLLIN, "EPOLLIN"),
    (libc::EPOLLOUT, "EPOLLOUT"),
    (libc::EPOLLET, "EPOLLET"),
    (libc::EPOLLONESHOT, "EPOLLONESHOT"),
    (libc::EPOLLEXCLUSIVE, "EPOLLEXCLUSIVE"),
    (libc::EPOLLWAKEUP, "EPOLLWAKEUP"),
    (libc::EPOLLRDHUP, "EPOLLRDHUP"),
    (libc::EPOLLPRI, "EPOLLPRI"),
    (libc::EPOLLERR, "EPOLLERR"),
    (libc::EPOLLHUP, "EPOLLHUP"),
    (libc::EPOLLRDNORM, "EPOLLRDNORM"),
    (libc::EPOLLRDBAND, "EPOLLRDBAND"),
    (libc::EPOLLWRNORM, "EPOLLWRNORM"),
    (libc::EPOLLWRBAND, "EPOLLWRBAND"),
    (libc::EPOLLMSG, "EPOLLMSG"),
];

/// An epoll event mask by its flags' names (`EPOLLIN|EPOLLET|EPOLLRDHUP`),
/// any bits without a name last, in hex; `0` for no flag at all.
pub fn epoll_flags(mask: u32) -> String {
    let mut names: Vec<String> = Vec::new();
    let mut rest = mask;
    for (flag, name) in EPOLL_FLAGS {
        let flag = flag as u32;
        if mask & flag != 0 {
            names.push(name.to_string());
            rest &= !flag;
        }
    }
    if rest != 0 {
        names.push(format!("{rest:#x}"));
    }
    if names.is_empty() {
        return "0".to_string();
    }
    names.join("|")
}

/// An interest list (from [`Server::epoll_interest`]) in words:
/// `fd 3 EPOLLIN|EPOLLERR|EPOLLHUP, fd 5 ...`, or `empty`.
pub fn interest_list(interest: &[(i32, u32)]) -> String {
    if interest.is_empty() {
        return "empty".to_string();
    }
    let entries: Vec<String> = interest
        .iter()
        .map(|&(fd, events)| format!("fd {fd} {}", epoll_flags(events)))
        .collect();
    entries.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_each_epoll_flag() {
        let (epollin, epollet, epollrdhup) = (
            libc::EPOLLIN as u32,
            libc::EPOLLET as u32,
            libc::EPOLLRDHUP as u32,
        );
        assert_eq!(
            epoll_flags(epollin | epollet | epollrdhup),
            "EPOLLIN|EPOLLET|EPOLLRDHUP"
        );
        // As /proc shows a registration for EPOLLIN|EPOLLET: the kernel
        // adds EPOLLERR and EPOLLHUP.
        assert_eq!(
            epoll_flags(0x8000_0019),
            "EPOLLIN|EPOLLET|EPOLLERR|EPOLLHUP"
        );
        assert_eq!(epoll_flags(libc::EPOLLOUT as u32), "EPOLLOUT");
        assert_eq!(epoll_flags(0), "0");
    }

    #[test]
    fn shows_unknown_epoll_bits_in_hex_last() {
        assert_eq!(epoll_flags(0x0100_0001), "EPOLLIN|0x1000000");
        assert_eq!(epoll_flags(0x0300_0000), "0x3000000");
    }

    #[test]
    fn names_every_flag_libc_has() {
        let all = EPOLL_FLAGS.iter().fold(0u32, |m, &(f, _)| m | f as u32);
        assert!(!epoll_flags(all).contains("0x"), "{}", epoll_flags(all));
    }

    #[test]
    fn words_an_interest_list() {
        assert_eq!(interest_list(&[]), "empty");
        assert_eq!(
            interest_list(&[(3, libc::EPOLLIN as u32), (5, 0x8000_0001)]),
            "fd 3 EPOLLIN, fd 5 EPOLLIN|EPOLLET"
        );
    }
}
