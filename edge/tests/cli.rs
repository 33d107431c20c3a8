//! Runs the built `tern-edge` binary: `--print-config` under each layer, and the exit
//! code and message for bad configuration.

use std::path::PathBuf;
use std::process::{Command, Output};

/// The binary, with no `TERN_*` or `RUST_LOG` inherited from the test environment.
fn tern_edge() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern-edge"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("TERN_") {
            cmd.env_remove(key);
        }
    }
    cmd.env_remove("RUST_LOG");
    cmd
}

fn run(cmd: &mut Command) -> (Output, String, String) {
    let output = cmd.output().expect("tern-edge runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output, stdout, stderr)
}

fn temp_file(name: &str, text: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&path, text).expect("write temp file");
    path
}

fn printed(args: &[&str], env: &[(&str, &str)]) -> toml::Table {
    let mut cmd = tern_edge();
    cmd.args(args)
        .arg("--print-config")
        .envs(env.iter().copied());
    let (output, stdout, stderr) = run(&mut cmd);
    assert!(
        output.status.success(),
        "exit {:?}: {stderr}",
        output.status
    );
    toml::from_str(&stdout).unwrap_or_else(|e| panic!("not TOML ({e}):\n{stdout}"))
}

fn get<'a>(table: &'a toml::Table, path: &str) -> &'a toml::Value {
    let mut parts = path.split('.');
    let first = parts.next().expect("non-empty path");
    let mut value = &table[first];
    for part in parts {
        value = &value[part];
    }
    value
}

fn assert_config_error(output: &Output, stderr: &str) {
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("backtrace"), "{stderr}");
}

#[test]
fn prints_default_config() {
    let config = printed(&[], &[]);
    assert_eq!(
        get(&config, "listeners.tcp.bind").as_str(),
        Some("0.0.0.0:1883")
    );
    assert_eq!(get(&config, "listeners.tcp.enabled").as_bool(), Some(true));
    assert_eq!(get(&config, "node.data_dir").as_str(), Some("./tern-data"));
    assert_eq!(get(&config, "log.level").as_str(), Some("info"));
    assert_eq!(get(&config, "log.format").as_str(), Some("human"));
    assert!(get(&config, "mqtt.max_packet_size").as_integer().is_some());
}

#[test]
fn prints_named_profile() {
    let minimal = printed(&["--profile", "edge-minimal"], &[]);
    let gateway = printed(&["--profile", "edge-gateway"], &[]);
    let size = |c: &toml::Table| {
        get(c, "mqtt.max_packet_size")
            .as_integer()
            .expect("integer")
    };
    assert!(size(&minimal) < size(&gateway));
    let dev = printed(&["--profile", "dev"], &[]);
    assert_eq!(
        get(&dev, "listeners.tcp.bind").as_str(),
        Some("127.0.0.1:1883")
    );
    assert_eq!(get(&dev, "log.level").as_str(), Some("debug"));
}

#[test]
fn profile_path_and_config_file_layer() {
    let profile = temp_file(
        "cli-profile.toml",
        "[mqtt]\nmax_inflight = 5\nreceive_maximum = 6\n",
    );
    let extra = temp_file("cli-extra.toml", "[mqtt]\nreceive_maximum = 7\n");
    let profile = profile.to_str().expect("utf-8 path");
    let extra = extra.to_str().expect("utf-8 path");
    let config = printed(&["--profile", profile, "--config", extra], &[]);
    assert_eq!(get(&config, "mqtt.max_inflight").as_integer(), Some(5));
    assert_eq!(get(&config, "mqtt.receive_maximum").as_integer(), Some(7));
    // Everything else comes from the default built-in profile.
    assert_eq!(
        get(&config, "listeners.tcp.bind").as_str(),
        Some("0.0.0.0:1883")
    );
}

