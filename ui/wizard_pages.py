"""The first-run wizard's input pages: appliance home, vault (with an Azure target: outbound network, then the
storage account), ports, optional vCenter.

Every field is validated as it is typed, with the message next to it; Next stays disabled until the page is
valid. Pages keep what was typed when the operator goes Back (``cleanupPage`` does not reset them).
"""

from __future__ import annotations

import asyncio
from html import escape
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QButtonGroup, QCheckBox, QFileDialog, QFormLayout, QLabel, QLineEdit, QPushButton,
                               QRadioButton, QVBoxLayout, QWizardPage)

from console.errors import UserError
from console.home_setup import (CertificateView, changed_certificate_message, check_vcenter_login,
                                default_control_port, fetch_certificate, parse_host_port, read_ca_file, validate_home,
                                validate_ports, validate_vault, validity_text, vsphere_available)

from console.network import EgressPlan, Outcome
from console.target import AzureTarget, test_new

from . import forms, theme
from .egress_form import AllowListBox, ProxyBox
from .target_form import AzureTargetForm


class KeepOnBackPage(QWizardPage):
    """A page whose fields survive Back (QWizard's default resets registered fields)."""

    def cleanupPage(self) -> None:  # noqa: N802
        pass

    def _browse(self, edit: QLineEdit, caption: str) -> None:
        dlg = QFileDialog(self, caption, edit.text() or str(Path.home()))
        dlg.setFileMode(QFileDialog.FileMode.Directory)
        dlg.setOption(QFileDialog.Option.ShowDirsOnly, True)
        dlg.fileSelected.connect(edit.setText)
        dlg.finished.connect(dlg.deleteLater)
        dlg.open()


class HomePage(KeepOnBackPage):
    def __init__(self, default_home: Path) -> None:
        super().__init__()
        self.setTitle("Appliance home")
        self.setSubTitle("Where the appliance keeps its configuration, certificates, state and (by default) the vault.")
        self.home = QLineEdit(str(default_home))
        self.home.setAccessibleName("Appliance home folder")
        browse = QPushButton("Browse…")
        browse.clicked.connect(lambda: self._browse(self.home, "Appliance home"))
        self.home_field = forms.Field(self.home, browse, hint="A new, empty folder. It is created if it does not exist.")
        form = QFormLayout(self)
        form.addRow("&Folder:", self.home_field)
        self.home.textChanged.connect(self._changed)
        self._changed()

    def _changed(self) -> None:
        self.home_field.set_message(validate_home(self.home.text()))
        self.completeChanged.emit()

    def isComplete(self) -> bool:  # noqa: N802
        return validate_home(self.home.text()) is None

    def value(self) -> Path:
        return Path(self.home.text().strip()).expanduser()


#: the wizard's size on the Azure pages: the console's smallest window (1000×700); their hints and messages wrap
#: at this width without being squeezed
AZURE_WINDOW = (1000, 700)


def _fit_azure_window(page: QWizardPage) -> None:
    w = page.wizard()
    if w is not None and (w.width() < AZURE_WINDOW[0] or w.height() < AZURE_WINDOW[1]):
        w.resize(max(w.width(), AZURE_WINDOW[0]), max(w.height(), AZURE_WINDOW[1]))


