//! The live console in a real headless browser: `zeroscale dev` on the repo's examples
//! (`slow-start` starts at zero), Debian's chromium driven by chromedriver over its W3C
//! WebDriver HTTP+JSON API with the small client below. The page must list the
//! Functions, its chart must follow a bounded load, and its invoke form must wake a
//! Function at zero and show the answer as a cold start.
//!
//! chromium and chromedriver come from `hack/install-tools.sh`; without them the test
//! says so and passes, unless `CI` is set. With `ZEROSCALE_CONSOLE_SCREENSHOT=<path>`
//! it saves a screenshot of the page there (the README's docs/console.png:
//! `ZEROSCALE_CONSOLE_SCREENSHOT=$PWD/docs/console.png cargo test -p zeroscale-cli --test console`).

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep, timeout};

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");

/// Chromium's flags for a headless run as root with no network but loopback.
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1400",
];

/// Where `program` is on the PATH.
fn on_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
}

/// A free loopback port (bound, then released for the child to take).
fn free_port() -> u16 {
    let listener = StdListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("an address").port()
}

/// Polls `check` every 200 ms until it gives a value; fails after `within`. A browser
/// page has no signal to await, so this is bounded polling.
async fn eventually<T>(
    what: &str,
    within: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "no {what} within {within:?}");
        sleep(Duration::from_millis(200)).await;
    }
}

/// A running `zeroscale dev` on the examples, with its admin listener at `admin`.
struct Dev {
    _child: Child,
    address: SocketAddr,
    admin: SocketAddr,
    state: PathBuf,
}

impl Dev {
    async fn start() -> Self {
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let state =
            std::env::temp_dir().join(format!("zeroscale-console-{}.json", std::process::id()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_zeroscale"))
            .arg("dev")
            .arg(EXAMPLES)
            .args(["--listen", "127.0.0.1:0"])
            .args(["--admin-listen", &admin.to_string()])
            .env("ZEROSCALE_DEV_STATE", &state)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("zeroscale dev starts");
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let address = timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some((_, address)) = line.split_once("listening on http://") {
                    return address.trim().parse().expect("a socket address");
                }
            }
            panic!("zeroscale dev exited before listening");
        })
        .await
        .expect("zeroscale dev listens within 30 s");
        // Keep reading, so that its output never blocks it.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            _child: child,
            address,
            admin,
            state,
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.state);
    }
}

