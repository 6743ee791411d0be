"""Static checks of the container deployment in compose/ (tests/test_compose_up.py runs
it on a real engine).

`check_compose` reads a compose file the way an operator's `docker compose up` would use
it and returns every problem it finds, one line each:

- the YAML parses and has services;
- every service but `postgres` (the store: `ADDRESS PORT`) runs the image's `icx`
  entrypoint with a command that the project's own argument parser accepts
  (healthchecks that call `icx` too);
- every host file or folder it mounts exists, every named volume is declared;
- each agent's `--config` is a mounted, read-only file that `load_center` accepts, and
  no two agents serve the same center;
- every service is on the host's network (no bridge networks, no published ports) and
  binds its own 127.0.0.x address (`--listen`, `--metrics`, `--health`), never 0.0.0.0:
  no two services bind the same address;
- each agent's `--broker` is the address a broker service listens on; each healthcheck
  probes the address its own service serves;
- the broker keeps its SQLite file (`--db`) on a volume, or its `--store` is the
  `postgres` service's address, its own files (`--state-dir`) on a volume and its
  password file mounted read-only; the cluster itself is on a volume;
- membership: nothing runs `--insecure`; the broker and every agent present a member
  folder (`--identity`) mounted from the host (an agent's read-only; the broker's
  writable, as it keeps the newest revocation list there), and an agent's usage key
  (`key_file`) is mounted read-only where its config names it; healthchecks that call
  `icx health` present a mounted member folder too;
- the Dockerfile exists, its COPY sources exist in the build context, and its
  entrypoint is `icx`.

Member folders (`*.identity`) and usage keys (`*.key`) are made at deployment, by
compose/init-members.sh, and are not in the repository. With `members=True` (after
running it) they must exist and hold what the service needs: a broker's certificate
that names the address agents dial, each center's certificate with its own id and region,
binding the usage key its config names and naming its health endpoint's address, all
issued by one federation root.

The real files must give no problem; each negative test corrupts one thing in a copy
and expects exactly the matching problem.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli.main import build_parser
from core.errors import IcxError, InvalidConfig
from core.types import CenterDescriptor
from identity import Credentials, Role
from ledger import SignerKey
from node_agent.config import load_center, usage_key_path

COMPOSE_DIR = Path(__file__).resolve().parent.parent / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
ANY_ADDRESS = ("0.0.0.0", "::")
DEFAULT_LISTEN = "127.0.0.1:7700"  # `icx broker serve`'s default --listen
BOUND = ("--listen", "--metrics", "--health")  # the flags that bind an address
# Made by init-members.sh, not in the repository: member folders, usage keys, and the
# store's password (for PostgreSQL, and for the broker as a libpq password file).
MADE_AT_DEPLOYMENT = (".identity", ".key", ".password", ".pgpass")
DATABASE = "postgres"  # the service that runs the broker's store: `ADDRESS PORT`


# ---------------------------------------------------------------- the checker


def parse_icx(argv: list[str]) -> str | None:
    """None when `icx ARGV` parses with the CLI's own parser, else argparse's complaint."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            build_parser().parse_args(argv)
    except SystemExit:
        lines = stderr.getvalue().strip().splitlines()
        return lines[-1] if lines else "rejected"
    return None


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comments dropped and continuations joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def _words(args: str) -> list[str]:
    """A Dockerfile argument list in JSON (exec) form or shell form."""
    if args.startswith("["):
        words = json.loads(args)
        assert isinstance(words, list)
        return [str(w) for w in words]
    return shlex.split(args)


def check_dockerfile(dockerfile: Path, context: Path) -> tuple[list[str], list[str]]:
    """(problems, entrypoint) of a Dockerfile built from `context`."""
    if not dockerfile.is_file():
        return [f"Dockerfile {dockerfile} does not exist"], []
    problems: list[str] = []
    entrypoint: list[str] = []
    for keyword, args in dockerfile_instructions(dockerfile):
        if keyword in ("COPY", "ADD"):
            words = _words(args)
            if any(w.startswith("--from=") for w in words):
                continue  # from another stage, not from the context
            sources = [w for w in words if not w.startswith("--")][:-1]
            for source in sources:
                if not (context / source).exists():
                    problems.append(
                        f"{dockerfile.name}: {keyword} source {source!r} does not exist "
                        f"in the build context {context}"
                    )
        elif keyword == "ENTRYPOINT":
            entrypoint = _words(args)
    if not entrypoint:
        problems.append(f"{dockerfile.name}: no ENTRYPOINT")
    return problems, entrypoint


