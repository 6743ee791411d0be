"""The registry of subcommands: each module adds its parsers with `register(sub)`, which
sets `func` on each parser to a callable taking the parsed args and returning an exit
code. `icx --help` lists them in this order."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from cli import (
    admin_cmd,
    bill_cmd,
    dashboard_cmd,
    demo,
    federation_cmd,
    ledger_cmd,
    match_cmd,
    member_cmd,
    national_cmd,
    policy_cmd,
    service_cmd,
    user_cmd,
)

Register = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]

REGISTRY: list[Register] = [
    user_cmd.register,
    bill_cmd.register,
    service_cmd.register,
    demo.register,
    ledger_cmd.register,
    match_cmd.register,
    federation_cmd.register,
    admin_cmd.register,
    member_cmd.register,
    dashboard_cmd.register,
    national_cmd.register,
    policy_cmd.register,
]
