//! `vfio-pm exporter` under hostile clients on loopback while a real Prometheus scrapes it:
//! a huge `Content-Length`, a body that never ends, slowloris heads, 1000 idle connections and
//! malformed requests, all at once. The exporter must stay up with fixed threads and memory,
//! close every hostile connection within its bounds, and every Prometheus scrape during the
//! attack must succeed. The figures measured are printed.
//!
//! Everything listens on 127.0.0.1 only; every loop is bounded in count and time.

mod support;

use nix::sys::resource::{getrlimit, setrlimit, Resource};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use support::*;
use vfio_pm::fake_sysfs::{FakeDevice, FakeSysfs};

/// The exporter's header timeout is 5 s; a hostile connection must be gone within this.
const CLOSE_WITHIN: Duration = Duration::from_secs(9);

fn connect(target: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&target, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    Ok(s)
}

/// Reads until the server closes, for at most `limit`: (what it sent, whether it closed).
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline && out.len() < 1 << 20 {
        match s.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            // A reset is the server closing too.
            Err(_) => return (out, true),
        }
    }
    (out, false)
}

fn status_of(response: &[u8]) -> u16 {
    String::from_utf8_lossy(response)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// `GET /metrics` with a declared body of 1 TB, 20 times: 413 and closed each time.
fn huge_content_length(target: SocketAddr) -> String {
    for _ in 0..20 {
        let mut s = connect(target).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000000000\r\n\r\n")
            .unwrap();
        let _ = s.write_all(&[b'x'; 64 * 1024]);
        let (resp, closed) = read_until_closed(&mut s, CLOSE_WITHIN);
        assert_eq!(status_of(&resp), 413, "{}", String::from_utf8_lossy(&resp));
        assert!(closed, "a refused body leaves the connection open");
    }
    "huge Content-Length: 20 × 413, closed".into()
}

/// A chunked body sent without end: the server closes the connection.
fn endless_body(target: SocketAddr) -> String {
    let mut s = connect(target).unwrap();
    s.write_all(b"POST /metrics HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let start = Instant::now();
    let mut sent = 0usize;
    while start.elapsed() < CLOSE_WITHIN {
        if s.write_all(b"400\r\n").is_err() || s.write_all(&[b'y'; 1024]).is_err() {
            break;
        }
        let _ = s.write_all(b"\r\n");
        sent += 1024;
        std::thread::sleep(Duration::from_millis(5));
    }
    let elapsed = start.elapsed();
    assert!(
        elapsed < CLOSE_WITHIN,
        "an endless body is still accepted after {elapsed:?} ({sent} bytes)"
    );
    format!(
        "endless body: closed after {elapsed:.1?} ({} KiB sent)",
        sent / 1024
    )
}

/// 20 heads sent one byte every 200 ms: closed by the header timeout.
fn slowloris(target: SocketAddr) -> String {
    let mut conns: Vec<(TcpStream, Option<Duration>)> = (0..20)
        .map(|_| {
            let mut s = connect(target).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
            s.set_nonblocking(true).unwrap();
            (s, None)
        })
        .collect();
    let start = Instant::now();
    while start.elapsed() < CLOSE_WITHIN && conns.iter().any(|(_, c)| c.is_none()) {
        for (s, closed) in conns.iter_mut().filter(|(_, c)| c.is_none()) {
            let mut b = [0u8; 512];
            let gone = match s.read(&mut b) {
                Ok(_) => true,
                Err(e) => e.kind() != ErrorKind::WouldBlock,
            } || s.write_all(b"X").is_err();
            if gone {
                *closed = Some(start.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let times: Vec<Duration> = conns.iter().filter_map(|(_, c)| *c).collect();
    assert_eq!(
        times.len(),
        20,
        "slowloris connections still open after {CLOSE_WITHIN:?}"
    );
    let max = times.iter().max().unwrap();
    let min = times.iter().min().unwrap();
    // Kept while bytes trickle in, up to the 5 s header timeout: not closed at the first byte.
    assert!(
        *min >= Duration::from_secs(4),
        "a slowloris head closed after only {min:?}"
    );
    format!("slowloris: 20 heads closed after {min:.1?} to {max:.1?}")
}

/// 1000 connections that send nothing: at most the cap stay open, none outlives the timeout.
fn idle_connections(target: SocketAddr) -> String {
    let mut conns: Vec<TcpStream> = Vec::new();
    let start = Instant::now();
    while conns.len() < 1000 && start.elapsed() < Duration::from_secs(20) {
        if let Ok(s) = connect(target) {
            s.set_nonblocking(true).unwrap();
            conns.push(s);
        }
    }
    assert_eq!(conns.len(), 1000, "could not even connect 1000 times");
    let open = |conns: &[TcpStream]| {
        conns
            .iter()
            .filter(|s| {
                let mut b = [0u8; 1];
                matches!(s.peek(&mut b), Err(e) if e.kind() == ErrorKind::WouldBlock)
            })
            .count()
    };
    std::thread::sleep(Duration::from_secs(1));
    let after_1s = open(&conns);
    assert!(
        after_1s <= 64,
        "{after_1s} idle connections open, more than the cap"
    );
    let deadline = Instant::now() + CLOSE_WITHIN;
    let mut left = after_1s;
    while left > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        left = open(&conns);
    }
    assert_eq!(left, 0, "idle connections outlive the header timeout");
    format!(
        "1000 idle: {after_1s} open after 1 s, 0 after {:.1?}",
        start.elapsed()
    )
}

/// Requests no parser should accept: each is answered 4xx or closed, within the bound.
fn malformed(target: SocketAddr) -> String {
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(100_000));
    let many_headers = format!(
        "GET /metrics HTTP/1.1\r\n{}\r\n",
        (0..200)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect::<String>()
    );
    let cases: Vec<Vec<u8>> = vec![
        b"GARBAGE\r\n\r\n".to_vec(),
        b"GET / HTTP/9.9\r\n\r\n".to_vec(),
        b"GET\r\n\r\n".to_vec(),
        b"\x00\xff\xfe\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
        b"GET / HTTP/1.1\r\n: no-name\r\n\r\n".to_vec(),
        long_uri.into_bytes(),
        many_headers.into_bytes(),
    ];
    let mut statuses = Vec::new();
    for case in &cases {
        let mut s = connect(target).unwrap();
        let _ = s.write_all(case);
        let (resp, closed) = read_until_closed(&mut s, CLOSE_WITHIN);
        let status = status_of(&resp);
        assert!(
            closed && (status == 0 || (400..500).contains(&status)),
            "{:?}: status {status}, closed {closed}",
            String::from_utf8_lossy(&case[..case.len().min(60)])
        );
        statuses.push(status);
    }
    format!(
        "malformed: {} cases answered {statuses:?} (0: closed without answer), all closed",
        cases.len()
    )
}

type Attack = fn(SocketAddr) -> String;

/// The attacks in two waves: first the slow and malformed requests together, then the flood of
/// idle connections (which would otherwise evict the slowloris connections before their
/// header timeout is measured). Returns what each attack found.
fn attack(target: SocketAddr) -> Vec<String> {
    let waves: [&[Attack]; 2] = [
        &[huge_content_length, endless_body, slowloris, malformed],
        &[idle_connections],
    ];
    let mut findings = Vec::new();
    for wave in waves {
        let threads: Vec<JoinHandle<String>> = wave
            .iter()
            .map(|&a| std::thread::spawn(move || a(target)))
            .collect();
        for t in threads {
            findings.push(t.join().unwrap_or_else(|e| std::panic::resume_unwind(e)));
        }
    }
    findings
}

/// (threads, RSS in KiB) of a process.
fn threads_and_rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("Threads:"), field("VmRSS:"))
}

#[test]
fn prometheus_keeps_scraping_while_hostile_clients_attack() {
    if !ensure_prometheus() {
        return;
    }
    // 1000 client sockets plus the test's own files.
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < 4096 {
        setrlimit(Resource::RLIMIT_NOFILE, hard.min(4096), hard).unwrap();
    }
    let tmp = tempfile::tempdir().unwrap();
    let root: PathBuf = tmp.path().join("sys");
    let fake = FakeSysfs::create(&root).unwrap();
    fake.add(&FakeDevice::vfio(addr("0000:00:05.0"))).unwrap();
    let (mut exporter, target) = start_exporter(&root);
    let pid = exporter.child.id();
    let prom_dir = tmp.path().join("prometheus");
    std::fs::create_dir_all(&prom_dir).unwrap();
    let prom = Prometheus::start(&prom_dir, target);
    prom.wait_for("up{job=\"vfio-pm\"}", 1.0);
    let (threads_before, rss_before) = threads_and_rss(pid);

    let attack_start = Instant::now();
    let attacks = std::thread::spawn(move || attack(target));

    // While they run: the exporter's threads and memory, and scrapes over fresh connections.
    let (mut max_threads, mut max_rss) = (threads_before, rss_before);
    let (mut own_ok, mut own_total) = (0, 0);
    let mut last_scrape = Instant::now();
    while !attacks.is_finished() && attack_start.elapsed() < Duration::from_secs(90) {
        exporter.assert_running();
        let (t, r) = threads_and_rss(pid);
        max_threads = max_threads.max(t);
        max_rss = max_rss.max(r);
        if last_scrape.elapsed() >= Duration::from_millis(500) {
            last_scrape = Instant::now();
            own_total += 1;
            if matches!(http_get(target, "/metrics"), Ok((200, body)) if body.contains("vfio_pm_device_power_state"))
            {
                own_ok += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(attacks.is_finished(), "the attacks did not end within 90 s");
    let findings = attacks
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
    let attack_secs = attack_start.elapsed().as_secs().max(1);
    exporter.assert_running();

    // Prometheus's view of the attack window: every scrape up.
    std::thread::sleep(Duration::from_secs(2));
    let window = format!("{}s", attack_secs + 2);
    let scrapes = prom.query(&format!("count_over_time(up{{job=\"vfio-pm\"}}[{window}])"));
    let up = prom.query(&format!("sum_over_time(up{{job=\"vfio-pm\"}}[{window}])"));
    let (scrapes, up) = (scrapes[0].1, up[0].1);

    eprintln!(
        "exporter under attack for {attack_secs} s:\n  {}\n  threads {threads_before} before, \
         at most {max_threads} during; RSS {rss_before} KiB before, at most {max_rss} KiB during\n  \
         Prometheus scrapes up: {up}/{scrapes}; the test's own scrapes on fresh connections: \
         {own_ok}/{own_total}",
        findings.join("\n  ")
    );
    // main (the tokio runtime), sampler, signal watcher, one blocking thread for sysfs reads.
    assert!(max_threads <= 5, "threads grew to {max_threads}");
    assert!(
        max_rss < rss_before + 32 * 1024,
        "RSS grew to {max_rss} KiB"
    );
    assert!(
        scrapes >= attack_secs as f64 - 2.0,
        "{scrapes} scrapes in {attack_secs} s"
    );
    assert_eq!(up, scrapes, "a Prometheus scrape failed during the attack");
    assert_eq!(
        own_ok, own_total,
        "a scrape on a fresh connection failed during the attack"
    );
}