#[test]
fn environment_overrides_everything() {
    let extra = temp_file(
        "cli-env.toml",
        "[listeners.tcp]\nbind = \"127.0.0.1:2000\"\n",
    );
    let config = printed(
        &[
            "--profile",
            "edge-minimal",
            "--config",
            extra.to_str().expect("utf-8 path"),
        ],
        &[
            ("TERN_LISTENERS__TCP__BIND", "127.0.0.1:1884"),
            ("TERN_MQTT__MAX_PACKET_SIZE", "2048"),
            ("TERN_MQTT__RETAIN_AVAILABLE", "false"),
            ("TERN_LOG__FORMAT", "json"),
        ],
    );
    assert_eq!(
        get(&config, "listeners.tcp.bind").as_str(),
        Some("127.0.0.1:1884")
    );
    assert_eq!(
        get(&config, "mqtt.max_packet_size").as_integer(),
        Some(2048)
    );
    assert_eq!(get(&config, "mqtt.retain_available").as_bool(), Some(false));
    assert_eq!(get(&config, "log.format").as_str(), Some("json"));
    assert_eq!(
        get(&config, "mqtt.max_inflight").as_integer(),
        Some(16),
        "from edge-minimal"
    );
}

#[test]
fn unknown_key_in_config_file_exits_2_naming_it() {
    let bad = temp_file(
        "cli-bad-key.toml",
        "[listeners.tcp]\nbnd = \"127.0.0.1:1884\"\n",
    );
    let (output, stdout, stderr) = run(tern_edge().arg("--config").arg(&bad));
    assert_config_error(&output, &stderr);
    assert!(stderr.contains("unknown field `bnd`"), "{stderr}");
    assert!(stderr.contains("listeners.tcp"), "{stderr}");
    assert!(stderr.contains("cli-bad-key.toml"), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
}

#[test]
fn bad_value_exits_2_naming_key_and_origin() {
    let (output, _, stderr) = run(tern_edge()
        .arg("--print-config")
        .env("TERN_MQTT__RECEIVE_MAXIMUM", "lots"));
    assert_config_error(&output, &stderr);
    assert!(stderr.contains("mqtt.receive_maximum"), "{stderr}");
    assert!(stderr.contains("environment"), "{stderr}");

    let bad = temp_file(
        "cli-bad-value.toml",
        "[listeners.tcp]\nbind = \"localhost\"\n",
    );
    let (output, _, stderr) = run(tern_edge().arg("--config").arg(&bad));
    assert_config_error(&output, &stderr);
    assert!(stderr.contains("listeners.tcp.bind"), "{stderr}");
}

#[test]
fn unknown_profile_is_a_clear_error() {
    let (output, _, stderr) = run(tern_edge().args(["--profile", "edge-huge"]));
    assert_config_error(&output, &stderr);
    assert!(stderr.contains("unknown profile `edge-huge`"), "{stderr}");
    assert!(stderr.contains("edge-gateway"), "{stderr}");

    let (output, _, stderr) = run(tern_edge().args(["--profile", "./missing/profile.toml"]));
    assert_config_error(&output, &stderr);
    assert!(stderr.contains("missing/profile.toml"), "{stderr}");
}

#[test]
fn help_names_the_profiles_and_version_prints() {
    let (output, stdout, _) = run(tern_edge().arg("--help"));
    assert!(output.status.success());
    for name in [
        "edge-gateway",
        "edge-minimal",
        "dev",
        "--profile",
        "--config",
        "--print-config",
    ] {
        assert!(stdout.contains(name), "--help lacks {name}:\n{stdout}");
    }
    assert!(stdout.contains("TERN_"), "{stdout}");

    let (output, stdout, _) = run(tern_edge().arg("--version"));
    assert!(output.status.success());
    assert!(stdout.starts_with("tern-edge "), "{stdout}");
}

#[test]
fn bad_arguments_exit_2() {
    let (output, _, stderr) = run(tern_edge().arg("--frobnicate"));
    assert_eq!(output.status.code(), Some(2), "{stderr}");
}
