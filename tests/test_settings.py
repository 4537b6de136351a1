"""Settings: defaults, environment, TOML file, bad values, and the generated reference."""

from __future__ import annotations

from pathlib import Path

import pytest

from telemed import settings_doc
from telemed.settings import SettingsError, describe, load_settings


def test_no_settings_at_all_gives_the_embedded_defaults() -> None:
    """With no environment or file, settings are the embedded defaults (port 8080, no externals)."""
    s = load_settings(env={})
    assert s.http.port == 8080
    assert s.redis.url == ""
    assert s.media.kurento_urls == ()
    assert s.calls.watchdog_timeout == 10.0
    assert s.public_url == "http://127.0.0.1:8080"


def test_environment_variables_set_typed_values() -> None:
    """TELEMED_* variables are parsed into ints, floats, lists and strings of their settings."""
    s = load_settings(env={
        "TELEMED_HTTP_PORT": "9000",
        "TELEMED_MEDIA_KURENTO_URLS": "ws://a:8888/kurento, ws://b:8888/kurento",
        "TELEMED_CALLS_WATCHDOG_TIMEOUT": "2.5",
        "TELEMED_LOG_FORMAT": "json",
        "TELEMED_DATA_DIR": "/tmp/x",
    })
    assert s.http.port == 9000
    assert s.media.kurento_urls == ("ws://a:8888/kurento", "ws://b:8888/kurento")
    assert s.calls.watchdog_timeout == 2.5
    assert s.log.format == "json"
    assert s.data_dir == "/tmp/x"


def test_toml_file_is_read_and_environment_wins(tmp_path: Path) -> None:
    """A TOML file's values apply, the environment overrides them, and public_url follows."""
    conf = tmp_path / "telemed.toml"
    conf.write_text('[http]\nport = 7000\nhost = "0.0.0.0"\n[media]\nkurento_urls = ["ws://k/kurento"]\n')
    s = load_settings(env={"TELEMED_CONFIG": str(conf), "TELEMED_HTTP_PORT": "7001"})
    assert s.http.port == 7001
    assert s.http.host == "0.0.0.0"
    assert s.media.kurento_urls == ("ws://k/kurento",)
    assert s.public_url == "http://127.0.0.1:7001"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"TELEMED_HTTP_PORT": "eighty"}, "TELEMED_HTTP_PORT"),
        ({"TELEMED_HTTP_PORT": "70000"}, "TELEMED_HTTP_PORT"),
        ({"TELEMED_CALLS_WATCHDOG_TIMEOUT": "0"}, "TELEMED_CALLS_WATCHDOG_TIMEOUT"),
        ({"TELEMED_CALLS_WATCHDOG_TIMEOUT": "nan"}, "TELEMED_CALLS_WATCHDOG_TIMEOUT"),
        ({"TELEMED_LOG_FORMAT": "xml"}, "TELEMED_LOG_FORMAT"),
        ({"TELEMED_HTTP_PROT": "1"}, "TELEMED_HTTP_PROT"),
        ({"TELEMED_CONFIG": "/nonexistent/telemed.toml"}, "TELEMED_CONFIG"),
        ({"TELEMED_TURN_URLS": "stun:10.0.0.1:3478"}, "turn.urls"),
        ({"TELEMED_TURN_URLS": "turn:10.0.0.1:99999"}, "turn.urls"),
        ({"TELEMED_TURN_URLS": "turns:turn.example:443?transport=udp"}, "turn.urls"),
        ({"TELEMED_TURN_PROVIDER": "coturn-secret", "TELEMED_TURN_SECRETS": "s"},
         "turn.urls"),
        ({"TELEMED_TURN_PROVIDER": "coturn-secret", "TELEMED_TURN_URLS": "turn:10.0.0.1"},
         "turn.secrets"),
        ({"TELEMED_TURN_PROVIDER": "return"}, "turn.urls"),
    ],
)
def test_a_bad_setting_is_refused_with_its_name(env: dict[str, str], named: str) -> None:
    """A malformed, out-of-range, unknown or inconsistent setting is refused by its name."""
    with pytest.raises(SettingsError, match=named):
        load_settings(env=env)


def test_turn_urls_for_udp_tcp_and_tls_on_443_are_accepted() -> None:
    """TURN URLs over UDP, TCP, TLS on 443 and IPv6 are accepted in order with their secrets."""
    urls = ("turn:10.0.0.1:3478?transport=udp", "turn:10.0.0.1:3478?transport=tcp",
            "turns:turn.hospital.local:443?transport=tcp", "turn:[fd00::1]:3478")
    s = load_settings(env={"TELEMED_TURN_PROVIDER": "coturn-secret",
                           "TELEMED_TURN_URLS": ",".join(urls), "TELEMED_TURN_SECRETS": "a,b"})
    assert s.turn.urls == urls and s.turn.secrets == ("a", "b")


def test_unknown_key_or_bad_toml_in_file_is_refused(tmp_path: Path) -> None:
    """A settings file with an unknown key, broken TOML or a wrongly typed value is refused."""
    conf = tmp_path / "bad.toml"
    conf.write_text("[http]\nportt = 1\n")
    with pytest.raises(SettingsError, match="portt"):
        load_settings(env={}, config_file=conf)
    conf.write_text("[http\n")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(env={}, config_file=conf)
    conf.write_text("[http]\nport = true\n")
    with pytest.raises(SettingsError, match=r"http\.port"):
        load_settings(env={}, config_file=conf)