/// One GET through dev's activator, on its own connection; the status code.
async fn get(address: SocketAddr, host: &str, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(address).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

/// A chromedriver process and one browser session in it. Dropping it kills
/// chromedriver's whole process group, so a failed test leaves no browser behind.
struct Browser {
    driver: Child,
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    session: String,
    /// The browser's profile, fresh for this run.
    profile: TempDir,
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Browser {
    async fn start(driver: &Path, chromium: &Path) -> Self {
        let port = free_port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, which the browsers it starts join.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let client = Client::builder(TokioExecutor::new()).build_http();
        let base = format!("http://127.0.0.1:{port}");
        let profile = TempDir(
            std::env::temp_dir().join(format!("zeroscale-console-chromium-{}", std::process::id())),
        );
        let mut browser = Self {
            driver: child,
            client,
            base,
            session: String::new(),
            profile,
        };
        eventually("chromedriver ready", Duration::from_secs(20), async || {
            let status = browser.try_call(Method::GET, "/status", None).await.ok()?;
            status["ready"].as_bool().filter(|ready| *ready)
        })
        .await;
        let mut args: Vec<String> = CHROMIUM_FLAGS
            .iter()
            .map(|flag| (*flag).to_owned())
            .collect();
        args.push(format!("--user-data-dir={}", browser.profile.0.display()));
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
        }}});
        let session = browser
            .call(Method::POST, "/session", Some(capabilities))
            .await;
        browser.session = session["sessionId"]
            .as_str()
            .expect("a session id")
            .to_owned();
        browser
    }

    /// Sends one WebDriver command; its `value`, or the error it answered.
    async fn try_call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let body = body.map_or_else(Bytes::new, |body| Bytes::from(body.to_string()));
        let request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let response = timeout(Duration::from_secs(60), self.client.request(request))
            .await
            .map_err(|_| format!("no answer to {path} within 60 s"))?
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let mut value: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        let value = value["value"].take();
        if status.is_success() {
            Ok(value)
        } else {
            Err(format!("{path}: {status} {value}"))
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        self.try_call(method, path, body)
            .await
            .expect("a WebDriver answer")
    }

    /// A command of this session.
    async fn session_call(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), body)
            .await
    }

    async fn open(&self, url: &str) {
        self.session_call(Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    /// Runs `script` in the page and returns what it returns.
    async fn script(&self, script: &str) -> Value {
        let body = json!({"script": script, "args": []});
        self.session_call(Method::POST, "/execute/sync", Some(body))
            .await
    }

    /// Clicks the element `css` selects.
    async fn click(&self, css: &str) {
        let found = self
            .session_call(
                Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        // W3C's key for an element reference.
        let id = found["element-6066-11e4-a52e-4f735466cecf"]
            .as_str()
            .unwrap_or_else(|| panic!("an element reference: {found}"))
            .to_owned();
        self.session_call(
            Method::POST,
            &format!("/element/{id}/click"),
            Some(json!({})),
        )
        .await;
    }

    /// A PNG of the page as it is shown.
    async fn screenshot(&self) -> Vec<u8> {
        let encoded = self.session_call(Method::GET, "/screenshot", None).await;
        base64_decode(encoded.as_str().expect("base64 text"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(pid) = self.driver.id().and_then(|pid| i32::try_from(pid).ok()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Decodes standard base64 (what WebDriver screenshots are).
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let digits: Vec<u8> = text
        .bytes()
        .filter(|c| *c != b'=' && !c.is_ascii_whitespace())
        .map(value)
        .collect();
    let mut bytes = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, d)| n | u32::from(*d) << (18 - 6 * i));
        bytes.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    bytes
}

#[test]
fn base64_decodes_what_webdriver_sends() {
    assert_eq!(base64_decode("aGVsbG8="), b"hello");
    assert_eq!(base64_decode("aGk="), b"hi");
    assert_eq!(base64_decode("YWJj"), b"abc");
}

/// A figure the page shows for `function`, by its CSS class in the card.
fn figure(function: &str, class: &str) -> String {
    format!(
        "const e = document.querySelector('section.function[data-key=\"{function}\"] .{class}'); return e ? e.textContent : null;"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_lists_functions_follows_load_and_wakes_one_at_zero() {
    let (Some(driver), Some(chromium)) = (on_path("chromedriver"), on_path("chromium")) else {
        panic!(
            "this test needs chromium and chromedriver on the PATH: run hack/install-tools.sh \
             (or apt-get install chromium chromium-driver)"
        );
    };
    let dev = Dev::start().await;
    let browser = Browser::start(&driver, &chromium).await;
    browser.open(&format!("http://{}/console", dev.admin)).await;

    // It lists every Function of the examples, slow-start at zero.
    let listed = eventually("the Functions listed", Duration::from_secs(20), async || {
        let keys = browser
            .script("return [...document.querySelectorAll('section.function')].map(e => e.dataset.key + (e.querySelector('.badge.zero') ? ' at zero' : ''));")
            .await;
        let keys: Vec<String> = serde_json::from_value(keys).ok()?;
        (keys.len() == 3).then_some(keys)
    })
    .await;
    assert_eq!(
        listed,
        [
            "default/hello",
            "default/slow-start at zero",
            "default/users"
        ]
    );

    // The chart and the request count follow a bounded load: 40 requests, 4 at a time.
    let rps_path = "return document.querySelector('section.function[data-key=\"default/hello\"] path.series-rps').getAttribute('d');";
    let before = browser.script(rps_path).await;
    let sent = 40;
    let load = async {
        for _ in 0..sent / 4 {
            let batch = (0..4).map(|_| get(dev.address, "hello.default", "/?sleep=0.2"));
            for status in futures::future::join_all(batch).await {
                assert_eq!(status, Some(200));
            }
        }
    };
    timeout(Duration::from_secs(60), load)
        .await
        .expect("the load ends within 60 s");
    let counted = eventually(
        "the page to count the load",
        Duration::from_secs(10),
        async || {
            let requests = browser.script(&figure("default/hello", "requests")).await;
            requests
                .as_str()
                .filter(|text| *text == sent.to_string())
                .map(str::to_owned)
        },
    )
    .await;
    assert_eq!(
        counted, "40",
        "the page shows every request the activator counted"
    );
    let after = browser.script(rps_path).await;
    assert_ne!(before, after, "the requests/s line moved");
    let peak = browser
        .script("return Math.max(...[...document.querySelectorAll('section.function[data-key=\"default/hello\"] path.series-rps')].map(p => p.getAttribute('d').split(/[ML]/).filter(Boolean).length));")
        .await;
    assert!(
        peak.as_u64().unwrap_or(0) > 1,
        "the line has points: {peak}"
    );

    // The invoke form wakes slow-start (at zero, 5 s to start) and shows a cold start.
    browser
        .script("document.getElementById('invoke-function').value = 'default/slow-start'; document.getElementById('invoke-path').value = '/'; return true;")
        .await;
    browser.click("#invoke-send").await;
    let result = eventually(
        "the invocation's answer",
        Duration::from_secs(60),
        async || {
            let text = browser
                .script("return document.getElementById('invoke-result').textContent;")
                .await;
            text.as_str()
                .filter(|text| text.contains("slow-start from"))
                .map(str::to_owned)
        },
    )
    .await;
    assert!(result.contains("200"), "{result}");
    assert!(result.contains("cold start"), "{result}");
    let cold_starts = eventually(
        "the cold start counted",
        Duration::from_secs(10),
        async || {
            let text = browser
                .script(&figure("default/slow-start", "cold-starts"))
                .await;
            text.as_str()
                .filter(|text| text.starts_with('1'))
                .map(str::to_owned)
        },
    )
    .await;
    assert!(cold_starts.contains("mean"), "{cold_starts}");

    // A moment for the chart to show the wake, then the picture.
    eventually(
        "slow-start shown ready",
        Duration::from_secs(10),
        async || {
            let replicas = browser
                .script(&figure("default/slow-start", "replicas"))
                .await;
            replicas
                .as_str()
                .filter(|text| *text == "1/1")
                .map(str::to_owned)
        },
    )
    .await;
    let png = browser.screenshot().await;
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    let path = std::env::var_os("ZEROSCALE_CONSOLE_SCREENSHOT").map_or_else(
        || std::env::temp_dir().join("zeroscale-console.png"),
        PathBuf::from,
    );
    std::fs::write(&path, &png).expect("the screenshot is written");
    eprintln!("screenshot: {}", path.display());
    browser.session_call(Method::DELETE, "", None).await;
}
