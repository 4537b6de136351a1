"""compose/ against the service: env variables are real settings, ports agree, Kurento and
the service share the recordings volume, Kurento config keys exist in Kurento 7, coturn is
locked down, and the Dockerfile builds the package the README installs."""

from __future__ import annotations

import configparser
import dataclasses
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import yaml

from signaling.settings import Settings, _sections, env_name

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "compose"

#: Keys Kurento 7 reads from these files (doc-kurento, "Configuration").
KURENTO_KEYS = {
    "WebRtcEndpoint.conf.ini": {"stunServerAddress", "stunServerPort", "turnURL",
                                "networkInterfaces", "externalIPv4", "externalIPv6",
                                "iceTcp", "pemCertificateRSA", "pemCertificateECDSA"},
    "BaseRtpEndpoint.conf.ini": {"minPort", "maxPort", "mtu"},
}


def compose() -> dict[str, Any]:
    return yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())  # type: ignore[no-any-return]


def setting_env_names() -> set[str]:
    names = {env_name(None, f.name) for f in dataclasses.fields(Settings)
             if f.name not in _sections()}
    for section, cls in _sections().items():
        names |= {env_name(section, f.name) for f in dataclasses.fields(cls)}
    return names


def test_every_variable_given_to_the_service_is_a_setting() -> None:
    env = compose()["services"]["signaling"]["environment"]
    assert set(env) - setting_env_names() == set()


def test_every_variable_compose_uses_is_documented_in_env_example() -> None:
    used = set(re.findall(r"\$\{([A-Z_]+)", (COMPOSE / "docker-compose.yml").read_text()))
    documented = set(re.findall(r"^([A-Z_]+)=", (COMPOSE / ".env.example").read_text(), re.M))
    assert used - documented == set()
    assert "compose/.env" in (ROOT / ".gitignore").read_text().split()


def test_ports_agree_between_service_healthcheck_and_proxy() -> None:
    service = compose()["services"]["signaling"]
    port = service["environment"]["TELEMED_HTTP_PORT"]
    assert service["expose"] == [port]
    assert f"127.0.0.1:{port}/readyz" in " ".join(service["healthcheck"]["test"])
    assert f"server signaling:{port};" in (COMPOSE / "nginx" / "nginx.conf").read_text()
    assert "8888/kurento" in service["environment"]["TELEMED_MEDIA_KURENTO_URLS"]
    # Only nginx publishes ports; Redis and the service stay on the compose network.
    published = {name for name, s in compose()["services"].items() if s.get("ports")}
    assert published == {"nginx"}


def test_kurento_and_the_service_share_the_recordings_volume() -> None:
    services = compose()["services"]
    target = services["signaling"]["environment"]["TELEMED_RECORDINGS_DIR"]
    for name in ("kurento", "signaling"):
        assert f"recordings:{target}" in services[name]["volumes"], name
    assert "recordings" in compose()["volumes"]


def test_kurento_config_uses_only_keys_kurento_reads() -> None:
    for name, keys in KURENTO_KEYS.items():
        parser = configparser.ConfigParser()
        parser.read_string("[x]\n" + (COMPOSE / "kurento" / name).read_text())
        used = {k for k in parser.options("x")}
        assert used <= {k.lower() for k in keys}, (name, used)
    mounted = " ".join(compose()["services"]["kurento"]["volumes"])
    assert all(f"/etc/kurento/modules/kurento/{name}" in mounted for name in KURENTO_KEYS)


def test_coturn_relays_never_reach_internal_addresses() -> None:
    conf = (COMPOSE / "coturn" / "turnserver.conf").read_text()
    lines = {line.strip() for line in conf.splitlines() if line and not line.startswith("#")}
    for required in ("use-auth-secret", "no-multicast-peers", "fingerprint", "no-cli",
                     "denied-peer-ip=127.0.0.0-127.255.255.255",
                     "denied-peer-ip=10.0.0.0-10.255.255.255",
                     "denied-peer-ip=172.16.0.0-172.31.255.255",
                     "denied-peer-ip=192.168.0.0-192.168.255.255",
                     "denied-peer-ip=::1",
                     "denied-peer-ip=::ffff:0.0.0.0-::ffff:255.255.255.255"):
        assert required in lines, required
    assert not any(line.startswith(("allow-loopback-peers", "static-auth-secret"))
                   for line in lines)


def test_dockerfile_builds_the_package_the_readme_installs() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]["packages"]
    for package in packages:
        assert f"COPY {package} ./{package}" in dockerfile, package
    assert "pip install --no-cache-dir ." in dockerfile
    assert "./dev run" in (ROOT / "README.md").read_text()
    assert '"$VENV/bin/pip" install -q -e ".[test]"' in (ROOT / "dev").read_text()
    assert re.search(r"^USER (?!root)\w+", dockerfile, re.M)
    assert "/readyz" in dockerfile and "ffmpeg" in dockerfile


def test_docker_compose_config_accepts_the_file() -> None:
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"],
                                        capture_output=True).returncode != 0:
        print("docker compose is not installed here: `docker compose config` not run; "
              "the file was checked by the tests above")
        return
    env = (COMPOSE / ".env.example").read_text()
    filled = re.sub(r"^([A-Z_]+)=$", r"\1=x", env, flags=re.M)
    tmp_env = COMPOSE / ".env.test"
    tmp_env.write_text(filled)
    try:
        result = subprocess.run([docker, "compose", "--env-file", str(tmp_env), "-f",
                                 str(COMPOSE / "docker-compose.yml"), "config", "--quiet"],
                                capture_output=True, text=True)
    finally:
        tmp_env.unlink()
    assert result.returncode == 0, result.stderr
