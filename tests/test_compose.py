"""compose/ against the service: env variables are real settings with valid values, ports
agree, Kurento and the service share the recordings volume, Kurento is configured with keys
Kurento 7 reads, coturn's shipped config runs on the real turnserver and refuses relays into
the network, and the Dockerfile builds the package the README installs.

No container engine runs on these machines (a `docker` client without the compose plugin at
most): the images themselves are not started; the tests say so where it matters."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aioice import stun
from aioice.ice import get_host_addresses
from aioice.turn import TurnClientTcpProtocol, TurnClientUdpProtocol

from telemed.settings import Settings, _sections, env_name, load_settings
from tests.helpers import scaled
from tests.services import free_port, free_port_range, require_binary, stop_process, wait_port
from turn.providers.coturn import DENIED_PEERS, CoturnSharedSecret

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "compose"

#: What the Kurento image's entrypoint does with each variable: the Kurento 7 file and key
#: it writes (kurento-media-server's docker entrypoint, `set_parameter`).
KMS_ENV_KEYS = {
    "KMS_MIN_PORT": ("BaseRtpEndpoint.conf.ini", "minPort"),
    "KMS_MAX_PORT": ("BaseRtpEndpoint.conf.ini", "maxPort"),
    "KMS_MTU": ("BaseRtpEndpoint.conf.ini", "mtu"),
    "KMS_EXTERNAL_IPV4": ("WebRtcEndpoint.conf.ini", "externalIPv4"),
    "KMS_EXTERNAL_IPV6": ("WebRtcEndpoint.conf.ini", "externalIPv6"),
    "KMS_NETWORK_INTERFACES": ("WebRtcEndpoint.conf.ini", "networkInterfaces"),
    "KMS_ICE_TCP": ("WebRtcEndpoint.conf.ini", "iceTcp"),
    "KMS_STUN_IP": ("WebRtcEndpoint.conf.ini", "stunServerAddress"),
    "KMS_STUN_PORT": ("WebRtcEndpoint.conf.ini", "stunServerPort"),
    "KMS_TURN_URL": ("WebRtcEndpoint.conf.ini", "turnURL"),
}
#: The env file's secrets: no example value, each one given by the administrator.
SECRETS = ("TURN_SECRETS", "REDIS_PASSWORD", "JWT_SECRET", "WEBHOOK_SECRET")
#: Variables the image reads for itself, not config keys.
KMS_OTHER_ENV = {"GST_DEBUG"}


def compose() -> dict[str, Any]:
    return yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())  # type: ignore[no-any-return]


def example_env() -> dict[str, str]:
    """compose/.env.example, with every empty (secret) value filled in."""
    values = {}
    for line in (COMPOSE / ".env.example").read_text().splitlines():
        if match := re.fullmatch(r"([A-Z_]+)=(.*)", line):
            values[match[1]] = match[2]
    for name in SECRETS:
        values[name] = os.urandom(16).hex()
    values["API_KEY_HASHES"] = "ab" * 32
    return values


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?message}`; `$$` is a dollar."""
    def one(match: re.Match[str]) -> str:
        name, op, arg = match[1], match[2], match[3]
        value = env.get(name, "")
        if op == ":?" and not value:
            raise AssertionError(f"{name} is required: {arg}")
        return value or (arg if op == ":-" else "")
    text = re.sub(r"\$\{([A-Z_]+)(?:(:-|:\?)([^}]*))?\}", one, text)
    return text.replace("$$", "$")


def service_env(env: dict[str, str]) -> dict[str, str]:
    raw = compose()["services"]["signaling"]["environment"]
    return {k: interpolate(str(v), env) for k, v in raw.items()}


def setting_env_names() -> set[str]:
    names = {env_name(None, f.name) for f in dataclasses.fields(Settings)
             if f.name not in _sections()}
    for section, cls in _sections().items():
        names |= {env_name(section, f.name) for f in dataclasses.fields(cls)}
    return names


