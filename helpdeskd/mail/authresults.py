"""Read our own trusted Authentication-Results (RFC 8601) with the authres library.

Only the topmost header carrying our configured authserv-id is trusted: our MTA prepends its
own, so one lower down, or one from another authserv-id, came from elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import authres

from helpdeskd.mail.parse import ParsedMessage


@dataclass(frozen=True)
class Result:
    method: str  # dkim, spf, dmarc, ...
    result: str  # pass, fail, ...
    properties: dict[str, str]  # "header.d" -> "example.org"


def parse(value: str) -> tuple[str, list[Result]]:
    """Return (authserv-id, results) of one header value; ("", []) when it cannot be read."""
    try:
        header = authres.AuthenticationResultsHeader.parse_value(value)
    except Exception:  # authres raises its own and stdlib errors on malformed input
        return "", []
    results = [
        Result(
            method=str(r.method).lower(),
            result=str(r.result).lower(),
            properties={f"{p.type}.{p.name}".lower(): str(p.value) for p in r.properties},
        )
        for r in header.results
    ]
    return str(header.authserv_id or ""), results


def trusted(parsed: ParsedMessage, authserv_id: str) -> list[Result] | None:
    """Return the results of the topmost Authentication-Results of ours, or None."""
    wanted = authserv_id.casefold()
    for value in parsed.header_all("authentication-results"):
        server, results = parse(value)
        if server.casefold() == wanted:
            return results
    return None


def _aligned(signing_domain: str, from_domain: str) -> bool:
    domain = signing_domain.strip().lower().rstrip(".")
    # A single label would be a top-level domain: no alignment with a whole TLD.
    if "." not in domain or not from_domain:
        return False
    return from_domain == domain or from_domain.endswith("." + domain)


def dkim_aligned(parsed: ParsedMessage, authserv_id: str) -> bool:
    """Return whether our trusted Authentication-Results shows an aligned ``dkim=pass``.

    Aligned: ``header.d`` (or, without it, the domain of ``header.i``) equals the domain of
    the one From mailbox or is a parent domain of it.
    """
    if len(parsed.from_) != 1:
        return False
    from_domain = parsed.from_[0][1].rpartition("@")[2].lower().rstrip(".")
    for result in trusted(parsed, authserv_id) or []:
        if result.method != "dkim" or result.result != "pass":
            continue
        domain = result.properties.get("header.d")
        if domain is None and "header.i" in result.properties:
            domain = result.properties["header.i"].rpartition("@")[2]
        if domain is not None and _aligned(domain, from_domain):
            return True
    return False


def dmarc_failed(parsed: ParsedMessage, authserv_id: str | None) -> bool:
    """Return whether our trusted Authentication-Results says ``dmarc=fail``."""
    if not authserv_id:
        return False
    results = trusted(parsed, authserv_id) or []
    return any(r.method == "dmarc" and r.result == "fail" for r in results)
