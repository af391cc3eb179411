//! `lincal serve` as a user runs it: the official SDKs against it, its greedy answers equal
//! `lincal generate`'s, SIGTERM lets answers in flight finish, and bad flags are refused.

mod common;

use common::{fails, lincal, tiny_model_dir};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

/// A `lincal serve` child process and what it printed.
struct Served {
    child: Child,
    /// `http://127.0.0.1:PORT`
    base: String,
    stderr: Arc<Mutex<String>>,
}

impl Served {
    fn start(model: &str, extra: &[&str]) -> Served {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lincal"))
            .args(["serve", "--model", model, "--port", "0", "--device", "cpu"])
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .expect("lincal serve starts");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut seen = String::new();
        let base = loop {
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("lincal serve ended:\n{seen}"))
                .unwrap();
            seen.push_str(&line);
            seen.push('\n');
            if let Some(at) = line.find("http://") {
                let url = line[at..].split_whitespace().next().unwrap();
                break url.trim_end_matches("/v1").to_string();
            }
        };
        let stderr = Arc::new(Mutex::new(seen));
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        Served {
            child,
            base,
            stderr,
        }
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().unwrap()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `lincal generate`'s greedy answer to the chat `user` in `tokens` tokens.
fn generated(model: &str, user: &str, tokens: &str) -> String {
    let output = lincal(&[
        "generate",
        "--model",
        model,
        "--prompt",
        user,
        "--chat",
        "--temperature",
        "0",
        "--max-new-tokens",
        tokens,
        "--device",
        "cpu",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    text.strip_suffix('\n').unwrap().to_string()
}

#[test]
#[ignore = "needs the openai and anthropic SDKs: `cargo xtask test` installs them and sets LINCAL_SDK_PYTHON"]
fn the_official_sdks_get_what_lincal_generate_gives() {
    let python = std::env::var("LINCAL_SDK_PYTHON").expect(
        "LINCAL_SDK_PYTHON names a Python with the SDKs of tests/sdk/requirements.txt; `cargo xtask test` sets it",
    );
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model_dir(dir.path());
    let expected = generated(&model, "t5 t6", "12");
    let mut served = Served::start(&model, &["--api-key", "sesame", "--max-batch", "4"]);
    // Read at run time: a binary reused from another checkout's build names that one.
    let script = std::path::Path::new(
        &std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    )
    .join("tests/sdk/clients.py");
    let output = Command::new(python)
        .arg(&script)
        .args([&served.base, "tiny", "sesame", &expected])
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}\nserver:\n{}",
        String::from_utf8_lossy(&output.stderr),
        served.stderr.lock().unwrap()
    );
    println!("{stdout}");
    assert!(served.terminate().success());
}

/// Sends one HTTP/1.1 request and returns the connection, to read the response from.
fn request(base: &str, path: &str, body: &str) -> TcpStream {
    let mut stream = TcpStream::connect(base.trim_start_matches("http://")).unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: lincal\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    stream
}

#[test]
fn sigterm_lets_the_answer_in_flight_finish_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model_dir(dir.path());
    let mut served = Served::start(&model, &[]);
    let body = r#"{"model": "tiny", "prompt": "t4 t5 t6", "max_tokens": 300, "temperature": 1.0, "seed": 3, "stream": true}"#;
    let mut stream = request(&served.base, "/v1/completions", body);
    let mut first = [0u8; 256];
    let n = stream.read(&mut first).unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(served.child.id() as i32, libc::SIGTERM) };
    let mut rest = String::new();
    stream.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("\"finish_reason\""), "{rest}");
    // The body is chunked, so chunk sizes sit between the events; [DONE] is the last one.
    let last_event = rest.rsplit("data: ").next().unwrap();
    assert!(last_event.starts_with("[DONE]"), "{rest}");
    let status = served.child.wait().unwrap();
    assert!(
        status.success(),
        "{status}\n{}",
        served.stderr.lock().unwrap()
    );
    assert!(served.stderr.lock().unwrap().contains("stopped"));
    assert!(TcpStream::connect(served.base.trim_start_matches("http://")).is_err());
}

#[test]
fn serve_refuses_flags_it_cannot_honour() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model_dir(dir.path());
    fails(
        &[
            "serve",
            "--model",
            &model,
            "--max-context",
            "100000",
            "--device",
            "cpu",
        ],
        "max_position_embeddings",
    );
    fails(
        &["serve", "--model", &model, "--max-batch", "0"],
        "--max-batch",
    );
    let mut served = Served::start(&model, &[]);
    let port = served.base.rsplit(':').next().unwrap().to_string();
    fails(
        &[
            "serve", "--model", &model, "--port", &port, "--device", "cpu",
        ],
        "cannot listen on 127.0.0.1:",
    );
    assert!(served.terminate().success());
}

#[test]
fn bench_serve_drives_concurrent_clients_and_records_each_count() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model_dir(dir.path());
    let json = dir.path().join("serve.jsonl");
    let output = lincal(&[
        "bench",
        "serve",
        "--model",
        &model,
        "--clients",
        "1,3",
        "--requests",
        "2",
        "--prompt-len",
        "8",
        "--max-tokens",
        "5",
        "--max-batch",
        "2",
        "--device",
        "cpu",
        "--json",
        json.to_str().unwrap(),
        "--label",
        "tiny",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("3 clients x 2 requests of 8 + 5 tokens"),
        "{stdout}"
    );
    let lines = common::read_jsonl(&json);
    assert_eq!(lines.len(), 2);
    for (line, clients) in lines.iter().zip([1u64, 3]) {
        assert_eq!(line["clients"], clients);
        assert_eq!(line["requests"], 2 * clients);
        assert_eq!(line["model"], "tiny");
        // Random weights may end an answer early at EOS, never late.
        let tokens = line["completion_tokens"].as_u64().unwrap();
        assert!(tokens >= 2 * clients && tokens <= 10 * clients, "{line}");
        assert!(line["ttft_p50"].as_f64().unwrap() <= line["latency_p50"].as_f64().unwrap());
    }
}
