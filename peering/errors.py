"""Errors of the peering layer.

* PeeringError (core.errors.IcxError)
  + Refused        a binding or an envelope that does not check out; `reason` says why
                   (the label it is counted under)
  + HostStopped    the libp2p host is not running (not started yet, or stopped)
  + PullFailed     no connected peer answered a pull with a usable envelope
"""

from __future__ import annotations

import enum

from core.errors import IcxError

__all__ = ["DropReason", "HostStopped", "PeeringError", "PullFailed", "Refused"]


class DropReason(enum.StrEnum):
    """Why a received message was dropped: the `reason` label of the dropped counter."""

    MALFORMED = "malformed"  # not an envelope or a binding of this topic
    NON_MEMBER = "non_member"  # no valid broker membership behind it (root, expiry, revoked)
    UNPROVEN_PEER = "unproven_peer"  # relayed by a peer whose binding is not checked yet
    BAD_SIGNATURE = "bad_signature"  # the membership key did not sign these bytes
    ORIGIN_MISMATCH = "origin_mismatch"  # signed by, or sent from, another broker than it names
    STALE = "stale"  # not newer than the version held: replayed or old
    TEST_LOSS = "test_loss"  # discarded by the loss-simulating test hook


class PeeringError(IcxError):
    """Base of the peering layer's errors."""


class Refused(PeeringError):
    """A binding or envelope refused, with the reason it is counted under."""

    def __init__(self, reason: DropReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class HostStopped(PeeringError):
    """The libp2p host is not running."""


class PullFailed(PeeringError):
    """No connected peer returned a newer envelope of the origin asked for."""
