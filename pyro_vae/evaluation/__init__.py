"""Evaluation of any pair by tracing it: figures (:mod:`.metrics`), pictures (:mod:`.pictures`) and
applications such as anomaly scores and denoising (:mod:`.applications`)."""
