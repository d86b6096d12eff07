"""Floor 1: dataset readers, layout detection, image decoding, montages, ingest."""

from cytostore.data.detect import LAYOUTS, Found, detect
from cytostore.data.images import IMAGE_EXTENSIONS, image_size, load_rgb, to_rgb
from cytostore.data.ingest import DatasetReport, IngestReport, ingest
from cytostore.data.montage import montage
from cytostore.data.synth import SynthDataset, SynthReport, synthesize
from cytostore.data.vocabulary import CELL_TYPES, cell_type

__all__ = [
    "CELL_TYPES",
    "IMAGE_EXTENSIONS",
    "LAYOUTS",
    "DatasetReport",
    "Found",
    "IngestReport",
    "SynthDataset",
    "SynthReport",
    "cell_type",
    "detect",
    "image_size",
    "ingest",
    "load_rgb",
    "montage",
    "synthesize",
    "to_rgb",
]
