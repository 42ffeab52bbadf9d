//! What a running flowlens holds and says, read from outside: its BPF links (`/proc/PID/fdinfo`)
//! and `key=value` fields of its log lines.

/// Netfilter BPF links process `pid` holds (0 when its fds cannot be read).
pub fn netfilter_links(pid: u32) -> usize {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return 0;
    };
    dir.flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path())
                .is_ok_and(|t| t.lines().any(|l| l == "link_type:\tnetfilter"))
        })
        .count()
}

/// The first line of a log that contains `what`; panics with the whole log otherwise.
pub fn log_line<'a>(log: &'a str, what: &str) -> &'a str {
    log.lines()
        .find(|l| l.contains(what))
        .unwrap_or_else(|| panic!("no {what:?} line in flowlens' log:\n{log}"))
}

/// The number after `key=` in a log line (quotes allowed); panics when it is not there.
pub fn log_field(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.trim_matches('"').parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {line}"))
}
