//! The TCP ports listening inside the workspace (`GET /ports`), read from the kernel's
//! tables in `/proc/net/tcp{,6}`, with the program holding each socket where it can be
//! found (the agent is root, so it can look at every process's descriptors).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use serde::Serialize;

/// The state number of a listening socket in `/proc/net/tcp`.
const TCP_LISTEN: u8 = 0x0A;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ListeningPort {
    pub port: u16,
    /// The addresses the port is bound to (`0.0.0.0`, `::`, `127.0.0.1`, ...).
    pub addresses: Vec<IpAddr>,
    /// The program holding the socket, if found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

/// One LISTEN entry of a `/proc/net/tcp` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub address: IpAddr,
    pub port: u16,
    pub inode: u64,
}

/// The listening sockets in the text of `/proc/net/tcp` or `/proc/net/tcp6`; lines that
/// do not parse (the header, other states) are skipped.
pub fn parse_table(text: &str) -> Vec<Entry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Entry> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
    let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
    if u8::from_str_radix(state, 16).ok()? != TCP_LISTEN {
        return None;
    }
    let (address, port) = local.split_once(':')?;
    Some(Entry {
        address: parse_address(address)?,
        port: u16::from_str_radix(port, 16).ok()?,
        inode: inode.parse().ok()?,
    })
}

/// The kernel prints addresses as 32-bit words in host order (little-endian here).
fn parse_address(hex: &str) -> Option<IpAddr> {
    let word = |i: usize| hex.get(i * 8..i * 8 + 8).and_then(|w| u32::from_str_radix(w, 16).ok()).map(u32::to_le_bytes);
    match hex.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(word(0)?))),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            let v6 = Ipv6Addr::from(bytes);
            Some(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4))
        }
        _ => None,
    }
}

/// The listening ports under `proc` (`/proc` in a workspace), one entry per port.
pub fn listening(proc: &Path) -> Vec<ListeningPort> {
    let mut entries = Vec::new();
    for table in ["net/tcp", "net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(proc.join(table)) {
            entries.extend(parse_table(&text));
        }
    }
    let owners = socket_owners(proc);
    let mut ports: BTreeMap<u16, ListeningPort> = BTreeMap::new();
    for entry in entries {
        let port = ports.entry(entry.port).or_insert_with(|| ListeningPort {
            port: entry.port,
            addresses: Vec::new(),
            process: None,
            pid: None,
        });
        if !port.addresses.contains(&entry.address) {
            port.addresses.push(entry.address);
        }
        if port.pid.is_none() {
            if let Some((pid, name)) = owners.get(&entry.inode) {
                port.pid = Some(*pid);
                port.process = Some(name.clone());
            }
        }
    }
    ports.into_values().collect()
}

/// Socket inode -> (pid, program name), from every process's open descriptors.
fn socket_owners(proc: &Path) -> HashMap<u64, (u32, String)> {
    let mut owners = HashMap::new();
    let Ok(processes) = std::fs::read_dir(proc) else { return owners };
    for process in processes.flatten() {
        let Some(pid) = process.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(fds) = std::fs::read_dir(process.path().join("fd")) else { continue };
        let mut name = None;
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else { continue };
            let Some(inode) = target.to_str().and_then(|t| t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok())
            else {
                continue;
            };
            let name = name.get_or_insert_with(|| {
                std::fs::read_to_string(process.path().join("comm")).unwrap_or_default().trim().to_string()
            });
            owners.entry(inode).or_insert_with(|| (pid, name.clone()));
        }
    }
    owners
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 41234 1 0000000000000000 100 0 0 10 0
   1: 00000000:0BB8 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 41235 1 0000000000000000 100 0 0 10 0
   2: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000  1000        0 41236 1 0000000000000000 20 4 30 10 -1
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1F40 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 5001 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5002 1 0000000000000000 100 0 0 10 0
   2: 0000000000000000FFFF00000100007F:2328 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5003 1 0000000000000000 100 0 0 10 0
";

    fn check(text: &str, expected: &[(&str, u16, u64)]) {
        let got: Vec<(String, u16, u64)> =
            parse_table(text).into_iter().map(|e| (e.address.to_string(), e.port, e.inode)).collect();
        let expected: Vec<(String, u16, u64)> = expected.iter().map(|(a, p, i)| (a.to_string(), *p, *i)).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn listening_sockets_of_both_tables() {
        // The established connection (state 01) is not a listening port.
        check(TCP, &[("127.0.0.1", 8080, 41234), ("0.0.0.0", 3000, 41235)]);
        check(TCP6, &[("::", 8000, 5001), ("::1", 22, 5002), ("127.0.0.1", 9000, 5003)]);
        check("", &[]);
        check("garbage\n  0: zz:zz 0 0A\n", &[]);
    }

    #[test]
    fn this_process_listening_is_found_with_its_name() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let ports = listening(Path::new("/proc"));
        let found = ports.iter().find(|p| p.port == port).unwrap_or_else(|| panic!("{port} not in {ports:?}"));
        assert_eq!(found.addresses, vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]);
        assert_eq!(found.pid, Some(std::process::id()));
        assert!(found.process.is_some(), "{found:?}");
    }
}