def _mounts(service: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """(kind 'bind' or 'volume', source, target, read_only) for each volume entry."""
    out = []
    for entry in service.get("volumes", []):
        if isinstance(entry, dict):
            kind = entry.get("type", "volume")
            read_only = bool(entry.get("read_only", False))
            out.append((kind, str(entry.get("source", "")), str(entry["target"]), read_only))
            continue
        parts = str(entry).split(":")
        source, target = parts[0], parts[1] if len(parts) > 1 else parts[0]
        read_only = len(parts) > 2 and "ro" in parts[2].split(",")
        kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        out.append((kind, source, target, read_only))
    return out


def _flag(argv: list[str], name: str) -> str | None:
    for i, word in enumerate(argv):
        if word == name and i + 1 < len(argv):
            return argv[i + 1]
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    return None


def _split_address(address: str) -> tuple[str, str]:
    """HOST:PORT (or [V6]:PORT) as (host, port)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), port


def _on_loopback_v4(host: str) -> bool:
    """Whether `host` is an address in 127.0.0.0/8."""
    try:
        return ipaddress.ip_address(host) in ipaddress.ip_network("127.0.0.0/8")
    except ValueError:
        return False


def _serves(listen: str, dial: str) -> bool:
    """Whether a server bound to `listen` answers a client dialling `dial`."""
    (listen_host, listen_port), (dial_host, dial_port) = map(_split_address, (listen, dial))
    return listen_port == dial_port and listen_host in (dial_host, *ANY_ADDRESS)


def _bind_at(service: dict[str, Any], target: str) -> tuple[str, str, str, bool] | None:
    """The bind mount whose container path is `target`, if any."""
    return next((m for m in _mounts(service) if m[0] == "bind" and m[2] == target), None)


def _member(base: Path, source: str) -> Credentials | str:
    """The credentials in a mounted member folder, or why there are none."""
    try:
        return Credentials.load(base / source)
    except IcxError as exc:
        return str(exc)


def _cert_hosts(creds: Credentials) -> list[str]:
    """The DNS names and addresses the member's certificate is valid for."""
    from cryptography import x509

    cert = x509.load_pem_x509_certificates(creds.chain_pem)[0]
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(n.value) for n in names]


def check_identity(
    name: str,
    service: dict[str, Any],
    argv: list[str],
    *,
    base: Path,
    members: bool,
    read_only: bool,
) -> tuple[list[str], Credentials | None]:
    """Problems with the member folder a broker or agent presents, and (with `members`)
    its credentials."""
    identity = _flag(argv, "--identity")
    if identity is None:
        return [f"service {name}: no --identity: it presents no membership and cannot start"], None
    mount = _bind_at(service, identity)
    if mount is None:
        return [f"service {name}: --identity {identity} is not a mounted folder"], None
    problems = []
    if read_only and not mount[3]:
        problems.append(f"service {name}: member folder {mount[1]} is not mounted read-only")
    if not read_only and mount[3]:
        problems.append(
            f"service {name}: member folder {mount[1]} is mounted read-only; the broker "
            "keeps the newest revocation list there"
        )
    if not members:
        return problems, None
    creds = _member(base, mount[1])
    if isinstance(creds, str):
        return [*problems, f"service {name}: member folder {mount[1]}: {creds}"], None
    return problems, creds


def check_store(name: str, services: dict[str, dict[str, Any]], argv: list[str]) -> list[str]:
    """A broker's store: a SQLite file (--db) on a volume, or (--store) the database
    service's address, the broker's own files (--state-dir) on a volume and the password
    file mounted read-only where PGPASSFILE says."""
    service = services[name]
    volumes = [target for kind, _, target, _ in _mounts(service) if kind == "volume"]
    url = _flag(argv, "--store")
    if url is None:
        db = _flag(argv, "--db") or ""
        if not any(Path(db).is_relative_to(target) for target in volumes):
            return [
                f"service {name}: --db {db} is not on a volume; the store would not "
                "survive the container"
            ]
        return []
    problems = []
    database = services.get(DATABASE, {}).get("command", [])
    served = ":".join(str(word) for word in database[:2])
    where = url.split("@", 1)[-1].split("/", 1)[0]
    if not database or where != served:
        problems.append(
            f"service {name}: --store {url} is not the address of the {DATABASE} service "
            f"({served or 'none'})"
        )
    state = _flag(argv, "--state-dir") or "."
    if not any(Path(state).is_relative_to(target) for target in volumes):
        problems.append(
            f"service {name}: --state-dir {state} is not on a volume; the ledger's key would "
            "not survive the container"
        )
    passfile = (service.get("environment") or {}).get("PGPASSFILE", "")
    mount = _bind_at(service, passfile)
    if mount is None or not mount[3]:
        problems.append(
            f"service {name}: PGPASSFILE {passfile or '(unset)'} is not a file mounted read-only"
        )
    return problems


