"""neu: the NEU surface defect data, read once, split honestly, batched fast.

Importing this package is cheap and torch-free: the deployment runtime in `exports/`
uses `neu.image` and must run where torch is not installed. The heavy parts live in
`neu.layout` (layout detection, scan), `neu.cache` (hashing, decoding, the decode cache),
`neu.dataset` (assembly into a Dataset), `neu.inspect` (the `neu inspect` report),
`neu.split` (manifest, normalisation) and `neu.augment` (batch transforms on tensors).
`neu.download` fetches NEU-CLS and checks every file against the SHA-256 list shipped
beside it (`NEU-CLS.sha256`).
"""

# Canonical order and names of the six NEU classes, used everywhere (tables, logits, ONNX
# metadata). The names are NEU-DET's file prefixes; the codes are NEU-CLS's.
NEU_CLASSES = (
    "crazing",
    "inclusion",
    "patches",
    "pitted_surface",
    "rolled-in_scale",
    "scratches",
)
NEU_CODES = ("Cr", "In", "Pa", "PS", "RS", "Sc")

__all__ = ["NEU_CLASSES", "NEU_CODES"]
