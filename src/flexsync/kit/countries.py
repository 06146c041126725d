"""Country codes, as the customer API takes them and as Stripe's addresses are mapped to them."""

from __future__ import annotations

import pycountry


def normalize_country(value: str | None) -> str | None:
    if value is None:
        return None
    code = value.strip().upper()
    if len(code) != 2 or pycountry.countries.get(alpha_2=code) is None:
        raise ValueError("must be an ISO 3166-1 alpha-2 country code, like US or DE")
    return code