def check_compose(path: Path, *, members: bool = False) -> list[str]:
    """Every problem found in the compose file at `path`, one line each. With
    `members`, the member folders and usage keys it mounts are checked too (they exist
    once compose/init-members.sh has run)."""
    base = path.parent
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        return [f"{path.name} does not parse as YAML: {exc}"]
    if not isinstance(doc, dict) or not isinstance(doc.get("services"), dict):
        return [f"{path.name} has no services mapping"]
    services: dict[str, dict[str, Any]] = doc["services"]
    declared_volumes = set(doc.get("volumes") or {})
    problems: list[str] = []
    if "networks" in doc:
        problems.append(f"{path.name} declares networks; every service uses the host's")
    argvs: dict[str, list[str]] = {}  # every icx command, accepted or refused
    bound: dict[str, str] = {}  # address -> the service that binds it
    accepted: set[str] = set()
    image_entrypoints: dict[str, list[str]] = {}

    for name, service in services.items():
        build = service.get("build")
        if build is not None:
            if isinstance(build, str):
                build = {"context": build}
            context = (base / build.get("context", ".")).resolve()
            dockerfile = context / build.get("dockerfile", "Dockerfile")
            found, entrypoint = check_dockerfile(dockerfile, context)
            problems += [f"service {name}: {p}" for p in found]
            image_entrypoints[str(service.get("image", name))] = entrypoint
        elif "image" not in service:
            problems.append(f"service {name}: neither build nor image")

    for name, service in services.items():
        override = service.get("entrypoint")
        if override is None:
            entrypoint = image_entrypoints.get(str(service.get("image", name)), [])
        elif isinstance(override, str):
            entrypoint = shlex.split(override)
        else:
            entrypoint = [str(w) for w in override]
        command = service.get("command", [])
        command = shlex.split(command) if isinstance(command, str) else [str(c) for c in command]
        if service.get("network_mode") != "host" or "networks" in service:
            problems.append(
                f"service {name}: not on the host network (network_mode: host): no bridge networks"
            )
        if service.get("ports"):
            problems.append(
                f"service {name}: publishes ports; on the host network it binds its own "
                "127.0.0.x address instead"
            )
        addresses = [(f, _flag(command, f)) for f in BOUND]
        if name == DATABASE:
            addresses = [("address", ":".join(command[:2]))]
            if not any(m[2] == "/data" for m in _mounts(service) if m[0] == "volume"):
                problems.append(f"service {name}: its cluster (/data) is not on a volume")
        elif entrypoint != ["icx"]:
            problems.append(f"service {name}: entrypoint is {entrypoint!r}, not ['icx']")
            continue
        else:
            error = parse_icx(command)
            if error is not None:
                problems.append(f"service {name}: `icx {shlex.join(command)}` is refused: {error}")
            else:
                accepted.add(name)
            argvs[name] = command
        for flag, address in addresses:
            if address is None:
                continue
            host, _ = _split_address(address)
            if not _on_loopback_v4(host):
                problems.append(
                    f"service {name}: {flag} {address} binds beyond 127.0.0.x on the host's network"
                )
            elif address in bound:
                problems.append(
                    f"service {name}: {flag} {address} is bound by {bound[address]} too "
                    "(one host network)"
                )
            else:
                bound[address] = name

        if "--insecure" in command:
            problems.append(
                f"service {name}: runs --insecure (plaintext, anyone may act as anyone): "
                "for development on loopback only"
            )

        test = (service.get("healthcheck") or {}).get("test")
        if isinstance(test, list) and test[:1] == ["CMD"] and test[1:2] == ["icx"]:
            words = [str(w) for w in test[2:]]
            error = parse_icx(words)
            if error is not None:
                problems.append(f"service {name}: healthcheck `{shlex.join(test[1:])}`: {error}")
            elif (
                words[:1] == ["health"]
                and _bind_at(service, _flag(words, "--identity") or "") is None
            ):
                problems.append(
                    f"service {name}: healthcheck `{shlex.join(test[1:])}` presents no mounted "
                    "member folder (--identity): the endpoint serves members only"
                )
            served = _flag(command, "--listen") or _flag(command, "--health")
            probed = _flag(words, "--broker")
            if words[:1] == ["health"] and served and probed and not _serves(served, probed):
                problems.append(
                    f"service {name}: healthcheck probes {probed}, which the service does not "
                    f"serve ({served})"
                )

        for kind, source, target, _ in _mounts(service):
            if kind == "bind":
                if not members and source.endswith(MADE_AT_DEPLOYMENT):
                    continue  # made by init-members.sh; checked with members=True
                if not (base / Path(source).expanduser()).exists():
                    problems.append(
                        f"service {name}: mounts {source} at {target}, which is missing"
                    )
            elif kind == "volume" and source and source not in declared_volumes:
                problems.append(f"service {name}: volume {source!r} is not declared in volumes")

    brokers = {n: a for n, a in argvs.items() if a[:2] == ["broker", "serve"]}
    # A refused agent command is reported once, above; a refused broker command still
    # names the broker that agents point at.
    agents = {n: a for n, a in argvs.items() if a[:2] == ["agent", "run"] and n in accepted}
    roots: dict[str, bytes] = {}  # each member's federation root, by service
    if not brokers:
        problems.append("no service runs `icx broker serve`")
    for name, argv in brokers.items():
        listen = _flag(argv, "--listen") or DEFAULT_LISTEN
        problems += check_store(name, services, argv)
        found, creds = check_identity(
            name, services[name], argv, base=base, members=members, read_only=False
        )
        problems += found
        if creds is not None:
            if creds.member.role is not Role.BROKER:
                problems.append(
                    f"service {name}: its member folder holds the certificate of "
                    f"{creds.member.describe()}, not of a broker"
                )
            listen_host = _split_address(listen)[0]
            if listen_host not in _cert_hosts(creds):
                problems.append(
                    f"service {name}: its certificate does not name {listen_host!r}, the "
                    f"address agents dial (icx broker init --host {listen_host})"
                )
            roots[name] = creds.root_pem
    seen_centers: dict[str, str] = {}
    for name, argv in agents.items():
        service = services[name]
        broker = _flag(argv, "--broker") or ""
        listens = [_flag(b, "--listen") or DEFAULT_LISTEN for b in brokers.values()]
        if not any(_serves(listen, broker) for listen in listens):
            problems.append(
                f"service {name}: --broker {broker} is not the address of a broker service"
            )

        config = _flag(argv, "--config") or ""
        mount = next(
            (m for m in _mounts(service) if m[0] == "bind" and m[2] == config),
            None,
        )
        if mount is None:
            problems.append(f"service {name}: --config {config} is not a mounted file")
            continue
        if not mount[3]:
            problems.append(f"service {name}: center config {mount[1]} is not mounted read-only")
        host_path = base / mount[1]
        if not host_path.is_file():
            continue  # reported above as missing
        try:
            center = load_center(host_path)
        except InvalidConfig as exc:
            problems.append(f"service {name}: center config {mount[1]}: {exc}")
            continue
        if center.center_id in seen_centers:
            problems.append(
                f"service {name}: center {center.center_id} is already served by "
                f"{seen_centers[center.center_id]}"
            )
            continue  # its membership is the other agent's; one problem is enough
        seen_centers[center.center_id] = name
        problems += check_center_membership(
            name,
            service,
            argv,
            center,
            host_path,
            mount[2],
            base=base,
            members=members,
            roots=roots,
        )
    if len(set(roots.values())) > 1:
        problems.append(
            f"services {', '.join(sorted(roots))} are members of different federations "
            "(their root.pem differ)"
        )
    return problems


