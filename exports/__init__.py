"""exports: the trained classifier as one self-contained ONNX file, and everything around it.

- `exports.contract` (NO torch): the file's contract - I/O names, dtypes, shapes, metadata keys,
  ModelInfo / parse_metadata, ORT provider names; signature_problems judges a graph by it
- `exports.export`  (torch) : build_metadata, export_onnx -> model.onnx with "neu_bench.*" metadata
- `exports.parity`  (torch) : check_parity / assert_parity, ONNX Runtime vs PyTorch on every image
- `exports.runtime` (NO torch): create_session, Classifier, collect_images - what a deployment runs
- `exports.quantize` (NO torch): INT8 static QDQ and FP16 copies of an export, same metadata
- `exports.fidelity` (NO torch): does a variant's output match FP32 torch (parity / accuracy rules)
- `exports.rawpixel` (NO torch): the raw-pixel copy (uint8 in, preprocessing in the graph)
- `exports.repository` (NO torch): a Triton / OpenVINO Model Server model repository
- `exports.client` (NO torch): classify on a KServe v2 / Triton HTTP server (tritonclient)
- `exports.figures` (NO torch): a file's own figures stamped into it; what verify re-checks
- `python -m exports predict|verify|repository|client` (__main__ parses and dispatches to
  exports.predict, exports.verify and exports.serving; exports.console prints their tables)

Importing this package is cheap, torch-free and has no side effects: a deployment that only
has onnxruntime + numpy + pillow imports `exports.runtime` through it.
"""