def test_every_variable_given_to_the_service_is_a_setting_with_a_valid_value() -> None:
    """Every variable compose gives the service is a known setting, and together they load."""
    env = service_env(example_env())
    assert set(env) - setting_env_names() == set()
    settings = load_settings(env=env)  # types, bounds and cross-setting rules
    assert settings.turn.provider == "coturn-secret"
    assert settings.media.kurento_urls == ("ws://kurento:8888/kurento",)


def test_secrets_come_only_from_the_untracked_env_file() -> None:
    """Secrets reach compose only as ${VAR}s from the git-ignored .env, never as literals."""
    text = (COMPOSE / "docker-compose.yml").read_text()
    used = set(re.findall(r"\$\{([A-Z_]+)", text))
    documented = set(re.findall(r"^([A-Z_]+)=", (COMPOSE / ".env.example").read_text(), re.M))
    assert used - documented == set()
    assert "compose/.env" in (ROOT / ".gitignore").read_text().split()
    example = dict(re.findall(r"^([A-Z_]+)=(.*)$", (COMPOSE / ".env.example").read_text(), re.M))
    for name in SECRETS:
        assert example[name] == "", f"{name} must have no example value"
    # Every secret setting the service gets is a ${VAR}, never a literal in the file.
    raw = compose()["services"]["signaling"]["environment"]
    secret_envs = {env_name(section, f.name) for section, cls in _sections().items()
                   for f in dataclasses.fields(cls) if f.metadata.get("secret")}
    for name in secret_envs & set(raw):
        assert re.fullmatch(r"\$\{[A-Z_]+[^}]*\}", raw[name]), name
    assert raw["TELEMED_REDIS_URL"].startswith("redis+sentinel://:${REDIS_PASSWORD}@")


def test_ports_agree_and_nothing_is_published_beyond_public_ip() -> None:
    """Ports agree across services; only nginx, Kurento's UDP range and coturn face PUBLIC_IP."""
    services = compose()["services"]
    env = example_env()
    signaling = services["signaling"]
    port = signaling["environment"]["TELEMED_HTTP_PORT"]
    assert signaling["expose"] == [port]
    assert f"127.0.0.1:{port}/readyz" in " ".join(signaling["healthcheck"]["test"])
    nginx_conf = (COMPOSE / "nginx" / "nginx.conf.template").read_text()
    assert f"server signaling:{port};" in nginx_conf
    # Redis, the service and Kurento's JSON-RPC port stay on the compose network.
    for name in ("redis", "redis-replica", "sentinel-1", "sentinel-2", "sentinel-3"):
        assert "ports" not in services[name] and "network_mode" not in services[name], name
    assert "ports" not in signaling
    assert "network_mode" not in services["kurento"]
    for name, service in services.items():
        for mapping in service.get("ports", []):
            assert mapping.startswith("${PUBLIC_IP"), (name, mapping)
    assert set(services["nginx"]["ports"]) == {"${PUBLIC_IP}:443:443", "${PUBLIC_IP}:80:80"}
    # Kurento: the published UDP range is exactly the range it allocates from.
    kms = services["kurento"]["environment"]
    lo, hi = int(kms["KMS_MIN_PORT"]), int(kms["KMS_MAX_PORT"])
    published = interpolate(services["kurento"]["ports"][0], env)
    assert published == f"{env['PUBLIC_IP']}:{lo}-{hi}:{lo}-{hi}/udp"
    assert kms["KMS_ICE_TCP"] == "0"  # so that no TCP port of Kurento needs publishing
    assert "8888/kurento" in signaling["environment"]["TELEMED_MEDIA_KURENTO_URLS"]
    # coturn: host networking, but listening and relaying on PUBLIC_IP only.
    coturn = services["coturn"]
    script = coturn["command"][0]
    for flag in ("--listening-ip=${PUBLIC_IP}", "--relay-ip=${PUBLIC_IP}",
                 "--allowed-peer-ip=${PUBLIC_IP}"):
        assert flag in script, flag
    conf = coturn_conf()
    turn_urls = service_env(env)["TELEMED_TURN_URLS"].split(",")
    assert turn_urls == [f"turn:{env['PUBLIC_IP']}:{conf['listening-port']}?transport=udp",
                         f"turn:{env['PUBLIC_IP']}:{conf['listening-port']}?transport=tcp",
                         f"turns:{env['TURN_HOST']}:443?transport=tcp"]
    # nginx passes TLS for TURN_HOST on 443 to coturn's TLS port, the rest to itself.
    assert "listen 443;" in nginx_conf and "ssl_preread on;" in nginx_conf
    assert re.search(r"\$\{TURN_HOST\}\s+turn_hop;", nginx_conf)
    assert f"server ${{PUBLIC_IP}}:{conf['tls-listening-port']};" in nginx_conf
    assert "listen 127.0.0.1:8443 ssl proxy_protocol;" in nginx_conf
    assert "server 127.0.0.1:8443;" in nginx_conf
    # Relay and media ranges do not overlap.
    assert int(conf["max-port"]) < lo or int(conf["min-port"]) > hi