def test_secrets_are_masked_when_settings_are_described() -> None:
    """The JWT secret never appears in the settings' description or repr, only as ***."""
    s = load_settings(env={"TELEMED_AUTH_JWT_SECRET": "hunter2-very-secret"})
    text = str(describe(s)) + repr(s)
    assert "hunter2" not in text
    assert describe(s)["auth"]["jwt_secret"] == "***"


def test_configuration_reference_in_docs_is_current() -> None:
    """docs/configuration.md is exactly what the settings module generates today."""
    doc = Path(__file__).parents[1] / "docs" / "configuration.md"
    assert doc.read_text().strip() == settings_doc.markdown().strip(), (
        "docs/configuration.md is stale: run "
        "python -m telemed.settings --markdown > docs/configuration.md"
    )


def test_api_key_command_prints_a_key_and_its_hash(capsys: pytest.CaptureFixture[str]) -> None:
    """`telemed api-key` prints a long random key and the hash the service checks it against."""
    from telemed.cli import main
    from telemed.embedded import hash_api_key

    assert main(["api-key"]) == 0
    lines = capsys.readouterr().out.splitlines()
    key, digest = (line.rsplit(" ", 1)[1] for line in lines)
    assert len(key) >= 40 and hash_api_key(key) == digest


def _pem_key_pair(tmp_path: Path) -> tuple[bytes, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private = ec.generate_private_key(ec.SECP256R1())
    public = tmp_path / "mis.pub.pem"
    public.write_bytes(private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return pem, public


def test_a_missing_or_unreadable_mis_public_key_stops_start_up_naming_it(tmp_path: Path) -> None:
    """A missing file or a non-key as the MIS public key is refused naming auth.jwt_public_keys."""
    with pytest.raises(SettingsError, match=r"auth\.jwt_public_keys: .*nope\.pem"):
        load_settings(env={"TELEMED_AUTH_JWT_PUBLIC_KEYS": str(tmp_path / "nope.pem")})
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n")
    with pytest.raises(SettingsError, match=r"auth\.jwt_public_keys"):
        load_settings(env={"TELEMED_AUTH_JWT_PUBLIC_KEYS": str(garbage)})


async def test_session_limits_and_the_mis_public_key_reach_the_socket_handler(
    tmp_path: Path,
) -> None:
    """The heartbeat, rate and burst settings and the MIS key reach the socket handler."""
    from signaling.session import SESSION_CONFIG
    from signaling.tokens import mint_join_token, verify_join_token
    from telemed.app import create_app
    from telemed.embedded import plan

    pem, public = _pem_key_pair(tmp_path)
    s = load_settings(env={
        "TELEMED_DATA_DIR": str(tmp_path / "var"),
        "TELEMED_AUTH_JWT_PUBLIC_KEYS": str(public),
        "TELEMED_HTTP_WS_HEARTBEAT": "3.5", "TELEMED_HTTP_WS_RATE": "7",
        "TELEMED_HTTP_WS_BURST": "9",
        "TELEMED_REDIS_URL": "redis://127.0.0.1:1",
        "TELEMED_MEDIA_KURENTO_URLS": "ws://127.0.0.1:1/kurento",
        "TELEMED_TURN_PROVIDER": "none",
    })
    _, endpoints = plan(s)
    config = create_app(s, endpoints)[SESSION_CONFIG]
    assert (config.heartbeat, config.rate, config.burst) == (3.5, 7.0, 9.0)
    token = mint_join_token(key=pem.decode(), algorithm="ES256", issuer=s.auth.jwt_issuer,  # type: ignore[arg-type]
                            audience=s.auth.jwt_audience, subject="p1", name="P",
                            role="patient", call_id="c1")
    claims = verify_join_token(token, keys=config.jwt_keys, issuer=s.auth.jwt_issuer,
                               audience=s.auth.jwt_audience)
    assert (claims.subject, claims.call_id) == ("p1", "c1")


def test_the_embedded_media_server_gets_its_gc_grace_and_strictness(tmp_path: Path) -> None:
    """The media server child gets --gc-grace and --strict-candidates only as the settings say."""
    from telemed.embedded import plan

    s = load_settings(env={"TELEMED_DATA_DIR": str(tmp_path), "TELEMED_TURN_PROVIDER": "none",
                           "TELEMED_MEDIA_EMBEDDED_GC_GRACE": "12.5",
                           "TELEMED_MEDIA_EMBEDDED_STRICT_CANDIDATES": "true"})
    children, _ = plan(s)
    argv = next(c.argv for c in children if c.name == "mediaserver")
    assert argv[argv.index("--gc-grace") + 1] == "12.5"
    assert "--strict-candidates" in argv
    lax = load_settings(env={"TELEMED_DATA_DIR": str(tmp_path), "TELEMED_TURN_PROVIDER": "none"})
    assert "--strict-candidates" not in next(
        c.argv for c in plan(lax)[0] if c.name == "mediaserver")


def test_the_node_id_is_the_same_after_a_restart_and_apart_per_port() -> None:
    """node.id, empty, is host:port (not the pid: a restart keeps it); set, it wins."""
    first, again = load_settings(env={}), load_settings(env={})
    assert first.node_id == again.node_id and first.node_id.endswith(":8080")
    assert load_settings(env={"TELEMED_HTTP_PORT": "9000"}).node_id != first.node_id
    assert load_settings(env={"TELEMED_NODE_ID": "ward-3"}).node_id == "ward-3"
    s = load_settings(env={"TELEMED_MEDIA_SWEEP_INTERVAL": "30",
                           "TELEMED_MEDIA_SWEEP_GRACE": "5"})
    assert (s.media.sweep_interval, s.media.sweep_grace) == (30.0, 5.0)
