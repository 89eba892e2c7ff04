"""napari-aiod: the napari front-end of the AIoD pipeline.

The widget (widget.AiodWidget) builds the same samplesheet and parameter files as the command
line, starts `nextflow run main.nf` in the background and opens what it publishes. The pipeline
and the `aiod` package it uses come from one AIoD checkout (project.py says how it is found).
"""

__version__ = "0.1.0"