def test_nginx_template_fills_in_only_variables_compose_gives_it() -> None:
    """The nginx template uses only variables compose sets and never shadows nginx's own."""
    template = (COMPOSE / "nginx" / "nginx.conf.template").read_text()
    nginx = compose()["services"]["nginx"]
    given = set(nginx["environment"])
    assert set(re.findall(r"\$\{([A-Z_]+)\}", template)) <= given
    assert nginx["environment"]["NGINX_ENVSUBST_OUTPUT_DIR"] == "/etc/nginx"
    assert "./nginx/nginx.conf.template:/etc/nginx/templates/nginx.conf.template:ro" in \
        nginx["volumes"]
    # nginx's own $variables must not be names envsubst would replace.
    own = set(re.findall(r"\$([a-z_]+)", template))
    assert all(name.upper() != name for name in own)
    # Longer than the service's WebSocket heartbeat.
    assert "proxy_read_timeout 120s;" in template
    assert "location = /metrics { return 404; }" in template  # internal scrapers only


def test_kurento_and_the_service_share_the_recordings_volume() -> None:
    """Kurento and the service mount one recordings volume, owned by the service's user."""
    services = compose()["services"]
    target = services["signaling"]["environment"]["TELEMED_RECORDINGS_DIR"]
    for name in ("kurento", "signaling"):
        assert f"recordings:{target}" in services[name]["volumes"], name
    assert "recordings" in compose()["volumes"]
    # The volume takes its owner from the image that creates it first: the service's.
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"mkdir {target} && chown telemed:telemed {target}" in dockerfile
    assert "signaling" in services["kurento"]["depends_on"]


def test_kurento_is_configured_only_with_keys_kurento_7_reads() -> None:
    """Kurento 7 gets only environment keys it reads, and no bind mount over its .ini files."""
    kurento = compose()["services"]["kurento"]
    assert kurento["image"].startswith("kurento/kurento-media-server:7.")
    env = kurento["environment"]
    assert set(env) - KMS_OTHER_ENV <= set(KMS_ENV_KEYS)
    assert {KMS_ENV_KEYS[k][1] for k in env if k in KMS_ENV_KEYS} == {
        "minPort", "maxPort", "externalIPv4", "iceTcp"}
    assert env["KMS_EXTERNAL_IPV4"] == "${PUBLIC_IP}"
    # The entrypoint edits its .ini files in place; a bind mount over one makes it fail.
    assert not any("/etc/kurento/" in v for v in kurento["volumes"])


def coturn_conf() -> dict[str, str]:
    values = {}
    for line in (COMPOSE / "coturn" / "turnserver.conf").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            values.setdefault(key, value)
    return values


