"""The AIoD dock widget: pick images and a model, run the pipeline, open what it publishes.

The widget only gathers settings and shows results. The model request is checked by the
registry's own code (aiod.models.resolve, as RESOLVE_MODEL checks it); the substack plan it
previews and the cache entry it looks up before a run are PLAN's own (planning.py); the run is
`nextflow run main.nf` on the samplesheet and parameter file the widget writes (command.py,
runner.py), each substack's labels are shown as its task finishes, the masks are opened lazily from the OME-Zarr the run published or the cache holds
(layers.py), and the cache panel lists and deletes through aiod.cache_tools (cache_panel.py).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from qtpy.QtCore import Signal
from qtpy.QtWidgets import QFileDialog, QTabWidget, QVBoxLayout, QWidget

from . import command, settings
from .cache_panel import CachePanel
from .scores import ScoresTable
from .project import nextflow, use_aiod
from .run_tab import setup_run_tab

LAYER_PREFIX = "layer: "


class AiodWidget(QWidget):
    run_finished = Signal(int)  # the pipeline's exit code, after the results are opened
    substack_shown = Signal(str)  # a live layer's name: a substack's labels, as its task wrote them

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.project = use_aiod()
        from aiod.models import visible
        from aiod.registry import load_registry
        self.viewer = napari_viewer
        self.families = load_registry()
        self.visible = visible(self.families)
        self.images: list[dict] = []  # {"path": str} or {"layer": napari layer}
        self.run_handle = None
        self.last_error: str | None = None
        self.added_layers: list = []
        self.substack_layers: list = []  # this run's live layers (_show_substacks)
        self.seen_tasks: set = set()  # the SEGMENT work folders already shown
        self.layer_of: dict[str, object] = {}  # sample id -> the image layer it was saved from
        self.models: list[dict] = []  # the models to compare: {model, version, task, params}; empty: the form's

        tabs = QTabWidget()
        tabs.addTab(setup_run_tab(self), "Run")
        self.cache_panel = CachePanel(self.viewer, lambda: self.root_dir.text())
        tabs.addTab(self.cache_panel, "Cache")
        self.scores = ScoresTable()
        tabs.addTab(self.scores, "Scores")
        self.tabs = tabs
        layout = QVBoxLayout(self)
        layout.addWidget(tabs)
        self.set_model(next(iter(self.visible)))

    # ---- the model ------------------------------------------------------------------------------

    def set_model(self, family: str, version: str | None = None, task: str | None = None) -> None:
        """Show a family's visible versions and tasks and its generated parameter widgets."""
        versions = self.visible[family]
        version = version if version in versions else next(iter(versions))
        for combo, items, current in ((self.family, list(self.visible), family), (self.version, list(versions), version),
                                      (self.task, versions[version], task)):
            combo.blockSignals(True)
            if [combo.itemText(i) for i in range(combo.count())] != items:
                combo.clear()
                combo.addItems(items)
            if current in items:
                combo.setCurrentText(current)
            combo.blockSignals(False)
        manifest = self.families[family]
        self.description.setText(manifest.description)
        self.params.build(manifest, version)

    def add_current_model(self) -> bool:
        """Add the form's model (family, version, task, changed parameters) to the models to
        compare, checked with the others by the registry's code; False (and the error shown) if
        it is refused."""
        from aiod.errors import AiodError
        entry = self._form_entry()
        try:
            self._resolve([*self.models, entry])
        except AiodError as exc:  # ModelError: the registry's one-line message
            self.show_error(f"AIOD ERROR: {exc}")
            return False
        self.models.append(entry)
        self.models_list.addItem(_entry_text(entry))
        self.status.setStyleSheet("")
        self.status.setText(f"{len(self.models)} model(s) to compare")
        return True

    def _remove_models(self) -> None:
        for row in sorted((self.models_list.row(i) for i in self.models_list.selectedItems()), reverse=True):
            self.models_list.takeItem(row)
            del self.models[row]

    def _form_entry(self) -> dict:
        return {"model": self.family.currentText(), "version": self.version.currentText(),
                "task": self.task.currentText(), "params": self.params.overrides()}

    @staticmethod
    def _resolve(entries: list[dict]) -> list[dict]:
        """The entries resolved and labelled as the run will (aiod.model_list), or ModelError."""
        from aiod.model_list import resolve_entries
        if len(entries) == 1:
            return resolve_entries(entries, source="napari")
        return resolve_entries(entries, source="--models (napari)")

    # ---- images ------------------------------------------------------------------------------

    def add_image_paths(self, paths) -> None:
        for p in paths:
            self.images.append({"path": str(p)})
            self.image_list.addItem(str(p))

    def add_layer(self, layer) -> None:
        self.images.append({"layer": layer})
        self.image_list.addItem(LAYER_PREFIX + layer.name)

    def _browse_images(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(self, "Images", "", "Images (*.tif *.tiff *.zarr);;All files (*)")
        self.add_image_paths(files)

    def _refresh_layer_choice(self, _event=None) -> None:
        from napari.layers import Image
        self.layer_choice.clear()
        self.layer_choice.addItems([layer.name for layer in self.viewer.layers if isinstance(layer, Image)])

    def _add_chosen_layer(self) -> None:
        name = self.layer_choice.currentText()
        if name in self.viewer.layers:
            self.add_layer(self.viewer.layers[name])

    def _remove_images(self) -> None:
        for row in sorted((self.image_list.row(i) for i in self.image_list.selectedItems()), reverse=True):
            self.image_list.takeItem(row)
            del self.images[row]

    # ---- settings and project files -------------------------------------------------------------

    def settings(self) -> dict:
        """The form as a project file's settings (image layers are not files: not saved)."""
        return {"images": [i["path"] for i in self.images if "path" in i], "models": [dict(e) for e in self.models],
                "model": self.family.currentText(),
                "version": self.version.currentText(), "task": self.task.currentText(),
                "params": self.params.raw_values(), "num_substacks": self.num_substacks.text(),
                "overlap": self.overlap.text(), "substack_memory": self.substack_memory.text(),
                "fingerprint": self.fingerprint.currentText(), "profile": self.profile.currentText(), "outdir": self.outdir.text(),
                "root_dir": self.root_dir.text(), "save_tiff": self.save_tiff.isChecked(),
                "publish_image": self.publish_image.isChecked()}

    def apply_settings(self, s: dict) -> None:
        if "model" in s:
            if s["model"] not in self.visible:
                raise settings.ProjectFileError(f"model '{s['model']}' is not in the registry (or not readable by you)")
            self.set_model(s["model"], s.get("version"), s.get("task"))
        unknown = self.params.set_values(s.get("params") or {})
        if unknown:
            raise settings.ProjectFileError(f"params: {', '.join(unknown)}: not parameters of {self.family.currentText()}")
        if "models" in s:
            models = [dict(e) for e in s["models"] or []]
            if models:
                from aiod.errors import AiodError
                try:
                    self._resolve(models)
                except (AiodError, KeyError, TypeError) as exc:
                    raise settings.ProjectFileError(f"models: {exc}") from None
            self.models = models
            self.models_list.clear()
            self.models_list.addItems([_entry_text(e) for e in models])
        if "images" in s:
            self.images = [i for i in self.images if "layer" in i]
            self.image_list.clear()
            self.image_list.addItems([LAYER_PREFIX + i["layer"].name for i in self.images])
            self.add_image_paths(s["images"])
        for key, w in (("num_substacks", self.num_substacks), ("overlap", self.overlap),
                       ("substack_memory", self.substack_memory), ("outdir", self.outdir),
                       ("root_dir", self.root_dir)):
            if key in s:
                w.setText(str(s[key]))
        if "profile" in s:
            self.profile.setCurrentText(str(s["profile"]))
        if "fingerprint" in s:
            if s["fingerprint"] not in ("full", "sample"):
                raise settings.ProjectFileError(f"fingerprint '{s['fingerprint']}': expected full or sample")
            self.fingerprint.setCurrentText(s["fingerprint"])
        if "save_tiff" in s:
            self.save_tiff.setChecked(bool(s["save_tiff"]))
        if "publish_image" in s:
            self.publish_image.setChecked(bool(s["publish_image"]))

    def save_project(self, name: str) -> Path | None:
        try:
            path = settings.save(settings.project_path(self.root_dir.text(), name), self.settings())
        except (settings.ProjectFileError, OSError) as exc:
            self.show_error(f"AIOD ERROR: {exc}")
            return None
        self.status.setText(f"saved {path}")
        return path

    def load_project(self, path) -> bool:
        try:
            self.apply_settings(settings.load(Path(path)))
        except settings.ProjectFileError as exc:
            self.show_error(f"AIOD ERROR: {exc}")
            return False
        self.status.setText(f"loaded {path}")
        return True

    def _browse_project(self) -> None:
        folder = Path(self.root_dir.text()).expanduser() / settings.FOLDER
        path, _ = QFileDialog.getOpenFileName(self, "Project file", str(folder), "Project files (*.yaml)")
        if path:
            self.load_project(path)

    # ---- running ---------------------------------------------------------------------------------

    def show_error(self, line: str) -> None:
        self.last_error = line
        self.status.setText(line)
        self.status.setStyleSheet("color: #e55;")

    def request(self) -> command.RunRequest:
        """The run the form describes, its model checked by the registry (ModelError)."""
        form = self._form_entry()
        specs = self._resolve(self.models or [form])
        family, version, task, overrides = form["model"], form["version"], form["task"], form["params"]
        return command.RunRequest(images=[], model=family, version=version, task=task, params=overrides,
                                  models=[dict(e) for e in self.models], labels=[spec["label"] for spec in specs],
                                  num_substacks=self.num_substacks.text().strip() or "auto",
                                  overlap=self.overlap.text().strip() or "32", profile=self.profile.currentText(),
                                  substack_memory=self.substack_memory.text().strip() or "6 GB",
                                  fingerprint=self.fingerprint.currentText(),
                                  outdir=self.outdir.text(), root_dir=self.root_dir.text(),
                                  save_tiff=self.save_tiff.isChecked(),
                                  publish_image=self.publish_image.isChecked())

    def _ids(self) -> list[tuple[str, dict]]:
        """(sample id, image item) of each image, ids as a run names them."""
        taken: list[str] = []
        for item in self.images:
            taken.append(command.image_id(item.get("path") or item["layer"].name, taken))
        return list(zip(taken, self.images))

    def preview_plan(self) -> list:
        """The Preview button: each image's substack plan, as PLAN makes it, drawn as a shapes
        layer `<id> substacks` (one rectangle per substack). Returns the layers drawn."""
        from aiod.errors import AiodError
        from . import planning
        self.status.setStyleSheet("")
        self.last_error = None
        try:
            req = self.request()
            if not self.images:
                raise ValueError("no images: add image files or image layers first")
            drawn = planning.draw_plans(self.viewer, self._ids(), req)
        except planning.NotKnownYet as exc:
            self.status.setText(f"no plan drawn: {exc}")
            return []
        except (AiodError, ValueError, OSError) as exc:
            self.show_error(f"AIOD ERROR: {exc}")
            return []
        self.status.setText(", ".join(f"{layer.name}: {len(layer.data)}" for layer in drawn))
        return drawn

    def run(self) -> None:
        """The Run button: check, write the run's files, open the results already in the cache,
        and start Nextflow in the background for the others."""
        from aiod.errors import AiodError
        if self.run_handle is not None and self.run_handle.running():
            return
        self.status.setStyleSheet("")
        self.last_error = None
        try:
            req = self.request()
            if not self.images:
                raise ValueError("no images: add image files or image layers first")
            root = Path(req.root_dir).expanduser()
            stamp = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
            self.layer_of: dict[str, object] = {}
            for sample_id, item in self._ids():
                if "layer" in item:
                    from .layers import save_layer
                    path = save_layer(item["layer"], root / "napari_layers" / stamp, sample_id)
                    self.layer_of[sample_id] = item["layer"]
                else:
                    path = item["path"]
                req.images.append((sample_id, str(path)))
        except (AiodError, ValueError, OSError) as exc:
            self.show_error(f"AIOD ERROR: {exc}")
            return
        hits = self.open_cached(req)
        if len(hits) == len(req.images) * len(req.labels):
            what = f"{len(hits)} image(s)" if len(req.labels) == 1 else f"{len(hits)} results of {len(req.labels)} models"
            self.status.setText(f"from the cache: {what}, no run")
            self.run_finished.emit(0)
            return
        if not req.models:  # one model: the run takes the others; several: all, so that one table compares them
            req.images = [(sample_id, path) for sample_id, path in req.images if (sample_id, req.labels[0]) not in hits]
        from .runner import PipelineRun
        folder = root / settings.FOLDER / "runs" / stamp
        files = command.write_inputs(req, folder)
        argv = command.command_line(req, files, nextflow(), self.project / "main.nf", stamp)
        self.current = req
        self.log.clear()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status.setText(f"running: {' '.join(argv[:3])} … (files in {folder})")
        self.run_handle = PipelineRun(argv, folder, command.trace_file(req.outdir, stamp), self)
        self.seen_tasks: set = set()
        self.substack_layers: list = []
        self.run_handle.progress.connect(self._on_progress)
        self.run_handle.progress.connect(self._show_substacks)
        self.run_handle.line.connect(self.log.appendPlainText)
        self.run_handle.done.connect(self._on_done)
        self.run_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        self.run_handle.start()

    def _on_progress(self, finished: int, started: int) -> None:
        self.progress.setRange(0, max(1, started))
        self.progress.setValue(finished)

    def _show_substacks(self, *_progress) -> None:
        """Each substack's labels as soon as its SEGMENT task has finished (the trace's work folder)."""
        from .layers import add_substack
        for found in command.finished_substacks(self.run_handle.trace, self.seen_tasks):
            if found.name in self.viewer.layers:
                self.viewer.layers.remove(found.name)
            try:
                self.substack_layers.append(add_substack(self.viewer, found))
            except (OSError, ValueError, KeyError) as exc:  # a folder being cleaned up: skip it
                self.log.appendPlainText(f"{found.name}: not shown ({exc})")
                continue
            self.substack_shown.emit(found.name)

    def _on_done(self, code: int, error: str | None) -> None:
        self.run_button.setEnabled(True)
        self.stop_button.setEnabled(False)
        if code == 0:  # the merged masks replace the substacks' own; after a failure they stay, to be looked at
            for layer in self.substack_layers:
                if layer in self.viewer.layers:
                    self.viewer.layers.remove(layer)
            self.substack_layers = []
        if code != 0:
            folder = self.run_handle.cwd
            self.show_error(error or f"AIOD ERROR: the pipeline stopped (exit {code}); its output: {folder / 'nextflow-output.txt'}")
        else:
            self.open_results(self.current)
            self.status.setText(f"done: {len(self.current.images)} image(s), results in {self.current.outdir}")
        self.cache_panel.refresh()
        self.run_finished.emit(code)

    def open_cached(self, req: command.RunRequest) -> list[tuple[str, str]]:
        """Open the results already in the cache (planning.open_cached); their (id, model label)."""
        from .planning import open_cached
        hits = open_cached(self.viewer, req, self.layer_of)
        for sample_id, label, entry, layer in hits:
            self.added_layers.append(layer)
            self.log.appendPlainText(f"{sample_id} {label}: from the cache ({entry})")
        return [(sample_id, label) for sample_id, label, _, _ in hits]

    def open_results(self, req: command.RunRequest) -> None:
        """Each published mask (of each model) as a lazy multiscale labels layer over its image
        (replacing one opened from the cache before the run); the scores."""
        from .layers import add_result
        paths = dict(req.images)
        for label in req.labels:
            folder = req.result_folder(label)
            for record in command.published_records(folder, paths):
                sample_id = record["id"]
                result = Path((record.get("published") or {}).get(".ome.zarr") or folder / f"{sample_id}.ome.zarr")
                name = f"{sample_id} {record.get('model_label') or record['labels']['name']}"
                if name in self.viewer.layers:
                    self.viewer.layers.remove(name)
                layer = add_result(self.viewer, result, Path(record["image"]), self.layer_of.get(sample_id), name=name)
                self.added_layers.append(layer)
        self.scores.read(Path(req.outdir).expanduser() / "comparison.json")


def _entry_text(entry: dict) -> str:
    """A model entry as --models writes it: family:version:task, then its changed parameters."""
    import yaml
    text = ":".join(entry[k] for k in ("model", "version", "task") if entry.get(k))
    params = entry.get("params") or {}
    return text + (":" + yaml.safe_dump(dict(params), default_flow_style=True).strip() if params else "")
