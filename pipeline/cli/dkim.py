"""``digest dkim-record``: the DNS record that publishes the ``[dkim]`` key (``check`` shows it too)."""

from __future__ import annotations

import click

from ..config import Settings
from .base import Context, fail, handle_errors, main, out


@main.command("dkim-record", short_help="Print the DNS TXT record to publish for [dkim].")
@click.pass_obj
@handle_errors
def dkim_record(ctx: Context) -> None:
    """Print the DNS TXT record that publishes the public half of the [dkim] key, as a zone
    file line: SELECTOR._domainkey.DOMAIN. IN TXT "v=DKIM1; k=rsa; p=..." (an RSA key's
    text split into strings of at most 255 bytes, which resolvers join). Exit 2 when the
    config has no [dkim] section or its key cannot be used.

    Example: digest --config config/digest.toml dkim-record
    """
    from ..sign import load_signer

    settings = ctx.settings()
    signer = load_signer(settings)
    if signer is None:
        fail(f"error: {settings.path} has no [dkim] section: nothing is signed, so nothing to publish", 2)
        return
    out.print(signer.dns_record(), markup=False, soft_wrap=True)


def print_dkim(settings: Settings) -> None:
    """For ``check``: how messages are signed, and the record to publish (nothing without [dkim])."""
    from ..sign import load_signer

    signer = load_signer(settings)
    if signer is None:
        return
    bits = f"RSA {signer.key_bits} bits" if signer.algorithm == "rsa-sha256" else "Ed25519"
    out.print(
        f"DKIM: signing as d={signer.domain} s={signer.selector} ({signer.algorithm}, {bits}); "
        "publish this TXT record in DNS:",
        markup=False,
    )
    out.print(signer.dns_record(), markup=False, soft_wrap=True)
