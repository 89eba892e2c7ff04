"""The dock widget's Run tab: its controls, laid out (widget.py holds what they do)."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (QCheckBox, QComboBox, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QLineEdit,
                            QListWidget, QPlainTextEdit, QProgressBar, QPushButton, QVBoxLayout, QWidget)

from .params_form import ParamsForm
from .project import pipeline_defaults, profiles


def setup_run_tab(ui) -> QWidget:
    """The Run tab: its controls made as attributes of the dock widget `ui`, and laid out (what
    Qt Designer's setupUi does); what they do is the widget's (widget.py)."""
    page = QWidget()
    col = QVBoxLayout(page)

    box = QGroupBox("Images")
    v = QVBoxLayout(box)
    ui.image_list = QListWidget()
    v.addWidget(ui.image_list)
    row = QHBoxLayout()
    ui.add_files_button = QPushButton("Add files…")
    ui.add_files_button.clicked.connect(ui._browse_images)
    ui.layer_choice = QComboBox()
    ui.add_layer_button = QPushButton("Add layer")
    ui.add_layer_button.clicked.connect(ui._add_chosen_layer)
    ui.remove_button = QPushButton("Remove")
    ui.remove_button.clicked.connect(ui._remove_images)
    for w in (ui.add_files_button, ui.layer_choice, ui.add_layer_button, ui.remove_button):
        row.addWidget(w)
    v.addLayout(row)
    col.addWidget(box)
    ui.viewer.layers.events.inserted.connect(ui._refresh_layer_choice)
    ui.viewer.layers.events.removed.connect(ui._refresh_layer_choice)
    ui._refresh_layer_choice()

    box = QGroupBox("Model")
    form = QFormLayout(box)
    ui.family = QComboBox()
    ui.family.addItems(list(ui.visible))
    ui.family.currentTextChanged.connect(lambda f: ui.set_model(f))
    ui.version = QComboBox()
    ui.version.currentTextChanged.connect(lambda v: v and ui.set_model(ui.family.currentText(), v))
    ui.task = QComboBox()
    ui.description = QLabel()
    ui.description.setWordWrap(True)
    for name, w in (("family", ui.family), ("version", ui.version), ("task", ui.task), ("", ui.description)):
        form.addRow(name, w)
    ui.models_list = QListWidget()
    ui.models_list.setToolTip("several models run on the same images and are compared (--models); "
                                "empty: the model above alone")
    ui.models_list.setMaximumHeight(80)
    row = QHBoxLayout()
    ui.add_model_button = QPushButton("Add to comparison")
    ui.add_model_button.setToolTip("add the model above, with its parameters, to the models to compare")
    ui.add_model_button.clicked.connect(ui.add_current_model)
    ui.remove_model_button = QPushButton("Remove")
    ui.remove_model_button.clicked.connect(ui._remove_models)
    row.addWidget(ui.add_model_button)
    row.addWidget(ui.remove_model_button)
    form.addRow("compare", ui.models_list)
    form.addRow("", row)
    col.addWidget(box)

    box = QGroupBox("Parameters")
    ui.params = ParamsForm()
    QVBoxLayout(box).addWidget(ui.params)
    col.addWidget(box)

    box = QGroupBox("Substacks and where to run")
    form = QFormLayout(box)
    ui.num_substacks = QLineEdit("auto")
    ui.num_substacks.setToolTip("substacks per axis: 'auto', one number, or one per axis (e.g. 2,4,4)")
    ui.overlap = QLineEdit("32")
    ui.overlap.setToolTip("overlap between substacks: pixels or a fraction, one value or one per axis")
    defaults = pipeline_defaults()
    ui.substack_memory = QLineEdit(str(defaults.get("substack_memory", "6 GB")))
    ui.substack_memory.setToolTip("memory one segmentation task may use, the model included: "
                                    "'auto' substacks are sized to fit it (e.g. 6 GB, 24 GB)")
    ui.fingerprint = QComboBox()
    ui.fingerprint.addItems(["full", "sample"])
    ui.fingerprint.setCurrentText(str(defaults.get("fingerprint", "full")))
    ui.fingerprint.setToolTip("how images are identified in the cache: full hashes every byte (remembered "
                                "per file until it changes), sample only metadata and a bounded sample")
    ui.profile = QComboBox()
    ui.profile.setEditable(True)
    ui.profile.addItems(profiles(ui.project))
    ui.profile.setToolTip("Nextflow profile(s), comma-separated: local, local,gpu, slurm, a site profile")
    ui.outdir = QLineEdit(str(Path.cwd() / "results"))
    ui.root_dir = QLineEdit(str(Path("~/.nextflow/aiod").expanduser()))
    ui.save_tiff = QCheckBox("also publish a TIFF copy")
    ui.publish_image = QCheckBox("write the image into each result")
    ui.publish_image.setToolTip("--publish_image: each result becomes one OME-Zarr image with its mask, which any "
                                "OME-Zarr reader opens together (it takes the image's space again)")
    for name, w in (("substacks", ui.num_substacks), ("overlap", ui.overlap),
                    ("task memory", ui.substack_memory), ("fingerprint", ui.fingerprint), ("profile", ui.profile),
                    ("output folder", ui.outdir), ("root (cache)", ui.root_dir), ("", ui.save_tiff),
                    ("", ui.publish_image)):
        form.addRow(name, w)
    col.addWidget(box)

    row = QHBoxLayout()
    ui.project_name = QLineEdit("project")
    ui.save_button = QPushButton("Save project")
    ui.save_button.clicked.connect(lambda: ui.save_project(ui.project_name.text()))
    ui.load_button = QPushButton("Load project…")
    ui.load_button.clicked.connect(ui._browse_project)
    for w in (QLabel("project"), ui.project_name, ui.save_button, ui.load_button):
        row.addWidget(w)
    col.addLayout(row)

    row = QHBoxLayout()
    ui.preview_button = QPushButton("Preview plan")
    ui.preview_button.setToolTip("draw each image's substacks (PLAN's plan) as a shapes layer")
    ui.preview_button.clicked.connect(ui.preview_plan)
    ui.run_button = QPushButton("Run")
    ui.run_button.clicked.connect(ui.run)
    ui.stop_button = QPushButton("Stop")
    ui.stop_button.setEnabled(False)
    ui.stop_button.clicked.connect(lambda: ui.run_handle and ui.run_handle.stop())
    ui.progress = QProgressBar()
    ui.progress.setFormat("%v / %m tasks")
    ui.progress.setRange(0, 1)
    ui.progress.setValue(0)
    for w in (ui.preview_button, ui.run_button, ui.stop_button, ui.progress):
        row.addWidget(w)
    col.addLayout(row)
    ui.status = QLabel("")
    ui.status.setWordWrap(True)
    ui.status.setTextInteractionFlags(Qt.TextSelectableByMouse)
    col.addWidget(ui.status)
    ui.log = QPlainTextEdit()
    ui.log.setReadOnly(True)
    ui.log.setMaximumBlockCount(2000)
    col.addWidget(ui.log)
    return page