def check_center_membership(
    name: str,
    service: dict[str, Any],
    argv: list[str],
    center: CenterDescriptor,
    config: Path,
    config_target: str,
    *,
    base: Path,
    members: bool,
    roots: dict[str, bytes],
) -> list[str]:
    """An agent's usage key and member folder: mounted where its config and command
    say, read-only, and (with `members`) its own center's, binding that key."""
    problems, creds = check_identity(
        name, service, argv, base=base, members=members, read_only=True
    )
    key_path = usage_key_path(config)
    key_mount = None
    if key_path is None:
        problems.append(f"service {name}: its center config names no key_file: usage unsigned")
    else:
        target = str(Path(config_target).parent / key_path.name)
        key_mount = _bind_at(service, target)
        if key_mount is None:
            problems.append(
                f"service {name}: its usage key {target} (the config's key_file) is not mounted"
            )
        elif not key_mount[3]:
            problems.append(f"service {name}: usage key {key_mount[1]} is not mounted read-only")
    if creds is None:
        return problems
    roots[name] = creds.root_pem
    member = creds.member
    if (member.role, member.name, member.region) != (
        Role.CENTER,
        center.center_id,
        center.region,
    ):
        problems.append(
            f"service {name}: its member folder holds the certificate of {member.describe()}, "
            f"not of center {center.center_id} in region {center.region}"
        )
    health = _split_address(_flag(argv, "--health") or "")[0]
    if health and health not in _cert_hosts(creds):
        problems.append(
            f"service {name}: its certificate does not name {health!r}, the address its "
            f"health endpoint is dialled at (icx agent init --host {health})"
        )
    if key_mount is not None:
        try:
            key = SignerKey.parse((base / key_mount[1]).read_text(encoding="utf-8"))
        except (OSError, ValueError, IcxError) as exc:
            problems.append(f"service {name}: usage key {key_mount[1]}: {exc}")
        else:
            if member.usage_key != key.verifier.text():
                problems.append(
                    f"service {name}: its certificate binds another usage key than {key_mount[1]}"
                )
    return problems


# ---------------------------------------------------------------- the real files


def test_compose_file_has_no_problems() -> None:
    assert check_compose(COMPOSE_FILE) == []


