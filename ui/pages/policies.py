"""Policies: create and edit (RPO threshold, retention, app-consistent frequency, crash interval, resync window,
history limit)."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QFormLayout, QHBoxLayout, QLineEdit, QListWidget, QListWidgetItem, QPushButton,
                               QVBoxLayout, QWidget)

from console.context import ConsoleContext
from console.engine_facade import (Policy, check_window, duration_text, parse_duration_text, parse_size_text, size_text,
                                   validate_policy)
from console.errors import UserError

from .. import forms, theme

DURATIONS = (("rpo_threshold", "&RPO threshold", "Health turns critical above it (for example 30s, 5m)."),
             ("retention", "R&etention", "How far back points are kept (for example 24h, 7d)."),
             ("app_consistent", "&App-consistent every", "Bookmarks with the pre/post hooks (for example 1h)."),
             ("crash_interval", "&Crash-consistent every", "At most one crash-consistent point per interval."))


class PoliciesPage(QWidget):
    """A list of policies on the left, the editor on the right; every field validated next to it."""

    def __init__(self, ctx: ConsoleContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ctx = ctx
        self.list = QListWidget()
        self.list.setAccessibleName("Policies")
        self.list.setMaximumWidth(220)
        self.name = QLineEdit()
        self.name.setAccessibleName("Policy name")
        self.edits: dict[str, QLineEdit] = {"name": self.name}
        self.fields: dict[str, forms.Field] = {"name": forms.Field(self.name)}
        form = QFormLayout()
        form.addRow("&Name:", self.fields["name"])
        for key, label, hint in DURATIONS:
            e = QLineEdit()
            e.setAccessibleName(label.replace("&", ""))
            self.edits[key] = e
            self.fields[key] = forms.Field(e, hint=hint)
            form.addRow(label + ":", self.fields[key])
        self.window_edit = QLineEdit()
        self.window_edit.setAccessibleName("Resync window")
        self.edits["resync_window"] = self.window_edit
        self.fields["resync_window"] = forms.Field(self.window_edit, hint="HH:MM-HH:MM local time for scheduled "
                                                                     "resyncs, or 'always'.")
        form.addRow("Resync &window:", self.fields["resync_window"])
        self.limit_edit = QLineEdit()
        self.limit_edit.setAccessibleName("History limit")
        self.edits["history_limit"] = self.limit_edit
        self.fields["history_limit"] = forms.Field(self.limit_edit, hint="Most vault space one machine's history may "
                                                   "take (for example 50G); past it the oldest history is folded "
                                                   "and an alert says how much remains. 0: no limit.")
        form.addRow("&History limit:", self.fields["history_limit"])
        self.form_error = forms.Field(QWidget())
        form.addRow(self.form_error)
        self.save_btn = QPushButton(theme.icon("save"), "&Save policy")
        self.save_btn.setObjectName("primary")
        self.new_btn = QPushButton(theme.icon("add"), "Ne&w policy")
        self.revert_btn = QPushButton("Re&vert")
        buttons = QHBoxLayout()
        buttons.addWidget(self.new_btn)
        buttons.addStretch(1)
        buttons.addWidget(self.revert_btn)
        buttons.addWidget(self.save_btn)
        editor = QVBoxLayout()
        editor.addLayout(form)
        editor.addLayout(buttons)
        editor.addStretch(1)
        body = QHBoxLayout()
        body.addWidget(self.list)
        body.addLayout(editor, 1)
        lay = QVBoxLayout(self)
        lay.addWidget(forms.title("Policies"))
        lay.addLayout(body, 1)
        self.list.currentItemChanged.connect(lambda cur, _prev: self.load(cur.data(Qt.ItemDataRole.UserRole)
                                                                          if cur else None))
        for e in self.edits.values():
            e.textChanged.connect(self.validate)
        self.save_btn.clicked.connect(self.save)
        self.new_btn.clicked.connect(self.new)
        self.revert_btn.clicked.connect(lambda: self.load(self._loaded))
        self._loaded: Policy | None = None
        ctx.appliance_started.connect(self.reload)

    def showEvent(self, event) -> None:  # type: ignore[no-untyped-def]  # noqa: N802
        super().showEvent(event)
        if self.list.count() == 0:
            self.reload()

    def reload(self, select: str | None = None) -> None:
        if not self.ctx.facade.running:
            return
        current = select or (self._loaded.name if self._loaded else "default")
        self.list.blockSignals(True)
        self.list.clear()
        for p in self.ctx.facade.policies():
            item = QListWidgetItem(theme.icon("policies"), p.name)
            item.setData(Qt.ItemDataRole.UserRole, p)
            self.list.addItem(item)
            if p.name == current:
                self.list.setCurrentItem(item)
        self.list.blockSignals(False)
        item = self.list.currentItem() or self.list.item(0)
        if item:
            self.list.setCurrentItem(item)
            self.load(item.data(Qt.ItemDataRole.UserRole))

    def load(self, spec: Policy | None) -> None:
        self._loaded = spec
        spec = spec or Policy("")
        self.name.setText(spec.name)
        for key, _l, _h in DURATIONS:
            self.edits[key].setText(duration_text(getattr(spec, key)))
        self.window_edit.setText(spec.resync_window)
        self.limit_edit.setText(size_text(spec.history_limit))
        self.name.setReadOnly(self._loaded is not None)  # a policy is renamed by creating a new one
        self.validate()

    def new(self) -> None:
        self.list.clearSelection()
        base = self._loaded or Policy("")
        self.load(None)
        for key, _l, _h in DURATIONS:
            self.edits[key].setText(duration_text(getattr(base, key)))
        self.window_edit.setText(base.resync_window)
        self.limit_edit.setText(size_text(base.history_limit))
        self.name.setFocus()

    def spec(self) -> tuple[Policy | None, dict[str, str]]:
        """The edited policy and the message of every invalid field."""
        errs: dict[str, str] = {}
        values: dict[str, float] = {}
        for key, label, _h in DURATIONS:
            try:
                values[key] = parse_duration_text(self.edits[key].text(), label.replace("&", "").lower())
            except UserError as exc:
                errs[key] = f"{exc.message}. {exc.advice}"
        try:
            check_window(self.window_edit.text())
        except UserError as exc:
            errs["resync_window"] = f"{exc.message}. {exc.advice}"
        limit = 0
        try:
            limit = parse_size_text(self.limit_edit.text(), "history limit")
        except UserError as exc:
            errs["history_limit"] = f"{exc.message}. {exc.advice}"
        if errs:
            return None, errs
        spec = Policy(self.name.text().strip(), resync_window=self.window_edit.text().strip(), history_limit=limit,
                      **values)
        try:
            validate_policy(spec)
        except UserError as exc:
            key = "name" if "name" in exc.message else ("crash_interval" if "interval" in exc.message
                                                        else "rpo_threshold" if "RPO" in exc.message else "form")
            errs[key] = f"{exc.message}. {exc.advice}" if key == "name" else exc.message
            return None, errs
        return spec, errs

    def validate(self) -> bool:
        spec, errs = self.spec()
        for key, f in self.fields.items():
            f.set_message(errs.get(key))
        self.form_error.set_message(errs.get("form"))
        self.save_btn.setEnabled(spec is not None and self.ctx.facade.running)
        return spec is not None

    def save(self) -> None:
        spec, _ = self.spec()
        if spec is None:
            self.validate()
            return
        try:
            self.ctx.save_policy(spec)
        except Exception as exc:
            self.ctx.notes.handle(exc, f"saving policy {spec.name}")
            return
        self._loaded = spec
        self.reload(spec.name)