def test_coturn_config_is_locked_down() -> None:
    """The shipped coturn config requires auth, TLS 1.2+, quotas and denies every private peer."""
    text = (COMPOSE / "coturn" / "turnserver.conf").read_text()
    lines = {line.strip() for line in text.splitlines() if line and not line.startswith("#")}
    for required in ("use-auth-secret", "no-multicast-peers", "fingerprint", "no-cli",
                     "no-tlsv1", "no-tlsv1_1"):
        assert required in lines, required
    # The same ranges as the embedded coturn, which include every private range, loopback
    # and the IPv4-mapped IPv6 bypass.
    assert {"127.0.0.0-127.255.255.255", "10.0.0.0-10.255.255.255", "172.16.0.0-172.31.255.255",
            "192.168.0.0-192.168.255.255", "::ffff:0.0.0.0-::ffff:255.255.255.255",
            "fc00::-fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "::1"} <= set(DENIED_PEERS)
    denied = [line.removeprefix("denied-peer-ip=") for line in text.splitlines()
              if line.startswith("denied-peer-ip=")]
    assert denied == list(DENIED_PEERS)
    conf = coturn_conf()
    assert int(conf["user-quota"]) > 0 and int(conf["total-quota"]) > 0
    assert conf["cert"] and conf["pkey"] and conf["tls-listening-port"]
    assert not any(line.startswith(("allow-loopback-peers", "static-auth-secret", "cli-"))
                   for line in lines)


@pytest.fixture
def certificate(tmp_path: Path) -> Path:
    certs = tmp_path / "certs"
    certs.mkdir()
    subprocess.run([require_binary("openssl"), "req", "-x509", "-newkey", "rsa:2048",
                    "-nodes", "-days", "1", "-subj", "/CN=turn.telemed.test",
                    "-keyout", str(certs / "privkey.pem"), "-out", str(certs / "fullchain.pem")],
                   check=True, capture_output=True)
    return certs


@pytest.fixture
def compose_coturn(tmp_path: Path, certificate: Path) -> Iterator[dict[str, Any]]:
    """The shipped coturn config started the way compose starts it (its own shell script),
    on this machine's LAN address standing in for PUBLIC_IP; only ports and paths differ."""
    binary = require_binary("turnserver")
    (public_ip, *_) = get_host_addresses(use_ipv4=True, use_ipv6=False) or ["no LAN address"]
    conf = (COMPOSE / "coturn" / "turnserver.conf").read_text().replace(
        "/etc/coturn/certs", str(certificate))
    (tmp_path / "turnserver.conf").write_text(conf)
    port, tls_port = free_port(socket.SOCK_DGRAM), free_port()
    lo, hi = free_port_range(20)
    script = compose()["services"]["coturn"]["command"][0]
    script = interpolate(script, {"PUBLIC_IP": public_ip, "TURN_REALM": "telemed.test"})
    script = script.replace("/etc/coturn/turnserver.conf", str(tmp_path / "turnserver.conf"))
    script = script.replace("/tmp/turnserver.conf", str(tmp_path / "run.conf"))
    script = script.replace("exec turnserver", (
        f"exec {binary} --listening-port={port} --tls-listening-port={tls_port} "
        f"--min-port={lo} --max-port={hi} --userdb={tmp_path}/turndb "
        f"--pidfile={tmp_path}/turn.pid"))
    secrets_ = ("new-" + os.urandom(8).hex(), "old-" + os.urandom(8).hex())
    proc = subprocess.Popen(["/bin/sh", "-c", script], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                            env={"PATH": os.environ["PATH"], "TURN_SECRETS": ", ".join(secrets_)})
    try:
        wait_port(tls_port, proc=proc, host=public_ip)
        wait_port(port, proc=proc, host=public_ip)
        yield {"ip": public_ip, "port": port, "tls_port": tls_port, "secrets": secrets_,
               "pid": proc.pid, "run_conf": tmp_path / "run.conf"}
    finally:
        stop_process(proc)


def check_secrets_kept_out_of_argv(coturn: dict[str, Any]) -> None:
    """The secrets went through a private copy of the config, never argv."""
    argv = Path(f"/proc/{coturn['pid']}/cmdline").read_bytes()
    assert all(secret.encode() not in argv for secret in coturn["secrets"])
    run_conf: Path = coturn["run_conf"]
    assert run_conf.stat().st_mode & 0o077 == 0
    assert {f"static-auth-secret={s}" for s in coturn["secrets"]} <= set(
        run_conf.read_text().splitlines())


async def test_shipped_coturn_config_runs_and_relays_only_to_the_media_host(
    compose_coturn: dict[str, Any]
) -> None:
    """The shipped coturn config serves TLS and relays to the media host, never to private peers."""
    server = (compose_coturn["ip"], compose_coturn["port"])
    new, old = compose_coturn["secrets"]
    check_secrets_kept_out_of_argv(compose_coturn)

    loop = asyncio.get_running_loop()
    lease = await CoturnSharedSecret((new, old), ("turn:x",)).issue(
        "call-c", "p", ttl=600, now=time.time(), slot=0)
    transport, turn = await loop.create_datagram_endpoint(
        lambda: TurnClientUdpProtocol(server, username=lease.username,
                                      password=lease.credential, lifetime=600,
                                      channel_refresh_time=500), remote_addr=server)
    try:
        async with asyncio.timeout(scaled(10)):
            relayed = await turn.connect()
        assert relayed[0] == compose_coturn["ip"]
        # The media host (PUBLIC_IP) is a permitted peer ...
        await turn.channel_bind(0x4000, (compose_coturn["ip"], 40000))
        # ... loopback, private ranges and IPv4-mapped IPv6 are not.
        for number, peer in enumerate(["127.0.0.1", "10.1.2.3", "172.16.0.9", "192.168.1.1",
                                       "169.254.1.1", "::ffff:127.0.0.1", "::1"], 0x4001):
            with pytest.raises(stun.TransactionFailed) as refused:
                async with asyncio.timeout(scaled(10)):
                    await turn.channel_bind(number, (peer, 40000))
            code = refused.value.response.attributes["ERROR-CODE"][0]
            assert code in (403, 443), (peer, code)  # forbidden, or family mismatch
    finally:
        transport.close()

    # TLS works with the shipped settings (the certificate is self-signed here).
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    tls_server = (compose_coturn["ip"], compose_coturn["tls_port"])
    transport, turn = await loop.create_connection(
        lambda: TurnClientTcpProtocol(tls_server, username=lease.username,
                                      password=lease.credential, lifetime=600,
                                      channel_refresh_time=500),
        host=tls_server[0], port=tls_server[1], ssl=context)
    try:
        async with asyncio.timeout(scaled(10)):
            assert (await turn.connect())[0] == compose_coturn["ip"]
    finally:
        transport.close()


def dockerfile_copies() -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY, relative to the build context and WORKDIR."""
    found = re.findall(r"^COPY (.+) (\S+)$", (ROOT / "Dockerfile").read_text(), re.M)
    return [(sources.split(), dst) for sources, dst in found]


def test_dockerfile_builds_the_package_the_readme_installs(tmp_path: Path) -> None:
    """Builds the wheel from exactly what the Dockerfile copies (no image: no container
    engine here) and checks it holds every file of the packages the README's install has."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    readme = (ROOT / "README.md").read_text()
    dev = (ROOT / "dev").read_text()
    assert "./dev run" in readme and "./dev test" in readme
    assert '"$VENV/bin/pip" install -q -e ".[test]"' in dev  # the README's install
    assert "RUN pip install --no-cache-dir ." in dockerfile  # the same project, no test extra
    assert re.search(r"^USER (?!root)\w+", dockerfile, re.M)
    assert "/readyz" in dockerfile and "ffmpeg" in dockerfile
    assert 'CMD ["telemed", "run"]' in dockerfile

    context = tmp_path / "context"
    for sources, dst in dockerfile_copies():
        for name in sources:
            source = ROOT / name
            target = context / dst / (name if dst.endswith("/") else "")
            if source.is_dir():
                shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(source, target)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                            "--no-build-isolation", str(context), "-w", str(tmp_path / "dist")],
                           capture_output=True, text=True, timeout=scaled(120))
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("telemed-*.whl")
    in_wheel = set(zipfile.ZipFile(wheel).namelist())

    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]["packages"]
    expected = set()
    for package in packages:
        for path in (ROOT / package).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                expected.add(path.relative_to(ROOT).as_posix())
    assert expected - in_wheel == set()
    entry = [n for n in in_wheel if n.endswith("entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry[0]).decode()
    assert "telemed = telemed.cli:main" in text


def nginx_blocks(text: str) -> dict[str, str]:
    """Each `server { ... }` block of the template, keyed by its first `listen` line."""
    blocks = {}
    for match in re.finditer(r"server \{(.*?)\n  \}", text, flags=re.S):
        body = match[1]
        listen = re.search(r"listen ([^;]+);", body)
        if listen:
            blocks[listen[1]] = body
    return blocks


def test_nginx_hands_the_service_the_real_client_address_and_nothing_else() -> None:
    """The TLS split passes the client's address on (PROXY protocol) to the web server,
    which sets X-Forwarded-For to it, replacing any the client sent; coturn gets its
    stream without the header; the service trusts nginx's fixed address alone."""
    template = (COMPOSE / "nginx" / "nginx.conf.template").read_text()
    blocks = nginx_blocks(template)
    split = blocks["443"]
    assert "ssl_preread on;" in split and "proxy_protocol on;" in split
    web = blocks["127.0.0.1:8443 ssl proxy_protocol"]
    assert "set_real_ip_from 127.0.0.1;" in web and "real_ip_header proxy_protocol;" in web
    forwarded = re.findall(r"proxy_set_header X-Forwarded-For ([^;]+);", template)
    assert forwarded and set(forwarded) == {"$remote_addr"}
    assert len(forwarded) == template.count("proxy_pass http://telemed;")
    hop = blocks["127.0.0.1:8444 proxy_protocol"]
    assert "proxy_pass coturn_tls;" in hop and "proxy_protocol on;" not in hop
    assert re.search(r"upstream turn_hop \{ server 127\.0\.0\.1:8444; \}", template)
    env = example_env()
    services = compose()
    address = interpolate(services["services"]["nginx"]["networks"]["default"]
                          ["ipv4_address"], env)
    subnet = interpolate(services["networks"]["default"]["ipam"]["config"][0]["subnet"], env)
    trusted = service_env(env)["TELEMED_HTTP_TRUSTED_PROXIES"]
    assert trusted == address == env["NGINX_ADDRESS"]
    assert ipaddress.ip_address(address) in ipaddress.ip_network(subnet)
    settings = load_settings(env=service_env(env))
    assert settings.http.trusted_proxies == (address,)
    # Without compose/.env's values the defaults still agree with each other.
    defaults = {k: v for k, v in env.items() if k not in ("NGINX_ADDRESS", "COMPOSE_SUBNET")}
    assert service_env(defaults)["TELEMED_HTTP_TRUSTED_PROXIES"] == interpolate(
        services["services"]["nginx"]["networks"]["default"]["ipv4_address"], defaults)


def test_compose_runs_two_signalling_nodes_that_differ_only_in_their_node_id() -> None:
    """Two nodes behind nginx (no stickiness: any node serves any socket), the same image
    and settings but a node id of their own each, and nginx waits for both."""
    services = compose()["services"]
    a, b = services["signaling"], services["signaling-b"]
    env_a, env_b = dict(a["environment"]), dict(b["environment"])
    assert env_a.pop("TELEMED_NODE_ID") != env_b.pop("TELEMED_NODE_ID")
    assert env_a == env_b
    assert {k: v for k, v in a.items() if k != "environment"} == \
        {k: v for k, v in b.items() if k != "environment"}
    port = env_a["TELEMED_HTTP_PORT"]
    conf = (ROOT / "compose" / "nginx" / "nginx.conf.template").read_text()
    upstream = next(line for line in conf.splitlines() if "upstream telemed" in line)
    assert f"server signaling:{port};" in upstream
    assert f"server signaling-b:{port};" in upstream
    assert "ip_hash" not in conf and "sticky" not in conf
    assert {"signaling", "signaling-b"} <= set(services["nginx"]["depends_on"])
