"""Emails from Stripe are checked with a regex first (the webhook hot path) and with email_validator otherwise:
whatever the regex lets through, email_validator accepts too, so the shortcut never keeps a bad address."""

from __future__ import annotations

import random
import string

import pytest
from email_validator import EmailNotValidError, validate_email

from flexsync.stripe.mapping import from_stripe

ATEXT = string.ascii_letters + string.digits + "_!#$%&'*+/=?^`{|}~-"
LABEL_CHARS = string.ascii_lowercase + string.ascii_uppercase + string.digits + "-"
TLDS = ["com", "io", "IE", "museum", "test", "local", "onion", "c0m", "x", "a" * 63, "a" * 64, "xn--p1ai"]


def random_address(rng: random.Random) -> str:
    atoms = ["".join(rng.choice(ATEXT + ".") for _ in range(rng.choice([1, 3, 12, 64, 65]))) for _ in range(3)]
    local = ".".join(atoms[: rng.randint(1, 3)])
    labels = ["".join(rng.choice(LABEL_CHARS) for _ in range(rng.choice([1, 2, 4, 30, 63, 64]))) for _ in range(4)]
    domain = ".".join(labels[: rng.randint(1, 4)])
    if rng.random() < 0.9:
        domain += "." + rng.choice(TLDS)
    return f"{local}@{domain}"


def validator_accepts(address: str) -> bool:
    try:
        validate_email(address, check_deliverability=False)
    except EmailNotValidError:
        return False
    return True


def test_every_address_the_fast_path_keeps_is_valid_to_email_validator() -> None:
    rng = random.Random(20261127)
    kept = 0
    for _ in range(10_000):
        address = random_address(rng)
        if from_stripe({"id": "cus_1", "email": address}).fields["email"] == address:
            kept += 1
            assert validator_accepts(address), address
    assert kept > 500  # the sample exercises the fast path, not only the slow one


@pytest.mark.parametrize(
    ("email", "kept"),
    [
        ("ada.lovelace+billing@example.com", True),
        ("Ada@Example.CO.UK", True),
        ("ada@bücher.de", True),  # internationalised: email_validator's full check accepts it
        ("ada@localhost", False),
        ("ada@example.test", False),
        ("ada..lovelace@example.com", False),
        ("ada@ex--ample.com", False),
        ("not-an-email", False),
    ],
)
def test_stripe_emails_are_kept_only_when_valid(email: str, kept: bool) -> None:
    mapped = from_stripe({"id": "cus_1", "email": email})
    assert (mapped.fields["email"] == email) is kept
    assert bool(mapped.problems) is not kept
