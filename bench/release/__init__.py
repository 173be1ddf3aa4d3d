"""What leaves a run: the ONNX exports with their parity checks, calibrated decisions, the Grad-CAM review, the serving repository."""
