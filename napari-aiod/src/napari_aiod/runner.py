"""One pipeline run in the background: a QProcess running `nextflow run`, watched.

Its output is kept (the widget shows the tail, and the `AIOD ERROR:` line on failure); a timer
reads the trace file every second for the finished tasks. Signals: `progress(finished,
started)`, `line(text)`, `done(exit_code, error_line or None)`.
"""

from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import QObject, QProcess, QProcessEnvironment, QTimer, Signal

from .command import Progress, error_line


class PipelineRun(QObject):
    progress = Signal(int, int)
    line = Signal(str)
    done = Signal(int, object)

    def __init__(self, argv: list[str], cwd: Path, trace: Path, parent=None):
        super().__init__(parent)
        self.argv, self.cwd, self.trace = list(argv), Path(cwd), Path(trace)
        self.output: list[str] = []
        self.tally = Progress()
        self._partial = ""
        self.process = QProcess(self)
        self.process.setProcessChannelMode(QProcess.MergedChannels)
        self.process.setWorkingDirectory(str(cwd))
        env = QProcessEnvironment.systemEnvironment()
        env.insert("NXF_ANSI_LOG", "false")
        env.insert("NXF_DISABLE_CHECK_LATEST", "true")
        self.process.setProcessEnvironment(env)
        self.process.readyReadStandardOutput.connect(self._read)
        self.process.finished.connect(self._finished)
        self.process.errorOccurred.connect(self._failed_to_start)
        self.timer = QTimer(self)
        self.timer.setInterval(1000)
        self.timer.timeout.connect(self._poll)

    def start(self) -> None:
        self.cwd.mkdir(parents=True, exist_ok=True)
        (self.cwd / "command.txt").write_text(" ".join(self.argv) + "\n")
        self.process.start(self.argv[0], self.argv[1:])
        self.timer.start()

    def running(self) -> bool:
        return self.process.state() != QProcess.NotRunning

    def stop(self) -> None:
        """Ask Nextflow to stop (SIGTERM: it cancels its tasks and cleans up)."""
        if self.running():
            self.process.terminate()

    def text(self) -> str:
        return "\n".join(self.output)

    def _read(self) -> None:
        data = self._partial + bytes(self.process.readAllStandardOutput()).decode(errors="replace")
        *lines, self._partial = data.split("\n")
        for ln in lines:
            self.output.append(ln)
            self.tally.feed_line(ln)
            self.line.emit(ln)
        self._poll()

    def _poll(self) -> None:
        self.tally.read_trace(self.trace)
        self.progress.emit(self.tally.finished, self.tally.started)

    def _finished(self, code, _status=None) -> None:
        self._read()
        if self._partial:
            self.output.append(self._partial)
            self._partial = ""
        self.timer.stop()
        self._poll()
        (self.cwd / "nextflow-output.txt").write_text(self.text() + "\n")
        self.done.emit(int(code), error_line(self.text()) if code else None)

    def _failed_to_start(self, error) -> None:
        if error == QProcess.FailedToStart:
            self.timer.stop()
            self.done.emit(127, f"AIOD ERROR: cannot start {self.argv[0]} ({self.process.errorString()}); "
                                "set AIOD_NEXTFLOW or put nextflow on PATH")
