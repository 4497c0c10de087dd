//! The tests' HTTP clients, with their flags in one place: curl inside a pod, and GETs from the
//! host (the REST API, metrics).

use std::process::Command;

use anyhow::{bail, Result};

use crate::{run_in, Pod};

/// A curl command to run inside a pod: `curl -sS -g --max-time 10`, then the extra flags, then
/// each URL with its body sent to `/dev/null`. Several URLs of one host share one keep-alive
/// connection.
#[derive(Debug, Clone)]
pub struct Curl {
    max_time_secs: u32,
    fail: bool,
    args: Vec<String>,
}

impl Default for Curl {
    fn default() -> Self {
        Self {
            max_time_secs: 10,
            fail: false,
            args: Vec::new(),
        }
    }
}

impl Curl {
    /// `curl -sS -g --max-time 10`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bounds the whole call to `secs` seconds instead of 10.
    pub fn max_time(mut self, secs: u32) -> Self {
        self.max_time_secs = secs;
        self
    }

    /// Fails on an HTTP error status (`-f`).
    pub fn fail(mut self) -> Self {
        self.fail = true;
        self
    }

    /// Adds flags given before the URLs (method, headers, body, `--http1.1`).
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// Runs it inside `pod` for `urls`; fails when curl does.
    pub fn run<S: AsRef<str>>(&self, pod: &Pod, urls: &[S]) -> Result<()> {
        let max_time = self.max_time_secs.to_string();
        let mut args = vec!["curl", "-sS", "-g", "--max-time", &max_time];
        if self.fail {
            args.push("-f");
        }
        args.extend(self.args.iter().map(String::as_str));
        for url in urls {
            args.extend(["-o", "/dev/null", url.as_ref()]);
        }
        run_in(&pod.netns, &args).map(|_| ())
    }
}

/// One request to `url` from inside `pod` (`curl -sS -g --max-time 10`).
pub fn curl(pod: &Pod, url: &str) -> Result<()> {
    Curl::new().run(pod, &[url])
}

/// GETs every URL of `urls` from inside `pod` with one curl, which keeps one keep-alive
/// connection for them when they share a host.
pub fn curl_keep_alive<S: AsRef<str>>(pod: &Pod, urls: &[S]) -> Result<()> {
    Curl::new().run(pod, urls)
}

/// `GET url` from the host with curl (5 s at most); the body, or an error naming the URL.
pub fn http_get(url: &str) -> Result<String> {
    http_get_with(url, &[])
}

/// `GET url` with extra request `headers` (`Name: value`), like [`http_get`].
pub fn http_get_with(url: &str, headers: &[&str]) -> Result<String> {
    let out = curl_get(url, headers, &["-fsS"])?;
    if !out.status.success() {
        bail!("GET {url}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// The status code of `GET url` with extra request `headers`.
pub fn http_status(url: &str, headers: &[&str]) -> Result<u16> {
    let out = curl_get(
        url,
        headers,
        &["-sS", "-o", "/dev/null", "-w", "%{http_code}"],
    )?;
    Ok(String::from_utf8(out.stdout)?.trim().parse()?)
}

fn curl_get(url: &str, headers: &[&str], flags: &[&str]) -> Result<std::process::Output> {
    let mut cmd = Command::new("curl");
    cmd.args(flags).args(["--max-time", "5"]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    Ok(cmd.arg(url).output()?)
}