class VaultPage(KeepOnBackPage):
    """A local folder, or an Azure Blob container: then the Outbound network and Azure target pages follow
    (``nextId``); a local vault skips them."""

    def __init__(self) -> None:
        super().__init__()
        self.setTitle("Vault")
        self.setSubTitle("Where replicated data and recovery points are stored, encrypted with a key kept in the "
                         "OS keyring.")
        lay = QVBoxLayout(self)
        self.local = QRadioButton("&Local folder (default)")
        self.local.setChecked(True)
        self.azure = QRadioButton("&Azure Blob storage (the target in Azure)")
        self.azure.setToolTip("Cache logs, page blobs per disk and blob snapshots as recovery points, in a container "
                              "of your storage account, over HTTPS 443.")
        group = QButtonGroup(self)
        group.addButton(self.local)
        group.addButton(self.azure)
        self.path = QLineEdit()
        self.path.setPlaceholderText("HOME/vault")
        self.path.setAccessibleName("Vault folder")
        browse = QPushButton("Browse…")
        browse.clicked.connect(lambda: self._browse(self.path, "Vault folder"))
        self.path_field = forms.Field(self.path, browse, hint="Leave empty for a 'vault' folder inside the home.")
        self.azure_hint = forms.hint("Next: how this appliance reaches Azure from this site (an optional proxy and "
                                     "URL allow-list), then the storage account, with a connection test through "
                                     "them.")
        lay.addWidget(self.local)
        lay.addWidget(self.path_field)
        lay.addWidget(self.azure)
        lay.addWidget(self.azure_hint)
        lay.addStretch(1)
        self.path.textChanged.connect(self._changed)
        self.azure.toggled.connect(self._changed)
        self._changed()

    def _home(self) -> str:
        w = self.wizard()
        return str(w.home_page.value()) if w is not None and hasattr(w, "home_page") else ""

    def _changed(self, *_: object) -> None:
        on = self.azure.isChecked()
        self.azure_hint.setVisible(on)
        self.path_field.setVisible(not on)
        self.path_field.set_message(None if on else validate_vault(self.path.text(), self._home()))
        w = self.wizard()
        if w is not None and hasattr(w, "number_pages"):
            w.number_pages()
        self.completeChanged.emit()

    def initializePage(self) -> None:  # noqa: N802
        self.path.setPlaceholderText(str(Path(self._home()) / "vault"))

    def isComplete(self) -> bool:  # noqa: N802
        return self.azure.isChecked() or validate_vault(self.path.text(), self._home()) is None

    def nextId(self) -> int:  # noqa: N802
        w = self.wizard()
        if w is not None and not self.azure.isChecked() and hasattr(w, "after_azure_id"):
            return int(w.after_azure_id())
        return super().nextId()

    def value(self, home: Path) -> Path:
        text = self.path.text().strip()
        return Path(text).expanduser() if text else home / "vault"


