"""Membership: the federation's root, admissions, revocations, and each member's own
folder. `icx admin init-federation|admit|revoke`, `icx user init|accept`, `icx whoami`,
`icx broker init` (and `icx agent init`, in service_cmd, which makes a center's)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path
from typing import TYPE_CHECKING

from cli._client import (
    add_broker_flag,
    broker_address,
    config_folder,
    connect,
    reachable_broker,
)
from cli._output import EXIT_OK, command, print_json
from core.errors import InvalidArgument, NotFound

if TYPE_CHECKING:
    from identity import Member

DEFAULT_HOSTS = ("localhost", "127.0.0.1")


def _member_json(member: Member) -> dict[str, object]:
    return {
        "name": member.name,
        "role": str(member.role),
        "region": member.region,
        "tenant": member.tenant,
        "serial": f"{member.serial:x}",
        "not_after": member.not_after.isoformat(),
        "usage_key": member.usage_key,
    }


@command
def init_federation(args: argparse.Namespace) -> int:
    from identity import Authority, Credentials

    folder = Path(args.dir)
    authority = Authority.create(folder, args.name)
    coordinator = Credentials.load(folder / "coordinator")
    if args.json:
        print_json(
            {
                "federation": args.name,
                "dir": str(folder),
                "root": str(folder / "root.pem"),
                "coordinator": _member_json(coordinator.member),
            }
        )
    else:
        print(f"federation {args.name!r} created in {folder}")
        print(f"  root certificate (hand to every member): {folder / 'root.pem'}")
        print(f"  root key (keep offline, it admits and revokes): {folder / 'root-key.pem'}")
        print(f"  the coordinator's own identity: {folder / 'coordinator'}")
        print(f"  revocation list {authority.revocations().number}: {folder / 'revocations.pem'}")
    return EXIT_OK


@command
def admit(args: argparse.Namespace) -> int:
    """Sign a membership certificate for a request, as the root (--federation) or as a
    tenant administrator (--issuer, users of its own tenant only)."""
    from identity import Authority, Role
    from identity.certs import (
        admit as admit_request,
    )
    from identity.certs import (
        certificate_pem,
        load_certificates,
        load_key,
        load_request,
        member_of,
    )

    request = Path(args.request).read_bytes()
    role = Role(args.role)
    if args.issuer:
        folder = Path(args.issuer)
        issuer_chain = load_certificates((folder / "cert.pem").read_bytes())
        cert = admit_request(
            load_request(request),
            issuer_key=load_key((folder / "key.pem").read_bytes()),
            issuer=issuer_chain[0],
            role=role,
            region=args.region or "",
            tenant=args.tenant or "",
            days=args.days,
            now=dt.datetime.now(dt.UTC),
        )
        pem = certificate_pem(cert, issuer_chain[0])
        member = member_of(cert)
    else:
        authority = Authority(Path(args.federation))
        cert, member = authority.admit(
            request, role=role, region=args.region or "", tenant=args.tenant or "", days=args.days
        )
        pem = certificate_pem(cert)
    out = Path(args.out) if args.out else Path(args.request).with_name(f"{member.name}.cert.pem")
    out.write_bytes(pem)
    if args.json:
        print_json({"certificate": str(out), **_member_json(member)})
    else:
        print(f"admitted {member.describe()} until {member.not_after:%Y-%m-%d %H:%M} UTC")
        print(f"  certificate: {out} (serial {member.serial:x})")
    return EXIT_OK


@command
def revoke(args: argparse.Namespace) -> int:
    """Add certificates to the federation's revocation list and, with --broker, hand the
    new list to running brokers."""
    from client import BrokerClient
    from identity import Authority, Credentials
    from identity.certs import load_certificates

    authority = Authority(Path(args.federation))
    serials: list[int] = []
    for what in args.certificate:
        path = Path(what)
        if path.exists():
            serials += [c.serial_number for c in load_certificates(path.read_bytes())[:1]]
            continue
        try:
            serial = int(what, 16)
        except ValueError as exc:
            raise InvalidArgument(
                f"{what!r} is neither a certificate file nor a hex serial"
            ) from exc
        if authority.issued(serial) is None:
            raise NotFound(f"this federation issued no certificate with serial {what}")
        serials.append(serial)
    taken = authority.revoke(serials)
    pushed = [reachable_broker(broker_address(b)) for b in args.broker or ()]
    if pushed:  # as the federation's coordinator unless --identity names another
        creds = Credentials.load(Path(args.identity or authority.folder / "coordinator"))
        for broker in pushed:
            with BrokerClient(broker, creds, timeout_s=10.0) as client:
                client.update_revocations(taken.pem)
    if args.json:
        print_json(
            {
                "number": taken.number,
                "revoked": [f"{s:x}" for s in sorted(taken.serials)],
                "list": str(Path(args.federation) / "revocations.pem"),
                "pushed_to": pushed,
            }
        )
    else:
        print(
            f"revocation list {taken.number}: {len(taken.serials)} revoked; "
            f"{Path(args.federation) / 'revocations.pem'}"
        )
        for broker in pushed:
            print(f"  taken by the broker at {broker}")
    return EXIT_OK


@command
def user_init(args: argparse.Namespace) -> int:
    from identity import init_member

    folder = config_folder(args.identity)
    request = init_member(folder, args.name)
    if args.root:
        (folder / "root.pem").write_bytes(Path(args.root).read_bytes())
    if args.broker:
        (folder / "config.toml").write_text(f"broker = {json.dumps(args.broker)}\n")
    if args.json:
        print_json({"dir": str(folder), "request": str(request)})
    else:
        print(f"key and request in {folder}")
        print(f"hand {request} to the coordinator (or your tenant's administrator), then:")
        print("  icx user accept CERT.pem" + (" --root ROOT.pem" if not args.root else ""))
    return EXIT_OK


@command
def user_accept(args: argparse.Namespace) -> int:
    """Install an admitted certificate (and the federation root) in the member folder,
    checked against the key and the root first."""
    from identity import Credentials

    folder = config_folder(args.identity)
    if not (folder / "key.pem").exists():
        raise InvalidArgument(f"no key in {folder}: run `icx user init` first")
    if args.root:
        root = Path(args.root).read_bytes()
    elif (folder / "root.pem").exists():
        root = (folder / "root.pem").read_bytes()
    else:
        raise InvalidArgument("name the federation's root certificate with --root ROOT.pem")
    cert = Path(args.certificate).read_bytes()
    creds = Credentials.from_pem((folder / "key.pem").read_bytes(), cert, root, where=folder)
    (folder / "cert.pem").write_bytes(cert)
    (folder / "root.pem").write_bytes(root)
    if args.broker:
        (folder / "config.toml").write_text(f"broker = {json.dumps(args.broker)}\n")
    if args.json:
        print_json({"dir": str(folder), **_member_json(creds.member)})
    else:
        print(f"{folder}: {creds.member.describe()} until {creds.member.not_after:%Y-%m-%d} UTC")
    return EXIT_OK


@command
def whoami(args: argparse.Namespace) -> int:
    with connect(args) as client:
        who = client.whoami()
    if args.json:
        print_json(
            {
                "broker": client.address,
                "name": who.name,
                "role": who.role,
                "region": who.region,
                "tenant": who.tenant,
                "serial": who.serial,
                "issuer": who.issuer,
                "not_after_ms": who.not_after_ms,
                "authenticated": who.authenticated,
            }
        )
        return EXIT_OK
    scope = f" of tenant {who.tenant}" if who.tenant else ""
    scope += f" in region {who.region}" if who.region else ""
    print(f"{who.role} {who.name}{scope}, as the broker at {client.address} sees you")
    if who.authenticated:
        until = dt.datetime.fromtimestamp(who.not_after_ms / 1000, dt.UTC)
        print(
            f"  certificate {who.serial} from {who.issuer!r},"
            f" valid until {until:%Y-%m-%d %H:%M} UTC"
        )
    else:
        print("  NOT authenticated: the broker runs --insecure and takes what you declare")
    return EXIT_OK


@command
def broker_init(args: argparse.Namespace) -> int:
    from identity import init_member

    folder = Path(args.dir)
    hosts = tuple(dict.fromkeys([*DEFAULT_HOSTS, *(args.host or ())]))
    request = init_member(folder, args.name, hosts=hosts)
    if args.json:
        print_json({"dir": str(folder), "request": str(request), "hosts": list(hosts)})
    else:
        print(f"key and request for broker {args.name} in {folder} (hosts: {', '.join(hosts)})")
        print(
            f"hand {request} to the coordinator: icx admin admit {request} --role broker "
            "--region REGION; put the certificate at "
            f"{folder / 'cert.pem'} and the root at {folder / 'root.pem'}"
        )
    return EXIT_OK


def register_admin(asub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = asub.add_parser(
        "init-federation",
        help="create the federation's root of trust and the coordinator's identity",
        description="Create a federation: the root key and certificate (ECDSA P-256), an "
        "empty signed revocation list, and the coordinator's own member folder.",
    )
    p.add_argument("--dir", required=True, help="the federation folder to create")
    p.add_argument("--name", default="icx", help="the federation's name (in its root)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=init_federation)

    p = asub.add_parser(
        "admit",
        help="sign a membership certificate for a request",
        description="Admit a party: sign its request (made by icx user|agent|broker init) "
        "with the federation's root, or with --issuer as a tenant administrator (users of "
        "its own tenant only).",
    )
    p.add_argument("request", help="the party's request.pem")
    p.add_argument(
        "--role", required=True, choices=["center", "broker", "user", "coordinator", "tenant-admin"]
    )
    p.add_argument("--region", help="a center's or broker's region")
    p.add_argument("--tenant", help="a user's (or tenant administrator's) tenant")
    p.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    p.add_argument("--federation", default="federation", help="the federation folder")
    p.add_argument("--issuer", metavar="DIR", help="admit as this tenant administrator's folder")
    p.add_argument("--out", help="write the certificate here (default: NAME.cert.pem)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=admit)

    p = asub.add_parser(
        "revoke",
        help="revoke certificates: sign a new revocation list, hand it to brokers",
        description="Revoke certificates (files or hex serials): the federation's next "
        "signed revocation list. Each --broker takes it at once, without a restart.",
    )
    p.add_argument("certificate", nargs="+", help="certificate file or hex serial")
    p.add_argument("--federation", default="federation", help="the federation folder")
    p.add_argument("--broker", action="append", metavar="HOST:PORT", help="push to this broker")
    p.add_argument("--identity", metavar="DIR", help="call brokers as (default: the coordinator)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=revoke)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    u = sub.add_parser("user", help="a user's own identity: key, request, certificate")
    usub = u.add_subparsers(dest="user_command", metavar="COMMAND", required=True)
    p = usub.add_parser(
        "init",
        help="make your key and a signing request for the coordinator",
        description="Make your key and a signing request in your config folder "
        "(--identity, $ICX_CONFIG or ~/.config/icx).",
    )
    p.add_argument("--name", required=True, help="your id in the federation")
    p.add_argument(
        "--identity", metavar="DIR", help="the folder (default: $ICX_CONFIG or ~/.config/icx)"
    )
    p.add_argument("--root", help="the federation's root certificate, to keep in the folder")
    p.add_argument("--broker", metavar="HOST:PORT", help="your broker, kept in config.toml")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=user_init)

    p = usub.add_parser(
        "accept",
        help="install the certificate the coordinator gave you",
        description="Check a certificate against your key and the federation root, then "
        "install it in your config folder.",
    )
    p.add_argument("certificate", help="the admitted certificate (PEM)")
    p.add_argument(
        "--identity", metavar="DIR", help="the folder (default: $ICX_CONFIG or ~/.config/icx)"
    )
    p.add_argument("--root", help="the federation's root certificate")
    p.add_argument("--broker", metavar="HOST:PORT", help="your broker, kept in config.toml")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=user_accept)

    p = sub.add_parser("whoami", help="who the broker takes you to be")
    add_broker_flag(p)
    p.add_argument("--tenant", help="with --insecure: the tenant to declare")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=whoami)


def register_broker(bsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = bsub.add_parser(
        "init",
        help="make the broker's key and a signing request for the coordinator",
    )
    p.add_argument("--dir", required=True, help="the broker's member folder")
    p.add_argument("--name", required=True, help="the broker's id")
    p.add_argument(
        "--host",
        action="append",
        help="a name or address clients dial (localhost and 127.0.0.1 always)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=broker_init)
