"""Configuration: TOML file, then REPLYTRACK_* environment, then flags; bad values get a
clear ConfigError naming the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from replytrack import config as config_module
from replytrack.config import Config, ConfigError, load_config, parse_hostport, validate


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_any_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(
        config_module, "DEFAULT_CONFIG_PATHS", (Path("replytrack.toml"), tmp_path / "etc.toml")
    )
    cfg = load_config(env={})
    assert cfg == Config()
    assert cfg.source == ""
    assert cfg.secret_path == tmp_path / "replytrack.secret"
    # The journal is not beside the store: one failing filesystem must not take both.
    assert cfg.journal_path == Path("/var/spool/replytrack/journal")


def test_tables_flatten_to_setting_names(tmp_path: Path) -> None:
    path = write(
        tmp_path / "rt.toml",
        'db = "/var/lib/rt.db"\ndomain = "mail.example.com"\n'
        '[proxy]\nlisten = "127.0.0.1:2525"\nupstream-tls = "starttls"\ntimeout = 5\n'
        'allow = ["10.0.0.0/8", "192.0.2.0/24"]\n'
        '[milter]\nstop_scope = "domain"\nweak_match = false\n',
    )
    cfg = load_config(path, env={})
    assert cfg.db == "/var/lib/rt.db"
    assert cfg.domain == "mail.example.com"
    assert cfg.proxy_listen == "127.0.0.1:2525"
    assert cfg.proxy_upstream_tls == "starttls"
    assert cfg.proxy_timeout == 5.0 and isinstance(cfg.proxy_timeout, float)
    assert cfg.proxy_allow == ["10.0.0.0/8", "192.0.2.0/24"]
    assert cfg.milter_stop_scope == "domain"
    assert cfg.milter_weak_match is False
    assert cfg.source == str(path)
    assert cfg.secret_path == Path("/var/lib/replytrack.secret")


def test_environment_overrides_file_and_flags_override_environment(tmp_path: Path) -> None:
    path = write(tmp_path / "rt.toml", 'domain = "file.example"\n[proxy]\nlisten = "[::1]:25"\n')
    env = {
        "REPLYTRACK_DOMAIN": "env.example",
        "REPLYTRACK_PROXY_POOL_SIZE": "3",
        "REPLYTRACK_MILTER_WEAK_MATCH": "no",
        "REPLYTRACK_MILTER_INTERNAL_DOMAINS": " a.example, b.example ,,",
        "UNRELATED": "x",
    }
    cfg = load_config(path, env=env)
    assert cfg.domain == "env.example"
    assert cfg.proxy_listen == "[::1]:25"
    assert cfg.proxy_pool_size == 3
    assert cfg.milter_weak_match is False
    assert cfg.milter_internal_domains == ["a.example", "b.example"]
    cfg = load_config(path, env=env, overrides={"domain": "flag.example", "proxy_listen": None})
    assert cfg.domain == "flag.example"
    assert cfg.proxy_listen == "[::1]:25"


def test_default_file_search_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    etc = write(tmp_path / "etc-replytrack.toml", 'domain = "etc.example"\n')
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATHS", (Path("replytrack.toml"), etc))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert load_config(env={}).domain == "etc.example"
    assert load_config(env={}).source == str(etc)
    write(work / "replytrack.toml", 'domain = "local.example"\n')
    cfg = load_config(env={})
    assert cfg.domain == "local.example"
    assert cfg.source == "replytrack.toml"
    # REPLYTRACK_CONFIG names the file when --config is not given.
    other = write(tmp_path / "other.toml", 'domain = "other.example"\n')
    assert load_config(env={"REPLYTRACK_CONFIG": str(other)}).domain == "other.example"


def test_shipped_default_paths() -> None:
    shipped = (Path("replytrack.toml"), Path("/etc/replytrack/replytrack.toml"))
    assert shipped == config_module.DEFAULT_CONFIG_PATHS


def test_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", env={})


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "rt.toml", "domain = \n")
    with pytest.raises(ConfigError, match=r"cannot read config file .*rt\.toml"):
        load_config(path, env={})
    path.write_bytes(b'domain = "\xff"\n')
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(path, env={})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('domian = "x"\n', "unknown setting 'domian'"),
        ('[proxy]\nlisen = "x"\n', "unknown setting 'proxy_lisen'"),
        ('source = "x"\n', "unknown setting 'source'"),
        ('[proxy]\ntimeout = "soon"\n', "proxy_timeout: expected a number"),
        ("[proxy]\npool_size = true\n", "proxy_pool_size: expected a number"),
        ("[proxy]\npool_size = 2.5\n", "proxy_pool_size: expected a whole number"),
        ('[milter]\nweak_match = "maybe"\n', "milter_weak_match: expected true or false"),
        ('[proxy]\nallow = "10.0.0.0/8"\n', None),  # a string list is accepted
        ("[proxy]\nallow = 5\n", "proxy_allow: expected a list"),
        ("[proxy]\nallow = [1, 2]\n", "proxy_allow: expected a list of strings"),
        ("domain = 5\n", "domain: expected a string"),
        ('domain = ["a"]\n', "domain: expected a string"),
    ],
)
def test_unknown_key_and_wrong_type(tmp_path: Path, text: str, message: str | None) -> None:
    path = write(tmp_path / "rt.toml", text)
    if message is None:
        load_config(path, env={})
        return
    with pytest.raises(ConfigError, match=message):
        load_config(path, env={})


def test_wrong_type_in_environment_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="REPLYTRACK_PROXY_TIMEOUT: expected a number"):
        load_config(env={"REPLYTRACK_PROXY_TIMEOUT": "ten"}, path=None)


def test_unknown_flag_override_is_an_error() -> None:
    with pytest.raises(ConfigError, match="unknown setting 'nonsense'"):
        load_config(env={}, overrides={"nonsense": 1})


@pytest.mark.parametrize(
    "domain",
    [
        "",
        "a b.example",
        "user@example.com",
        "exa>mple.com",
        "example.com>",
        ".example.com",
        "example..com",
        "example.com.",
        "-bad.example",
        "ex ample",
        "ex\u00e4mple.com",
        "a" * 64 + ".example",
        "<tok@x>",
    ],
)
def test_validate_rejects_bad_domain(domain: str) -> None:
    with pytest.raises(ConfigError, match="domain"):
        validate(Config(domain=domain))


@pytest.mark.parametrize("domain", ["mail.example.com", "localhost", "Mail.Example.COM", "x1.io"])
def test_validate_accepts_good_domain(domain: str) -> None:
    validate(Config(domain=domain))


def test_validate_rejects_bad_enumerations_and_sizes() -> None:
    with pytest.raises(ConfigError, match=r"stop_scope.*recipient, thread, domain"):
        validate(Config(milter_stop_scope="everything"))
    with pytest.raises(ConfigError, match=r"upstream_tls.*none, starttls, tls"):
        validate(Config(proxy_upstream_tls="ssl"))
    with pytest.raises(ConfigError, match="max_size"):
        validate(Config(proxy_max_size=0))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:25", ("127.0.0.1", 25)),
        ("[::1]:25", ("::1", 25)),
        ("[2001:db8::1]:10025", ("2001:db8::1", 10025)),
        (" mail.example.com:587 ", ("mail.example.com", 587)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_parse_hostport(value: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "127.0.0.1",
        ":25",
        "host:",
        "host:65536",
        "host:-1",
        "[::1]",
        "[::1]25",
        "[]:25",
        "::1:25",
        "::1",
        "host:2 5",
        "host:\u0663",
        "host:port",
    ],
)
def test_parse_hostport_rejects(value: str) -> None:
    with pytest.raises(ConfigError, match=r"proxy_listen.*HOST:PORT"):
        parse_hostport(value, setting="proxy_listen")


def test_validate_checks_listen_and_upstream(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="proxy_upstream"):
        load_config(env={"REPLYTRACK_PROXY_UPSTREAM": "nowhere"}, path=None)
    path = write(tmp_path / "rt.toml", '[proxy]\nlisten = "[::1]:25"\n')
    assert load_config(path, env={}).proxy_listen == "[::1]:25"


def test_default_pool_keeps_upstream_connections_for_many_sessions() -> None:
    # With 8 idle connections, 50 concurrent sessions closed most upstream connections
    # after one mail (bench/); the default keeps 32, and the relay's own default agrees.
    from replytrack.proxy.relay import UpstreamSettings

    assert Config().proxy_pool_size == 32
    assert UpstreamSettings.from_config(Config()).pool_size == 32
    assert UpstreamSettings(host="h", port=1, local_hostname="l", timeout=1.0).pool_size == 32