class OutboundNetworkPage(KeepOnBackPage):
    """Optional, with the Azure target: the URL allow-list (preset + custom entries) and the proxy (URL, user,
    password, bypass), with the Network and cloud page's own widgets (``ui.egress_form``) and validation (the
    engine's, through ``console.network.EgressPlan``). Nothing is stored here: the Azure target page's test goes
    out through these settings, and Finish writes them into the new home (the password to the OS keyring only).

    Next with a proxy tries it first (like the vCenter page's login): a refused password is said at its field, and
    Next stays disabled until the answers change."""

    def __init__(self) -> None:
        super().__init__()
        self.setTitle("Outbound network (optional)")
        self.setSubTitle("How this appliance reaches Azure from this site. Leave everything empty to connect "
                         "directly. You can change these later under Network and cloud.")
        self.fields: dict[str, forms.Field] = {}
        self.allow_box = AllowListBox(self.fields, "URL allow-list", custom_hint=(
            "One per line: host, *.domain (leftmost label only), IP address or network (a private endpoint), "
            "optionally :PORT. No preset and no entry: any host."))
        self.proxy_box = ProxyBox(self.fields, password_hint="Kept in the OS keyring only, from Finish on.")
        lay = QVBoxLayout(self)
        lay.addWidget(self.allow_box)
        lay.addWidget(self.proxy_box)
        lay.addStretch(1)
        self._refused: tuple[EgressPlan, dict[str, str]] | None = None   # the proxy refused these very answers
        self._verified: EgressPlan | None = None                          # ... or let them through
        self.verifying: asyncio.Future[None] | None = None
        self.testing: asyncio.Future[Outcome] | None = None
        for cb in self.allow_box.presets.values():
            cb.toggled.connect(self._changed)
        self.allow_box.custom.textChanged.connect(self._changed)
        for e in self.proxy_box.editors():
            e.textChanged.connect(self._changed)
        self.proxy_box.test_proxy_btn.clicked.connect(self._start_test)
        self._changed()

    def initializePage(self) -> None:  # noqa: N802
        _fit_azure_window(self)

    def plan(self) -> EgressPlan:
        return EgressPlan.from_form({**self.allow_box.values(), **self.proxy_box.values()})

    def errors(self) -> dict[str, str]:
        plan = self.plan()
        errs = plan.errors()
        if not errs and self._refused and self._refused[0] == plan:
            errs = dict(self._refused[1])
        return errs

    def refuse(self, plan: EgressPlan, errors: dict[str, str]) -> None:
        """Errors found for ``plan`` elsewhere (the Azure target page's test): shown at their fields here, kept
        until the answers change."""
        self._refused, self._verified = (plan, errors), None
        self._changed()

    def _changed(self, *_: object) -> None:
        errs = self.errors()
        typed = {"custom": bool(self.allow_box.custom.toPlainText().strip()),
                 "proxy_url": bool(self.proxy_box.proxy_url.text().strip()),
                 "proxy_user": bool(self.proxy_box.proxy_user.text().strip()),
                 "bypass": bool(self.proxy_box.bypass.text().strip())}
        refused = bool(self._refused and self._refused[0] == self.plan())
        for key, f in self.fields.items():
            # a field's message once something is typed there (or the proxy refused these answers); a password
            # is asked for only once the user is typed
            show = refused or typed.get(key, True) or (key == "proxy_url" and (typed["proxy_user"] or typed["bypass"]))
            f.set_message(errs.get(key) if show else None)
        if self._refused and self._refused[0] != self.plan():
            self.proxy_box.proxy_result.setText("")
        self.completeChanged.emit()

    def isComplete(self) -> bool:  # noqa: N802
        return not self.errors()

    def _start_test(self) -> None:
        if self.testing is None or self.testing.done():
            self.testing = asyncio.ensure_future(self.test_proxy())

    async def test_proxy(self) -> Outcome:
        """The Test proxy button: a tunnel through the proxy as typed (nothing stored)."""
        plan = self.plan()
        errs = plan.errors()
        if errs:
            self._changed()
            return Outcome(False, "Complete the highlighted fields.", errs)
        self.proxy_box.test_proxy_btn.setEnabled(False)
        self.proxy_box.proxy_result.setText("Testing the proxy…")
        try:
            out = await plan.try_proxy()
        finally:
            self.proxy_box.test_proxy_btn.setEnabled(True)
        if out.ok:
            self._refused, self._verified = None, plan
        elif out.errors:
            self._refused, self._verified = (plan, out.errors), None
        self.proxy_box.proxy_result.setText(out.message)
        self.proxy_box.proxy_result.setStyleSheet(
            "" if out.ok else f"color: {theme.health_colors()['critical'].name()}")
        self._changed()
        return out

    def validatePage(self) -> bool:  # noqa: N802
        """Next: with a proxy, move on once it let these answers through; otherwise try it now, then move on."""
        plan = self.plan()
        if not plan.proxy_url or plan == self._verified:
            return True
        if self.verifying is None or self.verifying.done():
            self.verifying = asyncio.ensure_future(self._test_then_next())
        return False

    async def _test_then_next(self) -> None:
        if (await self.test_proxy()).ok:
            wiz = self.wizard()
            if wiz is not None and wiz.currentPage() is self:
                wiz.next()


