"""Trusting a vCenter in the console (issue 12, item 6), against vcsim over real TLS, offscreen:

- "Get certificate" shows the subject, issuer, validity and SHA-256 of the certificate the simulator presents (each
  checked against the certificate files here), and an expired one in red;
- the certificate changing at the same address after it was accepted (a replaced certificate, or someone in the
  middle) unticks "I trust it" and shows the possible-interception warning in full, word-wrapped, not clipped;
  the login check then refuses the old pin;
- the CA-file option (the CLI's ``--ca``): the login is checked trusting the CA instead of a thumbprint; a file that
  is not a PEM certificate is named next to its field.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from console.home_setup import INTERCEPTION_WARNING
from tests.conftest import free_port
from tests.ui.helpers import signal, until
from tests.ui.test_wizard_vcenter import sim_thumbprint
from ui.pages.infrastructure import VCenterDialog

pytestmark = [pytest.mark.timeout(120), pytest.mark.blocking_threshold(3.0)]


def expired_cert(pki_files: dict[str, Path], tmp: Path) -> tuple[Path, Path]:
    """A server certificate for 127.0.0.1 from the test CA that expired two days ago."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    from engine import pki
    ca = pki.CA.load(pki_files["ca"], pki_files["ca"].with_suffix(".key"))
    key = pki.new_key()
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old.vc")]))
            .issuer_name(ca.cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=400)).not_valid_after(now - dt.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("old.vc")]), critical=False)
            .sign(ca.key, hashes.SHA256()))
    (tmp / "old.pem").write_bytes(pki.cert_pem(cert))
    (tmp / "old.key").write_bytes(pki.key_pem(key))
    return tmp / "old.pem", tmp / "old.key"


async def fetched(page: Any) -> None:
    got = signal(page.completeChanged, lambda: page.thumb.text() not in ("Connecting…",), 20, "the certificate")
    page.fetch.click()
    await got


def fully_shown(label: Any) -> bool:
    """A word-wrapped label tall enough for all of its text at its width (nothing clipped)."""
    return label.isVisible() and label.wordWrap() and label.height() >= label.heightForWidth(label.width())


async def test_vcenter_certificate_details_change_warning_and_ca_file(qtbot, tmp_path: Path, vcsim, server_pki,
                                                                      screenshot) -> None:
    listen = f"127.0.0.1:{free_port()}"
    tls = {"cert": server_pki["cert"], "key": server_pki["key"]}
    sim = await asyncio.to_thread(vcsim, listen=listen, **tls)
    dlg = VCenterDialog()
    page = dlg.page
    dlg.show()
    try:
        page.host.setText(listen)
        page.user.setText(sim.user)
        page.password.setText(sim.password)
        await fetched(page)
        thumb = await asyncio.to_thread(sim_thumbprint, sim)
        # what the operator checks, each against the files the simulator serves
        assert page.thumbprint == thumb and page.thumb.text().replace("\n", ":") == thumb
        cert = page.cert.text()
        assert "<b>Subject:</b> CN=vcenter.test,O=Lifeboat" in cert, cert
        assert "<b>Issuer:</b> CN=test vCenter CA,O=Lifeboat" in cert and "127.0.0.1" in cert
        from cryptography import x509
        real = x509.load_pem_x509_certificate(server_pki["cert"].read_bytes())
        assert (f"<b>Valid:</b> from {real.not_valid_before_utc:%Y-%m-%d %H:%M} UTC to "
                f"{real.not_valid_after_utc:%Y-%m-%d %H:%M} UTC") in cert, cert
        assert page.certificate is not None and not page.certificate.expired
        assert not page.validity.isVisible() and not page.changed.isVisible()
        assert not page.isComplete() and "Accept the thumbprint" in page.f_thumb.error
        page.accept_thumb.setChecked(True)
        assert page.isComplete() and await page.verify()
        screenshot(dlg, "vcenter-certificate-details")

        # The certificate changes at the same address (the simulator restarts with its own certificate): the
        # login check with the accepted pin is refused, the new certificate is shown untrusted, with the warning.
        await asyncio.to_thread(sim.stop)
        sim2 = await asyncio.to_thread(vcsim, listen=listen)
        new = await asyncio.to_thread(sim_thumbprint, sim2)
        assert new != thumb
        assert not await page.verify(again=True)
        assert page.thumbprint == new and not page.accept_thumb.isChecked() and not page.isComplete()
        text = page.changed.text()
        assert text.startswith(INTERCEPTION_WARNING) and new in text and thumb in text, text
        assert "check with its administrator before trusting it" in text.lower()
        await until(lambda: fully_shown(page.changed), 5, "the whole warning shown")
        assert dlg.buttons.button(dlg.buttons.StandardButton.Ok).isEnabled() is False
        screenshot(dlg, "vcenter-certificate-changed")
        # Re-reading it does not make the warning go away; ticking "I trust it" does (the operator decided).
        await fetched(page)
        assert page.changed.isVisible() and not page.accept_thumb.isChecked()
        page.accept_thumb.setChecked(True)
        assert not page.changed.isVisible() and page.isComplete() and await page.verify()

        # The CA-file option: trust what the CA signed for this address instead of a thumbprint.
        await asyncio.to_thread(sim2.stop)
        await asyncio.to_thread(vcsim, listen=listen, **tls)
        page.by_ca.setChecked(True)
        assert not page.accept_thumb.isEnabled() and page.ca_file.isEnabled()
        page.ca_file.setText(str(server_pki["key"]))
        assert "holds no PEM certificate" in page.f_ca.error and not page.isComplete()
        page.ca_file.setText(str(server_pki["ca"]))
        assert page.f_ca.error == "" and page.isComplete()
        assert page.ca_pem() == server_pki["ca"].read_text()
        assert await page.verify(), page.errors()
        screenshot(dlg, "vcenter-ca-file")
        page.by_thumb.setChecked(True)

        # An expired certificate: named so, in red, before anyone trusts it.
        old_cert, old_key = expired_cert(server_pki, tmp_path)
        other = f"127.0.0.1:{free_port()}"
        await asyncio.to_thread(vcsim, listen=other, cert=old_cert, key=old_key)
        page.host.setText(other)
        await fetched(page)
        assert page.certificate is not None and page.certificate.expired
        assert page.validity.isVisible() and page.validity.text().startswith("Expired 2 day(s) ago")
        assert page.validity.objectName() == "fieldError"   # the stylesheet's red
        assert "CN=old.vc" in page.cert.text()
        screenshot(dlg, "vcenter-certificate-expired")
    finally:
        dlg.close()
        dlg.deleteLater()