def test_compose_runs_a_broker_and_three_centers() -> None:
    doc = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    commands = {name: s["command"][:2] for name, s in doc["services"].items()}
    assert sorted(n for n, c in commands.items() if c == ["broker", "serve"]) == ["broker"]
    assert sorted(n for n, c in commands.items() if c == ["agent", "run"]) == [
        "agent-cn06",
        "agent-cn08",
        "agent-cn16",
    ]
    assert doc["services"]["broker"]["command"] == [
        "broker", "serve", "--listen", "127.0.0.11:7700",
        "--store", "postgresql://icx@127.0.0.10:5432/icx", "--state-dir", "/data",
        "--metrics", "127.0.0.11:9100", "--identity", "/etc/icx/identity",
    ]  # fmt: skip
    assert {s["network_mode"] for s in doc["services"].values()} == {"host"}
    assert doc["services"]["broker"]["volumes"] == [
        "broker-data:/data",
        "./broker.identity:/etc/icx/identity",
        "./postgres.pgpass:/etc/icx/pgpass:ro",
    ]
    assert doc["services"]["postgres"]["command"] == ["127.0.0.10", "5432"]


def test_center_configs_are_the_scenario_rows() -> None:
    centers = {p.name: load_center(p) for p in sorted((COMPOSE_DIR / "centers").glob("*.toml"))}
    summary = {
        name: (
            c.center_id,
            c.region,
            c.pue_milli,
            c.grid_g_co2_per_kwh,
            [(p.accelerator, p.devices_total, p.price_minor_per_device_hour) for p in c.pools],
        )
        for name, c in centers.items()
    }
    assert summary == {
        "cn06-chengdu.toml": ("CN06", "CY", 1250, 140, [("ascend-910", 3906, 500)]),
        "cn08-shanghai-lingang.toml": ("CN08", "YRD", 1250, 562, [("ascend-910b", 31250, 750)]),
        "cn16-ningxia-zhongwei.toml": ("CN16", "NX", 1100, 586, [("nvidia-a800", 4096, 540)]),
    }


def test_dockerfile_installs_the_package_with_icx_as_entrypoint() -> None:
    dockerfile = COMPOSE_DIR / "Dockerfile"
    problems, entrypoint = check_dockerfile(dockerfile, COMPOSE_DIR.parent)
    assert problems == []
    assert entrypoint == ["icx"]
    instructions = dockerfile_instructions(dockerfile)
    # The base is a build argument: python:3.11-slim where a registry is at hand, the
    # local Debian base (cli/base_image.py) where none is.
    assert instructions[:2] == [("ARG", "BASE=python:3.11-slim"), ("FROM", "${BASE}")]
    assert instructions[-1] == ("CMD", '["--help"]')
    run = next(a for k, a in instructions if k == "RUN" and "pip install" in a)
    words = run.split()
    assert '"/src/$WHEELS"' in words and "--no-index" in words  # offline, from the wheels
    assert "pip install --no-cache-dir -c /src/requirements.lock /src" in run  # or PyPI


# ---------------------------------------------------------------- the checker can fail


@pytest.fixture
def compose_copy(tmp_path: Path) -> Path:
    """A copy of compose/ under tmp_path (the build context); returns its compose file.
    Only the repository's files: not what init-members.sh may have made here."""
    made = shutil.ignore_patterns("federation", "*.identity", "*.key", "*.cert.pem")
    shutil.copytree(COMPOSE_DIR, tmp_path / "compose", ignore=made)
    path = tmp_path / "compose" / "docker-compose.yml"
    assert check_compose(path) == []
    return path


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.count(old) >= 1, old
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_unparseable_yaml_is_reported(compose_copy: Path) -> None:
    edit(compose_copy, "services:", "services: [")
    [problem] = check_compose(compose_copy)
    assert problem.startswith("docker-compose.yml does not parse as YAML:")


def test_unknown_icx_command_is_reported(compose_copy: Path) -> None:
    edit(compose_copy, "- serve", "- serv")
    first, *rest = check_compose(compose_copy)
    assert first.startswith(
        "service broker: `icx broker serv --listen 127.0.0.11:7700 --store "
        "postgresql://icx@127.0.0.10:5432/icx --state-dir /data --metrics 127.0.0.11:9100 "
        "--identity /etc/icx/identity` is refused: icx broker: error: "
        "argument COMMAND: invalid choice: 'serv'"
    )
    assert rest == [
        "no service runs `icx broker serve`",
        "service agent-cn06: --broker 127.0.0.11:7700 is not the address of a broker service",
        "service agent-cn08: --broker 127.0.0.11:7700 is not the address of a broker service",
        "service agent-cn16: --broker 127.0.0.11:7700 is not the address of a broker service",
    ]


def test_missing_required_flag_is_reported(compose_copy: Path) -> None:
    edit(compose_copy, "--config, /etc/icx/center.toml, ", "")
    [problem] = check_compose(compose_copy)
    assert problem == (
        "service agent-cn06: `icx agent run --identity /etc/icx/CN06.identity --broker "
        "127.0.0.11:7700 --workdir /data/work --health 127.0.0.21:7800` is refused: "
        "icx agent run: error: the following arguments are required: --config"
    )


def test_unknown_flag_is_reported(compose_copy: Path) -> None:
    edit(compose_copy, "- --metrics", "- --metrix")
    [problem] = check_compose(compose_copy)
    assert problem.endswith("unrecognized arguments: --metrix 127.0.0.11:9100")