class AzureTargetPage(KeepOnBackPage):
    """The storage account (``ui.target_form``); Next once Test connection passed for what is typed, through the
    Outbound network page's settings. A proxy or allow-list refusal is also shown at that page's field."""

    def __init__(self, egress: OutboundNetworkPage) -> None:
        super().__init__()
        self.egress = egress
        self.setTitle("Azure target")
        self.setSubTitle("The storage account and container the appliance replicates to.")
        self.form = AzureTargetForm(self._test)
        self.route = forms.hint("")
        self.route.setAccessibleName("How the test goes out")
        lay = QVBoxLayout(self)
        lay.addWidget(self.form)
        lay.addWidget(self.route)
        lay.addStretch(1)
        self.form.changed.connect(self.completeChanged)
        self._tested_through: EgressPlan | None = None   # the settings the passing test went through
        self._last_through: EgressPlan | None = None     # ... and the last test, passing or not
        egress.completeChanged.connect(self._egress_changed)   # Back, a change there, Next: said here at once
        self._egress_changed()

    def initializePage(self) -> None:  # noqa: N802
        _fit_azure_window(self)
        self._egress_changed()

    def _egress_changed(self) -> None:
        plan = self.egress.plan()
        self.route.setText(f"Test connection goes out as set on the previous page: {plan.describe()}. Next needs "
                           "a passing test.")
        if self._last_through is not None and self._last_through != plan:
            self._last_through = None
            self.form.result.setStyleSheet("")
            self.form.result.setText("The outbound network changed since the test: test the connection again.")
        self.completeChanged.emit()

    async def _test(self, t: AzureTarget) -> Outcome:
        plan = self.egress.plan()
        out = await test_new(t, egress=plan)
        self._tested_through = plan if out.ok else None
        self._last_through = plan
        egress_errs = {k: v for k, v in out.errors.items() if k in self.egress.fields}
        if egress_errs:
            self.egress.refuse(plan, egress_errs)
        return out

    def isComplete(self) -> bool:  # noqa: N802
        return self.form.passed and self._tested_through == self.egress.plan()

    def target(self) -> AzureTarget:
        return self.form.target()


class PortsPage(KeepOnBackPage):
    def __init__(self) -> None:
        super().__init__()
        self.setTitle("Network")
        self.setSubTitle("Agents register on the control port and replicate to the data port (both TLS).")
        self.listen = QLineEdit("0.0.0.0")
        self.control = QLineEdit(str(default_control_port()))
        self.data = QLineEdit("9443")
        self.fields = {"listen": forms.Field(self.listen, hint="0.0.0.0 listens on every interface."),
                       "control": forms.Field(self.control), "data": forms.Field(self.data)}
        for w, name in ((self.listen, "Listen address"), (self.control, "Control port"), (self.data, "Data port")):
            w.setAccessibleName(name)
            w.textChanged.connect(self._changed)
        form = QFormLayout(self)
        form.addRow("&Listen on:", self.fields["listen"])
        form.addRow("&Control port:", self.fields["control"])
        form.addRow("&Data port:", self.fields["data"])
        self._changed()

    def errors(self) -> dict[str, str]:
        return validate_ports(self.control.text(), self.data.text(), self.listen.text().strip())

    def _changed(self) -> None:
        errs = self.errors()
        for key, f in self.fields.items():
            f.set_message(errs.get(key))
        self.completeChanged.emit()

    def isComplete(self) -> bool:  # noqa: N802
        return not self.errors()

    def validatePage(self) -> bool:  # noqa: N802
        self._changed()  # a port may have been taken since it was typed
        return self.isComplete()


