"""Evaluation of any pair by tracing it: figures (:mod:`.metrics`, from the ELBO's terms in
:mod:`.terms`, posterior means and active units in :mod:`.latents` and the collapse warnings of
:mod:`.collapse`), pictures (:mod:`.pictures`), applications such as anomaly scores and denoising
(:mod:`.applications`) and the gradient SNR of each estimator (:mod:`.gradient_snr`)."""
