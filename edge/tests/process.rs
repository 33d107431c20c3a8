//! Runs the real `tern-edge` process: it logs the bound address, serves a client, and
//! exits 0 promptly on SIGTERM and SIGINT, closing its connections.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);

/// CONNECT, MQTT 3.1.1, clean session, keep-alive 60, client id "cli".
const CONNECT: [u8; 17] = [
    0x10, 15, 0x00, 0x04, b'M', b'Q', b'T', b'T', 4, 0x02, 0x00, 60, 0x00, 0x03, b'c', b'l', b'i',
];

/// CONNACK, session not present, accepted.
const CONNACK_OK: [u8; 4] = [0x20, 0x02, 0x00, 0x00];

/// A data directory of this test process's own, so parallel runs never share a store.
fn data_dir(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("tern-edge-process-{}-{tag}", std::process::id()))
}

struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn start(format: &str) -> Running {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern-edge"));
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("TERN_") {
                cmd.env_remove(key);
            }
        }
        let mut child = cmd
            .args(["--profile", "dev"])
            .env_remove("RUST_LOG")
            .env("TERN_LISTENERS__TCP__BIND", "127.0.0.1:0")
            .env("TERN_LOG__FORMAT", format)
            .env("TERN_NODE__DATA_DIR", data_dir(format))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tern-edge starts");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a log line containing `needle`; returns it.
    fn wait_for_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no log line with {needle:?}; saw:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    fn listening_addr(&mut self) -> SocketAddr {
        let line = self.wait_for_line("listening on mqtt://");
        let rest = &line[line.find("mqtt://").expect("found") + "mqtt://".len()..];
        let addr: String = rest
            .chars()
            .take_while(|c| c.is_ascii_digit() || ".:".contains(*c))
            .collect();
        addr.parse()
            .unwrap_or_else(|e| panic!("bad address in {line:?}: {e}"))
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("tern-edge did not exit; log:\n{}", self.seen.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve_then_stop(signal: &str, format: &str) {
    let mut edge = Running::start(format);
    let addr = edge.listening_addr();

    let mut client = TcpStream::connect(addr).expect("connects");
    client.set_read_timeout(Some(WAIT)).expect("timeout");
    client.write_all(&CONNECT).expect("write CONNECT");
    let mut connack = [0u8; 4];
    client.read_exact(&mut connack).expect("CONNACK");
    assert_eq!(connack, CONNACK_OK);

    let stopped_at = Instant::now();
    edge.signal(signal);
    let status = edge.wait_exit();
    assert!(
        status.success(),
        "exit {status:?}; log:\n{}",
        edge.seen.join("\n")
    );
    assert!(
        stopped_at.elapsed() < Duration::from_secs(3),
        "took {:?}",
        stopped_at.elapsed()
    );
    edge.wait_for_line("shutting down");

    let mut rest = Vec::new();
    let _ = client.read_to_end(&mut rest); // EOF (or a reset): the connection is closed.
    assert!(rest.len() <= 2, "unexpected bytes after shutdown: {rest:?}");
}

#[test]
fn serves_and_exits_0_on_sigterm() {
    serve_then_stop("TERM", "human");
}

#[test]
fn serves_and_exits_0_on_sigint_with_json_logs() {
    let mut edge = Running::start("json");
    let line = edge.wait_for_line("listening on mqtt://");
    assert!(
        line.starts_with('{') && line.contains("\"level\":\"INFO\""),
        "{line}"
    );
    drop(edge);
    serve_then_stop("INT", "json");
}