class VCenterPage(KeepOnBackPage):
    """Optional: a vCenter to register, with its certificate shown for the operator to check and trust.

    "Get certificate" reads the certificate the address presents (through the engine, untrusted) and shows its
    subject, issuer, validity (in red when expired or not valid yet) and SHA-256; the operator ticks "I trust it",
    or instead gives the CA file that signed it (as the CLI's ``--ca``). A certificate other than the one accepted
    before at that address (or pinned by a registered vCenter: ``expect``) unticks the box and shows the
    possible-interception warning in full.

    In the wizard, Next logs in to the vCenter with these answers (trusting only the accepted certificate) before
    moving on: a refused password is shown next to its field and Next stays disabled until the answers change."""

    def __init__(self) -> None:
        super().__init__()
        self.setTitle("vCenter (optional)")
        self.setSubTitle("Register a vCenter now to discover its VMs, or skip and add one later under "
                         "Infrastructure.")
        self.supported = vsphere_available()
        self.enable = QCheckBox("&Register a vCenter now")
        self.host = QLineEdit()
        self.host.setPlaceholderText("vcenter.example.com[:443]")
        self.user = QLineEdit()
        self.password = QLineEdit()
        self.password.setEchoMode(QLineEdit.EchoMode.Password)
        self.fetch = QPushButton("&Get certificate")
        self.thumb = QLabel("—")
        self.thumb.setObjectName("thumbprint")
        self.thumb.setWordWrap(True)
        self.thumb.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.cert = QLabel("—")
        self.cert.setObjectName("certificate")
        self.cert.setAccessibleName("Certificate details")
        self.cert.setWordWrap(True)
        self.cert.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.validity = QLabel()           # "expired" / "not valid yet", in red
        self.validity.setObjectName("fieldError")
        self.validity.setWordWrap(True)
        self.validity.setVisible(False)
        self.changed = QLabel()            # the possible-interception warning, in full
        self.changed.setObjectName("fieldError")
        self.changed.setAccessibleName("Certificate changed")
        self.changed.setWordWrap(True)
        self.changed.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.changed.setVisible(False)
        self.accept_thumb = QCheckBox("I checked this thumbprint against the vCenter and &trust it")
        self.by_thumb = QRadioButton("Trust this certificate (its SHA-256 thumbprint is pinned)")
        self.by_ca = QRadioButton("Trust the certificates a &CA signed for this address (CA file, PEM)")
        self.by_thumb.setChecked(True)
        trust = QButtonGroup(self)
        trust.addButton(self.by_thumb)
        trust.addButton(self.by_ca)
        self.ca_file = QLineEdit()
        self.ca_file.setPlaceholderText("/path/to/ca.pem")
        self.ca_file.setAccessibleName("CA certificate file")
        self.ca_browse = QPushButton("Bro&wse…")
        self.ca_browse.clicked.connect(self._browse_ca)
        self.f_host = forms.Field(self.host, self.fetch)
        self.f_user, self.f_pass = forms.Field(self.user), forms.Field(self.password)
        self.f_thumb = forms.Field(self.accept_thumb)
        self.f_ca = forms.Field(self.ca_file, self.ca_browse,
                                hint="As `lifeboat vcenter add --ca FILE`: the vCenter's certificate must be signed by "
                                     "it and name this address.")
        self.checking = forms.hint("")
        form = QFormLayout(self)
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.DontWrapRows)
        form.addRow(self.enable)
        if not self.supported:
            form.addRow(forms.hint("vCenter support is not in this build: add vCenters later under Infrastructure."))
        form.addRow("&Address:", self.f_host)
        form.addRow("&User:", self.f_user)
        form.addRow("&Password:", self.f_pass)
        form.addRow("Certificate:", self.cert)
        form.addRow("", self.validity)
        form.addRow("SHA-256:", self.thumb)
        form.addRow(self.changed)
        form.addRow("Trust:", self.by_thumb)
        form.addRow("", self.f_thumb)
        form.addRow("", self.by_ca)
        form.addRow("", self.f_ca)
        form.addRow("", self.checking)
        self.thumbprint = ""
        self.certificate: CertificateView | None = None
        self.expected: dict[str, str] = {}  # "host:port" → the thumbprint accepted (or pinned) there before
        self._fetching: asyncio.Future[None] | None = None
        self.verifying: asyncio.Future[None] | None = None
        self._verified: tuple[str, ...] | None = None  # answers vCenter accepted
        self._refused: tuple[tuple[str, ...], dict[str, str]] | None = None  # answers it refused, why
        self._unreachable: tuple[str, str] | None = None  # (address, why) when getting its certificate failed
        self.enable.setEnabled(self.supported)
        self.enable.toggled.connect(self._changed)
        for w in (self.host, self.user, self.password, self.ca_file):
            w.textChanged.connect(self._changed)
        self.host.textChanged.connect(self._forget_thumbprint)
        self.accept_thumb.toggled.connect(self._accepted)
        self.by_ca.toggled.connect(self._changed)
        self.fetch.clicked.connect(self._fetch)
        self._changed()

    # trust ---------------------------------------------------------------------------------------------------
    def expect(self, address: str, thumbprint: str) -> None:
        """A thumbprint already pinned for ``address`` (a registered vCenter): another one gets the warning."""
        hp = parse_host_port(address)
        if hp is not None and thumbprint:
            self.expected[f"{hp[0]}:{hp[1]}"] = thumbprint

    def _address(self) -> str:
        hp = parse_host_port(self.host.text())
        return f"{hp[0]}:{hp[1]}" if hp else self.host.text().strip()

    def ca_pem(self) -> str | None:
        """The CA file's PEM text when the CA option is chosen and the file is a PEM certificate."""
        return read_ca_file(self.ca_file.text())[0] if self.by_ca.isChecked() else None

    def _browse_ca(self) -> None:
        dlg = QFileDialog(self, "CA certificate (PEM)", self.ca_file.text() or str(Path.home()))
        dlg.setFileMode(QFileDialog.FileMode.ExistingFile)
        dlg.setNameFilters(["PEM certificates (*.pem *.crt *.cer)", "All files (*)"])
        dlg.fileSelected.connect(self.ca_file.setText)
        dlg.fileSelected.connect(lambda _p: self.by_ca.setChecked(True))
        dlg.finished.connect(dlg.deleteLater)
        dlg.open()

    def _accepted(self, on: bool) -> None:
        if on and self.thumbprint:
            self.expected[self._address()] = self.thumbprint
            self.changed.setVisible(False)
        self._changed()

    def _forget_thumbprint(self) -> None:
        self.thumbprint = ""
        self.certificate = None
        self.thumb.setText("—")
        self.cert.setText("—")
        self.validity.setVisible(False)
        self.changed.setVisible(False)
        self.accept_thumb.setChecked(False)

    def _fetch(self) -> None:
        hp = parse_host_port(self.host.text())
        if hp is None:
            self.f_host.set_message("Enter HOST or HOST:PORT.")
            return
        self.thumb.setText("Connecting…")
        self._fetching = asyncio.ensure_future(self._fetch_async(*hp))

    async def _fetch_async(self, host: str, port: int) -> None:
        address = f"{host}:{port}"
        try:
            cert = await fetch_certificate(host, port)
        except UserError as exc:   # unreachable, not TLS: kept next to the address until it changes
            self._forget_thumbprint()
            self._unreachable = (self.host.text(), f"Cannot reach {address}: {exc.message}")
            self._changed()
            return
        self._unreachable = None
        self.f_host.set_message(None)
        self.show_certificate(address, cert)
        self._changed()

    def show_certificate(self, address: str, cert: CertificateView) -> None:
        """Show what the operator checks; a thumbprint other than the one expected here unticks "I trust it"."""
        self.certificate, self.thumbprint = cert, cert.sha256
        self.thumb.setText(cert.sha256[:47] + "\n" + cert.sha256[48:])  # 2 × 16 bytes: readable
        span, problem = validity_text(cert)
        names = ", ".join(cert.names) or "—"
        self.cert.setText(f"<b>Subject:</b> {escape(cert.subject)}<br><b>Issuer:</b> {escape(cert.issuer)}"
                          f"{' (self-signed)' if cert.self_signed else ''}<br><b>Valid:</b> {span}"
                          f"<br><b>For:</b> {escape(names)}")
        self.validity.setText(problem or "")
        self.validity.setVisible(bool(problem))
        before = self.expected.get(address)
        if before and before != cert.sha256:
            self.accept_thumb.setChecked(False)
            self.changed.setText(changed_certificate_message(address, cert.sha256, before))
            self.changed.setVisible(True)
        else:
            self.changed.setVisible(False)
            if before == cert.sha256 and not self.accept_thumb.isChecked():
                self.accept_thumb.setChecked(True)   # the very certificate accepted before (Back, then Next)

    # answers and the login check -------------------------------------------------------------------------
    def answers(self) -> tuple[str, ...]:
        """(address, user, password, thumbprint) trusting the thumbprint; with the CA option the thumbprint is ""
        and the CA file's path comes fifth."""
        if self.by_ca.isChecked():
            return self.host.text().strip(), self.user.text().strip(), self.password.text(), "", \
                self.ca_file.text().strip()
        return self.host.text().strip(), self.user.text().strip(), self.password.text(), self.thumbprint

    def _refusal(self) -> dict[str, str]:
        """Why vCenter refused these very answers (empty once any of them changed)."""
        return self._refused[1] if self._refused and self._refused[0] == self.answers() else {}

    async def verify(self, again: bool = False) -> bool:
        """Log in with the current answers (nothing is stored); when refused, the reason goes next to its field.
        Answers already accepted are not checked again unless ``again`` (Finish re-checks them). A certificate
        other than the accepted one is read again and shown with the possible-interception warning."""
        key = self.answers()
        if key == self._verified and not again:
            return True
        self.checking.setText("Checking the login with the vCenter…")
        try:
            errs = await check_vcenter_login(*key[:4], ca_pem=self.ca_pem())
        finally:
            self.checking.setText("")
        seen = errs.pop("seen", "")
        if errs:
            self._refused, self._verified = (key, errs), None
        elif key == self.answers():
            self._refused, self._verified = None, key
        if seen:   # the certificate changed since it was accepted: show the new one, untrusted
            self.accept_thumb.setChecked(False)
            hp = parse_host_port(self.host.text())
            if hp is not None:
                await self._fetch_async(*hp)
        self._changed()
        return not errs and key == self.answers()

    def validatePage(self) -> bool:  # noqa: N802
        """Next: move on only with answers vCenter accepted; otherwise check them now, then move on by itself."""
        if not self.enable.isChecked() or self.answers() == self._verified:
            return True
        if self.verifying is None or self.verifying.done():
            self.verifying = asyncio.ensure_future(self._verify_then_next())
        return False

    async def _verify_then_next(self) -> None:
        if await self.verify():
            wiz = self.wizard()
            if wiz is not None and wiz.currentPage() is self:
                wiz.next()

    def errors(self) -> dict[str, str]:
        if not self.enable.isChecked():
            return {}
        out = {}
        if parse_host_port(self.host.text()) is None:
            out["host"] = "Enter HOST or HOST:PORT."
        elif self._unreachable and self._unreachable[0] == self.host.text():
            out["host"] = self._unreachable[1]
        if not self.user.text().strip():
            out["user"] = "Enter the vCenter user."
        if not self.password.text():
            out["password"] = "Enter the password."
        if self.by_ca.isChecked():
            why = read_ca_file(self.ca_file.text())[1]
            if why:
                out["ca"] = why
        elif not self.thumbprint:
            out["thumb"] = "Get the certificate and check its thumbprint."
        elif not self.accept_thumb.isChecked():
            out["thumb"] = "Accept the thumbprint to continue."
        for key, msg in self._refusal().items():
            out.setdefault(key, msg)
        return out

    def _changed(self) -> None:
        on = self.enable.isChecked()
        by_ca = self.by_ca.isChecked()
        for w in (self.host, self.user, self.password, self.fetch, self.by_thumb, self.by_ca):
            w.setEnabled(on)
        self.accept_thumb.setEnabled(on and not by_ca)
        self.ca_file.setEnabled(on and by_ca)
        self.ca_browse.setEnabled(on and by_ca)
        errs = self.errors()
        if on:
            if self.host.text():
                self.f_host.set_message(errs.get("host"))
            self.f_user.set_message(errs.get("user") if self.user.text() or self.password.text() else None)
            self.f_pass.set_message(errs.get("password") if self.password.isModified() or self._refusal() else None)
            self.f_thumb.set_message(errs.get("thumb") if self.thumbprint and not by_ca else None)
            self.f_ca.set_message(errs.get("ca") if by_ca and (self.ca_file.text() or self._refusal()) else None)
            if by_ca and "thumb" in self._refusal():
                self.f_ca.set_message(self._refusal()["thumb"])
        else:
            for f in (self.f_host, self.f_user, self.f_pass, self.f_thumb, self.f_ca):
                f.set_message(None)
        self.completeChanged.emit()

    def isComplete(self) -> bool:  # noqa: N802
        return not self.errors()
