"""Parameter widgets generated from a manifest's parameter specs (aiod.registry.Parameter).

| spec | widget |
|---|---|
| bool | QCheckBox |
| int / float with a default and no keywords | QSpinBox / QDoubleSpinBox bounded by min/max |
| str with choices | QComboBox of the choices |
| str without choices | QLineEdit |
| int / float with keywords (e.g. 'otsu') or no default | editable QComboBox: the keywords, '' for unset, or a number |

Every widget starts at the version's default and carries the spec's help as its tooltip. A
spin box cannot leave its range; a free field whose text the spec refuses is marked invalid
(`ValueField.problem`), and `ParamsForm.values` raises ValueError naming the parameter.
"""

from __future__ import annotations

from qtpy.QtGui import QValidator
from qtpy.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QLineEdit, QSpinBox,
                            QWidget)

INT_LIMIT = 2**31 - 1
FLOAT_LIMIT = 1e12


def parse(spec, text: str):
    """The typed value of a free field's text, checked by the spec (ValueError otherwise)."""
    text = text.strip()
    if text == "":
        return spec.check(None)
    if text in spec.keywords:
        return text
    try:
        value = int(text) if spec.type == "int" else float(text)
    except ValueError:
        raise ValueError(f"expected {spec.describe()}, got {text!r}") from None
    return spec.check(value)


class _SpecValidator(QValidator):
    """Lets any text be typed (Intermediate) but calls only what the spec takes Acceptable."""

    def __init__(self, spec, parent=None):
        super().__init__(parent)
        self.spec = spec

    def validate(self, text, pos):
        try:
            parse(self.spec, text)
            state = QValidator.Acceptable
        except ValueError:
            state = QValidator.Intermediate
        return state, text, pos


class ValueField(QComboBox):
    """A number, a keyword, or nothing (the adapter decides)."""

    def __init__(self, spec, parent=None):
        super().__init__(parent)
        self.spec = spec
        self.setEditable(True)
        if spec.default is None:
            self.addItem("")
        self.addItems(list(spec.keywords))
        self.lineEdit().setValidator(_SpecValidator(spec, self))
        self.lineEdit().setPlaceholderText("unset" if spec.default is None else "")
        self.editTextChanged.connect(self._mark)

    def value(self):
        return parse(self.spec, self.currentText())

    def set_value(self, value) -> None:
        self.setEditText("" if value is None else (value if isinstance(value, str) else repr(value)))

    def problem(self) -> str | None:
        try:
            self.value()
        except ValueError as exc:
            return str(exc)
        return None

    def _mark(self, _text) -> None:
        bad = self.problem()
        self.setStyleSheet("QComboBox { border: 1px solid #d33; }" if bad else "")
        self.setToolTip(self.spec.help + (f"\n\n{bad}" if bad else ""))


def make_field(spec) -> QWidget:
    """The widget for one spec (table in the module docstring), at the spec's default."""
    if spec.type == "bool":
        w = QCheckBox()
    elif spec.type in ("int", "float") and not spec.keywords and spec.default is not None:
        w = QSpinBox() if spec.type == "int" else QDoubleSpinBox()
        limit = INT_LIMIT if spec.type == "int" else FLOAT_LIMIT
        low = -limit if spec.min is None else spec.min
        high = limit if spec.max is None else spec.max
        if spec.type == "int":
            w.setRange(int(low), int(high))
        else:
            w.setDecimals(3)
            w.setRange(float(low), float(high))
            w.setSingleStep(0.1 if high - low <= 100 else 1.0)
    elif spec.type == "str" and spec.choices is not None:
        w = QComboBox()
        w.addItems(spec.choices)
    elif spec.type == "str":
        w = QLineEdit()
    else:
        w = ValueField(spec)
    w.setToolTip(spec.help)
    set_field(w, spec.default)
    return w


def set_field(w: QWidget, value) -> None:
    if isinstance(w, ValueField):
        w.set_value(value)
    elif isinstance(w, QCheckBox):
        w.setChecked(bool(value))
    elif isinstance(w, (QSpinBox, QDoubleSpinBox)):
        if value is not None:
            w.setValue(value)
    elif isinstance(w, QComboBox):
        if value is not None:
            w.setCurrentText(str(value))
    else:
        w.setText("" if value is None else str(value))


def field_value(w: QWidget, spec):
    if isinstance(w, ValueField):
        return w.value()
    if isinstance(w, QCheckBox):
        return w.isChecked()
    if isinstance(w, QSpinBox):
        return w.value()
    if isinstance(w, QDoubleSpinBox):
        return round(w.value(), w.decimals())
    if isinstance(w, QComboBox):
        return w.currentText()
    return spec.check(w.text() or None)


class ParamsForm(QWidget):
    """One generated field per parameter of a family, at a version's defaults."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setLayout(QFormLayout())
        self.specs: dict = {}
        self.fields: dict[str, QWidget] = {}
        self.defaults: dict = {}

    def build(self, manifest, version: str) -> None:
        layout: QFormLayout = self.layout()
        while layout.rowCount():
            layout.removeRow(0)
        self.specs = dict(manifest.parameters)
        self.defaults = manifest.parameters_of(version)
        self.fields = {}
        for name, spec in self.specs.items():
            w = make_field(spec)
            set_field(w, self.defaults[name])
            w.setObjectName(f"param_{name}")
            self.fields[name] = w
            layout.addRow(name, w)

    def values(self) -> dict:
        """Every parameter's value; ValueError "parameter 'x': ..." for one the spec refuses."""
        out = {}
        for name, w in self.fields.items():
            try:
                out[name] = field_value(w, self.specs[name])
            except ValueError as exc:
                raise ValueError(f"parameter '{name}': {exc}") from None
        return out

    def raw_values(self) -> dict:
        """The values as typed, unchecked (a free field's number, keyword or text), for the
        registry's own check (aiod.models.resolve) and for saving."""
        out = {}
        for name, w in self.fields.items():
            try:
                out[name] = field_value(w, self.specs[name])
            except ValueError:
                out[name] = _number_or_text(w.currentText().strip(), self.specs[name].type)
        return out

    def overrides(self) -> dict:
        """The parameters (as typed) that differ from the version's defaults."""
        return {k: v for k, v in self.raw_values().items() if v != self.defaults.get(k)}

    def set_values(self, values: dict) -> list[str]:
        """Set the known parameters; the names that this family does not have."""
        unknown = []
        for name, value in values.items():
            if name in self.fields:
                set_field(self.fields[name], value)
            else:
                unknown.append(name)
        return unknown


def _number_or_text(text: str, kind: str):
    for cast in ((int,) if kind == "int" else ()) + (float,):
        try:
            return cast(text)
        except ValueError:
            pass
    return text