def test_bad_healthcheck_command_is_reported(compose_copy: Path) -> None:
    edit(compose_copy, '"icx", "health"', '"icx", "healt"')
    [problem] = check_compose(compose_copy)
    assert problem.startswith(
        "service broker: healthcheck `icx healt --broker 127.0.0.11:7700 --identity "
        "/etc/icx/identity`: icx: error: argument COMMAND: invalid choice: 'healt'"
    )


def test_missing_mounted_file_is_reported(compose_copy: Path) -> None:
    (compose_copy.parent / "centers" / "cn16-ningxia-zhongwei.toml").unlink()
    assert check_compose(compose_copy) == [
        "service agent-cn16: mounts ./centers/cn16-ningxia-zhongwei.toml at "
        "/etc/icx/center.toml, which is missing"
    ]


def test_undeclared_volume_is_reported(compose_copy: Path) -> None:
    edit(compose_copy, "\n  broker-data:\n  agent-cn06-data:", "\n  agent-cn06-data:")
    assert check_compose(compose_copy) == [
        "service broker: volume 'broker-data' is not declared in volumes"
    ]


def test_invalid_center_config_is_reported(compose_copy: Path) -> None:
    edit(
        compose_copy.parent / "centers" / "cn08-shanghai-lingang.toml",
        'accelerator = "ascend-910b"',
        'accelerator = "h9"',
    )
    [problem] = check_compose(compose_copy)
    assert problem.startswith(
        "service agent-cn08: center config ./centers/cn08-shanghai-lingang.toml: pools[0]: "
    )
    assert problem.endswith("accelerator 'h9' is not in the catalogue")


def test_config_mounted_read_write_is_reported(compose_copy: Path) -> None:
    edit(
        compose_copy,
        "cn06-chengdu.toml:/etc/icx/center.toml:ro",
        "cn06-chengdu.toml:/etc/icx/center.toml",
    )
    assert check_compose(compose_copy) == [
        "service agent-cn06: center config ./centers/cn06-chengdu.toml is not mounted read-only"
    ]


def test_config_that_is_not_mounted_is_reported(compose_copy: Path) -> None:
    edit(compose_copy, "--config, /etc/icx/center.toml", "--config, /etc/icx/other.toml")
    assert check_compose(compose_copy) == [
        "service agent-cn06: --config /etc/icx/other.toml is not a mounted file"
    ]


def test_two_agents_for_one_center_are_reported(compose_copy: Path) -> None:
    edit(compose_copy, "cn08-shanghai-lingang.toml:", "cn06-chengdu.toml:")
    assert check_compose(compose_copy) == [
        "service agent-cn08: center CN06 is already served by agent-cn06"
    ]


def test_agent_pointing_elsewhere_is_reported(compose_copy: Path) -> None:
    edit(compose_copy, '--broker, "127.0.0.11:7700",', '--broker, "127.0.0.11:7701",')
    edit(compose_copy, '--broker, "127.0.0.11:7700",', '--broker, "broker:7700",')
    assert check_compose(compose_copy) == [
        "service agent-cn06: --broker 127.0.0.11:7701 is not the address of a broker service",
        "service agent-cn08: --broker broker:7700 is not the address of a broker service",
    ]


def test_a_published_port_is_reported(compose_copy: Path) -> None:
    edit(
        compose_copy,
        "    depends_on: [broker]\n",
        '    depends_on: [broker]\n    ports: ["127.0.0.1:8000:8000"]\n',
    )
    assert check_compose(compose_copy) == [
        "service agent-cn06: publishes ports; on the host network it binds its own 127.0.0.x "
        "address instead"
    ]


def test_services_off_the_host_network_are_reported(compose_copy: Path) -> None:
    edit(compose_copy, "  network_mode: host\n", "  network_mode: bridge\n")
    edit(compose_copy, "\nvolumes:\n", "\nnetworks:\n  default:\n\nvolumes:\n")
    assert check_compose(compose_copy) == [
        "docker-compose.yml declares networks; every service uses the host's",
        *(
            f"service {name}: not on the host network (network_mode: host): no bridge networks"
            for name in ("broker", "agent-cn06", "agent-cn08", "agent-cn16")
        ),
    ]


def test_two_services_on_one_address_are_reported(compose_copy: Path) -> None:
    text = compose_copy.read_text(encoding="utf-8")
    compose_copy.write_text(text.replace('"127.0.0.22:7800"', '"127.0.0.21:7800"'))
    assert check_compose(compose_copy) == [
        "service agent-cn08: --health 127.0.0.21:7800 is bound by agent-cn06 too (one host network)"
    ]


def test_a_healthcheck_of_another_address_is_reported(compose_copy: Path) -> None:
    edit(compose_copy, '"--broker", "127.0.0.11:7700"', '"--broker", "127.0.0.1:7700"')
    assert check_compose(compose_copy) == [
        "service broker: healthcheck probes 127.0.0.1:7700, which the service does not serve "
        "(127.0.0.11:7700)"
    ]


