//! Process-table helpers over `/proc`: stout's `os::killtree` and the emulated freezer-cgroup destroy.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::fs;
use std::time::{Duration, Instant};

/// One row of the process table (`/proc/PID/stat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proc {
    pub pid: i32,
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
    pub state: char,
}

/// Reads `/proc/PID/stat`; `None` if the process is gone.
pub fn process(pid: i32) -> Option<Proc> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

fn parse_stat(stat: &str) -> Option<Proc> {
    // "pid (comm) state ppid pgrp session ..." — comm may contain spaces and parentheses.
    let (head, rest) = stat.rsplit_once(')')?;
    let pid = head.split_once(" (")?.0.trim().parse().ok()?;
    let mut it = rest.split_whitespace();
    let state = it.next()?.chars().next()?;
    let ppid = it.next()?.parse().ok()?;
    let pgrp = it.next()?.parse().ok()?;
    let session = it.next()?.parse().ok()?;
    Some(Proc {
        pid,
        ppid,
        pgrp,
        session,
        state,
    })
}

/// All processes currently in `/proc`.
pub fn processes() -> Vec<Proc> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(process)
        .collect()
}

/// True if `pid` exists and is not a zombie.
pub fn is_alive(pid: i32) -> bool {
    matches!(process(pid), Some(p) if p.state != 'Z' && p.state != 'X')
}

fn kill(pid: i32, sig: i32) {
    if pid > 1 && pid != std::process::id() as i32 {
        // SAFETY: plain kill(2) on a positive pid.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// stout's `os::killtree(pid, signal, groups, sessions)` (3rdparty/stout/include/stout/os/posix/killtree.hpp):
/// walk the root and all its descendants plus every process of each visited process group and
/// session (the root's parent's group and session count as already visited), SIGSTOP each one as it
/// is visited, then send `signal` to all, then SIGCONT all. Returns the signalled pids.
///
/// Our own pid is never signalled, whatever the tree looks like.
pub fn killtree(root: i32, signal: i32, groups: bool, sessions: bool) -> Vec<i32> {
    let mut procs = processes();
    let me = std::process::id() as i32;
    let mut queue: VecDeque<i32> = VecDeque::new();
    let root_proc = procs.iter().find(|p| p.pid == root).copied();
    match root_proc {
        None => {
            for p in &procs {
                if (groups && p.pgrp == root) || (sessions && p.session == root) {
                    queue.push_back(p.pid);
                }
            }
            if queue.is_empty() {
                return Vec::new();
            }
        }
        Some(_) => queue.push_back(root),
    }

    let mut visited_pids: BTreeSet<i32> = BTreeSet::new();
    let mut visited_groups: HashSet<i32> = HashSet::new();
    let mut visited_sessions: HashSet<i32> = HashSet::new();
    if let Some(rp) = root_proc
        && (groups || sessions)
        && let Some(parent) = procs.iter().find(|p| p.pid == rp.ppid)
    {
        if groups {
            visited_groups.insert(parent.pgrp);
        }
        if sessions {
            visited_sessions.insert(parent.session);
        }
    }
    // Extra safety beyond stout: never walk into our own group/session.
    if let Some(me_p) = process(me) {
        visited_groups.insert(me_p.pgrp);
        visited_sessions.insert(me_p.session);
    }

    while let Some(pid) = queue.pop_front() {
        if visited_pids.contains(&pid) || pid == me || pid <= 1 {
            continue;
        }
        let Some(p) = process(pid) else { continue };
        // Stop it so it cannot fork children that would escape to init while we work.
        kill(pid, libc::SIGSTOP);
        visited_pids.insert(pid);
        procs = processes();
        for c in procs.iter().filter(|c| c.ppid == pid) {
            queue.push_back(c.pid);
        }
        if groups && visited_groups.insert(p.pgrp) {
            for q in procs.iter().filter(|q| q.pgrp == p.pgrp) {
                queue.push_back(q.pid);
            }
        }
        if sessions && visited_sessions.insert(p.session) {
            for q in procs.iter().filter(|q| q.session == p.session) {
                queue.push_back(q.pid);
            }
        }
    }
    for &pid in &visited_pids {
        kill(pid, signal);
    }
    for &pid in &visited_pids {
        kill(pid, libc::SIGCONT);
    }
    visited_pids.into_iter().collect()
}

/// Does `/proc/PID/environ` contain exactly the entry `needle` (e.g. `MESOS_EXECUTOR_ID=<task>`)?
pub fn environ_contains(pid: i32, needle: &[u8]) -> bool {
    match fs::read(format!("/proc/{pid}/environ")) {
        Ok(env) => env.split(|b| *b == 0).any(|e| e == needle),
        Err(_) => false,
    }
}

/// The set of live processes that belong to the emulated container "cgroup": descendants of `root`
/// (by the current parent links) and processes whose environment carries `MESOS_EXECUTOR_ID=<task>`.
/// Never includes ourselves, our ancestors, or pid 1.
pub fn container_members(root: i32, task_id: &str) -> BTreeSet<i32> {
    let procs = processes();
    let me = std::process::id() as i32;
    let by_pid: HashMap<i32, Proc> = procs.iter().map(|p| (p.pid, *p)).collect();
    let mut ancestors: HashSet<i32> = HashSet::new();
    let mut cur = me;
    while let Some(p) = by_pid.get(&cur) {
        ancestors.insert(cur);
        if p.ppid <= 0 || ancestors.contains(&p.ppid) {
            break;
        }
        cur = p.ppid;
    }
    let needle = format!("MESOS_EXECUTOR_ID={task_id}").into_bytes();
    let descends_from_root = |pid: i32| {
        let mut cur = pid;
        for _ in 0..4096 {
            if cur == root {
                return true;
            }
            match by_pid.get(&cur) {
                Some(p) if p.ppid > 0 => cur = p.ppid,
                _ => return false,
            }
        }
        false
    };
    procs
        .iter()
        .filter(|p| p.pid > 1 && !ancestors.contains(&p.pid))
        .filter(|p| p.state != 'Z' && p.state != 'X')
        .filter(|p| descends_from_root(p.pid) || environ_contains(p.pid, &needle))
        .map(|p| p.pid)
        .collect()
}

/// Emulated freezer-cgroup destroy: freeze (SIGSTOP) every member, SIGKILL them, repeat until the
/// "cgroup" is empty, then wait (bounded) until they are gone. Returns every pid killed.
pub fn destroy_container(root: i32, task_id: &str) -> Vec<i32> {
    let mut killed: BTreeSet<i32> = BTreeSet::new();
    for _ in 0..10 {
        let members = container_members(root, task_id);
        if members.is_empty() {
            break;
        }
        for &pid in &members {
            kill(pid, libc::SIGSTOP);
        }
        for &pid in &members {
            kill(pid, libc::SIGKILL);
        }
        killed.extend(members);
        std::thread::sleep(Duration::from_millis(20));
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline && killed.iter().any(|p| is_alive(*p)) {
        std::thread::sleep(Duration::from_millis(10));
    }
    killed.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_comm() {
        let p = parse_stat("42 (a (b) c) S 7 42 40 0 -1 4194560").unwrap();
        assert_eq!(
            p,
            Proc {
                pid: 42,
                ppid: 7,
                pgrp: 42,
                session: 40,
                state: 'S'
            }
        );
    }

    #[test]
    fn reads_own_process() {
        let me = std::process::id() as i32;
        let p = process(me).unwrap();
        assert_eq!(p.pid, me);
        assert!(is_alive(me));
        assert!(processes().iter().any(|p| p.pid == me));
    }
}