def test_missing_copy_source_is_reported(compose_copy: Path) -> None:
    edit(compose_copy.parent / "Dockerfile", "COPY . /src", "COPY . /src\nCOPY setup.cfg /src/")
    assert check_compose(compose_copy) == [
        f"service {name}: Dockerfile: COPY source 'setup.cfg' does not exist in the build "
        f"context {compose_copy.parent.parent}"
        for name in ("broker", "agent-cn06", "agent-cn08", "agent-cn16")
    ]


def test_missing_dockerfile_is_reported(compose_copy: Path) -> None:
    (compose_copy.parent / "Dockerfile").unlink()
    problems = check_compose(compose_copy)
    assert (
        problems[0]
        == f"service broker: Dockerfile {compose_copy.parent / 'Dockerfile'} does not exist"
    )
    assert "service broker: entrypoint is [], not ['icx']" in problems


def test_other_entrypoint_is_reported(compose_copy: Path) -> None:
    edit(
        compose_copy.parent / "Dockerfile",
        'ENTRYPOINT ["icx"]',
        'ENTRYPOINT ["python", "-m", "cli.main"]',
    )
    problems = check_compose(compose_copy)
    assert problems[0] == (
        "service broker: entrypoint is ['python', '-m', 'cli.main'], not ['icx']"
    )


def test_binding_beyond_loopback_is_reported(compose_copy: Path) -> None:
    edit(compose_copy, "- 127.0.0.11:7700", "- 0.0.0.0:7700")
    edit(compose_copy, '--health, "127.0.0.23:7800"', '--health, "192.0.2.1:7800"')
    edit(compose_copy, '"--broker", "127.0.0.23:7800"', '"--broker", "192.0.2.1:7800"')
    assert check_compose(compose_copy) == [
        "service broker: --listen 0.0.0.0:7700 binds beyond 127.0.0.x on the host's network",
        "service agent-cn16: --health 192.0.2.1:7800 binds beyond 127.0.0.x on the host's network",
    ]


def test_database_outside_the_volume_is_reported(compose_copy: Path) -> None:
    edit(
        compose_copy,
        "      - --store\n      - postgresql://icx@127.0.0.10:5432/icx\n"
        "      - --state-dir\n      - /data\n",
        "      - --db\n      - /tmp/broker.db\n",
    )
    assert check_compose(compose_copy) == [
        "service broker: --db /tmp/broker.db is not on a volume; the store would not "
        "survive the container"
    ]


def test_a_store_that_is_not_the_database_service_is_reported(compose_copy: Path) -> None:
    edit(compose_copy, "icx@127.0.0.10:5432/icx", "icx@127.0.0.12:5432/icx")
    edit(compose_copy, "      - /data\n      - --metrics", "      - /tmp\n      - --metrics")
    edit(compose_copy, "      - ./postgres.pgpass:/etc/icx/pgpass:ro\n", "")
    edit(compose_copy, "      - postgres-data:/data\n", "")
    assert check_compose(compose_copy) == [
        "service postgres: its cluster (/data) is not on a volume",
        "service broker: --store postgresql://icx@127.0.0.12:5432/icx is not the address of "
        "the postgres service (127.0.0.10:5432)",
        "service broker: --state-dir /tmp is not on a volume; the ledger's key would not "
        "survive the container",
        "service broker: PGPASSFILE /etc/icx/pgpass is not a file mounted read-only",
    ]


# ---------------------------------------------------------------- membership


def test_a_broker_without_identity_is_reported(compose_copy: Path) -> None:
    edit(compose_copy, "      - --identity\n      - /etc/icx/identity\n", "")
    assert check_compose(compose_copy) == [
        "service broker: no --identity: it presents no membership and cannot start"
    ]


def test_insecure_is_reported(compose_copy: Path) -> None:
    edit(compose_copy, "      - --identity\n      - /etc/icx/identity\n", "      - --insecure\n")
    assert check_compose(compose_copy) == [
        "service broker: runs --insecure (plaintext, anyone may act as anyone): for "
        "development on loopback only",
        "service broker: no --identity: it presents no membership and cannot start",
    ]


def test_an_unmounted_or_writable_agent_identity_is_reported(compose_copy: Path) -> None:
    edit(
        compose_copy,
        "./centers/CN06.identity:/etc/icx/CN06.identity:ro",
        "./centers/CN06.identity:/etc/icx/CN06.identity",
    )
    edit(compose_copy, "      - ./centers/CN08.identity:/etc/icx/CN08.identity:ro\n", "")
    assert check_compose(compose_copy) == [
        "service agent-cn08: healthcheck `icx health --broker 127.0.0.22:7800 --identity "
        "/etc/icx/CN08.identity` presents no mounted member folder (--identity): the "
        "endpoint serves members only",
        "service agent-cn06: member folder ./centers/CN06.identity is not mounted read-only",
        "service agent-cn08: --identity /etc/icx/CN08.identity is not a mounted folder",
    ]


def test_a_read_only_broker_identity_is_reported(compose_copy: Path) -> None:
    edit(
        compose_copy,
        "./broker.identity:/etc/icx/identity",
        "./broker.identity:/etc/icx/identity:ro",
    )
    assert check_compose(compose_copy) == [
        "service broker: member folder ./broker.identity is mounted read-only; the broker "
        "keeps the newest revocation list there"
    ]


def test_an_unmounted_usage_key_is_reported(compose_copy: Path) -> None:
    edit(compose_copy, "      - ./centers/CN16.key:/etc/icx/CN16.key:ro\n", "")
    assert check_compose(compose_copy) == [
        "service agent-cn16: its usage key /etc/icx/CN16.key (the config's key_file) is not mounted"
    ]


def init_members(compose: Path) -> subprocess.CompletedProcess[str]:
    """Run compose/init-members.sh in a copy, with this installation's `icx`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICX_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(
        ["sh", str(compose / "init-members.sh")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


@pytest.fixture
def with_members(compose_copy: Path) -> Path:
    """The copy after init-members.sh: its compose file."""
    made = init_members(compose_copy.parent)
    assert made.returncode == 0, made.stderr
    return compose_copy


def test_init_members_makes_what_the_services_mount(with_members: Path) -> None:
    compose = with_members.parent
    assert check_compose(with_members, members=True) == []
    # Nothing secret reaches the image or git: the build context leaves compose/ out, and
    # compose/.gitignore covers all that the script made.
    ignored = (COMPOSE_DIR / ".gitignore").read_text(encoding="utf-8").split()
    assert {"/federation/", "/broker.identity/", "/centers/*.identity/", "/centers/*.key"} <= set(
        ignored
    )
    assert "compose" in (COMPOSE_DIR / "Dockerfile.dockerignore").read_text().split()
    assert (
        oct((compose / "centers" / "CN06.identity" / "key.pem").stat().st_mode & 0o777) == "0o600"
    )
    # A second run changes nothing: every step is done already.
    before = (compose / "broker.identity" / "cert.pem").read_bytes()
    again = init_members(compose)
    assert again.returncode == 0, again.stderr
    assert (compose / "broker.identity" / "cert.pem").read_bytes() == before


def test_members_that_do_not_fit_are_reported(with_members: Path, tmp_path: Path) -> None:
    compose = with_members.parent
    # CN08's folder mounted for CN06: another center's certificate and another usage key.
    edit(with_members, "./centers/CN06.identity:/etc", "./centers/CN08.identity:/etc")
    # A broker whose certificate does not name the host agents dial.
    shutil.rmtree(compose / "broker.identity")
    federation = compose / "federation"
    for args in (
        ("broker", "init", "--dir", str(compose / "broker.identity"), "--name", "broker"),
        ("admin", "admit", str(compose / "broker.identity" / "request.pem"), "--role", "broker",
         "--region", "CY", "--federation", str(federation),
         "--out", str(compose / "broker.identity" / "cert.pem")),
    ):  # fmt: skip
        done = subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True)
        assert done.returncode == 0, done.stderr
    shutil.copy(federation / "root.pem", compose / "broker.identity" / "root.pem")
    # CN16 admitted by another federation.
    other = tmp_path / "other"
    made = subprocess.run(
        [sys.executable, "-m", "cli.main", "admin", "init-federation", "--dir", str(other)],
        capture_output=True,
    )
    assert made.returncode == 0, made.stderr
    cn16 = compose / "centers" / "CN16.identity"
    admitted = subprocess.run(
        [sys.executable, "-m", "cli.main", "admin", "admit", str(cn16 / "request.pem"),
         "--role", "center", "--region", "NX", "--federation", str(other),
         "--out", str(cn16 / "cert.pem")],
        capture_output=True,
    )  # fmt: skip
    assert admitted.returncode == 0, admitted.stderr
    shutil.copy(other / "root.pem", cn16 / "root.pem")
    assert check_compose(with_members, members=True) == [
        "service broker: its certificate does not name '127.0.0.11', the address agents "
        "dial (icx broker init --host 127.0.0.11)",
        "service agent-cn06: its member folder holds the certificate of center CN08 in "
        "region YRD, not of center CN06 in region CY",
        "service agent-cn06: its certificate does not name '127.0.0.21', the address its "
        "health endpoint is dialled at (icx agent init --host 127.0.0.21)",
        "service agent-cn06: its certificate binds another usage key than ./centers/CN06.key",
        "services agent-cn06, agent-cn08, agent-cn16, broker are members of different "
        "federations (their root.pem differ)",
    ]
    # Before the script has run, with members=True: each folder and key is missing.
    (compose / "centers" / "CN16.key").unlink()
    problems = check_compose(with_members, members=True)
    assert (
        "service agent-cn16: mounts ./centers/CN16.key at /etc/icx/CN16.key, which is missing"
        in problems
    )
